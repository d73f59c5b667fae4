//! Checks made once at start, before any controller runs.

use kube::{Api, Client, Resource, api::ListParams};
use serde::de::DeserializeOwned;

use crate::{
    api::{AwsAccount, CrossAccountRole},
    error::StartupError,
};

/// Fails with a message naming `kubectl apply -f crds/` when a CRD of this operator is missing.
pub async fn ensure_crds_installed(client: &Client) -> Result<(), StartupError> {
    probe::<AwsAccount>(client, "AwsAccount").await?;
    probe::<CrossAccountRole>(client, "CrossAccountRole").await
}

async fn probe<K>(client: &Client, kind: &'static str) -> Result<(), StartupError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(StartupError::CrdMissing { kind })
        }
        Err(source) => Err(StartupError::Kube { kind, source }),
    }
}
