//! What the last successful IAM sync of each object established. Reconciles that follow soon
//! after it for reasons that cannot have changed IAM (our own Secret write, a credentials
//! refresh, a tampered Secret) reuse it instead of reading IAM again; a new generation, a
//! changed AwsAccount spec, an error, or the passing of half a resync interval make the next
//! reconcile read IAM in full. Drift is still found at every resync: requeues for resync are at
//! least 60 % of the interval (`requeue::MIN_RESYNC_SHARE`), beyond the memo's life.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::pipeline::SyncedRole;

/// Which inputs the sync was made from: reuse only while they are unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyncInputs {
    pub generation: Option<i64>,
    /// Generation of the AwsAccount (its guardrails shape the desired role; its status does
    /// not).
    pub account_generation: Option<i64>,
    /// The `crossaccount.io/plan-only` annotation is `"true"` (an annotation, not the spec: its
    /// change does not move the generation).
    pub plan_only: bool,
}

struct Entry {
    inputs: SyncInputs,
    role: SyncedRole,
    at: Instant,
}

/// Per object key (`namespace/name`).
pub(crate) struct RecentSyncs {
    entries: Mutex<HashMap<String, Entry>>,
    lifetime: Duration,
}

impl RecentSyncs {
    /// Entries live half of `resync_interval`.
    pub(crate) fn new(resync_interval: Duration) -> Self {
        Self {
            entries: Mutex::default(),
            lifetime: resync_interval / 2,
        }
    }

    /// The role of a sync made from the same `inputs` less than the lifetime before `now`.
    pub(crate) fn get(&self, key: &str, inputs: &SyncInputs, now: Instant) -> Option<SyncedRole> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(key)?;
        (entry.inputs == *inputs && now.saturating_duration_since(entry.at) < self.lifetime)
            .then(|| entry.role.clone())
    }

    /// Remembers a sync of `key`; entries past their life are dropped on the way, so objects
    /// that went away leave nothing behind.
    pub(crate) fn remember(&self, key: &str, inputs: SyncInputs, role: SyncedRole, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let lifetime = self.lifetime;
        entries.retain(|_, e| now.saturating_duration_since(e.at) < lifetime);
        entries.insert(
            key.to_owned(),
            Entry {
                inputs,
                role,
                at: now,
            },
        );
    }

    pub(crate) fn forget(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(generation: i64, account: i64) -> SyncInputs {
        SyncInputs {
            generation: Some(generation),
            account_generation: Some(account),
            plan_only: false,
        }
    }

    fn role() -> SyncedRole {
        SyncedRole {
            arn: "arn:aws:iam::111111111111:role/r".into(),
            created: None,
            max_session_duration: 3600,
            sessions_revoked_before: None,
            missing_grants: Vec::new(),
        }
    }

    #[test]
    fn reused_within_half_a_resync_with_the_same_inputs() {
        let syncs = RecentSyncs::new(Duration::from_secs(600));
        let t0 = Instant::now();
        syncs.remember("ns/a", inputs(1, 7), role(), t0);
        assert_eq!(
            syncs.get("ns/a", &inputs(1, 7), t0 + Duration::from_secs(299)),
            Some(role())
        );
        assert_eq!(
            syncs.get("ns/a", &inputs(1, 7), t0 + Duration::from_secs(300)),
            None
        );
        assert_eq!(syncs.get("ns/b", &inputs(1, 7), t0), None);
    }

    #[test]
    fn a_new_generation_or_account_version_reads_iam_again() {
        let syncs = RecentSyncs::new(Duration::from_secs(600));
        let t0 = Instant::now();
        syncs.remember("ns/a", inputs(1, 7), role(), t0);
        assert_eq!(syncs.get("ns/a", &inputs(2, 7), t0), None);
        assert_eq!(syncs.get("ns/a", &inputs(1, 8), t0), None);
    }

    #[test]
    fn expired_entries_of_other_objects_are_dropped() {
        let syncs = RecentSyncs::new(Duration::from_secs(600));
        let t0 = Instant::now();
        syncs.remember("ns/gone", inputs(1, 7), role(), t0);
        syncs.remember("ns/a", inputs(1, 7), role(), t0 + Duration::from_secs(301));
        assert_eq!(syncs.entries.lock().unwrap().len(), 1);
    }

    #[test]
    fn forgotten_after_an_error() {
        let syncs = RecentSyncs::new(Duration::from_secs(600));
        let t0 = Instant::now();
        syncs.remember("ns/a", inputs(1, 7), role(), t0);
        syncs.forget("ns/a");
        assert_eq!(syncs.get("ns/a", &inputs(1, 7), t0), None);
    }

    #[test]
    fn resync_requeues_always_outlive_the_memo() {
        // The earliest resync next_visit schedules.
        let resync = Duration::from_secs(10);
        let earliest = resync.mul_f64(crate::controller::requeue::MIN_RESYNC_SHARE);
        let syncs = RecentSyncs::new(resync);
        assert!(
            syncs.lifetime < earliest,
            "{:?} vs {earliest:?}",
            syncs.lifetime
        );
    }
}
