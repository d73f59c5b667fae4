//! Well-known names: one home for every key the operator writes or reads on Kubernetes objects.

/// Finalizer that guards the AWS cleanup of a CrossAccountRole.
pub const FINALIZER: &str = "crossaccount.io/cleanup";
/// Finalizer on an AwsAccount while CrossAccountRoles use it.
pub const ACCOUNT_FINALIZER: &str = "crossaccount.io/in-use";
/// Field manager for server-side apply of Secrets and status, and the events' reporter.
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
/// Annotation on the Secret with the time its credentials were issued (RFC 3339): rollout
/// restarts catch up with it.
pub const ISSUED_AT_ANNOTATION: &str = "crossaccount.io/issued-at";
/// Annotation on the Secret with a fingerprint of the AssumeRole request its credentials answer
/// (role, session length and policy): a change of the request mints new credentials at once.
pub const REQUEST_ANNOTATION: &str = "crossaccount.io/request";
/// Annotation on a CrossAccountRole that allows it to take over an untagged role of the same name.
pub const ADOPT_ANNOTATION: &str = "crossaccount.io/adopt";
/// On a CrossAccountRole: revoke every session of its role issued before this time (RFC 3339),
/// or before the annotation was set (`now`).
/// `"true"`: observe and plan, apply nothing in IAM; the planned changes are written to status.
pub const PLAN_ONLY_ANNOTATION: &str = "crossaccount.io/plan-only";
pub const REVOKE_SESSIONS_ANNOTATION: &str = "crossaccount.io/revoke-sessions";
/// Pod-template annotation bumped on rollout-restart targets when credentials change.
pub const RESTARTED_AT_ANNOTATION: &str = "crossaccount.io/restartedAt";

/// IAM tag keys that mark a role as owned by one CrossAccountRole.
pub mod tags {
    pub const CLUSTER: &str = "crossaccount.io/cluster";
    pub const NAMESPACE: &str = "crossaccount.io/namespace";
    pub const NAME: &str = "crossaccount.io/name";
    /// Put on a role the operator let go of (`deletionPolicy: Retain`), with the time.
    pub const RETAINED: &str = "crossaccount.io/retained";
    /// Prefix reserved for the operator; tenants cannot set tags under it.
    pub const RESERVED_PREFIX: &str = "crossaccount.io/";
}

/// Condition types (metav1.Condition `type`).
pub mod condition {
    pub const READY: &str = "Ready";
    pub const ROLE_SYNCED: &str = "RoleSynced";
    pub const CREDENTIALS_READY: &str = "CredentialsReady";
    /// Whether every rollout-restart target runs with the current credentials.
    pub const ROLLOUTS_RESTARTED: &str = "RolloutsRestarted";
    /// On an AwsAccount being deleted: whether it can go yet.
    pub const DELETING: &str = "Deleting";
}

/// Why a condition is what it is, and why an event was published: one vocabulary, one string
/// each (`kubectl describe` shows them as the condition's and the event's reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The role (and its grants) match the spec.
    Synced,
    /// The AwsAccount's management identity was verified.
    Verified,
    /// The spec (or the stored object) is not valid; fix it.
    InvalidSpec,
    /// The AwsAccount's guardrails do not allow the spec.
    NotPermitted,
    /// The AwsAccount does not exist or has not been verified.
    AccountNotReady,
    /// The IAM role belongs to someone else.
    RoleNotOwned,
    /// An AWS request failed; retried with backoff.
    AwsError,
    /// A Kubernetes API request failed; retried with backoff.
    KubernetesError,
    /// IAM has not propagated a new role yet; retried soon.
    Propagating,
    /// The Secret holds credentials issued by the operator.
    CredentialsIssued,
    /// A mint waits its turn (fairness between objects and namespaces).
    RateLimited,
    /// The Secret's name is taken by a Secret this object does not own.
    SecretNotOwned,
    /// A change was made in AWS (event only; the action names the IAM operation).
    AwsChange,
    /// An AwsAccount being deleted is still used by CrossAccountRoles.
    InUse,
    /// `deletionPolicy: Retain`: the role was left in AWS (event only).
    Retained,
    /// A rollout-restart target was restarted for new credentials (event only).
    RolloutRestarted,
    /// A rollout-restart target does not exist (event only).
    RolloutTargetNotFound,
    /// A rollout restart failed (event only).
    RolloutRestartFailed,
    /// Sessions of the role were revoked at the CR's request (event only).
    SessionsRevoked,
    /// A principal the spec grants does not exist in the source account.
    PrincipalNotFound,
    /// `crossaccount.io/plan-only`: IAM changes are planned and wait to be applied.
    PlanPending,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Synced => "Synced",
            Reason::Verified => "Verified",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::NotPermitted => "NotPermitted",
            Reason::AccountNotReady => "AccountNotReady",
            Reason::RoleNotOwned => "RoleNotOwned",
            Reason::AwsError => "AwsError",
            Reason::KubernetesError => "KubernetesError",
            Reason::Propagating => "Propagating",
            Reason::CredentialsIssued => "CredentialsIssued",
            Reason::RateLimited => "RateLimited",
            Reason::SecretNotOwned => "SecretNotOwned",
            Reason::AwsChange => "AwsChange",
            Reason::InUse => "InUse",
            Reason::Retained => "Retained",
            Reason::RolloutRestarted => "RolloutRestarted",
            Reason::RolloutTargetNotFound => "RolloutTargetNotFound",
            Reason::RolloutRestartFailed => "RolloutRestartFailed",
            Reason::SessionsRevoked => "SessionsRevoked",
            Reason::PrincipalNotFound => "PrincipalNotFound",
            Reason::PlanPending => "PlanPending",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
