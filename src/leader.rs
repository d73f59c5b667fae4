//! Leader election on a coordination.k8s.io Lease, so that of several replicas one reconciles and
//! the others wait (healthy and ready, just idle). The semantics are client-go's `leaderelection`:
//!
//! - a candidate takes a Lease that is free, or whose record has not changed for the lease's
//!   duration *as this candidate observed it* (its own clock; holders' clocks may differ);
//! - the holder renews every [`LeaseSettings::retry_period`]; when it has not managed to renew for
//!   [`LeaseSettings::renew_deadline`] (shorter than the lease), it must assume another replica
//!   may take over and stops at once ([`Ended::LeadershipLost`]); the caller exits, and the
//!   restarted container (same identity: the pod name) takes its own Lease back immediately;
//! - a holder that shuts down releases the Lease, so a standby takes over within a retry period.
//!
//! Every write carries the resourceVersion it was decided on, so two candidates never both win.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use rand::Rng;
use tokio::sync::watch;

use crate::http::Readiness;

/// How long a Lease is valid without renewal, how long the holder keeps trying to renew before it
/// gives up, and how often it tries. client-go's defaults.
#[derive(Clone, Copy, Debug)]
pub struct LeaseSettings {
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why leadership ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was requested; the lease was released for the next replica.
    Shutdown,
    /// The lease could not be renewed within the renew deadline (e.g. the apiserver was
    /// unreachable), or another replica holds it: the caller should exit so that a fresh start
    /// rejoins the election.
    LeadershipLost,
}

/// What to do with the Lease as last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// It does not exist: create it, held by us.
    Create,
    /// Free or expired: take it.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Held by another replica whose lease has not run out (as we observed it).
    Wait,
}

/// The decision for a Lease `spec` that has looked the same to us for `unchanged_for`.
pub(crate) fn next_step(
    spec: Option<&LeaseSpec>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Step::Renew,
        None | Some("") => Step::Acquire,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs);
            if unchanged_for >= duration {
                Step::Acquire
            } else {
                Step::Wait
            }
        }
    }
}

/// One replica's view of the Lease.
struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    settings: LeaseSettings,
    /// The record as last read, and when we first saw it in that form.
    observed: Option<(LeaseSpec, Instant)>,
}

impl Elector {
    /// One attempt: read the Lease, then create, take or renew it when we may. `Ok(true)` when
    /// we hold it afterwards; a conflict (someone wrote in between) is an error: try again.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let spec = current.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let now = Instant::now();
        let unchanged_for = match (&self.observed, &spec) {
            (Some((seen, since)), Some(spec)) if seen == spec => now.duration_since(*since),
            _ => Duration::ZERO,
        };
        if let Some(spec) = &spec
            && unchanged_for.is_zero()
        {
            self.observed = Some((spec.clone(), now));
        }
        let step = next_step(
            spec.as_ref(),
            &self.identity,
            unchanged_for,
            self.settings.duration,
        );
        let stamp = Some(MicroTime(Timestamp::now()));
        let lease = match (step, current) {
            (Step::Wait, _) => return Ok(false),
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        acquire_time: stamp.clone(),
                        renew_time: stamp,
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await?
            }
            (step, Some(lease)) => {
                let mut spec = lease.spec.clone().unwrap_or_default();
                if step == Step::Acquire {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = stamp.clone();
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(self.duration_seconds());
                spec.renew_time = stamp;
                self.write(&lease, &spec).await?
            }
            (_, None) => unreachable!("next_step gives Create for a missing Lease"),
        };
        self.observed = lease.spec.map(|spec| (spec, Instant::now()));
        Ok(true)
    }

    /// Gives the Lease up if we hold it, so that a standby need not wait for it to expire.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.write(&lease, &spec).await.map(drop)
    }

    /// Writes `spec` over the Lease as it was read: a merge patch that carries the
    /// resourceVersion it was decided on, so a concurrent write makes it fail (409). Every field
    /// of the spec is set explicitly (`null` clears), so nothing of the old record survives.
    async fn write(&self, read: &Lease, spec: &LeaseSpec) -> Result<Lease, kube::Error> {
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": read.metadata.resource_version},
            "spec": {
                "holderIdentity": spec.holder_identity,
                "leaseDurationSeconds": spec.lease_duration_seconds,
                "acquireTime": spec.acquire_time,
                "renewTime": spec.renew_time,
                "leaseTransitions": spec.lease_transitions,
            },
        });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// The candidates' pause between attempts, jittered so that replicas do not move in step.
    fn candidate_pause(&self) -> Duration {
        self.settings
            .retry_period
            .mul_f64(1.0 + 0.2 * rand::rng().random::<f64>())
    }
}

/// Waits for the Lease `name` in `namespace`, then runs `work` until `stop` turns true or the
/// lease is lost. `work` gets a receiver that turns true when it must stop.
#[allow(clippy::too_many_arguments)]
pub async fn run_as_leader<W, Fut>(
    client: Client,
    namespace: &str,
    name: &str,
    identity: String,
    settings: LeaseSettings,
    readiness: Readiness,
    mut stop: watch::Receiver<bool>,
    work: W,
) -> Ended
where
    W: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut elector = Elector {
        api: Api::namespaced(client, namespace),
        name: name.to_owned(),
        identity: identity.clone(),
        settings,
        observed: None,
    };
    // A standby is healthy and ready: it is doing exactly what it should.
    readiness.set(true);
    tracing::info!(lease = %name, namespace, identity = %identity, "waiting for leadership");

    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(elector.candidate_pause()) => {}
                _ = stop.wait_for(|stop| *stop) => return Ended::Shutdown,
            }
        }
        first = false;
        let attempt = tokio::time::timeout(settings.renew_deadline, elector.try_acquire_or_renew());
        match attempt.await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::debug!(lease = %name, error = %e, "could not take the lease yet")
            }
            Err(_) => tracing::debug!(lease = %name, "taking the lease timed out"),
        }
    }

    tracing::info!(lease = %name, "acquired leadership; starting controllers");
    // Ready again once the controllers' caches have synced (they say so).
    readiness.set(false);
    let (work_stop_tx, work_stop_rx) = watch::channel(false);
    let work = work(work_stop_rx);
    tokio::pin!(work);
    let mut renewed = Instant::now();
    let ended = loop {
        tokio::select! {
            _ = &mut work => break Ended::Shutdown,
            _ = stop.wait_for(|stop| *stop) => break Ended::Shutdown,
            _ = tokio::time::sleep(settings.retry_period) => {}
        }
        let left = settings.renew_deadline.saturating_sub(renewed.elapsed());
        match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
            Ok(Ok(true)) => renewed = Instant::now(),
            Ok(Ok(false)) => {
                tracing::error!(lease = %name, "another replica holds the lease");
                break Ended::LeadershipLost;
            }
            Ok(Err(e)) => tracing::warn!(lease = %name, error = %e, "could not renew the lease"),
            Err(_) => {}
        }
        if renewed.elapsed() >= settings.renew_deadline {
            tracing::error!(
                lease = %name,
                deadline = ?settings.renew_deadline,
                "could not renew the lease within its renew deadline"
            );
            break Ended::LeadershipLost;
        }
    };
    let _ = work_stop_tx.send(true);
    match ended {
        Ended::Shutdown => {
            // Let the controllers finish what they are doing before the lease goes.
            let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
            match tokio::time::timeout(settings.renew_deadline, elector.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %name, "released leadership"),
                Ok(Err(e)) => {
                    tracing::warn!(lease = %name, error = %e, "releasing the lease failed; it expires on its own")
                }
                Err(_) => tracing::warn!(lease = %name, "releasing the lease timed out"),
            }
        }
        // Another replica may be leading already: stop at once (dropping the work cancels the
        // reconciles in flight, which are safe to interrupt), and do not touch the Lease.
        Ended::LeadershipLost => tracing::error!(lease = %name, "lost leadership"),
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIFTEEN: Duration = Duration::from_secs(15);

    fn held_by(holder: Option<&str>, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: seconds,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_or_free_lease_is_taken() {
        assert_eq!(next_step(None, "a", Duration::ZERO, FIFTEEN), Step::Create);
        for free in [held_by(None, Some(15)), held_by(Some(""), Some(1))] {
            assert_eq!(
                next_step(Some(&free), "a", Duration::ZERO, FIFTEEN),
                Step::Acquire
            );
        }
    }

    #[test]
    fn our_own_lease_is_renewed_at_once_even_after_a_restart() {
        let ours = held_by(Some("pod-0"), Some(15));
        assert_eq!(
            next_step(Some(&ours), "pod-0", Duration::ZERO, FIFTEEN),
            Step::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_its_record_stood_still_for_the_lease_duration() {
        let theirs = held_by(Some("pod-1"), Some(15));
        for (unchanged, step) in [
            (Duration::ZERO, Step::Wait),
            (Duration::from_secs(14), Step::Wait),
            (FIFTEEN, Step::Acquire),
        ] {
            assert_eq!(next_step(Some(&theirs), "pod-0", unchanged, FIFTEEN), step);
        }
        // The record's own duration counts, not ours.
        let long = held_by(Some("pod-1"), Some(60));
        assert_eq!(
            next_step(Some(&long), "pod-0", Duration::from_secs(30), FIFTEEN),
            Step::Wait
        );
        let unset = held_by(Some("pod-1"), None);
        assert_eq!(
            next_step(Some(&unset), "pod-0", FIFTEEN, FIFTEEN),
            Step::Acquire
        );
    }

    #[test]
    fn the_holder_gives_up_before_the_lease_runs_out() {
        let settings = LeaseSettings::default();
        assert!(settings.renew_deadline < settings.duration);
        assert!(settings.retry_period * 3 < settings.renew_deadline);
    }
}
