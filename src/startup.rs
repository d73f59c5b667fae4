//! Checks made once at start, before any controller runs.

use std::time::{Duration, Instant};

use kube::{Api, Client, Resource, api::ListParams};
use serde::de::DeserializeOwned;

use crate::{
    api::{AwsAccount, CrossAccountRole},
    controller::{
        WatchScope,
        watch::{WatchFailure, WatchRetry},
    },
    error::StartupError,
};

/// How long a start waits for an apiserver that cannot be reached (a restarted container may come
/// up while its control plane is being upgraded) before it fails.
pub const APISERVER_WAIT: Duration = Duration::from_secs(120);

/// Fails with a message naming `kubectl apply -f crds/` when a CRD of this operator is missing.
/// While the apiserver cannot be reached it retries, with the watches' backoff, for up to
/// [`APISERVER_WAIT`].
/// CrossAccountRoles are probed where the operator may list them: cluster-wide, or in the first
/// namespace of `scope`.
pub async fn ensure_crds_installed(
    client: &Client,
    scope: &WatchScope,
) -> Result<(), StartupError> {
    let started = Instant::now();
    let mut retry = WatchRetry::default();
    let roles: Api<CrossAccountRole> = match scope.namespaces().and_then(|n| n.first()) {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    loop {
        let result = match probe(Api::<AwsAccount>::all(client.clone()), "AwsAccount").await {
            Ok(()) => probe(roles.clone(), "CrossAccountRole").await,
            Err(e) => Err(e),
        };
        match result {
            Err(StartupError::Kube { kind, source }) if started.elapsed() < APISERVER_WAIT => {
                let wait = retry.after(WatchFailure::Unavailable, rand::random());
                tracing::warn!(error = %source, kind, retry_in = ?wait, "cannot reach the Kubernetes API yet");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

async fn probe<K>(api: Api<K>, kind: &'static str) -> Result<(), StartupError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(StartupError::CrdMissing { kind })
        }
        Err(source) => Err(StartupError::Kube { kind, source }),
    }
}
