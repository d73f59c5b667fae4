//! When to look at an object again after a reconcile that did not fail (failures go through
//! per-object backoff, `backoff.rs`).

use std::time::Duration;

use jiff::Timestamp;

use super::backoff::jitter;
use crate::pipeline::{
    credentials::CredentialsOutcome,
    status::{Ending, Outcome},
};

/// Resyncs are jittered by this share (±10 %), so that objects synced together spread out.
pub(crate) const RESYNC_SPREAD: f64 = 0.2;
/// How soon a known delay (IAM propagation) is looked at again, before jitter.
const WAITING_RETRY: Duration = Duration::from_secs(10);

/// The delay until the next visit, `None` to wait for a change (terminal refusals): at the
/// credentials' refresh time if that comes before the resync, soon while waiting for
/// propagation. (A failure is retried with backoff instead.)
pub(crate) fn next_visit(
    outcome: &Outcome,
    resync_interval: Duration,
    now: Timestamp,
) -> Option<Duration> {
    let Ending::Synced(synced) = &outcome.ending else {
        return None;
    };
    let resync = jitter(resync_interval, RESYNC_SPREAD);
    Some(match &synced.credentials {
        Some(CredentialsOutcome::Ready { held, .. }) => {
            let until_refresh = Duration::try_from(held.refresh_at.duration_since(now))
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1));
            resync.min(until_refresh)
        }
        Some(CredentialsOutcome::Waiting { .. }) => jitter(WAITING_RETRY, 0.5),
        Some(CredentialsOutcome::SecretNotOwned { .. }) | None => resync,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::names::Reason,
        aws::IssuedCredentials,
        pipeline::{credentials::HeldCredentials, status::Synced, validate::Refusal},
    };

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn synced(credentials: Option<CredentialsOutcome>) -> Outcome {
        Outcome {
            ending: Ending::Synced(Box::new(Synced {
                role_arn: "arn:aws:iam::1:role/r".into(),
                account_id: "1".into(),
                external_id: "x".into(),
                credentials,
                restarts: Vec::new(),
            })),
            applied: Vec::new(),
        }
    }

    fn ready(refresh_at: Timestamp) -> CredentialsOutcome {
        CredentialsOutcome::Ready {
            secret_name: "s".into(),
            held: HeldCredentials {
                credentials: IssuedCredentials {
                    access_key_id: "a".into(),
                    secret_access_key: "b".into(),
                    session_token: "c".into(),
                    expiration: at(3600),
                },
                role_arn: "arn:aws:iam::1:role/r".into(),
                region: None,
                refresh_at,
            },
            issued: false,
        }
    }

    #[test]
    fn a_refresh_before_the_resync_comes_first() {
        let resync = Duration::from_secs(600);
        assert_eq!(
            next_visit(&synced(Some(ready(at(120)))), resync, at(0)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            next_visit(&synced(Some(ready(at(-5)))), resync, at(0)),
            Some(Duration::from_secs(1)),
            "an overdue refresh is looked at in a second"
        );
    }

    #[test]
    fn otherwise_the_resync_jittered_within_its_spread() {
        let resync = Duration::from_secs(600);
        let (low, high) = (
            resync.mul_f64(1.0 - RESYNC_SPREAD / 2.0),
            resync.mul_f64(1.0 + RESYNC_SPREAD / 2.0),
        );
        for outcome in [synced(None), synced(Some(ready(at(100_000))))] {
            for _ in 0..100 {
                let delay = next_visit(&outcome, resync, at(0)).unwrap();
                assert!(delay >= low && delay <= high, "{delay:?}");
            }
        }
        let waiting = synced(Some(CredentialsOutcome::Waiting {
            message: "m".into(),
        }));
        let delay = next_visit(&waiting, resync, at(0)).unwrap();
        assert!(
            delay >= WAITING_RETRY * 3 / 4 && delay <= WAITING_RETRY * 5 / 4,
            "{delay:?}"
        );
    }

    #[test]
    fn a_refusal_waits_for_a_change() {
        let outcome = Outcome {
            ending: Ending::Refused(Refusal::new(Reason::NotPermitted, "no")),
            applied: Vec::new(),
        };
        assert_eq!(next_visit(&outcome, Duration::from_secs(600), at(0)), None);
    }
}
