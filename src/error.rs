//! Errors of the operator, and their one vocabulary: every error has a `category()`, a short
//! fixed string used as metric label (never the error's payload), and a reconcile error has the
//! [`Reason`] its condition and event carry.

use thiserror::Error;

use crate::{api::names::Reason, aws::AwsError};

/// Errors while starting the operator.
#[derive(Error, Debug)]
pub enum StartupError {
    #[error(
        "the CustomResourceDefinition for {kind} is not installed in this cluster; install the CRDs with `kubectl apply -f crds/` (or the Helm chart)"
    )]
    CrdMissing { kind: &'static str },

    #[error("cannot reach the Kubernetes API to look up {kind}")]
    Kube {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl StartupError {
    pub fn category(&self) -> &'static str {
        match self {
            StartupError::CrdMissing { .. } => "CrdMissing",
            StartupError::Kube { .. } => KUBERNETES_CATEGORY,
        }
    }
}

/// The category of every failed Kubernetes API request.
const KUBERNETES_CATEGORY: &str = "KubernetesError";

/// A reconcile that failed and is retried with backoff.
#[derive(Error, Debug)]
pub enum ReconcileError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("Kubernetes API request failed: {context}: {source}")]
    Kube {
        context: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A rollout-restart target could not be restarted (retried with backoff); `message` names
    /// the target and what went wrong.
    #[error("{message}")]
    RolloutRestart { target: String, message: String },
    /// An AwsAccount is stored in a shape this version cannot read (said on it, and on the CR).
    #[error("AwsAccount {name} cannot be read by the operator")]
    UnreadableAccount { name: String },
}

impl ReconcileError {
    /// The metric label of the failure.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Aws(e) => e.category(),
            ReconcileError::Kube { .. } => KUBERNETES_CATEGORY,
            ReconcileError::UnreadableAccount { .. } => "UnreadableAccount",
            ReconcileError::RolloutRestart { .. } => KUBERNETES_CATEGORY,
        }
    }

    /// The condition and event reason of the failure.
    pub fn reason(&self) -> Reason {
        match self {
            // IAM says "Invalid principal" for a principal it does not know yet (it was just
            // created: propagation, terraform-provider-aws#8905) as for one that does not exist.
            ReconcileError::Aws(e) if e.is_invalid_principal() => Reason::Propagating,
            ReconcileError::Aws(_) => Reason::AwsError,
            ReconcileError::Kube { .. } => Reason::KubernetesError,
            ReconcileError::UnreadableAccount { .. } => Reason::AccountNotReady,
            ReconcileError::RolloutRestart { .. } => Reason::RolloutRestartFailed,
        }
    }

    /// The message for a condition: no per-attempt detail such as AWS request IDs.
    pub fn summary(&self) -> String {
        match self {
            ReconcileError::Aws(e) => e.summary(),
            other => other.to_string(),
        }
    }

    /// A wrapper for `map_err`: the Kubernetes request failed while doing `context`.
    pub fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| ReconcileError::Kube { context, source }
    }
}
