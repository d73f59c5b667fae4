//! The narrow seam to AWS: what the reconciler needs from IAM and STS in one account, the SDK
//! implementation of it, and policy-document handling.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
};

use serde_json::Value;

use crate::{
    error::AwsError,
    reconcile::credentials::{AssumeRoleRequest, IssuedCredentials},
};

#[cfg(test)]
pub mod fake;
pub mod policy;
pub mod rate_limit;
pub mod sdk;

/// How the operator reaches one account: directly (no management role: the operator's own
/// account) or through a management role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AccountAccess {
    pub account_id: String,
    pub management_role_arn: Option<String>,
    pub external_id: Option<String>,
}

/// The principal to trust for a caller ARN from GetCallerIdentity: an IAM user ARN as it is; for an
/// assumed-role session (`arn:aws:sts::<account>:assumed-role/<role>/<session>`) the role's ARN.
/// An assumed-role ARN does not carry the role's path, hence `--operator-role-arn`.
pub fn principal_from_caller(caller_arn: &str) -> String {
    let mut parts = caller_arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("sts"), Some(_), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return caller_arn.to_owned();
    };
    match resource
        .strip_prefix("assumed-role/")
        .and_then(|r| r.split('/').next())
    {
        Some(role) => format!("arn:{partition}:iam::{account}:role/{role}"),
        None => caller_arn.to_owned(),
    }
}

/// A principal of the source account that is granted the right to assume a role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    User(String),
    Role(String),
}

impl Principal {
    /// The principal's ARN in `account_id`.
    pub fn arn(&self, account_id: &str) -> String {
        match self {
            Principal::User(name) => format!("arn:aws:iam::{account_id}:user/{name}"),
            Principal::Role(name) => format!("arn:aws:iam::{account_id}:role/{name}"),
        }
    }

    /// Parses `arn:aws:iam::<account>:user/<name>` or `...:role/<name>` of `account_id`.
    pub fn from_arn(arn: &str, account_id: &str) -> Option<Self> {
        let rest = arn
            .strip_prefix("arn:aws:iam::")?
            .strip_prefix(account_id)?
            .strip_prefix(':')?;
        if let Some(name) = rest.strip_prefix("user/") {
            Some(Principal::User(name.to_string()))
        } else {
            rest.strip_prefix("role/")
                .map(|name| Principal::Role(name.to_string()))
        }
    }
}

/// An IAM role as read from AWS; documents are parsed (URL-decoded) JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedRole {
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
    pub created: Option<k8s_openapi::jiff::Timestamp>,
}

/// One IAM write. The plan is a list of these; `apply` carries them out in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
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
    /// Inline policy on a principal of the source account that lets it assume the role.
    PutGrant {
        principal: Principal,
        policy_name: String,
        document: Value,
    },
    DeleteGrant {
        principal: Principal,
        policy_name: String,
    },
}

impl Change {
    /// Whether the change is made in the source account (grants) rather than the target account.
    pub fn in_source_account(&self) -> bool {
        matches!(self, Change::PutGrant { .. } | Change::DeleteGrant { .. })
    }

    /// Short human description for events and logs (names and ARNs only, no documents).
    pub fn describe(&self) -> String {
        match self {
            Change::CreateRole { role, .. } => format!("created role {role}"),
            Change::UpdateTrustPolicy { role, .. } => {
                format!("updated the trust policy of role {role}")
            }
            Change::UpdateRole { role, .. } => {
                format!("updated description/max session of role {role}")
            }
            Change::PutPermissionsBoundary { role, arn } => {
                format!("set permissions boundary {arn} on role {role}")
            }
            Change::DeletePermissionsBoundary { role } => {
                format!("removed the permissions boundary of role {role}")
            }
            Change::TagRole { role, tags } => format!("tagged role {role} ({})", keys(tags.keys())),
            Change::UntagRole { role, keys: k } => {
                format!("untagged role {role} ({})", keys(k.iter()))
            }
            Change::AttachPolicy { role, arn } => format!("attached {arn} to role {role}"),
            Change::DetachPolicy { role, arn } => format!("detached {arn} from role {role}"),
            Change::PutInlinePolicy { role, name, .. } => {
                format!("put inline policy {name} on role {role}")
            }
            Change::DeleteInlinePolicy { role, name } => {
                format!("deleted inline policy {name} of role {role}")
            }
            Change::DeleteRole { role } => format!("deleted role {role}"),
            Change::PutGrant { principal, .. } => format!(
                "granted {} the right to assume the role",
                principal_text(principal)
            ),
            Change::DeleteGrant { principal, .. } => {
                format!("removed the grant of {}", principal_text(principal))
            }
        }
    }

    /// The IAM operation name, for metrics and logs.
    pub fn operation(&self) -> &'static str {
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
            Change::PutGrant {
                principal: Principal::User(_),
                ..
            } => "PutUserPolicy",
            Change::PutGrant {
                principal: Principal::Role(_),
                ..
            } => "PutRolePolicy",
            Change::DeleteGrant {
                principal: Principal::User(_),
                ..
            } => "DeleteUserPolicy",
            Change::DeleteGrant {
                principal: Principal::Role(_),
                ..
            } => "DeleteRolePolicy",
        }
    }
}

fn keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    keys.map(String::as_str).collect::<Vec<_>>().join(", ")
}

fn principal_text(principal: &Principal) -> String {
    match principal {
        Principal::User(name) => format!("user {name}"),
        Principal::Role(name) => format!("role {name}"),
    }
}

/// IAM and STS in one account, as the reconciler uses them.
pub trait AccountApi: Clone + Send + Sync + 'static {
    /// The ARN this client acts as (GetCallerIdentity).
    fn caller_arn(&self) -> impl Future<Output = Result<String, AwsError>> + Send;

    /// The role with everything the plan compares, or `None` when it does not exist.
    fn get_role(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ObservedRole>, AwsError>> + Send;

    /// An inline policy of a user or role, or `None` when it (or the principal) does not exist.
    fn get_principal_policy(
        &self,
        principal: &Principal,
        policy_name: &str,
    ) -> impl Future<Output = Result<Option<Value>, AwsError>> + Send;

    /// Carries out one change.
    fn apply(&self, change: &Change) -> impl Future<Output = Result<(), AwsError>> + Send;

    /// Assumes a role with this account's identity (rate-limited per account).
    fn assume_role(
        &self,
        request: &AssumeRoleRequest,
    ) -> impl Future<Output = Result<IssuedCredentials, AwsError>> + Send;
}

/// Access to AWS accounts: the source account the operator's identity lives in, and target
/// accounts reached through their management roles.
pub trait Aws: Send + Sync + 'static {
    type Account: AccountApi;

    /// The operator's own account.
    fn source(&self) -> Self::Account;

    /// A target account (the source account's client when no management role is set). Clients
    /// are cached; their credentials refresh themselves.
    fn target(&self, access: &AccountAccess) -> impl Future<Output = Self::Account> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_arns_become_trustable_principals() {
        let user = "arn:aws:iam::123456789012:user/ops/cross-account-operator";
        assert_eq!(principal_from_caller(user), user);
        assert_eq!(
            principal_from_caller("arn:aws:sts::123456789012:assumed-role/operator/i-0abc"),
            "arn:aws:iam::123456789012:role/operator"
        );
        assert_eq!(
            principal_from_caller("arn:aws-cn:sts::123456789012:assumed-role/op/s"),
            "arn:aws-cn:iam::123456789012:role/op"
        );
    }

    #[test]
    fn principals_round_trip_through_arns() {
        for p in [
            Principal::User("devTest".into()),
            Principal::Role("ci".into()),
        ] {
            assert_eq!(
                Principal::from_arn(&p.arn("123456789012"), "123456789012"),
                Some(p.clone())
            );
            assert_eq!(
                Principal::from_arn(&p.arn("123456789012"), "999999999999"),
                None
            );
        }
        assert_eq!(
            Principal::from_arn("arn:aws:iam::123456789012:root", "123456789012"),
            None
        );
    }
}
