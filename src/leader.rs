//! Leader election on a coordination.k8s.io Lease, so that of several replicas one reconciles and
//! the others wait (healthy and ready, just idle).

use std::{future::Future, time::Duration};

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::http::Readiness;

/// How long a lease is valid without renewal, and the grace the manager leaves itself to renew.
const LEASE_DURATION_SECONDS: u64 = 15;
const LEASE_GRACE_SECONDS: u64 = 5;

/// Why leadership ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was requested; the lease was released for the next replica.
    Shutdown,
    /// The lease was lost (e.g. the apiserver was unreachable for longer than the lease); the
    /// caller should exit so that a fresh start rejoins the election.
    LeadershipLost,
}

/// Waits for the lease `name` in `namespace`, then runs `work` until `stop` turns true or the
/// lease is lost. `work` gets a receiver that turns true when it must stop.
pub async fn run_as_leader<W, Fut>(
    client: Client,
    namespace: &str,
    name: &str,
    identity: String,
    readiness: Readiness,
    mut stop: watch::Receiver<bool>,
    work: W,
) -> Result<Ended, kube_lease_manager::LeaseManagerError>
where
    W: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity.clone())
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    // A standby is healthy and ready: it is doing exactly what it should.
    readiness.set(true);
    tracing::info!(lease = %name, namespace, identity = %identity, "waiting for leadership");

    let acquired = tokio::select! {
        result = leader.wait_for(|is_leader| *is_leader) => result.is_ok(),
        _ = stop.wait_for(|stop| *stop) => false,
    };
    let ended = if acquired {
        tracing::info!(lease = %name, "acquired leadership; starting controllers");
        let (work_stop_tx, work_stop_rx) = watch::channel(false);
        let work = work(work_stop_rx);
        tokio::pin!(work);
        let ended = tokio::select! {
            _ = &mut work => Ended::Shutdown,
            _ = stop.wait_for(|stop| *stop) => Ended::Shutdown,
            _ = leader.wait_for(|is_leader| !*is_leader) => Ended::LeadershipLost,
        };
        // Let the controllers finish what they are doing before the lease goes.
        let _ = work_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
        ended
    } else {
        Ended::Shutdown
    };
    // Closing the channel makes the manager release the lease (if held) and finish.
    drop(leader);
    match task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "releasing the lease failed; it expires on its own")
        }
        Err(e) => tracing::warn!(error = %e, "the lease task failed"),
    }
    if ended == Ended::LeadershipLost {
        tracing::error!(lease = %name, "lost leadership");
    } else {
        tracing::info!(lease = %name, "released leadership");
    }
    Ok(ended)
}
