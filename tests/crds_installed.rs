//! The generated CRDs install on a real apiserver and are usable with kubectl.

mod common;

use std::{process::Command, time::Duration};

fn kubectl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Deletes the guardrails' admission policy `crds/` installs (when dropped, also on a panic):
/// other test binaries create objects it would refuse, which the operator must refuse itself.
struct RemoveAdmissionPolicy;

impl Drop for RemoveAdmissionPolicy {
    fn drop(&mut self) {
        let name = cross_account_operator::admission::POLICY_NAME;
        for kind in [
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            let _ = kubectl(&["delete", kind, name, "--ignore-not-found"]);
        }
    }
}

#[test]
fn kubectl_apply_crds_succeeds_and_is_idempotent() {
    common::env("KUBECONFIG");
    let _remove = RemoveAdmissionPolicy;
    let first = kubectl(&["apply", "-f", "crds/"]).unwrap();
    for object in [
        "validatingadmissionpolicy.admissionregistration.k8s.io/guardrails.crossaccount.io",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/guardrails.crossaccount.io",
    ] {
        assert!(first.contains(object), "{first}");
    }
    assert!(
        first.contains("crossaccountroles.crossaccount.io"),
        "{first}"
    );
    assert!(first.contains("awsaccounts.crossaccount.io"), "{first}");
    let second = kubectl(&["apply", "-f", "crds/"]).unwrap();
    assert!(
        second.contains("unchanged"),
        "re-applying changed something: {second}"
    );
}

#[test]
fn short_names_and_category_list_the_resources() {
    common::env("KUBECONFIG");
    let out = kubectl(&["get", "xar,awsacct", "-A"]).unwrap();
    // The devenv registers the target account; its row shows the account ID column.
    let account = common::env("TARGET_ACCOUNT_NAME");
    assert!(out.contains(&account), "{out}");
    assert!(out.contains(&common::env("TARGET_ACCOUNT_ID")), "{out}");
    kubectl(&["get", "aws", "-A"]).unwrap();
    // A category of the project's own (`aws` is shared with Crossplane's and ACK's kinds), and
    // the Ready condition's reason beside its status.
    let out = kubectl(&["get", "crossaccount", "-A"]).unwrap();
    assert!(out.contains(&account), "{out}");
    assert!(out.contains("REASON"), "{out}");
    assert!(out.contains("Verified"), "{out}");
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() {
    common::env("KUBECONFIG");
    // The apiserver publishes a new CRD's OpenAPI a moment after it is established.
    let out = common::poll("kubectl explain", Duration::from_secs(60), || async {
        kubectl(&["explain", "crossaccountrole.spec.credentials"])
    })
    .await;
    for expected in [
        "durationSeconds",
        "refreshPercent",
        "rolloutRestartTargets",
        "Lifetime of each set of credentials",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let out = kubectl(&["explain", "awsaccount.spec.allowedPolicyArns"]).unwrap();
    assert!(out.contains("Glob patterns"), "{out}");
}
