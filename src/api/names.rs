//! Well-known names: one home for every key the operator writes or reads on Kubernetes objects.

/// Finalizer that guards the AWS cleanup of a CrossAccountRole.
pub const FINALIZER: &str = "crossaccount.io/cleanup";
/// Field manager for server-side apply of Secrets and status.
pub const FIELD_MANAGER: &str = "cross-account-operator";

/// Label put on every object the operator creates (and used to watch only those).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "cross-account-operator";
/// Annotation on the Secret with the credentials' expiration (RFC 3339).
pub const EXPIRATION_ANNOTATION: &str = "crossaccount.io/expiration";
/// Annotation on the Secret with the time the operator plans to replace the credentials (RFC 3339);
/// read after a restart so that credentials that are not yet due are kept.
pub const REFRESH_AT_ANNOTATION: &str = "crossaccount.io/refresh-at";
/// Annotation on a CrossAccountRole that allows it to take over an untagged role of the same name.
pub const ADOPT_ANNOTATION: &str = "crossaccount.io/adopt";
/// Pod-template annotation bumped on rollout-restart targets when credentials change.
pub const RESTARTED_AT_ANNOTATION: &str = "crossaccount.io/restartedAt";

/// IAM tag keys that mark a role as owned by one CrossAccountRole.
pub mod tags {
    pub const CLUSTER: &str = "crossaccount.io/cluster";
    pub const NAMESPACE: &str = "crossaccount.io/namespace";
    pub const NAME: &str = "crossaccount.io/name";
    /// Prefix reserved for the operator; tenants cannot set tags under it.
    pub const RESERVED_PREFIX: &str = "crossaccount.io/";
}

/// Condition types (metav1.Condition `type`).
pub mod condition {
    pub const READY: &str = "Ready";
    pub const ROLE_SYNCED: &str = "RoleSynced";
    pub const CREDENTIALS_READY: &str = "CredentialsReady";
}

/// Condition reasons; the same strings are event reasons.
pub mod reason {
    pub const SYNCED: &str = "Synced";
    pub const VERIFIED: &str = "Verified";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const NOT_PERMITTED: &str = "NotPermitted";
    pub const ACCOUNT_NOT_READY: &str = "AccountNotReady";
    pub const ROLE_NOT_OWNED: &str = "RoleNotOwned";
    pub const AWS_ERROR: &str = "AwsError";
    pub const PROPAGATING: &str = "Propagating";
    pub const CREDENTIALS_ISSUED: &str = "CredentialsIssued";
    pub const SECRET_NOT_OWNED: &str = "SecretNotOwned";
}
