//! How every watch of the controllers recovers when the apiserver goes away and comes back (an
//! upgrade of a managed control plane restarts it routinely).
//!
//! kube's `default_backoff` (client-go's: 0.8 s doubling to 30 s, plus as much jitter, reset only
//! after two quiet minutes) is kind to a struggling apiserver but slow for an operator: after a
//! restart of a few seconds every watch first fails to reconnect, then gets "too old resource
//! version" (410) and must relist, and each step waited for the grown backoff, so a new object
//! waited about two minutes. And a `Controller` backs off its merged trigger stream once more on
//! every error of any of its watches, so one watch's failures paused all of them.
//!
//! The policy here:
//! - a 410 is not a failure of the server's health but the end of a watch's window: relist at
//!   once (only a second 410 in a row, with no success between, backs off);
//! - other errors (connection refused, 5xx, 429, timeouts) back off exponentially from
//!   [`BASE`] to [`CAP`], each delay drawn in its upper half so that replicas spread out;
//! - any event that arrives resets it.
//!
//! Each watch stream is wrapped in [`recovering`]; the controllers' own trigger backoff is
//! switched off with [`NoTriggerBackoff`], so a failing watch never pauses the others.

use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt, stream};
use kube::runtime::{utils::Backoff, watcher};
use rand::Rng;

/// First delay after a failed connection.
pub(crate) const BASE: Duration = Duration::from_millis(250);
/// Longest delay between two attempts while the apiserver cannot be reached.
pub(crate) const CAP: Duration = Duration::from_secs(4);

/// What a watch error says about the apiserver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchFailure {
    /// HTTP 410: the resource version the watch resumed from is gone (e.g. the apiserver
    /// restarted with a fresh watch cache); the watcher relists.
    Expired,
    /// Anything else: the apiserver is unreachable, overloaded or refusing.
    Unavailable,
}

impl WatchFailure {
    pub(crate) fn of(error: &watcher::Error) -> Self {
        let code = match error {
            watcher::Error::WatchError(status) => Some(status.code),
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => match e {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            },
            watcher::Error::NoResourceVersion => None,
        };
        if code == Some(410) {
            WatchFailure::Expired
        } else {
            WatchFailure::Unavailable
        }
    }
}

/// The retry state of one watch: failures since the last event that arrived.
#[derive(Debug, Default)]
pub(crate) struct WatchRetry {
    failures: u32,
    expired_since_success: bool,
}

impl WatchRetry {
    /// The delay before the next attempt after `failure`; `jitter` in [0, 1) picks where in the
    /// upper half of the exponential delay it falls.
    pub(crate) fn after(&mut self, failure: WatchFailure, jitter: f64) -> Duration {
        if failure == WatchFailure::Expired && !self.expired_since_success {
            self.expired_since_success = true;
            return Duration::ZERO;
        }
        self.failures = self.failures.saturating_add(1);
        let exponent = (self.failures - 1).min(16);
        let full = BASE.saturating_mul(2u32.pow(exponent)).min(CAP);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// An event arrived: the watch works again.
    pub(crate) fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// `watch` (a `watcher()` stream) with the recovery policy of this module: after an error is
/// passed on, the next attempt waits for [`WatchRetry::after`].
pub(crate) fn recovering<T, S>(
    what: &'static str,
    watch: S,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send + 'static
where
    T: Send + 'static,
    S: Stream<Item = Result<T, watcher::Error>> + Send + 'static,
{
    type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, watcher::Error>> + Send>>;
    let state: (Boxed<T>, WatchRetry, Duration) =
        (Box::pin(watch), WatchRetry::default(), Duration::ZERO);
    stream::unfold(state, move |(mut watch, mut retry, wait)| async move {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let item = watch.next().await?;
        let wait = match &item {
            Ok(_) => {
                if retry.failures > 0 {
                    tracing::info!(watch = what, "watch resumed");
                }
                retry.succeeded();
                Duration::ZERO
            }
            Err(error) => {
                let failure = WatchFailure::of(error);
                let wait = retry.after(failure, rand::rng().random());
                match failure {
                    WatchFailure::Expired => {
                        tracing::debug!(watch = what, %error, retry_in = ?wait, "watch expired; relisting")
                    }
                    WatchFailure::Unavailable => {
                        tracing::warn!(watch = what, %error, retry_in = ?wait, "watch failed")
                    }
                }
                wait
            }
        };
        Some((item, (watch, retry, wait)))
    })
}

/// A `Controller`'s trigger backoff that never waits: each watch paces itself ([`recovering`]),
/// so one failing watch does not hold up the triggers of the others.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NoTriggerBackoff;

impl Iterator for NoTriggerBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoTriggerBackoff {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn gone() -> watcher::Error {
        let mut status = Status::failure("too old resource version: 10 (20)", "Expired");
        status.code = 410;
        watcher::Error::WatchError(Box::new(status))
    }

    fn refused() -> watcher::Error {
        let mut status = Status::failure("service unavailable", "ServiceUnavailable");
        status.code = 503;
        watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn errors_are_told_apart_by_status_code() {
        assert_eq!(WatchFailure::of(&gone()), WatchFailure::Expired);
        let mut status = Status::failure("continue token expired", "Expired");
        status.code = 410;
        assert_eq!(
            WatchFailure::of(&watcher::Error::InitialListFailed(kube::Error::Api(
                Box::new(status)
            ))),
            WatchFailure::Expired
        );
        assert_eq!(WatchFailure::of(&refused()), WatchFailure::Unavailable);
        assert_eq!(
            WatchFailure::of(&watcher::Error::NoResourceVersion),
            WatchFailure::Unavailable
        );
    }

    #[test]
    fn an_expired_watch_relists_at_once_but_not_in_a_loop() {
        let mut retry = WatchRetry::default();
        assert_eq!(retry.after(WatchFailure::Expired, 0.9), Duration::ZERO);
        assert_eq!(
            retry.after(WatchFailure::Expired, 0.0),
            BASE / 2,
            "a second 410 without a success between backs off"
        );
        retry.succeeded();
        assert_eq!(retry.after(WatchFailure::Expired, 0.9), Duration::ZERO);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_reset_on_success() {
        let mut retry = WatchRetry::default();
        let delays: Vec<Duration> = (0..8)
            .map(|_| retry.after(WatchFailure::Unavailable, 0.999_999))
            .collect();
        let millis: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(millis, [249, 499, 999, 1999, 3999, 3999, 3999, 3999]);
        retry.succeeded();
        assert_eq!(retry.after(WatchFailure::Unavailable, 0.0), BASE / 2);
    }

    #[test]
    fn delays_fall_in_the_upper_half_of_the_exponential_step() {
        for failures in 1..10u32 {
            for jitter in [0.0, 0.25, 0.5, 0.999] {
                let mut retry = WatchRetry {
                    failures: failures - 1,
                    expired_since_success: false,
                };
                let full = BASE.saturating_mul(2u32.pow(failures - 1)).min(CAP);
                let delay = retry.after(WatchFailure::Unavailable, jitter);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "{failures} {jitter}: {delay:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_waits_after_errors_and_not_after_events() {
        let items = vec![Err(refused()), Err(refused()), Ok(1), Err(gone()), Ok(2)];
        let watch = recovering("test", stream::iter(items));
        tokio::pin!(watch);
        let start = tokio::time::Instant::now();
        let mut seen = Vec::new();
        while let Some(item) = watch.next().await {
            seen.push((item.is_ok(), start.elapsed()));
        }
        let at: Vec<(bool, u128)> = seen.iter().map(|(ok, t)| (*ok, t.as_millis())).collect();
        // Two failures wait 125-250 ms and 250-500 ms; the event resets; the 410 relists at once.
        assert_eq!(at[0], (false, 0));
        assert!((125..=250).contains(&at[1].1), "{at:?}");
        assert!(at[2].0 && (375..=750).contains(&at[2].1), "{at:?}");
        assert_eq!(at[3].1, at[2].1, "{at:?}");
        assert_eq!(at[4], (true, at[3].1), "{at:?}");
    }
}
