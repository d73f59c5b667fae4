//! Leader election: of two operator processes with `--leader-elect`, one reconciles; when it stops
//! (SIGTERM releases the lease) or dies (SIGKILL, the lease expires), the other takes over.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const BIN: &str = env!("CARGO_BIN_EXE_cross-account-operator");

struct Replica {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Replica {
    fn start(name: &'static str, namespace: &str, lease: &str) -> Self {
        let port = common::free_port();
        let log =
            std::fs::File::create(common::devenv_dir().join(format!("logs/leader-{name}.log")))
                .unwrap();
        let child = Command::new(BIN)
            .args([
                "--cluster-name",
                "it",
                "--leader-elect",
                "--leader-election-id",
                lease,
            ])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", namespace)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start an operator replica");
        Self { name, port, child }
    }

    async fn get(&self, path: &str) -> Result<String, String> {
        let response = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path}: {}", response.status()));
        }
        response.text().await.map_err(|e| e.to_string())
    }

    async fn reconciles(&self) -> u64 {
        let text = self.get("/metrics").await.unwrap_or_default();
        common::metric_sum(&text, "crossaccount_reconciles_total", &[])
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

async fn wait_for_holder(leases: &Api<Lease>, lease: &str, want: &str, timeout: Duration) {
    common::poll(
        &format!("lease {lease} held by {want}"),
        timeout,
        || async {
            match holder(leases, lease).await {
                Some(h) if h == want => Ok(()),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn one_replica_leads_and_the_other_takes_over() {
    let client = common::kube_client().await;
    let ns = common::TestNamespace::new(&client, "leader").await;
    let lease = common::unique("lease");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);

    let a = Replica::start("replica-a", &ns.name, &lease);
    wait_for_holder(&leases, &lease, a.name, Duration::from_secs(30)).await;
    let mut b = Replica::start("replica-b", &ns.name, &lease);

    // Both are ready (the standby is healthy, just waiting); only the leader reconciles (the
    // devenv's AwsAccount gives it something to do).
    for replica in [&a, &b] {
        common::poll("/readyz", Duration::from_secs(30), || {
            replica.get("/readyz")
        })
        .await;
    }
    common::poll("the leader reconciles", Duration::from_secs(30), || async {
        match a.reconciles().await {
            0 => Err("no reconcile yet".to_owned()),
            n => Ok(n),
        }
    })
    .await;
    assert_eq!(b.reconciles().await, 0, "the standby must not reconcile");
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some(a.name));

    // SIGTERM: the leader releases the lease at once; the standby takes it at its next try,
    // within the lease duration (15 s) and grace.
    a.signal("-TERM");
    common::poll(
        "the lease to be released",
        Duration::from_secs(10),
        || async {
            match holder(&leases, &lease).await {
                Some(h) if h == a.name => Err(format!("still held by {h}")),
                _ => Ok(()),
            }
        },
    )
    .await;
    wait_for_holder(&leases, &lease, b.name, Duration::from_secs(25)).await;
    common::poll(
        "the new leader reconciles",
        Duration::from_secs(30),
        || async {
            match b.reconciles().await {
                0 => Err("no reconcile yet".to_owned()),
                n => Ok(n),
            }
        },
    )
    .await;

    // SIGKILL: nothing is released; a new replica takes over once the lease expires.
    let c = Replica::start("replica-c", &ns.name, &lease);
    b.signal("-KILL");
    let _ = b.child.wait();
    wait_for_holder(&leases, &lease, c.name, Duration::from_secs(45)).await;
}
