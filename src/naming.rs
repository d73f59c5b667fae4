//! Pure: who the operator is, which object a role belongs to, and every name derived from them
//! (ownership tags, external IDs, default role names, grant policy names, STS session names,
//! Secret names). One home, so that a name is derived the same way wherever it is needed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use kube::ResourceExt;

use crate::{
    api::{CrossAccountRole, names::tags},
    aws::{AccountApi, Arn, Aws, AwsError, AwsErrorKind, GrantScope, SdkAws},
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

    /// Where this cluster keeps its grants on principals of the source account.
    pub(crate) fn grant_scope(&self) -> GrantScope {
        GrantScope {
            cluster: self.cluster_name.clone(),
        }
    }
}

/// Which object a role belongs to: the object's name and its instance (UID), so that a later
/// object of the same name is another owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    /// The owner of the role of `cr`, in this operator's cluster.
    pub(crate) fn of(cr: &CrossAccountRole, operator: &OperatorIdentity) -> Self {
        Self {
            cluster: operator.cluster_name.clone(),
            namespace: cr.namespace().unwrap_or_default(),
            name: cr.name_any(),
            uid: cr.uid().unwrap_or_default(),
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

    /// The external ID the operator's trust statement requires: derived from the cluster and the
    /// object's UID, never set by tenants, and different for every object, even a later one of
    /// the same namespace and name (so a retained role's trust does not let the operator in for
    /// the next object that takes its name).
    pub(crate) fn external_id(&self) -> String {
        format!("crossaccount:{}:{}", self.cluster, self.uid)
    }

    /// The external ID of roles made before external IDs were bound to the object instance:
    /// still recognised as this object's, and replaced by [`Owner::external_id`] on the next sync.
    pub(crate) fn legacy_external_id(&self) -> String {
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

    /// The role name when the spec gives none: `<prefix><namespace>_<name>`. `_` occurs in
    /// neither a namespace nor an object name, so two objects never get the same default name
    /// (with `-`, namespace `a` + name `b-c` and namespace `a-b` + name `c` did). Cut to IAM's 64
    /// characters with a 64-bit hash of the full name.
    pub(crate) fn default_role_name(&self, prefix: &str) -> String {
        let full = format!("{prefix}{}_{}", self.namespace, self.name);
        cut_with_hash(&full, ROLE_NAME_LIMIT, &long_hash(&full))
    }

    /// The default name of roles created before names were unambiguous (see
    /// [`default_role_name`]); such roles keep it.
    pub(crate) fn legacy_role_name(&self, prefix: &str) -> String {
        default_role_name(prefix, &self.namespace, &self.name)
    }

    /// The Secret that holds the credentials: `spec.credentials.secretName`, default
    /// `<name>-aws`.
    pub(crate) fn secret_name(&self, configured: Option<&str>) -> String {
        configured.map_or_else(|| format!("{}-aws", self.name), str::to_owned)
    }
}

/// The default role name of objects that exist before this version: `<prefix><namespace>-<name>`,
/// cut to IAM's 64 characters with a 40-bit hash of the full name. New objects get
/// [`Owner::default_role_name`].
pub fn default_role_name(prefix: &str, namespace: &str, name: &str) -> String {
    let full = format!("{prefix}{namespace}-{name}");
    cut_with_hash(&full, ROLE_NAME_LIMIT, &short_hash(&full))
}

/// The default role name of a new object: see [`Owner::default_role_name`].
pub fn new_default_role_name(prefix: &str, namespace: &str, name: &str) -> String {
    let full = format!("{prefix}{namespace}_{name}");
    cut_with_hash(&full, ROLE_NAME_LIMIT, &long_hash(&full))
}

/// `text`, or when longer than `limit` its start and `-<hash>`.
fn cut_with_hash(text: &str, limit: usize, hash: &str) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let keep = limit - hash.len() - 1;
    format!("{}-{hash}", &text[..keep])
}

/// 16 hex characters (64 bits) of SHA-256: for names derived from now on.
pub(crate) fn long_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
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
            uid: "5a3c0e8e-1111-4222-8333-944455556666".into(),
        }
    }

    #[test]
    fn default_role_names_cannot_collide_across_namespaces() {
        assert_eq!(
            owner("team-a", "reader").default_role_name(""),
            "team-a_reader"
        );
        assert_eq!(
            owner("team-a", "reader").default_role_name("t-"),
            "t-team-a_reader"
        );
        assert_ne!(
            owner("a", "b-c").default_role_name(""),
            owner("a-b", "c").default_role_name(""),
            "the old scheme gave both a-b-c"
        );
        assert_eq!(
            owner("a", "b-c").legacy_role_name(""),
            owner("a-b", "c").legacy_role_name("")
        );
        assert_eq!(
            owner("team-a", "reader").legacy_role_name(""),
            "team-a-reader"
        );
        let (ns, long_name) = ("n".repeat(63), "x".repeat(253));
        let long = owner(&ns, &long_name).default_role_name("");
        assert_eq!(long.len(), 64);
        assert!(
            long.ends_with(&format!("-{}", long_hash(&format!("{ns}_{long_name}")))),
            "{long}"
        );
        assert_ne!(long, owner(&ns, &"y".repeat(253)).default_role_name(""));
    }

    #[test]
    fn external_ids_are_bound_to_the_object_instance() {
        let first = owner("team-a", "reader");
        let again = Owner {
            uid: "0d8f6a52-aaaa-4bbb-8ccc-9ddddeeeeffff".into(),
            ..first.clone()
        };
        assert_eq!(
            first.external_id(),
            "crossaccount:dev:5a3c0e8e-1111-4222-8333-944455556666"
        );
        assert_ne!(
            first.external_id(),
            again.external_id(),
            "a recreated object is another owner"
        );
        assert_eq!(first.legacy_external_id(), "crossaccount:dev:team-a:reader");
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
