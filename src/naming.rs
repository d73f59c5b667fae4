//! Pure: who the operator is, which object a role belongs to, and every name derived from them
//! (ownership tags, external IDs, default role names, grant policy names, STS session names,
//! Secret names). One home, so that a name is derived the same way wherever it is needed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use kube::ResourceExt;

use crate::{
    api::{CrossAccountRole, names::tags},
    aws::{AccountApi, Arn, Aws, AwsError, AwsErrorKind, SdkAws},
};

/// IAM's limit on role names.
const ROLE_NAME_LIMIT: usize = 64;
/// IAM's limit on inline policy names.
const POLICY_NAME_LIMIT: usize = 128;
/// STS's limit on session names and source identities.
const SESSION_NAME_LIMIT: usize = 64;

/// Who the operator is: fixed at start.
#[derive(Clone, Debug)]
pub struct OperatorIdentity {
    /// `--cluster-name`: part of ownership tags and external IDs.
    pub cluster_name: String,
    /// The account the operator's own identity lives in.
    pub source_account_id: String,
    /// The partition of that identity (`aws`, `aws-cn`, `aws-us-gov`).
    pub partition: String,
    /// The principal the generated trust policies allow (an IAM user or role ARN).
    pub principal_arn: String,
    /// The operator itself runs on an assumed role, so sessions it mints are role chaining
    /// (IAM caps those at one hour).
    pub chained: bool,
}

impl OperatorIdentity {
    /// Asks STS who the operator is (GetCallerIdentity with its own credentials).
    pub async fn discover(
        aws: &SdkAws,
        cluster_name: String,
        principal_override: Option<String>,
    ) -> Result<Self, AwsError> {
        let caller = aws.source().caller_arn().await?;
        let arn = Arn::parse(&caller).ok_or_else(|| AwsError {
            service: "sts",
            operation: "GetCallerIdentity",
            kind: AwsErrorKind::Other,
            code: None,
            message: format!("the caller {caller:?} is not an ARN").into(),
            request_id: None,
            source: None,
        })?;
        Ok(Self::from_caller(cluster_name, &arn, principal_override))
    }

    /// The identity for a caller ARN from GetCallerIdentity; `principal_override` replaces the
    /// derived principal (`--operator-role-arn`, for a role with a path).
    pub(crate) fn from_caller(
        cluster_name: String,
        caller: &Arn,
        principal_override: Option<String>,
    ) -> Self {
        Self {
            cluster_name,
            source_account_id: caller.account().to_owned(),
            partition: caller.partition().to_owned(),
            principal_arn: principal_override
                .unwrap_or_else(|| caller.principal_of_caller().to_string()),
            chained: caller.is_assumed_role(),
        }
    }
}

/// Which object a role belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl Owner {
    /// The owner of the role of `cr`, in this operator's cluster.
    pub(crate) fn of(cr: &CrossAccountRole, operator: &OperatorIdentity) -> Self {
        Self {
            cluster: operator.cluster_name.clone(),
            namespace: cr.namespace().unwrap_or_default(),
            name: cr.name_any(),
        }
    }

    /// The ownership tags every managed role carries.
    pub(crate) fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (tags::CLUSTER.to_owned(), self.cluster.clone()),
            (tags::NAMESPACE.to_owned(), self.namespace.clone()),
            (tags::NAME.to_owned(), self.name.clone()),
        ])
    }

    /// The external ID the operator's trust statement requires: derived, never set by tenants.
    pub(crate) fn external_id(&self) -> String {
        format!(
            "crossaccount:{}:{}:{}",
            self.cluster, self.namespace, self.name
        )
    }

    /// Name of the inline policy put on granted principals (unique per CR, at most 128 chars).
    pub(crate) fn grant_policy_name(&self) -> String {
        let full = format!(
            "crossaccount.{}.{}.{}",
            self.cluster, self.namespace, self.name
        );
        if full.len() <= POLICY_NAME_LIMIT {
            full
        } else {
            format!("crossaccount.{}", short_hash(&full))
        }
    }

    /// The STS session name and source identity: `<namespace>.<name>`, limited to what STS
    /// accepts (`[\w+=,.@-]`, 2 to 64 characters), with a hash when it had to be cut.
    pub(crate) fn session_name(&self) -> String {
        let full = format!("{}.{}", self.namespace, self.name);
        let clean: String = full
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if clean.len() <= SESSION_NAME_LIMIT {
            return clean;
        }
        let hash = short_hash(&full);
        format!("{}-{hash}", &clean[..SESSION_NAME_LIMIT - hash.len() - 1])
    }

    /// The role name when the spec gives none: see [`default_role_name`].
    pub(crate) fn default_role_name(&self, prefix: &str) -> String {
        default_role_name(prefix, &self.namespace, &self.name)
    }

    /// The Secret that holds the credentials: `spec.credentials.secretName`, default
    /// `<name>-aws`.
    pub(crate) fn secret_name(&self, configured: Option<&str>) -> String {
        configured.map_or_else(|| format!("{}-aws", self.name), str::to_owned)
    }
}

/// `<prefix><namespace>-<name>`, cut to IAM's 64 characters with a hash of the full name, so
/// that long names stay distinct.
pub fn default_role_name(prefix: &str, namespace: &str, name: &str) -> String {
    let full = format!("{prefix}{namespace}-{name}");
    if full.len() <= ROLE_NAME_LIMIT {
        return full;
    }
    let hash = short_hash(&full);
    let keep = ROLE_NAME_LIMIT - hash.len() - 1;
    format!("{}-{hash}", &full[..keep])
}

/// 10 hex characters of SHA-256: enough to keep derived names apart.
pub(crate) fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(namespace: &str, name: &str) -> Owner {
        Owner {
            cluster: "dev".into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn default_role_names_are_cut_with_a_hash() {
        assert_eq!(
            owner("team-a", "reader").default_role_name(""),
            "team-a-reader"
        );
        assert_eq!(
            owner("team-a", "reader").default_role_name("t-"),
            "t-team-a-reader"
        );
        let long = owner(&"n".repeat(63), &"x".repeat(253)).default_role_name("");
        assert_eq!(long.len(), 64);
        assert_ne!(
            long,
            owner(&"n".repeat(63), &"y".repeat(253)).default_role_name("")
        );
    }

    #[test]
    fn session_names_are_valid_for_sts() {
        assert_eq!(owner("team-a", "reader").session_name(), "team-a.reader");
        let long = owner(&"n".repeat(63), &"x".repeat(253)).session_name();
        assert_eq!(long.len(), 64);
        assert_ne!(
            long,
            owner(&"n".repeat(63), &"y".repeat(253)).session_name()
        );
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        );
    }

    #[test]
    fn grant_policy_names_fit_iam() {
        assert_eq!(
            owner("team-a", "signin").grant_policy_name(),
            "crossaccount.dev.team-a.signin"
        );
        let long = owner(&"n".repeat(63), &"x".repeat(253)).grant_policy_name();
        assert!(
            long.len() <= 128 && long.starts_with("crossaccount."),
            "{long}"
        );
    }

    #[test]
    fn identity_from_a_caller_keeps_its_partition() {
        let caller = Arn::parse("arn:aws-us-gov:sts::123456789012:assumed-role/op/s").unwrap();
        let id = OperatorIdentity::from_caller("dev".into(), &caller, None);
        assert_eq!(id.partition, "aws-us-gov");
        assert_eq!(id.source_account_id, "123456789012");
        assert_eq!(id.principal_arn, "arn:aws-us-gov:iam::123456789012:role/op");
        assert!(id.chained);
        let with_path = OperatorIdentity::from_caller(
            "dev".into(),
            &caller,
            Some("arn:aws-us-gov:iam::123456789012:role/ops/op".into()),
        );
        assert_eq!(
            with_path.principal_arn,
            "arn:aws-us-gov:iam::123456789012:role/ops/op"
        );
    }

    #[test]
    fn secret_names_default_to_the_object_name() {
        assert_eq!(owner("a", "signin").secret_name(None), "signin-aws");
        assert_eq!(owner("a", "signin").secret_name(Some("creds")), "creds");
    }
}
