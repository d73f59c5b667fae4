//! The local environment's control plane acts as a cluster's does, because a real
//! kube-controller-manager runs in it (hack/devenv/up.sh): the garbage collector honours owner
//! references to CrossAccountRoles, the namespace controller really deletes namespaces (waiting
//! for the operator to release the finalizers of the CrossAccountRoles in them), and the binaries
//! report the Kubernetes release they were built from. Rollouts are checked where the operator
//! triggers them (tests/credentials.rs).

mod common;

use std::{process::Command, time::Duration};

use common::{Operator, TargetRoleGuard, TestNamespace};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};

const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
/// The garbage collector picks up a new CRD with its next discovery sync (every 30 s), then acts
/// within seconds.
const COLLECTED: Duration = Duration::from_secs(90);
/// The namespace controller retries a namespace whose content is not gone yet with a backoff of
/// up to a minute.
const NAMESPACE_GONE: Duration = Duration::from_secs(150);
/// A reconcile against moto takes well under a second; this leaves room for a slow machine.
const CONVERGE: Duration = Duration::from_secs(60);

/// The version of `k8s.io/kubernetes` that the control plane is built from.
fn kubernetes_version() -> String {
    let go_mod = include_str!("../hack/controlplane/kube-apiserver/go.mod");
    go_mod
        .lines()
        .find_map(|line| line.strip_prefix("require k8s.io/kubernetes "))
        .map(|v| v.trim().to_owned())
        .expect("hack/controlplane/kube-apiserver/go.mod requires k8s.io/kubernetes")
}

/// A value of the running environment's state file (`target/devenv/state`, `NAME=value` lines).
fn devenv_state(name: &str) -> String {
    let path = common::devenv_dir().join("state");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (is the environment up?)", path.display()));
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}=")))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "{} has no {name}: restart it with make env-up",
                path.display()
            )
        })
}

/// GET `path` of kube-controller-manager over HTTPS as the admin user (curl: its serving and the
/// admin client certificates come from the environment's CA).
fn controller_manager_get(path: &str) -> String {
    let certs = common::devenv_dir().join("certs");
    let url = format!("https://127.0.0.1:{}{path}", devenv_state("KCM_PORT"));
    let output = Command::new("curl")
        .arg("-sS")
        .arg("--fail")
        .args(["--max-time", "10"])
        .arg("--cacert")
        .arg(certs.join("ca.crt"))
        .arg("--cert")
        .arg(certs.join("admin.crt"))
        .arg("--key")
        .arg(certs.join("admin.key"))
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("run curl: {e}"));
    assert!(
        output.status.success(),
        "GET {url}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A role spec with one managed policy, for the devenv's AwsAccount.
fn role_spec(role_name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "accountRef": common::account_name(),
        "roleName": role_name,
        "policies": {"managed": [S3_READ]},
    });
    if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
        spec.extend(extra);
    }
    spec
}

/// A Secret `name` in `namespace` whose controller owner is `owner`, as the operator writes its
/// credentials Secret.
async fn create_owned_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: &cross_account_operator::api::CrossAccountRole,
) -> Secret {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "ownerReferences": [{
                "apiVersion": "crossaccount.io/v1alpha1",
                "kind": "CrossAccountRole",
                "name": owner.name_any(),
                "uid": owner.uid().expect("a created object has a uid"),
                "controller": true,
            }],
        },
        "stringData": {"note": "owned by a CrossAccountRole"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create Secret {namespace}/{name}: {e}"))
}

/// What a failing namespace wait shows: the phase and conditions, and the CrossAccountRoles left.
async fn describe_namespace(client: &Client, name: &str) -> String {
    let ns = match Api::<Namespace>::all(client.clone()).get_opt(name).await {
        Ok(Some(ns)) => ns,
        Ok(None) => return "gone".into(),
        Err(e) => return format!("get: {e}"),
    };
    let roles = common::roles_api(client, name)
        .list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .iter()
                .map(common::describe_role)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    format!(
        "status {}; CrossAccountRoles left: {roles:?}",
        serde_json::to_string(&ns.status).unwrap_or_default()
    )
}

/// Deletes namespace `name` and waits until it no longer exists.
async fn delete_namespace_and_wait(client: &Client, name: &str) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let started = std::time::Instant::now();
    namespaces
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete namespace {name}: {e}"));
    let outcome = common::try_poll(NAMESPACE_GONE, || {
        let namespaces = namespaces.clone();
        async move {
            match namespaces.get_opt(name).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err(describe_namespace(client, name).await),
                Err(e) => Err(format!("get: {e}")),
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        common::fail_with_operator_log(
            &format!("namespace {name} was not deleted within {NAMESPACE_GONE:?}"),
            &last,
        );
    }
    eprintln!("namespace {name} deleted in {:?}", started.elapsed());
}

#[tokio::test]
async fn the_control_plane_reports_the_release_it_was_built_from() {
    let client = common::kube_client().await;
    let want = kubernetes_version();
    let (major, minor) = {
        let mut parts = want.trim_start_matches('v').split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };

    let info = client.apiserver_version().await.expect("GET /version");
    assert_eq!(
        info.git_version, want,
        "/version of kube-apiserver: {info:?}"
    );
    assert_eq!(
        (info.major.as_str(), info.minor.as_str()),
        (major.as_str(), minor.as_str()),
        "{info:?}"
    );
    assert_eq!(info.git_tree_state, "clean", "{info:?}");
    assert_ne!(
        info.build_date, "1970-01-01T00:00:00Z",
        "the build date is stamped (the module's release time): {info:?}"
    );

    // What a person sees.
    let output = Command::new("kubectl")
        .args(["version", "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl version: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let version: Value = serde_json::from_slice(&output.stdout).expect("kubectl version -o json");
    assert_eq!(
        version["serverVersion"]["gitVersion"], want,
        "kubectl version: {version}"
    );

    // kube-controller-manager, from the same module and with the same stamp.
    let metrics = controller_manager_get("/metrics");
    let build_info = metrics
        .lines()
        .find(|l| l.starts_with("kubernetes_build_info{"))
        .unwrap_or_else(|| panic!("no kubernetes_build_info in the controller manager's /metrics"));
    assert!(
        build_info.contains(&format!("git_version=\"{want}\"")),
        "{build_info}"
    );
    assert_eq!(controller_manager_get("/healthz"), "ok");
}

#[tokio::test]
async fn a_secret_owned_by_a_deleted_cross_account_role_is_garbage_collected() {
    let client = common::kube_client().await;
    // A namespace the devenv's AwsAccount does not allow: an operator refuses these CRs before it
    // adds its finalizer, so deleting one removes it at once and only the garbage collector can
    // remove what it owns.
    let ns = TestNamespace::not_tenant(&client, "gc").await;
    let doomed = common::create_role(
        &client,
        &ns.name,
        "doomed",
        role_spec(&common::unique("GcDoomed"), json!({})),
    )
    .await;
    let kept = common::create_role(
        &client,
        &ns.name,
        "kept",
        role_spec(&common::unique("GcKept"), json!({})),
    )
    .await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    create_owned_secret(&client, &ns.name, "doomed-aws", &doomed).await;
    create_owned_secret(&client, &ns.name, "kept-aws", &kept).await;

    let roles = common::roles_api(&client, &ns.name);
    roles
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete CrossAccountRole doomed");
    common::wait_until_role_gone(&client, &ns.name, "doomed", Duration::from_secs(10)).await;
    let deleted = std::time::Instant::now();

    common::poll(
        "the garbage collector to delete the Secret owned by the deleted CrossAccountRole",
        COLLECTED,
        || {
            let secrets = secrets.clone();
            async move {
                match secrets.get_opt("doomed-aws").await {
                    Ok(None) => Ok(()),
                    Ok(Some(s)) => Err(format!(
                        "still there, owners {:?}, deletionTimestamp {:?}",
                        s.owner_references(),
                        s.meta().deletion_timestamp
                    )),
                    Err(e) => Err(format!("get: {e}")),
                }
            }
        },
    )
    .await;
    eprintln!(
        "the garbage collector deleted the owned Secret {:?} after its owner",
        deleted.elapsed()
    );
    let survivor = secrets
        .get_opt("kept-aws")
        .await
        .unwrap()
        .expect("a Secret whose owner exists is not collected");
    assert!(survivor.meta().deletion_timestamp.is_none());
    assert!(roles.get_opt("kept").await.unwrap().is_some());
}

#[tokio::test]
async fn a_deleted_namespace_goes_away_with_its_content() {
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "ns-gone").await;
    let name = ns.name.clone();
    // Content of several kinds, and what controllers create: the default ServiceAccount, the
    // root CA ConfigMap, and a Deployment's ReplicaSet (whose Pod stays Pending: no scheduler).
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "config", "namespace": name},
        "data": {"k": "v"},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &name)
        .create(&PostParams::default(), &config)
        .await
        .expect("create ConfigMap");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app", "namespace": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &name)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create Deployment");
    let service_accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &name);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &name);
    common::poll(
        "the controllers to create the default ServiceAccount, kube-root-ca.crt and a ReplicaSet",
        CONVERGE,
        || {
            let (service_accounts, replica_sets, config_maps) = (
                service_accounts.clone(),
                replica_sets.clone(),
                config_maps.clone(),
            );
            async move {
                let sa = service_accounts
                    .get_opt("default")
                    .await
                    .map_err(|e| e.to_string())?;
                let ca = config_maps
                    .get_opt("kube-root-ca.crt")
                    .await
                    .map_err(|e| e.to_string())?;
                let rs = replica_sets
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                match (sa.is_some(), ca.is_some(), rs.items.len()) {
                    (true, true, n) if n > 0 => Ok(()),
                    other => Err(format!("(default SA, root CA, ReplicaSets) {other:?}")),
                }
            }
        },
    )
    .await;

    delete_namespace_and_wait(&client, &name).await;
}

#[tokio::test]
async fn a_deleted_namespace_waits_for_the_operator_to_release_its_roles() {
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "ns-roles").await;
    let plain = common::unique("NsPlain");
    let with_secret = common::unique("NsCreds");
    let _guards = [
        TargetRoleGuard::new(&plain),
        TargetRoleGuard::new(&with_secret),
    ];
    common::create_role(&client, &ns.name, "plain", role_spec(&plain, json!({}))).await;
    common::create_role(
        &client,
        &ns.name,
        "creds",
        role_spec(&with_secret, json!({"credentials": {}})),
    )
    .await;
    for name in ["plain", "creds"] {
        let role =
            common::wait_for_condition(&client, &ns.name, name, "Ready", "True", None, CONVERGE)
                .await;
        assert!(
            !role.finalizers().is_empty(),
            "a Ready CrossAccountRole carries the operator's finalizer: {}",
            common::describe_role(&role)
        );
    }
    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns.name)
            .get_opt("creds-aws")
            .await
            .unwrap()
            .is_some(),
        "the credentials Secret exists"
    );

    // The namespace controller deletes the CrossAccountRoles (and the Secret); the operator
    // cleans AWS up and releases them; then the namespace goes.
    delete_namespace_and_wait(&client, &ns.name).await;
    let target = common::target_iam().await;
    for role_name in [&plain, &with_secret] {
        assert!(
            common::get_iam_role(&target, role_name).await.is_none(),
            "IAM role {role_name} is deleted before its CrossAccountRole is released"
        );
    }
}
