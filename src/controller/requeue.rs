//! When to look at an object again after a reconcile that did not fail (failures go through
//! per-object backoff, `backoff.rs`).

use std::time::Duration;

use jiff::Timestamp;

use super::backoff::jitter;
use crate::pipeline::{
    credentials::CredentialsOutcome,
    rollout::RestartResult,
    status::{Outcome, RoleEnding},
};

/// Resyncs are jittered by this share (±10 %), so that objects synced together spread out.
pub(crate) const RESYNC_SPREAD: f64 = 0.2;
/// How soon a known delay (IAM propagation) is looked at again, before jitter.
const WAITING_RETRY: Duration = Duration::from_secs(10);

/// The delay until the next visit, `None` to wait for a change: at the credentials' refresh time
/// if that comes before the resync, soon while waiting for propagation, and never later than a
/// due refresh, whatever the role's state (a failure is retried with backoff, capped the same way
/// by [`retry_delay`]). A refused role is resynced like a synced one: the guardrails are enforced
/// on its role (drift such as a boundary removed by hand is corrected) until the object goes. One
/// waiting for its AwsAccount waits for the account to change, unless credentials need
/// refreshing.
pub(crate) fn next_visit(
    outcome: &Outcome,
    resync_interval: Duration,
    now: Timestamp,
) -> Option<Duration> {
    let refresh = match &outcome.credentials {
        Some(CredentialsOutcome::Ready { held, .. }) => Some(until(held.refresh_at, now)),
        Some(CredentialsOutcome::Waiting { .. }) => Some(jitter(WAITING_RETRY, 0.5)),
        Some(CredentialsOutcome::Deferred { after, .. }) => Some(jitter(*after, 0.2)),
        _ => None,
    };
    // A rollout restart that waits for its credentials to settle, or for its minute.
    let restart = outcome
        .restarts
        .iter()
        .filter_map(|(_, result)| match result {
            RestartResult::Pending(after) => Some(*after + Duration::from_millis(500)),
            _ => None,
        })
        .min();
    let refresh = match (refresh, restart) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let own = match &outcome.role {
        // A plan is kept current (drift, the account's changes) as a synced role is.
        RoleEnding::Synced { .. } | RoleEnding::Refused(_) | RoleEnding::Planned { .. } => {
            Some(jitter(resync_interval, RESYNC_SPREAD))
        }
        RoleEnding::AccountNotReady { .. } => None,
        RoleEnding::Failed { .. } => Some(jitter(resync_interval, RESYNC_SPREAD)),
    };
    match (own, refresh) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The delay before retrying a failed reconcile: the object's backoff, but never past the refresh
/// of the credentials it holds (`next_refresh`), so that a failing IAM sync does not hold up a
/// refresh that needs only STS.
pub(crate) fn retry_delay(
    backoff: Duration,
    next_refresh: Option<Timestamp>,
    now: Timestamp,
) -> Duration {
    match next_refresh {
        Some(at) => backoff.min(until(at, now)),
        None => backoff,
    }
}

/// From `now` until `at`, at least a second.
fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now))
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::names::Reason,
        aws::IssuedCredentials,
        pipeline::{credentials::HeldCredentials, validate::Refusal},
    };

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn outcome(role: RoleEnding, credentials: Option<CredentialsOutcome>) -> Outcome {
        Outcome {
            role,
            credentials,
            restarts: Vec::new(),
            applied: Vec::new(),
            revoked: None,
        }
    }

    fn synced(credentials: Option<CredentialsOutcome>) -> Outcome {
        let role = RoleEnding::Synced {
            role_arn: "arn:aws:iam::1:role/r".into(),
            account_id: "1".into(),
            external_id: "x".into(),
            granted: Vec::new(),
            sessions_revoked_before: None,
            problems: Vec::new(),
        };
        outcome(role, credentials)
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
                request: None,
                issued_at: None,
            },
            issued: false,
            note: None,
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
    fn a_refusal_is_resynced_so_its_guardrails_stay_enforced() {
        let refused = outcome(
            RoleEnding::Refused(Refusal::new(Reason::NotPermitted, "no")),
            None,
        );
        let resync = Duration::from_secs(600);
        let delay = next_visit(&refused, resync, at(0)).expect("a resync");
        assert!(
            delay >= resync * 9 / 10 && delay <= resync * 11 / 10,
            "{delay:?}"
        );
    }

    #[test]
    fn a_due_refresh_is_not_held_up_by_the_account_or_a_failure() {
        let resync = Duration::from_secs(600);
        let waiting = outcome(
            RoleEnding::AccountNotReady {
                message: "m".into(),
                first: false,
            },
            Some(ready(at(120))),
        );
        assert_eq!(
            next_visit(&waiting, resync, at(0)),
            Some(Duration::from_secs(120))
        );
        let no_credentials = outcome(
            RoleEnding::AccountNotReady {
                message: "m".into(),
                first: false,
            },
            None,
        );
        assert_eq!(
            next_visit(&no_credentials, resync, at(0)),
            None,
            "the account's change triggers"
        );
        assert_eq!(
            retry_delay(Duration::from_secs(300), Some(at(30)), at(0)),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(4), Some(at(30)), at(0)),
            Duration::from_secs(4)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(4), None, at(0)),
            Duration::from_secs(4)
        );
    }
}
