//! Step 9: rollout restarts of the workloads that read the credentials from environment
//! variables (`spec.credentials.rolloutRestartTargets`), by stamping their pod template with
//! `crossaccount.io/restartedAt`.
//!
//! Whether a workload needs a restart is decided from what the cluster holds, not from memory:
//! credentials issued at `issued_at` (the Secret records it) need a workload restarted at or after
//! that time. So a restart happens only on a real change of credentials, never because the
//! operator restarted, and credentials issued together (several CrossAccountRoles refreshed at
//! once) restart a workload once: the restart waits [`SETTLE`] after the issue, and a workload
//! restarted since then is done for all of them. A workload is restarted at most once per
//! [`MIN_INTERVAL`]. A failed restart stays due and is retried with the reconcile's backoff.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::api::{RestartKind, RestartTarget, names::RESTARTED_AT_ANNOTATION};

/// How long after an issue a restart waits, so that credentials issued together share it.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);
/// The shortest time between two restarts of one workload.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(60);

fn kind_name(kind: RestartKind) -> &'static str {
    match kind {
        RestartKind::Deployment => "Deployment",
        RestartKind::StatefulSet => "StatefulSet",
        RestartKind::DaemonSet => "DaemonSet",
    }
}

/// The RBAC resource of a kind.
fn resource_name(kind: RestartKind) -> &'static str {
    match kind {
        RestartKind::Deployment => "deployments",
        RestartKind::StatefulSet => "statefulsets",
        RestartKind::DaemonSet => "daemonsets",
    }
}

/// What became of one workload.
#[derive(Debug)]
pub(crate) enum RestartResult {
    /// Restarted now for the new credentials.
    Restarted,
    /// Already restarted since the credentials were issued.
    UpToDate,
    /// Due in the given time (settling, or restarted less than a minute ago).
    Pending(Duration),
    NotFound,
    /// The apiserver refused (403): the operator's RBAC does not grant get, list and patch on
    /// this resource (the chart grants them only with `rbac.rolloutRestarts`).
    Forbidden(&'static str),
    Failed(kube::Error),
}

impl RestartResult {
    /// `Failed`, or `Forbidden` for a refusal of the apiserver.
    fn failed(resource: &'static str, error: kube::Error) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 403 => RestartResult::Forbidden(resource),
            _ => RestartResult::Failed(error),
        }
    }

    /// What went wrong with `target`, for status and the retried error; `None` when nothing did.
    pub(crate) fn problem(&self, target: &str) -> Option<String> {
        match self {
            RestartResult::NotFound => Some(format!("{target} does not exist in this namespace")),
            RestartResult::Forbidden(resource) => Some(format!(
                "cannot restart {target}: the operator is not allowed to get, list and patch \
                 {resource} (apps) in this namespace; grant it in the operator's RBAC (with the \
                 Helm chart: rbac.rolloutRestarts=true)"
            )),
            RestartResult::Failed(e) => Some(format!("could not restart {target}: {e}")),
            _ => None,
        }
    }

    /// Whether the restart failed (and stays due), as opposed to a target that is not there.
    pub(crate) fn is_failure(&self) -> bool {
        matches!(self, RestartResult::Failed(_) | RestartResult::Forbidden(_))
    }
}

/// What to do with a workload last restarted at `restarted` for credentials issued at `issued`.
pub(crate) fn decide(restarted: Option<Timestamp>, issued: Timestamp, now: Timestamp) -> Decision {
    if restarted.is_some_and(|at| at >= issued) {
        return Decision::UpToDate;
    }
    let settle = SignedDuration::try_from(SETTLE).expect("small duration");
    let interval = SignedDuration::try_from(MIN_INTERVAL).expect("small duration");
    let mut due = issued + settle;
    if let Some(at) = restarted {
        due = due.max(at + interval);
    }
    if now >= due {
        Decision::Restart
    } else {
        Decision::Wait(Duration::try_from(due.duration_since(now)).unwrap_or(SETTLE))
    }
}

/// See [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    UpToDate,
    Restart,
    Wait(Duration),
}

/// Brings every target in `namespace` up to credentials issued at `issued`.
pub(crate) async fn restart_targets(
    client: &Client,
    namespace: &str,
    targets: &[RestartTarget],
    issued: Timestamp,
    now: Timestamp,
) -> Vec<(String, RestartResult)> {
    let mut results = Vec::new();
    for target in targets {
        let kind = kind_name(target.kind);
        let resource_name = resource_name(target.kind);
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let workloads = match (&target.name, &target.selector) {
            (Some(name), _) => match api.get_opt(name).await {
                Ok(Some(found)) => vec![found],
                Ok(None) => {
                    results.push((format!("{kind}/{name}"), RestartResult::NotFound));
                    continue;
                }
                Err(e) => {
                    let result = RestartResult::failed(resource_name, e);
                    results.push((format!("{kind}/{name}"), result));
                    continue;
                }
            },
            (None, Some(selector)) => {
                let selector = match kube::core::Selector::try_from(selector.clone()) {
                    Ok(selector) => selector,
                    Err(_) => continue,
                };
                match api
                    .list(&ListParams::default().labels_from(&selector))
                    .await
                {
                    Ok(list) => list.items,
                    Err(e) => {
                        let result = RestartResult::failed(resource_name, e);
                        results.push((format!("{kind}s selected"), result));
                        continue;
                    }
                }
            }
            (None, None) => continue,
        };
        for workload in workloads {
            let label = format!("{kind}/{}", workload.name_any());
            let result = restart_one(&api, &workload, issued, now, resource_name).await;
            results.push((label, result));
        }
    }
    results
}

async fn restart_one(
    api: &Api<DynamicObject>,
    workload: &DynamicObject,
    issued: Timestamp,
    now: Timestamp,
    resource_name: &'static str,
) -> RestartResult {
    let restarted = workload.data["spec"]["template"]["metadata"]["annotations"]
        [RESTARTED_AT_ANNOTATION]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok());
    match decide(restarted, issued, now) {
        Decision::UpToDate => RestartResult::UpToDate,
        Decision::Wait(after) => RestartResult::Pending(after),
        Decision::Restart => {
            let stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}});
            match api
                .patch(
                    &workload.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => RestartResult::Restarted,
                Err(kube::Error::Api(s)) if s.code == 404 => RestartResult::NotFound,
                Err(e) => RestartResult::failed(resource_name, e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_missing_permission_and_the_chart_value() {
        let mut status = kube::core::Status::failure(
            "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:ops:cao\" cannot get resource \"deployments\"",
            "Forbidden",
        );
        status.code = 403;
        let result = RestartResult::failed("deployments", kube::Error::Api(Box::new(status)));
        assert!(result.is_failure());
        let problem = result.problem("Deployment/web").unwrap();
        for words in [
            "Deployment/web",
            "get, list and patch",
            "deployments",
            "rbac.rolloutRestarts=true",
        ] {
            assert!(problem.contains(words), "{words:?} missing in {problem}");
        }
        let mut status = kube::core::Status::failure("etcd timeout", "InternalError");
        status.code = 500;
        let other = RestartResult::failed("deployments", kube::Error::Api(Box::new(status)));
        assert!(matches!(other, RestartResult::Failed(_)));
        assert!(!RestartResult::NotFound.is_failure());
        assert!(RestartResult::UpToDate.problem("Deployment/web").is_none());
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_workload_restarted_since_the_issue_is_done_for_every_credential_issued_before() {
        assert_eq!(decide(Some(at(10)), at(5), at(20)), Decision::UpToDate);
        assert_eq!(decide(Some(at(5)), at(5), at(20)), Decision::UpToDate);
    }

    #[test]
    fn a_restart_waits_for_credentials_issued_together_to_settle() {
        assert_eq!(
            decide(None, at(0), at(2)),
            Decision::Wait(Duration::from_secs(3))
        );
        assert_eq!(decide(None, at(0), at(5)), Decision::Restart);
    }

    #[test]
    fn a_workload_restarts_at_most_once_a_minute() {
        // Restarted at 0 for earlier credentials; new ones issued at 10.
        assert_eq!(
            decide(Some(at(0)), at(10), at(20)),
            Decision::Wait(Duration::from_secs(40))
        );
        assert_eq!(decide(Some(at(0)), at(10), at(60)), Decision::Restart);
    }
}
