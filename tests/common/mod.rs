//! Shared helpers for the integration tests. They run against the local environment that
//! `make env-up` starts; its variables come from `target/devenv/env` (the Makefile loads it).
#![allow(dead_code)] // each test binary uses a different subset

use std::{future::Future, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

/// A variable of `target/devenv/env`; panics with the fix when it is missing.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: integration tests need the local environment. \
             Run `make env-up`, then `make integration` (or `set -a; . target/devenv/env`)"
        )
    })
}

pub async fn kube_client() -> Client {
    env("KUBECONFIG");
    Client::try_default()
        .await
        .expect("kube client from KUBECONFIG")
}

/// A unique name with the given prefix: tests run in parallel and leave nothing to collide with.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n}", nanos ^ std::process::id())
}

/// A namespace of its own for one test, labelled as a tenant namespace (the devenv AwsAccount
/// allows those). Deleted when the guard drops.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = unique(prefix);
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"crossaccount.io/tenant": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort, on a runtime and client of its own: the test's runtime is blocked in this
        // drop, so the test's client (whose connections live on that runtime) cannot be used.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(async {
                let client = Client::try_default().await?;
                Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map(|_| ())
            });
        })
        .join()
        .ok();
    }
}

/// Calls `check` until it returns `Some`, or panics after `timeout` naming `what` and the last
/// state `check` reported through `Err`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last state: {last}")
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
