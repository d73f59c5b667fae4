//! Step 9: after new credentials are issued, restarts the CR's rollout targets (workloads that read
//! credentials from environment variables) by stamping their pod template.

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::json;

use crate::api::{RestartKind, RestartTarget, names::RESTARTED_AT_ANNOTATION};

fn kind_name(kind: RestartKind) -> &'static str {
    match kind {
        RestartKind::Deployment => "Deployment",
        RestartKind::StatefulSet => "StatefulSet",
        RestartKind::DaemonSet => "DaemonSet",
    }
}

/// What happened to one target.
#[derive(Debug)]
pub(crate) enum RestartResult {
    Restarted,
    NotFound,
    Failed(kube::Error),
}

/// Stamps `stamp` (the new credentials' expiration, so one issue restarts once, however often it
/// is applied) on each target's pod template in `namespace`.
pub(crate) async fn restart_targets(
    client: &Client,
    namespace: &str,
    targets: &[RestartTarget],
    stamp: &str,
) -> Vec<(String, RestartResult)> {
    let mut results = Vec::new();
    for target in targets {
        let kind = kind_name(target.kind);
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}});
        let result = match api
            .patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => RestartResult::Restarted,
            Err(kube::Error::Api(s)) if s.code == 404 => RestartResult::NotFound,
            Err(e) => RestartResult::Failed(e),
        };
        results.push((format!("{kind}/{}", target.name), result));
    }
    results
}
