//! `CrossAccountRole`: a tenant's request for an IAM role in a target account, optional grants for
//! principals of the source account, and optional temporary credentials kept in a Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An IAM role in the target account of `accountRef`, kept in sync with this spec, and optionally
/// fresh STS credentials for it in a Secret of this namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "crossaccount.io",
    version = "v1alpha1",
    kind = "CrossAccountRole",
    doc = "A tenant's IAM role in a target AWS account (spec.accountRef), kept in sync by the operator, with optional grants for principals of the source account and optional temporary credentials in a Secret.",
    namespaced,
    shortname = "xar",
    category = "aws",
    category = "crossaccount",
    status = "CrossAccountRoleStatus",
    printcolumn(name = "Account", type_ = "string", json_path = ".spec.accountRef"),
    printcolumn(name = "Role", type_ = "string", json_path = ".status.roleArn"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Expires",
        // A string: kubectl prints future dates of type date as "<invalid>".
        type_ = "string",
        json_path = ".status.credentials.expiration"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.roleName) == has(oldSelf.roleName) && (!has(self.roleName) || self.roleName == oldSelf.roleName)").message("roleName is immutable; create a new CrossAccountRole for another role").field_path(".roleName"))]
#[serde(rename_all = "camelCase")]
pub struct CrossAccountRoleSpec {
    /// Name of the AwsAccount (cluster-scoped) in which the role is created. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("accountRef is immutable; create a new CrossAccountRole for another account"))]
    pub account_ref: String,

    /// Name of the IAM role. Default: the AwsAccount's roleNamePrefix, then `<namespace>-<name>`,
    /// shortened to 64 characters with a hash suffix when longer. Characters allowed by IAM:
    /// letters, digits and `+=,.@_-`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\w+=,.@-]{1,64}$"))]
    pub role_name: Option<String>,

    /// Description of the IAM role (up to 1000 characters). IAM accepts printable ASCII, tab,
    /// newline and the Latin-1 letters and signs (U+00A1 to U+00FF) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 1000),
        regex(pattern = r"^[\t\n\r\x{20}-\x{7E}\x{A1}-\x{FF}]*$")
    )]
    pub description: Option<String>,

    /// Maximum session duration of the IAM role in seconds (3600-43200, IAM default 3600). Capped
    /// by the AwsAccount's maxSessionDurationSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3600, max = 43200))]
    pub max_session_duration_seconds: Option<i32>,

    /// Permission policies of the role.
    #[serde(default)]
    pub policies: Policies,

    /// Principals trusted to assume the role besides the operator itself.
    #[serde(default)]
    pub trust: Trust,

    /// Principals of the source account (the operator's account) that may assume the role: each
    /// user or role is added to the role's trust policy (a group cannot be: see `group`), the
    /// role is tagged `crossaccount.io/grant/<user|role|group>/<name>`, and the principal gets
    /// the operator's grant policy (one per principal, allowing `sts:AssumeRole` on the roles
    /// tagged for it). Each must match the AwsAccount's allowedGrants
    /// (or allowedTrustPrincipals). Tags and grants together fit IAM's 50 tags per role (3 are the
    /// ownership tags).
    #[serde(default)]
    #[schemars(length(max = 20))]
    #[x_kube(validation = Rule::new("self.all(g, self.indexOf(g) == self.lastIndexOf(g))").message("grants must not repeat a principal"))]
    pub grants: Vec<Grant>,

    /// Tags added to the role besides the ownership tags. Keys under `crossaccount.io/` and `aws:`
    /// are reserved. Keys and values may contain letters, digits, spaces and `_.:/=+-@` (IAM's
    /// tag alphabet).
    #[serde(default)]
    #[x_kube(validation = Rule::new(r"self.all(k, k.matches('^[\\p{L}\\p{Z}\\p{N}_.:/=+@-]+$') && self[k].matches('^[\\p{L}\\p{Z}\\p{N}_.:/=+@-]*$'))").message("tag keys and values may contain only letters, digits, spaces and _.:/=+-@"))]
    #[x_kube(validation = Rule::new("self.all(k, !k.lowerAscii().startsWith('crossaccount.io/') && !k.lowerAscii().startsWith('aws:'))").message("tag keys starting with crossaccount.io/ or aws: (in any case) are reserved"))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) >= 1 && size(k) <= 128 && size(self[k]) <= 256)").message("tag keys must be 1-128 characters and values at most 256 characters"))]
    #[schemars(extend("maxProperties" = 47, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    pub tags: BTreeMap<String, String>,

    /// What happens to the IAM role when this object is deleted: `Delete` removes the role, its
    /// policies and grants; `Retain` leaves AWS untouched.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// When set, the operator assumes the role and keeps temporary credentials in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,
}

/// Permission policies of a role.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Policies {
    /// ARNs of managed policies to attach, e.g. `arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess`.
    /// Each must match the AwsAccount's allowedPolicyArns. At most 10.
    #[serde(default)]
    #[schemars(
        length(max = 10),
        inner(regex(
            pattern = r"^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy/[\w+=,.@/-]{1,1000}$"
        ))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub managed: Vec<String>,

    /// Inline policies put on the role. Needs the AwsAccount's allowInlinePolicies.
    #[serde(default)]
    #[schemars(length(max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub inline: Vec<InlinePolicy>,
}

/// An inline policy of a role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlinePolicy {
    /// Policy name, unique within the role.
    #[schemars(regex(pattern = r"^[\w+=,.@-]{1,128}$"))]
    pub name: String,
    /// The policy document as JSON text (IAM policy grammar).
    #[schemars(length(min = 1, max = 10240))]
    pub document: String,
}

/// Extra principals trusted by the role.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Trust {
    /// IAM principal ARNs (users, roles or account roots) allowed to assume the role. Each must match
    /// the AwsAccount's allowedTrustPrincipals.
    #[serde(default)]
    #[schemars(
        length(max = 20),
        inner(regex(
            pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:(root|user/[\w+=,.@/-]{1,512}|role/[\w+=,.@/-]{1,512})$"
        ))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub principals: Vec<String>,

    /// An external ID the principals in `principals` must present when they assume the role
    /// (condition `sts:ExternalId`): set it when a third party is trusted, so that it cannot be
    /// made a confused deputy. The console cannot send one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\w+=,.@:/-]+$"), length(min = 2, max = 1224))]
    pub external_id: Option<String>,
}

/// A principal of the source account that gets the right to assume the role. Set exactly one of
/// `user`, `role` or `group`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[x_kube(validation = Rule::new("(has(self.user) ? 1 : 0) + (has(self.role) ? 1 : 0) + (has(self.group) ? 1 : 0) == 1").message("set exactly one of user, role or group"))]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Name of an IAM user in the source account. The role's trust policy names the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\w+=,.@-]{1,64}$"))]
    pub user: Option<String>,
    /// Name of an IAM role in the source account. The role's trust policy names the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\w+=,.@-]{1,64}$"))]
    pub role: Option<String>,
    /// Name of an IAM group in the source account: its members may assume the role. The group
    /// gets the grant policy (AttachGroupPolicy). IAM cannot name a group in a trust policy, so
    /// the role trusts the source account's IAM users (principal `arn:aws:iam::<source>:root`,
    /// condition `aws:PrincipalArn` like `arn:aws:iam::<source>:user/*` and not the operator's):
    /// any IAM user of the source account whose own identity policies allow `sts:AssumeRole` on
    /// the role may then assume it, not only the group's members. Roles and federated or
    /// assumed-role sessions of the source account are not trusted by it. Source-account admins
    /// constrain it by not granting `sts:AssumeRole` on `*` (or by denying it on roles tagged
    /// `crossaccount.io/grant/group/*` outside the groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\w+=,.@-]{1,64}$"))]
    pub group: Option<String>,
}

/// What happens to AWS resources when the CrossAccountRole is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove the role, its policies and grants.
    #[default]
    Delete,
    /// Leave AWS untouched.
    Retain,
}

/// Temporary credentials for the role, kept fresh in a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// Name of the Secret that holds the credentials. Default `<name>-aws`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub secret_name: Option<String>,

    /// Lifetime of each set of credentials in seconds (900-43200, default 3600), clamped to the
    /// role's and the account's maximum, and to 3600 when the operator itself runs on a role.
    #[serde(default = "default_duration_seconds")]
    #[schemars(range(min = 900, max = 43200))]
    pub duration_seconds: i32,

    /// Share of the lifetime, in percent (1-90, default 67), after which credentials are refreshed
    /// (with jitter), but never later than 20 minutes before expiry (12 for sessions shorter
    /// than 21 minutes, which SDKs then refresh in their advisory window) nor sooner than a
    /// minute after issue.
    #[serde(default = "default_refresh_percent")]
    #[schemars(range(min = 1, max = 90))]
    pub refresh_percent: i32,

    /// AWS region written to the Secret's `config` and `AWS_REGION`, e.g. `eu-west-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: Option<String>,

    /// Optional session policy (JSON) that further limits what the credentials may do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub session_policy: Option<String>,

    /// Session tags for attribute-based access control (`aws:PrincipalTag/<key>` in the target
    /// account's policies), each key allowed by the AwsAccount's `allowedSessionTagKeys`. They
    /// are not transitive. Every session also carries the transitive tags
    /// `crossaccount.io/cluster`, `crossaccount.io/namespace` and `crossaccount.io/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 40, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    pub session_tags: BTreeMap<String, String>,

    /// Where pods mount the Secret (as a directory, without subPath). The Secret's `config` key
    /// runs `cat <mountPath>/credentials.json` as its `credential_process`, so a pod with
    /// `AWS_CONFIG_FILE=<mountPath>/config` (and no static credentials file) follows every
    /// refresh with its SDK's own refresh. Default `/var/run/secrets/crossaccount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._/-]*$"), length(max = 256))]
    pub mount_path: Option<String>,

    /// Workloads in this namespace whose pods are restarted (pod-template annotation
    /// `crossaccount.io/restartedAt`) when new credentials are issued, for consumers that read
    /// credentials from environment variables (which do not change in a running pod). A workload
    /// is restarted once for credentials issued together (5 s after the issue; several
    /// CrossAccountRoles refreshed together restart it once), at most once a minute, never
    /// because the operator restarted; a failed restart is retried with backoff, and status says
    /// so (condition `RolloutsRestarted`).
    #[serde(default)]
    #[schemars(length(max = 20))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u == t))").message("rolloutRestartTargets must not repeat a target"))]
    pub rollout_restart_targets: Vec<RestartTarget>,
}

/// Where pods mount the credentials Secret when `spec.credentials.mountPath` is not set.
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/crossaccount";

fn default_duration_seconds() -> i32 {
    3600
}

fn default_refresh_percent() -> i32 {
    67
}

/// Workloads restarted when new credentials are issued: one by name, or every one of the kind
/// whose labels match a selector. Set exactly one of `name` or `selector`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.selector)").message("set exactly one of name or selector"))]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// Kind of the workload.
    pub kind: RestartKind,
    /// Name of the workload in the CrossAccountRole's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: Option<String>,
    /// Label selector of workloads of the kind in the CrossAccountRole's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// Kinds of workload that can be rollout-restarted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestartKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// Observed state of a CrossAccountRole.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CrossAccountRoleStatus {
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// ARN of the IAM role in the target account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// The target account ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// External ID the operator's trust statement requires (derived from cluster, namespace and
    /// name; not settable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The operator principal trusted by the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_arn: Option<String>,
    /// The principals of the source account the operator granted the right to assume the role
    /// (the record from which grants dropped from the spec are revoked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_principals: Vec<String>,
    /// With the annotation `crossaccount.io/plan-only: "true"`: the IAM changes, in words, that
    /// would bring the role to the spec and were not made (empty when it is in sync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planned_changes: Vec<String>,
    /// Sessions of the role issued before this time are revoked (the AWS console's "Revoke
    /// active sessions", or the `crossaccount.io/revoke-sessions` annotation); the Secret holds
    /// credentials issued after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_revoked_before: Option<Time>,
    /// Where the credentials are and when they expire (no secret material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,
    /// `Ready`, `RoleSynced` and `CredentialsReady`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Where the current credentials are kept and when they expire.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// Name of the Secret in this namespace.
    pub secret_name: String,
    /// When the current credentials expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Time>,
    /// When the operator plans to refresh them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<Time>,
}
