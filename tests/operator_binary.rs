//! The operator binary as a separate process: flags, start against the local apiserver, health
//! endpoints, clean exit on SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_cross-account-operator");

fn start(port: u16) -> Child {
    Command::new(BIN)
        .args([
            "--cluster-name",
            "it",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the operator binary")
}

fn stop_and_collect(child: Child) -> (std::process::ExitStatus, String) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid}");
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cluster-name",
        "--http-addr",
        "--concurrency",
        "--resync-interval",
        "--leader-elect",
        "--log-format",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn missing_cluster_name_is_a_clear_error() {
    let out = Command::new(BIN)
        .env_remove("CLUSTER_NAME")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cluster-name"), "{err}");
}

#[tokio::test]
async fn starts_serves_health_and_exits_cleanly_on_sigterm() {
    common::env("KUBECONFIG");
    let port = common::free_port();
    let mut child = start(port);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready = common::wait_for_readyz(&mut child, &base).await;
    assert_eq!(ready, "ok");

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(metrics.status().is_success());
    assert!(metrics.text().await.unwrap().contains("# EOF"));

    let (status, logs) = stop_and_collect(child);
    assert!(status.success(), "exit status {status}; logs:\n{logs}");
    assert!(logs.contains("shutting down"), "{logs}");
}
