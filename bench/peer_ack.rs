//! The peer: ACK's IAM controller (aws-controllers-k8s/iam-controller), built from the Go
//! module proxy by `bench/peer/build-ack.sh`, pointed at the same apiserver and (through the
//! same counting proxy) the same moto. It reconciles `iam.services.k8s.aws/v1alpha1` Roles.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use crate::{process::Measured, workload::condition_status};

/// Where `bench/peer/build-ack.sh` left the peer: the binary and the CRD directory of the module.
pub struct AckBuild {
    pub binary: PathBuf,
    pub crds: PathBuf,
    pub version: String,
}

impl AckBuild {
    /// From `ACK_IAM_CONTROLLER`, `ACK_IAM_CRDS` and `ACK_IAM_VERSION` (the Makefile sets them
    /// from the build script's output). `None` when unset: the peer is then skipped, and the
    /// results say so.
    pub fn from_env() -> Option<AckBuild> {
        let binary = PathBuf::from(std::env::var("ACK_IAM_CONTROLLER").ok()?);
        let crds = PathBuf::from(std::env::var("ACK_IAM_CRDS").ok()?);
        let version = std::env::var("ACK_IAM_VERSION").unwrap_or_else(|_| "unknown".into());
        (binary.is_file() && crds.is_dir()).then_some(AckBuild {
            binary,
            crds,
            version,
        })
    }
}

/// The Role kind of ACK's IAM controller.
pub fn role_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("iam.services.k8s.aws", "v1alpha1", "Role"),
        "roles",
    )
}

/// ACK marks a resource in sync with its `ACK.ResourceSynced` condition.
pub fn role_ready(obj: &DynamicObject) -> bool {
    condition_status(obj, "ACK.ResourceSynced") == Some("True")
}

/// A Role equivalent to the benchmark's CrossAccountRole (without the source-account grant,
/// which ACK cannot make in another account from the same object): name, trust policy with the
/// same principals, the managed policy, the same number of tags.
pub fn role_object(
    namespace: &str,
    name: &str,
    trust_policy: &str,
    managed_policy: &str,
) -> DynamicObject {
    let mut obj = DynamicObject::new(name, &role_resource()).within(namespace);
    obj.data = json!({
        "spec": {
            "name": name,
            "assumeRolePolicyDocument": trust_policy,
            "policies": [managed_policy],
            "tags": [
                {"key": "crossaccount.io/cluster", "value": "bench"},
                {"key": "crossaccount.io/namespace", "value": namespace},
                {"key": "crossaccount.io/name", "value": name},
            ],
        }
    });
    obj
}

#[allow(clippy::too_many_arguments)]
/// Starts the controller for `namespace` with the target account's credentials (a session of
/// the management role) and the AWS endpoint of the counting proxy.
pub fn start(
    build: &AckBuild,
    kubeconfig: &str,
    aws_endpoint: &str,
    credentials: &aws_credential_types::Credentials,
    namespace: &str,
    concurrency: usize,
    resync_seconds: Option<u64>,
    metrics_port: u16,
    log: &Path,
) -> Measured {
    let mut command = Command::new(&build.binary);
    command
        .args([
            "--aws-region",
            "us-east-1",
            "--aws-endpoint-url",
            aws_endpoint,
            // STS (GetCallerIdentity at start) goes to the same endpoint.
            "--aws-identity-endpoint-url",
            aws_endpoint,
            "--allow-unsafe-aws-endpoint-urls",
            "--enable-leader-election=false",
            "--enable-development-logging=false",
            "--log-level",
            "info",
            "--watch-namespace",
            namespace,
            "--reconcile-default-max-concurrent-syncs",
            &concurrency.to_string(),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--healthz-addr",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key())
        .env("AWS_REGION", "us-east-1");
    // Drift detection as often as ours for the steady-state window, so it compares like for
    // like (ACK's default is 10 h).
    if let Some(seconds) = resync_seconds {
        command.args(["--reconcile-default-resync-seconds", &seconds.to_string()]);
    }
    if let Some(token) = credentials.session_token() {
        command.env("AWS_SESSION_TOKEN", token);
    }
    Measured::start(command, log)
}
