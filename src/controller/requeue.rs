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

/// The AwsAccounts' resyncs are jittered by this share (±10 %), so that accounts synced together
/// spread out. Roles resync at their own slot instead ([`until_resync_slot`]).
pub(crate) const RESYNC_SPREAD: f64 = 0.2;
/// A role's next resync is never sooner than this share of the interval after a visit, so that it
/// always reads IAM afresh (the recent-sync memo lives half the interval).
pub(crate) const MIN_RESYNC_SHARE: f64 = 0.6;
/// How soon a known delay (IAM propagation) is looked at again, before jitter.
const WAITING_RETRY: Duration = Duration::from_secs(10);

/// The delay until the next visit, `None` to wait for a change: at the credentials' refresh time
/// if that comes before the resync, soon while waiting for propagation, and never later than a
/// due refresh, whatever the role's state (a failure is retried with backoff, capped the same way
/// by [`retry_delay`]). A refused role is resynced like a synced one: the guardrails are enforced
/// on its role (drift such as a boundary removed by hand is corrected) until the object goes. One
/// waiting for its AwsAccount waits for the account to change, unless credentials need
/// refreshing.
///
/// `phase` places the object's resyncs in the interval ([`resync_phase`]).
pub(crate) fn next_visit(
    outcome: &Outcome,
    resync_interval: Duration,
    phase: f64,
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
        RoleEnding::Synced { .. }
        | RoleEnding::Refused(_)
        | RoleEnding::Planned { .. }
        | RoleEnding::Failed { .. } => Some(until_resync_slot(phase, resync_interval, now)),
        RoleEnding::AccountNotReady { .. } => None,
    };
    match (own, refresh) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where an object's resyncs fall in each interval, as a share of it: from a hash of its uid, so
/// the same after a restart or a change of leader, and uniform over many objects.
pub(crate) fn resync_phase(uid: &str) -> f64 {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let hash = uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The delay until the object's next resync slot: the instants `phase` of the way into each
/// interval, counted from the Unix epoch, skipping a slot closer than [`MIN_RESYNC_SHARE`] of
/// the interval. So a role resyncs once per interval at a fixed point of it whatever else
/// brought it in between (a refresh, a change), and roles created together (a bulk apply, a
/// restart) resync spread evenly over the interval instead of in a burst that repeats.
pub(crate) fn until_resync_slot(phase: f64, interval: Duration, now: Timestamp) -> Duration {
    let period = interval.as_millis().max(1) as i128;
    let offset = (phase.clamp(0.0, 1.0) * period as f64) as i128;
    let mut delay = (offset - i128::from(now.as_millisecond())).rem_euclid(period);
    if (delay as f64) < MIN_RESYNC_SHARE * period as f64 {
        delay += period;
    }
    Duration::from_millis(delay as u64)
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
            next_visit(&synced(Some(ready(at(120)))), resync, 0.5, at(0)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            next_visit(&synced(Some(ready(at(-5)))), resync, 0.5, at(0)),
            Some(Duration::from_secs(1)),
            "an overdue refresh is looked at in a second"
        );
    }

    #[test]
    fn otherwise_the_next_resync_slot() {
        let resync = Duration::from_secs(600);
        for outcome in [synced(None), synced(Some(ready(at(100_000))))] {
            for phase in [0.0, 0.3, 0.99] {
                assert_eq!(
                    next_visit(&outcome, resync, phase, at(0)),
                    Some(until_resync_slot(phase, resync, at(0)))
                );
            }
        }
        let waiting = synced(Some(CredentialsOutcome::Waiting {
            message: "m".into(),
        }));
        let delay = next_visit(&waiting, resync, 0.5, at(0)).unwrap();
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
        let delay = next_visit(&refused, resync, 0.5, at(0)).expect("a resync");
        assert_eq!(delay, until_resync_slot(0.5, resync, at(0)));
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
            next_visit(&waiting, resync, 0.5, at(0)),
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
            next_visit(&no_credentials, resync, 0.5, at(0)),
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

    #[test]
    fn a_role_resyncs_once_per_interval_at_its_slot() {
        let resync = Duration::from_secs(600);
        let phase = resync_phase("0f6b7c1e-uid");
        let mut now = at(17);
        let first = until_resync_slot(phase, resync, now);
        assert!(
            first >= resync.mul_f64(MIN_RESYNC_SHARE)
                && first < resync.mul_f64(1.0 + MIN_RESYNC_SHARE),
            "{first:?}"
        );
        now += first;
        for _ in 0..5 {
            let next = until_resync_slot(phase, resync, now);
            assert_eq!(next, resync, "steady state: exactly one interval apart");
            now += next;
        }
        // A visit in between (a refresh, a change) leaves the slot where it was.
        let between = now + Duration::from_secs(100);
        assert_eq!(
            between + until_resync_slot(phase, resync, between),
            now + resync
        );
    }

    #[test]
    fn roles_created_together_resync_spread_evenly() {
        // 10,000 roles reconciled in the same second: their resyncs fill the interval evenly
        // instead of all falling within ±10 % of one instant.
        let resync = Duration::from_secs(600);
        let now = at(0);
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            let uid = format!("3f1e{i:04}-9a2b-4c5d-8e7f-{:012x}", i * 7919);
            let delay = until_resync_slot(resync_phase(&uid), resync, now);
            assert!(delay >= resync.mul_f64(MIN_RESYNC_SHARE));
            let into = (delay.as_secs_f64() - resync.as_secs_f64() * MIN_RESYNC_SHARE)
                / resync.as_secs_f64();
            buckets[((into * 10.0) as usize).min(9)] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!(
                (800..=1200).contains(n),
                "bucket {i}: {n} of 10,000: {buckets:?}"
            );
        }
    }
}
