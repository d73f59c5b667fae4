//! The seam's own model: what is read from IAM, the writes the reconciler asks for, principals,
//! and the STS request and its answer. Plain data, in AWS's terms.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde_json::Value;

use super::Arn;

/// IAM's default (and minimum) maximum session duration of a role, in seconds.
pub(crate) const IAM_DEFAULT_MAX_SESSION: i32 = 3600;
/// IAM's cap on sessions of a role assumed with role-chained credentials, in seconds.
pub(crate) const CHAINED_SESSION_LIMIT: i32 = 3600;
/// STS's shortest session, in seconds.
pub(crate) const MIN_SESSION: i32 = 900;

/// How the operator reaches one account: directly (no management role: the operator's own
/// account) or through a management role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AccountAccess {
    pub account_id: String,
    pub management_role_arn: Option<String>,
    pub external_id: Option<String>,
}

/// A principal of the source account that is granted the right to assume a role. A group is
/// not a principal to IAM (it cannot be named in a trust policy), but it holds identity policies
/// for its members, so it is granted as users and roles are, except for the trust entry (see
/// [`Principal::is_trustable`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Principal {
    User(String),
    Role(String),
    Group(String),
}

impl Principal {
    /// The principal's ARN (at the root path) in `account` of `partition`.
    pub(crate) fn arn(&self, partition: &str, account: &str) -> Arn {
        match self {
            Principal::User(name) => Arn::user(partition, account, "/", name),
            Principal::Role(name) => Arn::role(partition, account, "/", name),
            Principal::Group(name) => Arn::group(partition, account, "/", name),
        }
    }

    /// Whether IAM accepts the principal in a trust policy: users and roles are; a group is
    /// not (IAM refuses it: MalformedPolicyDocument), so a role granted to a group trusts the
    /// source account instead and leaves the decision to its identity policies.
    pub(crate) fn is_trustable(&self) -> bool {
        !matches!(self, Principal::Group(_))
    }

    /// The user, role or group an ARN of `account` names (at any path); `None` for anything
    /// else.
    pub(crate) fn from_arn(arn: &Arn, account: &str) -> Option<Self> {
        if arn.service() != "iam" || arn.account() != account {
            return None;
        }
        let resource = arn.resource();
        if resource.starts_with("user/") {
            Some(Principal::User(arn.name().to_owned()))
        } else if resource.starts_with("role/") {
            Some(Principal::Role(arn.name().to_owned()))
        } else if resource.starts_with("group/") {
            Some(Principal::Group(arn.name().to_owned()))
        } else {
            None
        }
    }

    /// `("user", NAME)`, `("role", NAME)` or `("group", NAME)`.
    pub(crate) fn kind_and_name(&self) -> (&'static str, &str) {
        match self {
            Principal::User(name) => ("user", name),
            Principal::Role(name) => ("role", name),
            Principal::Group(name) => ("group", name),
        }
    }

    /// The principal of kind `kind` (`user`, `role` or `group`) named `name`.
    pub(crate) fn of_kind(kind: &str, name: &str) -> Option<Self> {
        let name = name.to_owned();
        match kind {
            "user" => Some(Principal::User(name)),
            "role" => Some(Principal::Role(name)),
            "group" => Some(Principal::Group(name)),
            _ => None,
        }
    }

    /// `user NAME`, `role NAME` or `group NAME`, for messages.
    pub(crate) fn describe(&self) -> String {
        let (kind, name) = self.kind_and_name();
        format!("{kind} {name}")
    }

    /// The one of three names (IAM's operations and quotas are named per kind) for this kind.
    fn per_kind(
        &self,
        user: &'static str,
        role: &'static str,
        group: &'static str,
    ) -> &'static str {
        match self {
            Principal::User(_) => user,
            Principal::Role(_) => role,
            Principal::Group(_) => group,
        }
    }

    /// IAM's quota on the managed policies attached to this kind of principal, as
    /// GetAccountSummary names it.
    pub(crate) fn attachment_quota(&self) -> &'static str {
        self.per_kind(
            "AttachedPoliciesPerUserQuota",
            "AttachedPoliciesPerRoleQuota",
            "AttachedPoliciesPerGroupQuota",
        )
    }
}

/// How one operator cluster grants principals of the source account the right to assume its
/// roles. A grant has two halves, as IAM requires for cross-account access: the role's trust
/// policy allows the principal (the target account's side), and the principal's identity allows
/// `sts:AssumeRole` on the role (the source account's side). The identity side is one customer
/// managed policy per principal, under `/crossaccount/<cluster>/`, that never changes: it allows
/// assuming any role tagged `crossaccount.io/grant/<user|role|group>/<name>` = `<cluster>`, and the
/// operator tags each granted role. So a grant or revocation is a tag on the role, in the target
/// account, and nothing in the source account is ever read, modified and written back: no quota
/// on policy size is approached however many roles grant one principal, and concurrent grants to
/// one principal cannot lose each other's writes. (A policy per object, inline on the principal,
/// hit IAM's 2,048-character quota on a user's inline policies after about a dozen roles.)
/// See <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_examples_iam-assume-tagged-role.html>.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GrantScope {
    pub cluster: String,
}

/// The inline policy the AWS console's "Revoke active sessions" puts on a role: it denies
/// everything to sessions issued before a time
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_revoke-sessions.html>).
pub(crate) const REVOKE_SESSIONS_POLICY: &str = "AWSRevokeOlderSessions";

/// The tag keys of grants: `crossaccount.io/grant/<user|role|group>/<name>`.
pub(crate) const GRANT_TAG_PREFIX: &str = "crossaccount.io/grant/";

impl GrantScope {
    /// The IAM path of the grant policies.
    pub(crate) fn path(&self) -> String {
        format!("/crossaccount/{}/", self.cluster)
    }

    /// The name of `principal`'s grant policy. Managed policy names are unique in an account
    /// whatever their path, so the name carries the cluster too. It fits IAM's 128 characters: a
    /// cluster name has at most 40, a user, role or group name at most 64 (groups allow 128 in
    /// IAM; the CRD takes 64).
    pub(crate) fn policy_name(&self, principal: &Principal) -> String {
        let (kind, name) = principal.kind_and_name();
        format!("crossaccount-{}-{kind}-{name}", self.cluster)
    }

    /// The role tag that grants `principal` (its value is the cluster name). At most 91
    /// characters (IAM allows 128).
    pub(crate) fn tag_key(principal: &Principal) -> String {
        let (kind, name) = principal.kind_and_name();
        format!("{GRANT_TAG_PREFIX}{kind}/{name}")
    }

    /// The principal a grant tag key names, if it is one.
    pub(crate) fn principal_of_tag(key: &str) -> Option<Principal> {
        let rest = key.strip_prefix(GRANT_TAG_PREFIX)?;
        match rest.split_once('/')? {
            (_, "") => None,
            (kind, name) => Principal::of_kind(kind, name),
        }
    }

    /// The document of `principal`'s grant policy.
    pub(crate) fn policy_document(&self, principal: &Principal) -> Value {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "CrossAccountGrants",
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Resource": "*",
                "Condition": {"StringEquals": {
                    format!("iam:ResourceTag/{}", Self::tag_key(principal)): self.cluster,
                }},
            }],
        })
    }
}

/// A managed policy attached to a principal: its name and ARN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AttachedPolicy {
    pub name: String,
    pub arn: String,
}

/// An IAM role as read from AWS; documents are parsed (URL-decoded) JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ObservedRole {
    pub arn: String,
    pub path: String,
    pub description: Option<String>,
    pub max_session_duration: i32,
    pub trust_policy: Value,
    pub permissions_boundary: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub managed_policies: BTreeSet<String>,
    pub inline_policies: BTreeMap<String, Value>,
    /// When the role was created (IAM's CreateDate), to tell propagation delay from denial.
    pub created: Option<Timestamp>,
}

/// One IAM write. The plan is a list of these; `apply` carries them out in order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    CreateRole {
        role: String,
        path: String,
        trust_policy: Value,
        description: Option<String>,
        max_session_duration: Option<i32>,
        permissions_boundary: Option<String>,
        tags: BTreeMap<String, String>,
    },
    UpdateTrustPolicy {
        role: String,
        trust_policy: Value,
    },
    UpdateRole {
        role: String,
        description: String,
        max_session_duration: i32,
    },
    PutPermissionsBoundary {
        role: String,
        arn: String,
    },
    DeletePermissionsBoundary {
        role: String,
    },
    TagRole {
        role: String,
        tags: BTreeMap<String, String>,
    },
    UntagRole {
        role: String,
        keys: Vec<String>,
    },
    AttachPolicy {
        role: String,
        arn: String,
    },
    DetachPolicy {
        role: String,
        arn: String,
    },
    PutInlinePolicy {
        role: String,
        name: String,
        document: Value,
    },
    DeleteInlinePolicy {
        role: String,
        name: String,
    },
    DeleteRole {
        role: String,
    },
    /// The inline grant policy an earlier version put on a principal (one per object).
    DeleteGrant {
        principal: Principal,
        policy_name: String,
    },
    /// `principal`'s grant policy exists and is attached to it (`aws::grants`); the grant itself
    /// is the role's tag.
    AttachGrantPolicy {
        principal: Principal,
        scope: GrantScope,
    },
    // The IAM writes an AttachGrantPolicy is made of, in the source account.
    CreatePolicy {
        name: String,
        path: String,
        document: Value,
    },
    AttachPrincipalPolicy {
        principal: Principal,
        arn: String,
    },
}

impl Change {
    /// Whether the change is made in the source account (grants) rather than the target account.
    pub(crate) fn in_source_account(&self) -> bool {
        matches!(
            self,
            Change::DeleteGrant { .. }
                | Change::AttachGrantPolicy { .. }
                | Change::CreatePolicy { .. }
                | Change::AttachPrincipalPolicy { .. }
        )
    }

    /// Whether the change removes something (so that "already gone" counts as done).
    pub(crate) fn is_removal(&self) -> bool {
        matches!(
            self,
            Change::DeleteRole { .. }
                | Change::DetachPolicy { .. }
                | Change::DeleteInlinePolicy { .. }
                | Change::DeleteGrant { .. }
                | Change::DeletePermissionsBoundary { .. }
                | Change::UntagRole { .. }
        )
    }

    /// Short human description of the change made, for events and logs (names and ARNs only,
    /// no documents): "created role r".
    pub(crate) fn describe(&self) -> String {
        self.words(true)
    }

    /// The same, of a change planned and not made: "create role r".
    pub(crate) fn describe_planned(&self) -> String {
        self.words(false)
    }

    fn words(&self, done: bool) -> String {
        let v = |made: &'static str, planned: &'static str| if done { made } else { planned };
        match self {
            Change::CreateRole { role, .. } => format!("{} role {role}", v("created", "create")),
            Change::UpdateTrustPolicy { role, .. } => {
                format!("{} the trust policy of role {role}", v("updated", "update"))
            }
            Change::UpdateRole { role, .. } => {
                format!(
                    "{} description/max session of role {role}",
                    v("updated", "update")
                )
            }
            Change::PutPermissionsBoundary { role, arn } => {
                format!("set permissions boundary {arn} on role {role}")
            }
            Change::DeletePermissionsBoundary { role } => {
                format!(
                    "{} the permissions boundary of role {role}",
                    v("removed", "remove")
                )
            }
            Change::TagRole { role, tags } => {
                format!("{} role {role} ({})", v("tagged", "tag"), keys(tags.keys()))
            }
            Change::UntagRole { role, keys: k } => {
                format!(
                    "{} role {role} ({})",
                    v("untagged", "untag"),
                    keys(k.iter())
                )
            }
            Change::AttachPolicy { role, arn } => {
                format!("{} {arn} to role {role}", v("attached", "attach"))
            }
            Change::DetachPolicy { role, arn } => {
                format!("{} {arn} from role {role}", v("detached", "detach"))
            }
            Change::PutInlinePolicy { role, name, .. } if name == REVOKE_SESSIONS_POLICY => {
                format!(
                    "{} the earlier sessions of role {role} ({name})",
                    v("revoked", "revoke")
                )
            }
            Change::PutInlinePolicy { role, name, .. } => {
                format!("put inline policy {name} on role {role}")
            }
            Change::DeleteInlinePolicy { role, name } => {
                format!(
                    "{} inline policy {name} of role {role}",
                    v("deleted", "delete")
                )
            }
            Change::DeleteRole { role } => format!("{} role {role}", v("deleted", "delete")),
            Change::DeleteGrant { principal, .. } => {
                format!(
                    "{} the inline grant policy of {}",
                    v("removed", "remove"),
                    principal.describe()
                )
            }
            Change::AttachGrantPolicy { principal, scope } => format!(
                "{} grant policy {} to {} (it may assume the roles tagged {})",
                v("attached", "attach"),
                scope.policy_name(principal),
                principal.describe(),
                GrantScope::tag_key(principal)
            ),
            Change::CreatePolicy { name, .. } => {
                format!("{} policy {name}", v("created", "create"))
            }
            Change::AttachPrincipalPolicy { principal, arn } => {
                format!(
                    "{} {arn} to {}",
                    v("attached", "attach"),
                    principal.describe()
                )
            }
        }
    }

    /// The IAM operation name, for metrics, events and logs.
    pub(crate) fn operation(&self) -> &'static str {
        match self {
            Change::CreateRole { .. } => "CreateRole",
            Change::UpdateTrustPolicy { .. } => "UpdateAssumeRolePolicy",
            Change::UpdateRole { .. } => "UpdateRole",
            Change::PutPermissionsBoundary { .. } => "PutRolePermissionsBoundary",
            Change::DeletePermissionsBoundary { .. } => "DeleteRolePermissionsBoundary",
            Change::TagRole { .. } => "TagRole",
            Change::UntagRole { .. } => "UntagRole",
            Change::AttachPolicy { .. } => "AttachRolePolicy",
            Change::DetachPolicy { .. } => "DetachRolePolicy",
            Change::PutInlinePolicy { .. } => "PutRolePolicy",
            Change::DeleteInlinePolicy { .. } => "DeleteRolePolicy",
            Change::DeleteRole { .. } => "DeleteRole",
            Change::DeleteGrant { principal, .. } => {
                principal.per_kind("DeleteUserPolicy", "DeleteRolePolicy", "DeleteGroupPolicy")
            }
            Change::AttachGrantPolicy { .. } => "AttachGrantPolicy",
            Change::CreatePolicy { .. } => "CreatePolicy",
            Change::AttachPrincipalPolicy { principal, .. } => {
                principal.per_kind("AttachUserPolicy", "AttachRolePolicy", "AttachGroupPolicy")
            }
        }
    }
}

fn keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    keys.map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// What to ask STS for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AssumeRoleRequest {
    pub role_arn: String,
    pub external_id: String,
    pub session_name: String,
    pub source_identity: String,
    pub duration_seconds: i32,
    pub session_policy: Option<String>,
    /// Session tags (key, value), for attribute-based access control in the target account.
    pub tags: Vec<(String, String)>,
    /// The keys of `tags` that carry over to sessions the session assumes in turn.
    pub transitive_tag_keys: Vec<String>,
}

/// A set of temporary credentials. Debug output never shows the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IssuedCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: Timestamp,
}

impl std::fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredentials")
            .field("access_key_id", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip_through_arns_in_every_partition() {
        for partition in ["aws", "aws-cn", "aws-us-gov"] {
            for p in [
                Principal::User("devTest".into()),
                Principal::Role("ci".into()),
                Principal::Group("developers".into()),
            ] {
                let arn = p.arn(partition, "123456789012");
                assert_eq!(Principal::from_arn(&arn, "123456789012"), Some(p.clone()));
                assert_eq!(Principal::from_arn(&arn, "999999999999"), None);
            }
        }
        let root = Arn::root("aws", "123456789012");
        assert_eq!(Principal::from_arn(&root, "123456789012"), None);
        let with_path = Arn::parse("arn:aws:iam::123456789012:role/team/ci").unwrap();
        assert_eq!(
            Principal::from_arn(&with_path, "123456789012"),
            Some(Principal::Role("ci".into()))
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let creds = IssuedCredentials {
            access_key_id: "ASIAEXAMPLEKEY".into(),
            secret_access_key: "very-secret".into(),
            session_token: "token-value".into(),
            expiration: Timestamp::UNIX_EPOCH,
        };
        let text = format!("{creds:?}");
        assert!(
            !text.contains("ASIAEXAMPLEKEY")
                && !text.contains("very-secret")
                && !text.contains("token-value"),
            "{text}"
        );
    }
}
