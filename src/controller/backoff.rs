//! Per-object exponential backoff with jitter (kube-runtime's error policy has none of its own),
//! and the jittered resync interval.
//!
//! The cap bounds recovery: once a sustained fault ends, every object is retried within
//! [`MAX`] (plus a quarter as jitter), whatever its failure count. A failure count is forgotten on
//! success, on deletion, and after [`FORGET_AFTER`] without a failure (an object that went away
//! without a final reconcile leaves nothing behind for long).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::Rng;

const BASE: Duration = Duration::from_secs(1);
pub(crate) const MAX: Duration = Duration::from_secs(60);
/// Failure counts older than this are dropped.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Failure counts per object key (`namespace/name`), with the time of the last failure.
#[derive(Default)]
pub(crate) struct PerObjectBackoff {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl PerObjectBackoff {
    /// The delay before retrying `key` after one more failure.
    pub(crate) fn next(&self, key: &str) -> Duration {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
        let (count, at) = failures.entry(key.to_owned()).or_insert((0, now));
        *count = count.saturating_add(1);
        *at = now;
        jitter(backoff_delay(*count), 0.5)
    }

    /// How many objects have failures on record.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Forgets the failures of `key`.
    pub(crate) fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// `BASE * 2^(failures-1)`, capped at `MAX`.
pub(crate) fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    (BASE * 2u32.pow(exponent)).min(MAX)
}

/// `duration` scaled by a random factor in `[1 - spread/2, 1 + spread/2]`, so that objects that
/// failed together do not retry together.
pub(crate) fn jitter(duration: Duration, spread: f64) -> Duration {
    let factor = 1.0 + spread * (rand::rng().random::<f64>() - 0.5);
    duration.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_the_cap() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(
            backoff_delay(7),
            MAX,
            "a minute at most, so recovery is bounded"
        );
        assert_eq!(backoff_delay(30), MAX);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(100), 0.2);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_is_per_object_and_resets() {
        let backoff = PerObjectBackoff::default();
        for _ in 0..4 {
            backoff.next("a/x");
        }
        let first_of_b = backoff.next("b/y");
        assert!(first_of_b <= Duration::from_millis(1250), "{first_of_b:?}");
        assert!(backoff.next("a/x") >= Duration::from_secs(12));
        backoff.reset("a/x");
        assert!(backoff.next("a/x") <= Duration::from_millis(1250));
        backoff.reset("a/x");
        backoff.reset("b/y");
        assert_eq!(
            backoff.len(),
            0,
            "nothing is kept for objects without failures"
        );
    }
}
