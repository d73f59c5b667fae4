//! `AwsAccount`: a target account registered by a platform admin, with the guardrails tenants must
//! stay inside.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A target AWS account in which CrossAccountRoles may create IAM roles, how the operator reaches it,
/// and the limits every tenant role in it must respect.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "crossaccount.io",
    version = "v1alpha1",
    kind = "AwsAccount",
    doc = "A target AWS account registered by a platform admin: how the operator reaches it and the guardrails every CrossAccountRole in it must respect.",
    shortname = "awsacct",
    category = "aws",
    category = "crossaccount",
    status = "AwsAccountStatus",
    printcolumn(name = "Account", type_ = "string", json_path = ".spec.accountId"),
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
        name = "Caller",
        type_ = "string",
        json_path = ".status.callerArn",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.managementRoleArn) || self.managementRoleArn.contains(':iam::' + self.accountId + ':role/')").message("managementRoleArn must be a role in the account of spec.accountId").field_path(".managementRoleArn"))]
#[x_kube(validation = Rule::new("!has(self.permissionsBoundaryArn) || self.permissionsBoundaryArn.contains(':iam::aws:policy/') || self.permissionsBoundaryArn.contains(':iam::' + self.accountId + ':policy/')").message("permissionsBoundaryArn must be an AWS managed policy or a policy in the account of spec.accountId").field_path(".permissionsBoundaryArn"))]
#[x_kube(validation = Rule::new("!self.allowInlinePolicies || has(self.permissionsBoundaryArn) || self.allowInlinePoliciesWithoutBoundary").message("allowInlinePolicies needs a permissionsBoundaryArn that caps what inline policies can grant; set allowInlinePoliciesWithoutBoundary: true to allow them without one").field_path(".allowInlinePolicies"))]
#[x_kube(validation = Rule::new("self.allowWildcardAccounts || self.allowedTrustPrincipals.all(p, p.matches('^arn:aws[a-z-]*:iam::[0-9]{12}:'))").message("allowedTrustPrincipals must name the account of each principal literally (12 digits), or set allowWildcardAccounts: true").field_path(".allowedTrustPrincipals"))]
#[serde(rename_all = "camelCase")]
pub struct AwsAccountSpec {
    /// The 12-digit ID of the target account. Immutable: register another account with a new
    /// AwsAccount.
    #[schemars(regex(pattern = r"^[0-9]{12}$"), length(max = 12))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("accountId is immutable; create a new AwsAccount for another account"))]
    pub account_id: String,

    /// ARN of a role in the target account that the operator assumes to manage IAM there. Omit it
    /// only when the target account is the operator's own account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The lengths bound the cost of the CEL rules on this struct.
    #[schemars(
        regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$"),
        length(max = 600)
    )]
    pub management_role_arn: Option<String>,

    /// External ID to pass when assuming the management role, if its trust policy requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Go's regexp (used by the apiserver) caps repeat counts at 1000, so the length is separate.
    #[schemars(regex(pattern = r"^[\w+=,.@:/-]+$"), length(min = 2, max = 1224))]
    pub management_external_id: Option<String>,

    /// Namespaces whose CrossAccountRoles may use this account: listed by name, or matched by a
    /// label selector on the Namespace. A CrossAccountRole in any other namespace is refused with
    /// reason NotPermitted. Empty means no namespace is allowed.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,

    /// Glob patterns (`*` matches any run of characters) of managed policy ARNs that tenants may
    /// attach, e.g. `arn:aws:iam::aws:policy/ReadOnlyAccess` or `arn:aws:iam::aws:policy/*`. Empty
    /// means none; `["*"]` means any.
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub allowed_policy_arns: Vec<String>,

    /// Whether tenants may put inline policies on their roles. Needs `permissionsBoundaryArn`
    /// (which caps what an inline policy can grant) unless `allowInlinePoliciesWithoutBoundary`.
    #[serde(default)]
    pub allow_inline_policies: bool,

    /// Allow inline policies although no permissions boundary caps them. Off by default.
    #[serde(default)]
    pub allow_inline_policies_without_boundary: bool,

    /// Glob patterns of IAM actions (`*` any run of characters, case-insensitive) that an inline
    /// policy may not allow. Default: every action of `iam`, `organizations`, `sts` and
    /// `account`, through which a role could widen its own or others' access. An inline policy
    /// that allows an action matching one of these (including wildcards such as `*` or `iam:*`
    /// that cover one) is refused. `[]` denies nothing.
    #[serde(default = "default_denied_actions")]
    #[schemars(length(max = 100))]
    pub denied_actions: Vec<String>,

    /// Whether inline policies may use `NotAction` and `NotResource`, which allow everything but
    /// what they name. Off by default.
    #[serde(default)]
    pub allow_not_actions: bool,

    /// Whether a CrossAccountRole of an allowed namespace may take over an existing role without
    /// ownership tags (annotation `crossaccount.io/adopt: "true"`). Off by default: adoption lets a
    /// tenant rewrite the trust and policies of any untagged role whose name it can choose.
    #[serde(default)]
    pub allow_adoption: bool,

    /// Glob patterns of principal ARNs that tenants may add to a role's trust policy
    /// (`spec.trust.principals`). Empty means none. The account of each pattern must be literal
    /// (unless `allowWildcardAccounts`), and a wildcard never matches an account root
    /// (`:root` must be written out). Also used for `spec.grants` when `allowedGrants` is not
    /// set (deprecated: set `allowedGrants`).
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(max = 512)))]
    pub allowed_trust_principals: Vec<String>,

    /// Allow `*` in the account field of `allowedTrustPrincipals` patterns (any account's
    /// principals). Off by default.
    #[serde(default)]
    pub allow_wildcard_accounts: bool,

    /// Which principals of the source account (the operator's) CrossAccountRoles of which
    /// namespaces may grant (`spec.grants`): each rule names namespaces and glob patterns of
    /// principal ARNs (users, roles and groups: `...:group/NAME`). A grant must match a rule that allows the CR's namespace. The operator's
    /// own principal can never be granted. When unset, `allowedTrustPrincipals` applies to every
    /// allowed namespace (deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50))]
    pub allowed_grants: Option<Vec<GrantRule>>,

    /// Permissions boundary applied to every role created in this account. Tenants cannot remove
    /// or change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy/[\w+=,.@/-]{1,512}$"),
        length(max = 600)
    )]
    pub permissions_boundary_arn: Option<String>,

    /// Prefix every managed role name starts with, e.g. `k8s-`. Default: no prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\w+=,.@-]{1,32}$"))]
    pub role_name_prefix: Option<String>,

    /// IAM path of every managed role, starting and ending with `/`. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/([!-~]{1,510}/)?$"))]
    pub role_path: Option<String>,

    /// Glob patterns of the session tag keys CrossAccountRoles may set
    /// (`spec.credentials.sessionTags`). Empty means none.
    #[serde(default)]
    #[schemars(length(max = 50), inner(length(max = 128)))]
    pub allowed_session_tag_keys: Vec<String>,

    /// Glob patterns of role tag keys that others manage (organisation tag policies, cost
    /// tools): the operator never adds, changes or removes them, and `spec.tags` may not set
    /// them. Keys starting with `aws:` are always left alone.
    #[serde(default)]
    #[schemars(length(max = 50), inner(length(max = 128)))]
    pub ignored_tag_keys: Vec<String>,

    /// Glob patterns of inline policy names on roles that the operator never deletes or rewrites
    /// (and `spec.policies.inline` may not use). `AWSRevokeOlderSessions`, which the AWS
    /// console's "Revoke active sessions" writes, is always protected.
    #[serde(default)]
    #[schemars(length(max = 50), inner(length(max = 128)))]
    pub protected_inline_policies: Vec<String>,

    /// Upper bound, in seconds, for the maximum session duration of roles and for minted
    /// sessions in this account (900-43200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 900, max = 43200))]
    pub max_session_duration_seconds: Option<i32>,
}

/// The default of `deniedActions`: what lets a role widen its own or others' access.
fn default_denied_actions() -> Vec<String> {
    DEFAULT_DENIED_ACTIONS
        .iter()
        .map(|a| (*a).to_owned())
        .collect()
}

/// The actions `deniedActions` denies when it is not set.
pub const DEFAULT_DENIED_ACTIONS: [&str; 4] = ["iam:*", "organizations:*", "sts:*", "account:*"];

/// Which principals the CrossAccountRoles of some namespaces may grant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantRule {
    /// The namespaces this rule is for.
    #[serde(default)]
    pub namespaces: AllowedNamespaces,
    /// Glob patterns of principal ARNs in the source account, e.g.
    /// `arn:aws:iam::123456789012:user/team-a-*`; groups are matched by their ARN,
    /// `arn:aws:iam::123456789012:group/team-a-*`.
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub principals: Vec<String>,
}

/// Which namespaces may use an AwsAccount. A namespace is allowed when it is named in `names` or
/// matches `selector`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Names of allowed namespaces.
    #[serde(default)]
    pub names: Vec<String>,
    /// Label selector on Namespace objects; matching namespaces are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Observed state of an AwsAccount.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsAccountStatus {
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The identity the operator acts as in the target account (GetCallerIdentity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_arn: Option<String>,
    /// `Ready`: the management identity was verified in the target account.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
