//! Errors of the operator. Every error has a `category()`: a short, fixed string used as metric label
//! and event reason (never the error's payload).

use thiserror::Error;

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
            StartupError::Kube { .. } => "KubeError",
        }
    }
}
