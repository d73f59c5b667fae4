//! Helpers for the hostile-input tests (tenant isolation and the bad-input catalog): snapshots
//! of what an attacker must not change, the operator's AWS activity (from its proxy's log), and
//! tenant identities.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    core::v1::Secret,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};

use super::{
    AccountGuard, attached_policies,
    aws_proxy::{LoggedRequest, RequestMark},
    create_account, devenv_dir, get_iam_role, inline_policies, policy_json, role_tags,
    wait_for_account_ready,
};

/// What the shared operator did to AWS since a mark of its proxy's log ([`super::shared_proxy`]):
/// every attempt of an IAM write and every AssumeRole that mints credentials (the management
/// role's sessions are not counted), whatever their outcome. Failed attempts count: a write that
/// AWS refused was still tried.
#[derive(Clone, Debug)]
pub struct AwsActivity {
    pub iam_writes: Vec<LoggedRequest>,
    pub assume_roles: Vec<LoggedRequest>,
}

impl AwsActivity {
    /// What reached the shared proxy after `mark`.
    pub fn since(mark: &RequestMark) -> Self {
        let requests = super::shared_proxy().requests_since(mark);
        Self {
            iam_writes: requests
                .iter()
                .filter(|r| super::is_iam_write(r))
                .cloned()
                .collect(),
            assume_roles: requests
                .iter()
                .filter(|r| super::is_credential_mint(r))
                .cloned()
                .collect(),
        }
    }

    /// (IAM write attempts, credential mints).
    pub fn counts(&self) -> (usize, usize) {
        (self.iam_writes.len(), self.assume_roles.len())
    }
}

/// Which requests they were (for failure messages; no credentials).
impl std::fmt::Display for AwsActivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "IAM write attempts:\n{}",
            super::describe_requests(&self.iam_writes)
        )?;
        write!(
            f,
            "AssumeRole calls minting credentials:\n{}",
            super::describe_requests(&self.assume_roles)
        )
    }
}

/// Creates an AwsAccount for the devenv's target account (management role included) with the
/// guardrails in `guardrails`, waits until it is Ready, and deletes it when the guard drops.
pub async fn guarded_account(client: &Client, prefix: &str, guardrails: Value) -> AccountGuard {
    let guard = AccountGuard {
        name: super::unique(prefix),
    };
    let mut spec = json!({
        "accountId": super::env("TARGET_ACCOUNT_ID"),
        "managementRoleArn": super::env("MANAGEMENT_ROLE_ARN"),
    });
    for (k, v) in guardrails.as_object().expect("guardrails are an object") {
        spec[k] = v.clone();
    }
    create_account(client, &guard.name, spec).await;
    wait_for_account_ready(client, &guard.name, std::time::Duration::from_secs(60)).await;
    guard
}

/// Everything about an IAM role an attacker might try to change.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleSnapshot {
    pub arn: String,
    pub trust_policy: Value,
    pub permissions_boundary: Option<String>,
    pub max_session_duration: Option<i32>,
    pub description: Option<String>,
    pub attached: BTreeSet<String>,
    pub inline: BTreeMap<String, Value>,
    pub tags: BTreeMap<String, String>,
}

impl RoleSnapshot {
    /// The role `name` in `iam`, or `None` when it does not exist.
    pub async fn take(iam: &aws_sdk_iam::Client, name: &str) -> Option<Self> {
        let role = get_iam_role(iam, name).await?;
        Some(Self {
            arn: role.arn().to_owned(),
            trust_policy: policy_json(role.assume_role_policy_document().unwrap_or("{}")),
            permissions_boundary: role
                .permissions_boundary()
                .and_then(|b| b.permissions_boundary_arn())
                .map(str::to_owned),
            max_session_duration: role.max_session_duration(),
            description: role.description().map(str::to_owned),
            attached: attached_policies(iam, name).await,
            inline: inline_policies(iam, name).await,
            tags: role_tags(iam, name).await,
        })
    }
}

/// What identifies a Secret's content and every write to it.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretSnapshot {
    pub resource_version: Option<String>,
    pub data: Option<BTreeMap<String, k8s_openapi::ByteString>>,
    pub owners: usize,
    pub labels: BTreeMap<String, String>,
}

impl SecretSnapshot {
    pub fn of(secret: &Secret) -> Self {
        Self {
            resource_version: secret.resource_version(),
            data: secret.data.clone(),
            owners: secret.owner_references().len(),
            labels: secret.labels().clone(),
        }
    }
}

/// A client that acts as tenant `user` (impersonation by the admin kubeconfig), in group
/// `system:authenticated` only: what a tenant can do is what its RoleBindings allow.
pub async fn impersonating_client(user: &str) -> Client {
    let mut config = Config::infer().await.expect("kube config from KUBECONFIG");
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".to_owned()]);
    Client::try_from(config).expect("impersonating client")
}

/// Gives `user` what a tenant team typically gets in its own namespace: full control of
/// CrossAccountRoles (including status, the worst case) and of Secrets and events there.
pub async fn bind_tenant(client: &Client, namespace: &str, user: &str) {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "tenant", "namespace": namespace},
        "rules": [
            {
                "apiGroups": ["crossaccount.io"],
                "resources": ["crossaccountroles", "crossaccountroles/status"],
                "verbs": ["*"],
            },
            {"apiGroups": [""], "resources": ["secrets", "events"], "verbs": ["*"]},
        ],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("create Role tenant in {namespace}: {e}"));
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "tenant", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding tenant in {namespace}: {e}"));
}

/// The whole log of this test binary's shared operator.
pub fn operator_log() -> String {
    let path = devenv_dir()
        .join("logs")
        .join(format!("operator-{}.log", env!("CARGO_CRATE_NAME")));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every event in the cluster (both event APIs), as JSON text.
pub async fn all_events_text(client: &Client) -> String {
    let core = Api::<k8s_openapi::api::core::v1::Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list core/v1 events");
    let new = Api::<k8s_openapi::api::events::v1::Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list events.k8s.io/v1 events");
    format!(
        "{}\n{}",
        serde_json::to_string(&core.items).unwrap(),
        serde_json::to_string(&new.items).unwrap()
    )
}
