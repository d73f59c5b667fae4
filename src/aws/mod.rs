//! The narrow seam to AWS: what the reconciler needs from IAM and STS in one account, the SDK
//! implementation of it, an in-memory fake that answers as IAM does, and policy documents.
//!
//! It imports nothing of Kubernetes (no `kube`, `k8s_openapi`, nor the operator's API or
//! pipeline): a test below reads this folder's sources and fails if it ever does.

use std::{future::Future, time::Duration};

use serde_json::Value;

mod arn;
mod error;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod grants;
mod model;
pub(crate) mod policy;
mod rate_limit;
mod sdk;

pub(crate) use arn::Arn;
pub use error::{AwsError, AwsErrorKind};
pub(crate) use model::{
    AccountAccess, AssumeRoleRequest, AttachedPolicy, CHAINED_SESSION_LIMIT, Change, GrantScope,
    IAM_DEFAULT_MAX_SESSION, IssuedCredentials, MIN_SESSION, ObservedRole, Principal,
    REVOKE_SESSIONS_POLICY,
};
pub use sdk::{Rates, SdkAws};

/// Where the SDK implementation reports each request it made and how it ended (`ok` or the
/// error's category): the operator's metrics.
pub trait RequestLog: Send + Sync + 'static {
    fn request(&self, service: &'static str, operation: &'static str, outcome: &'static str);

    /// A request of `service` took a token of its account's request budget after `waited` (zero
    /// when one was free).
    fn budget_wait(&self, service: &'static str, waited: Duration);
}

/// IAM and STS in one account, as the reconciler uses them.
pub(crate) trait AccountApi: Clone + Send + Sync + 'static {
    /// The ARN this client acts as (GetCallerIdentity).
    fn caller_arn(&self) -> impl Future<Output = Result<String, AwsError>> + Send;

    /// The role with everything the plan compares, or `None` when it does not exist.
    fn get_role(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ObservedRole>, AwsError>> + Send;

    /// The ARN of a user, role or group of this account, with its path, or `None` when it does not
    /// exist.
    fn principal_arn(
        &self,
        principal: &Principal,
    ) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;

    /// An inline policy of a user, role or group, or `None` when it (or the principal) does not exist.
    fn get_principal_policy(
        &self,
        principal: &Principal,
        policy_name: &str,
    ) -> impl Future<Output = Result<Option<Value>, AwsError>> + Send;

    /// Carries out one IAM write (not the composite [`Change::AttachGrantPolicy`], which
    /// [`grants`] makes of several).
    fn apply(&self, change: &Change) -> impl Future<Output = Result<(), AwsError>> + Send;

    /// The managed policies attached to a principal whose path starts with `path_prefix`, or
    /// `None` when the principal does not exist.
    fn attached_policies(
        &self,
        principal: &Principal,
        path_prefix: &str,
    ) -> impl Future<Output = Result<Option<Vec<AttachedPolicy>>, AwsError>> + Send;

    /// The names of the instance profiles role `role` is in.
    fn instance_profiles(
        &self,
        role: &str,
    ) -> impl Future<Output = Result<Vec<String>, AwsError>> + Send;

    /// Creates a managed policy; returns its ARN.
    fn create_policy(
        &self,
        name: &str,
        path: &str,
        document: &Value,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;

    /// One of the account's IAM quotas (GetAccountSummary, e.g. `PolicySizeQuota`), if reported.
    fn account_quota(
        &self,
        name: &'static str,
    ) -> impl Future<Output = Result<Option<i64>, AwsError>> + Send;

    /// Assumes a role with this account's identity (rate-limited per account).
    fn assume_role(
        &self,
        request: &AssumeRoleRequest,
    ) -> impl Future<Output = Result<IssuedCredentials, AwsError>> + Send;
}

/// Access to AWS accounts: the source account the operator's identity lives in, and target
/// accounts reached through their management roles.
pub(crate) trait Aws: Send + Sync + 'static {
    type Account: AccountApi;

    /// The operator's own account.
    fn source(&self) -> Self::Account;

    /// A target account (the source account's client when no management role is set). Clients
    /// are cached; their credentials refresh themselves.
    fn target(&self, access: &AccountAccess) -> impl Future<Output = Self::Account> + Send;
}

#[cfg(test)]
mod tests {
    /// The seam stays free of Kubernetes: none of its files may import kube, k8s-openapi, the
    /// operator's API types, the pipeline or the controllers.
    #[test]
    fn the_aws_seam_imports_nothing_of_kubernetes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/aws");
        let forbidden = [
            "kube",
            "k8s_openapi",
            "crate::api",
            "crate::pipeline",
            "crate::controller",
            "crate::reconcile",
            "crate::metrics",
        ];
        let mut files = vec![dir.clone()];
        let mut offences = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).unwrap() {
                    files.push(entry.unwrap().path());
                }
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for word in forbidden {
                    let used = code.contains(&format!("{word}::"))
                        || code.contains(&format!("use {word}"))
                        || code.contains(&format!("{word},"))
                        || code.contains(&format!("{word}}}"));
                    if used {
                        offences.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            offences.is_empty(),
            "src/aws must not use Kubernetes:\n{}",
            offences.join("\n")
        );
    }
}
