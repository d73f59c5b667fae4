//! Temporary credentials kept in Secrets by the operator binary, against the local apiserver and
//! moto (with IAM enforcement): the Secret contract, working credentials, refresh, reuse after a
//! restart, repair of an edited or deleted Secret, rollout restarts, a Secret name owned by someone
//! else, no secret material in logs, events, status or metrics, and cleanup on deletion.
//!
//! This file runs its own operator process instead of `common::Operator::shared()`: the restart
//! test stops it and starts another one, and the shared operator cannot be restarted. Every test
//! takes `common::serial()`: they all mint credentials, which the AssumeRole counts of the others
//! would see, and the restart test must have the operator to itself.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{TargetRoleGuard, TestNamespace};
use cross_account_operator::api::CrossAccountRole;
use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::Secret,
    },
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
/// A reconcile against moto takes well under a second; this leaves room for a slow machine.
const CONVERGE: Duration = Duration::from_secs(60);
/// Deletion of a CrossAccountRole, including the AWS cleanup.
const GONE: Duration = Duration::from_secs(60);
/// Two refreshes of a short session with `refreshPercent: 1`: each comes a minute after the issue
/// (the operator's minimum refresh delay), less up to a tenth of jitter.
const TWO_REFRESHES: Duration = Duration::from_secs(180);
/// Every key of the Secret when a region is set (`AWS_REGION` is left out without one).
const SECRET_KEYS: &[&str] = &[
    "credentials",
    "credentials.json",
    "config",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "expiration",
    "role_arn",
    "container-token",
];
/// Where the Secret is mounted unless `spec.credentials.mountPath` says otherwise.
const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/crossaccount";
const ISSUED_AT_ANNOTATION: &str = "crossaccount.io/issued-at";
const EXPIRATION_ANNOTATION: &str = "crossaccount.io/expiration";
const RESTARTED_AT_ANNOTATION: &str = "crossaccount.io/restartedAt";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "cross-account-operator");

// ---------------------------------------------------------------------------------------------
// The operator process of this test binary, which the restart test replaces.
// ---------------------------------------------------------------------------------------------

const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_cross-account-operator");

/// One operator process of this file (the shared harness process, which the restart test
/// replaces), with the metrics these tests read.
struct OperatorProcess(common::Operator);

/// The operator the tests of this file talk to; replaced by [`restart_operator`].
static CURRENT: Mutex<Option<Arc<OperatorProcess>>> = Mutex::new(None);
/// How many operator processes this test binary started.
static STARTS: Mutex<u32> = Mutex::new(0);
/// The pids of the operator processes of this test binary.
static OWN_PIDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
/// Operator processes of other test binaries seen while the tests of this one ran.
static FOREIGN_SEEN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// The log of every operator process of this test binary, one after the other.
fn log_path() -> PathBuf {
    common::devenv_dir().join("logs/operator-credentials.log")
}

/// The last `lines` lines of the operator log.
fn log_tail(lines: usize) -> String {
    let text = std::fs::read_to_string(log_path()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    format!(
        "--- last {lines} lines of {} ---\n{}\n--- end of operator log ---",
        log_path().display(),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

/// Panics with `what`, the last state seen and the tail of the operator log.
fn fail(what: &str, last: &str) -> ! {
    panic!(
        "{what}\nlast state: {last}{}\n{}",
        interference(),
        log_tail(60)
    )
}

/// A note for failure messages when other operators ran against this environment meanwhile:
/// they reconcile the objects of these tests too, and their AssumeRole calls are not counted.
fn interference() -> String {
    let seen = FOREIGN_SEEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if seen.is_empty() {
        return String::new();
    }
    format!(
        "\nNOTE: other operator processes {seen:?} ran against this environment during these \
         tests and reconciled the same objects; run one integration test binary at a time"
    )
}

impl OperatorProcess {
    fn spawn() -> Self {
        let number = {
            let mut starts = STARTS.lock().unwrap_or_else(|e| e.into_inner());
            *starts += 1;
            *starts
        };
        let path = log_path();
        std::fs::create_dir_all(path.parent().unwrap()).expect("create target/devenv/logs");
        // The first process of this binary starts a fresh log; a restarted one appends to it,
        // so that the log covers every credential the tests saw.
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(number > 1)
            .truncate(number == 1)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(log, "=== credentials test: operator process #{number} ===").unwrap();
        let operator = common::Operator::start(log, path);
        OWN_PIDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(operator.pid());
        Self(operator)
    }

    fn exited(&self) -> Option<String> {
        self.0.exited()
    }

    /// SIGTERM, then waits for the exit; returns the exit status.
    fn stop(&self) -> String {
        self.0.stop()
    }

    async fn wait_ready(&self) {
        self.0.wait_ready().await
    }

    async fn metrics_text(&self) -> String {
        self.0.metrics_text().await
    }

    /// Successful AssumeRole calls of this process (the management role's are not counted).
    async fn assume_roles(&self) -> u64 {
        common::metric_sum(
            &self.metrics_text().await,
            "crossaccount_aws_requests_total",
            &[
                ("service", "sts"),
                ("operation", "AssumeRole"),
                ("outcome", "ok"),
            ],
        )
    }

    async fn role_reconciles(&self) -> u64 {
        common::metric_sum(
            &self.metrics_text().await,
            "crossaccount_reconciles_total",
            &[("kind", "CrossAccountRole")],
        )
    }

    async fn role_reconcile_errors(&self) -> u64 {
        common::metric_sum(
            &self.metrics_text().await,
            "crossaccount_reconcile_errors_total",
            &[("kind", "CrossAccountRole")],
        )
    }

    /// `crossaccount_credentials_expiry_seconds{namespace, name}`, if exported.
    async fn expiry_seconds(&self, namespace: &str, name: &str) -> Option<f64> {
        expiry_gauge(&self.metrics_text().await, namespace, name)
    }
}

fn expiry_gauge(text: &str, namespace: &str, name: &str) -> Option<f64> {
    let namespace_label = format!("namespace=\"{namespace}\"");
    let name_labels = [format!("{{name=\"{name}\""), format!(",name=\"{name}\"")];
    text.lines()
        .filter(|l| l.starts_with("crossaccount_credentials_expiry_seconds{"))
        .find(|l| l.contains(&namespace_label) && name_labels.iter().any(|n| l.contains(n)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Processes of this repository's operator binary that this test binary did not start: another
/// test binary's operator against the same environment would reconcile our objects too.
fn other_operators() -> Vec<u32> {
    let own = OWN_PIDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Ok(ours) = std::fs::canonicalize(OPERATOR_BIN) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !own.contains(pid))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                let exe = exe.to_string_lossy();
                Path::new(exe.trim_end_matches(" (deleted)")) == ours
            })
        })
        .collect()
}

/// Waits (up to 5 minutes) until no other operator of this repository runs, e.g. one of another
/// test binary started at the same time against the same environment; from then on, records
/// any that shows up (see [`interference`]).
async fn wait_for_other_operators() {
    let others = other_operators();
    if others.is_empty() {
        return;
    }
    eprintln!(
        "credentials tests: waiting for other operator processes {others:?} to end: they would \
         reconcile this test's objects too"
    );
    let outcome = common::try_poll(Duration::from_secs(300), || async move {
        match other_operators() {
            others if others.is_empty() => Ok(()),
            others => Err(format!("{others:?}")),
        }
    })
    .await;
    if let Err(others) = outcome {
        panic!(
            "other {OPERATOR_BIN} processes ({others}) keep running against this environment; \
             run one integration test binary at a time"
        );
    }
    start_monitor();
}

/// Samples the process table for foreign operators (a few times a second) for the rest of the
/// test binary's life: one that comes and goes within a test would otherwise go unnoticed.
fn start_monitor() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::Builder::new()
            .name("foreign-operator-monitor".into())
            .spawn(|| {
                loop {
                    let others = other_operators();
                    FOREIGN_SEEN
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(others);
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
            .expect("spawn the monitor thread");
    });
}

/// The running operator of this file, started if there is none.
async fn operator() -> Arc<OperatorProcess> {
    wait_for_other_operators().await;
    let running = CURRENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .filter(|op| op.exited().is_none());
    let op = match running {
        Some(op) => op,
        None => {
            let op = Arc::new(OperatorProcess::spawn());
            *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(op.clone());
            op
        }
    };
    op.wait_ready().await;
    op
}

/// Stops the current operator (waiting for its exit, so two never run at once) and starts a new
/// process; returns the old one's exit status and the new process.
async fn restart_operator() -> (String, Arc<OperatorProcess>) {
    let old = CURRENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("an operator is running");
    let status = tokio::task::spawn_blocking(move || old.stop())
        .await
        .expect("stop the operator");
    (status, operator().await)
}

// ---------------------------------------------------------------------------------------------
// Objects.
// ---------------------------------------------------------------------------------------------

use common::{account_name, role_arn};

/// A role with S3 read access and `credentials` as given.
fn role_spec(role_name: &str, credentials: Value) -> Value {
    json!({
        "accountRef": account_name(),
        "roleName": role_name,
        "policies": {"managed": [S3_READ]},
        "credentials": credentials,
    })
}

/// Whether condition `type_` of `cr` has `status` (and `reason`) for the current generation.
fn has_condition(cr: &CrossAccountRole, type_: &str, status: &str, reason: Option<&str>) -> bool {
    common::role_condition(cr, type_).is_some_and(|c| {
        c.status == status
            && reason.is_none_or(|r| c.reason == r)
            && c.observed_generation == cr.metadata.generation
    })
}

/// Polls CrossAccountRole `name` until `check` accepts it.
async fn wait_role(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    check: impl Fn(&CrossAccountRole) -> bool,
) -> CrossAccountRole {
    let api = common::roles_api(client, namespace);
    let check = &check;
    let outcome = common::try_poll(CONVERGE, || {
        let api = api.clone();
        async move {
            let cr = api
                .get_opt(name)
                .await
                .map_err(|e| format!("get: {e}"))?
                .ok_or_else(|| "the CrossAccountRole does not exist".to_owned())?;
            if check(&cr) {
                Ok(cr)
            } else {
                Err(common::describe_role(&cr))
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|last| {
        fail(
            &format!("timed out waiting for {namespace}/{name}: {what}"),
            &last,
        )
    })
}

/// Waits until `name` is Ready and its credentials are issued.
async fn wait_credentials_ready(client: &Client, namespace: &str, name: &str) -> CrossAccountRole {
    wait_role(
        client,
        namespace,
        name,
        "Ready=True and CredentialsReady=True",
        |cr| {
            has_condition(cr, "Ready", "True", None)
                && has_condition(cr, "CredentialsReady", "True", Some("CredentialsIssued"))
        },
    )
    .await
}

/// Deletes `name` and waits until the operator released it.
async fn delete_role(client: &Client, namespace: &str, name: &str) {
    let api = common::roles_api(client, namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return,
        Err(e) => panic!("delete CrossAccountRole {namespace}/{name}: {e}"),
    }
    let outcome = common::try_poll(GONE, || {
        let api = api.clone();
        async move {
            match api.get_opt(name).await {
                Ok(None) => Ok(()),
                Ok(Some(cr)) => Err(common::describe_role(&cr)),
                Err(e) => Err(format!("get: {e}")),
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        fail(
            &format!("timed out waiting for {namespace}/{name} to be gone"),
            &last,
        );
    }
}

/// Proof that the operator reconciled `name` after this call: the message of its `Ready`
/// condition is overwritten (a status-only change, which does not trigger a reconcile by itself)
/// and the operator's next reconcile — resync, refresh or watch — writes it back. Returns the
/// object as that reconcile left it.
async fn await_reconcile(client: &Client, namespace: &str, name: &str) -> CrossAccountRole {
    let api = common::roles_api(client, namespace);
    let cr = api.get(name).await.expect("get the CrossAccountRole");
    let marker = common::unique("poked-by-credentials-test");
    let mut conditions = cr.status.clone().unwrap_or_default().conditions;
    let ready = conditions
        .iter_mut()
        .find(|c| c.type_ == "Ready")
        .unwrap_or_else(|| panic!("{namespace}/{name} has no Ready condition to poke"));
    ready.message = marker.clone();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await
    .unwrap_or_else(|e| panic!("patch the status of {namespace}/{name}: {e}"));
    wait_role(
        client,
        namespace,
        name,
        "a reconcile that rewrites the poked Ready message",
        |cr| common::role_condition(cr, "Ready").is_some_and(|c| c.message != marker),
    )
    .await
}

/// Deletes the CrossAccountRoles of a namespace when a test panics, while the operator of this
/// file still runs, so that it removes their IAM roles (nothing else would).
struct CleanupOnPanic {
    namespace: String,
}

impl Drop for CleanupOnPanic {
    fn drop(&mut self) {
        let running = CURRENT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|op| op.exited().is_none());
        if !std::thread::panicking() || !running {
            return;
        }
        common::delete_roles_of(&self.namespace, GONE);
    }
}

async fn create_deployment(client: &Client, namespace: &str, name: &str) -> Deployment {
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "busybox",
                    "command": ["sleep", "3600"],
                }]},
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap_or_else(|e| panic!("create Deployment {namespace}/{name}: {e}"))
}

/// When the Secret's credentials were issued (its `crossaccount.io/issued-at` annotation).
fn issued_at(secret: &Secret) -> Option<Timestamp> {
    secret.annotations().get(ISSUED_AT_ANNOTATION)?.parse().ok()
}

/// Whether a `restartedAt` stamp is at or after `issued` (a restart for those credentials).
fn restarted_since(stamp: Option<&str>, issued: Timestamp) -> bool {
    stamp
        .and_then(|s| s.parse::<Timestamp>().ok())
        .is_some_and(|at| at >= issued)
}

fn restarted_at(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(RESTARTED_AT_ANNOTATION)
        .cloned()
}

/// The events of `namespace`, from events.k8s.io/v1 (what the operator writes).
async fn events(client: &Client, namespace: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list events in {namespace}: {e}"))
        .items
}

/// Events of `namespace` about CrossAccountRole `name` with `reason`, once there is one: the
/// operator publishes events from a queue of their own, moments after the status it wrote.
async fn events_with_reason(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    common::poll(
        &format!("an event {reason} about {namespace}/{name}"),
        Duration::from_secs(30),
        || async {
            let found: Vec<_> = events(client, namespace)
                .await
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().is_some_and(|r| {
                            r.kind.as_deref() == Some("CrossAccountRole")
                                && r.name.as_deref() == Some(name)
                        })
                })
                .collect();
            if found.is_empty() {
                Err("none yet".to_owned())
            } else {
                Ok(found)
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The Secret.
// ---------------------------------------------------------------------------------------------

async fn get_secret(client: &Client, namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get Secret {namespace}/{name}: {e}"))
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    Some(String::from_utf8_lossy(&bytes.0).into_owned())
}

/// One set of credentials as a Secret holds it. Debug output shows no secret part.
#[derive(Clone, PartialEq, Eq)]
struct Creds {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Creds({}, expires {})",
            common::masked_key(&self.access_key_id),
            self.expiration
        )
    }
}

impl Creds {
    fn of(secret: &Secret) -> Self {
        let key = |k| text(secret, k).unwrap_or_default();
        Self {
            access_key_id: key("AWS_ACCESS_KEY_ID"),
            secret_access_key: key("AWS_SECRET_ACCESS_KEY"),
            session_token: key("AWS_SESSION_TOKEN"),
            expiration: key("expiration"),
        }
    }

    /// The parts that must never be shown anywhere but the Secret, named.
    fn secrets(&self) -> [(&'static str, &str); 3] {
        [
            ("an access key ID", &self.access_key_id),
            ("a secret access key", &self.secret_access_key),
            ("a session token", &self.session_token),
        ]
    }
}

/// `[default]` of an INI file as key-value pairs.
fn ini_default(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("[default]") {
        return Err("does not start with [default]".into());
    }
    let mut values = BTreeMap::new();
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line without `=`: {line:?}"))?;
        values.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(values)
}

/// What is wrong with `secret` as the credentials Secret of `cr` for role `arn` with `region`;
/// empty when it follows the contract and is consistent in itself.
fn secret_problems(
    secret: &Secret,
    cr: &CrossAccountRole,
    arn: &str,
    region: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expected: BTreeSet<&str> = SECRET_KEYS.iter().copied().collect();
    if region.is_none() {
        expected.remove("AWS_REGION");
    }
    let keys: BTreeSet<&str> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    if keys != expected {
        problems.push(format!("keys {keys:?}, expected {expected:?}"));
    }
    if secret.type_.as_deref() != Some("Opaque") {
        problems.push(format!("type {:?}", secret.type_));
    }
    let owned = secret.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && Some(&o.uid) == cr.uid().as_ref()
            && o.kind == "CrossAccountRole"
            && o.api_version == "crossaccount.io/v1alpha1"
            && o.name == cr.name_any()
    });
    if !owned {
        problems.push(format!(
            "no controller owner reference to the CrossAccountRole: {:?}",
            secret.owner_references()
        ));
    }
    if secret.labels().get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
        problems.push(format!("labels {:?}", secret.labels()));
    }
    let creds = Creds::of(secret);
    if creds.access_key_id.is_empty()
        || creds.secret_access_key.is_empty()
        || creds.session_token.is_empty()
    {
        problems.push("an empty credential".into());
    }
    match creds.expiration.parse::<Timestamp>() {
        Ok(expiration) if expiration > Timestamp::now() => {}
        Ok(_) => problems.push(format!("expiration {} is past", creds.expiration)),
        Err(e) => problems.push(format!("expiration {:?}: {e}", creds.expiration)),
    }
    if secret.annotations().get(EXPIRATION_ANNOTATION) != Some(&creds.expiration) {
        problems.push(format!(
            "annotation {EXPIRATION_ANNOTATION} is {:?}, the expiration key {:?}",
            secret.annotations().get(EXPIRATION_ANNOTATION),
            creds.expiration
        ));
    }
    match ini_default(&text(secret, "credentials").unwrap_or_default()) {
        Ok(ini) => {
            let expected = BTreeMap::from([
                ("aws_access_key_id".to_owned(), creds.access_key_id.clone()),
                (
                    "aws_secret_access_key".to_owned(),
                    creds.secret_access_key.clone(),
                ),
                ("aws_session_token".to_owned(), creds.session_token.clone()),
            ]);
            if ini != expected {
                problems.push(
                    "`credentials` does not hold exactly the keys of the AWS_* entries".into(),
                );
            }
        }
        Err(e) => problems.push(format!("`credentials`: {e}")),
    }
    let process: Value =
        serde_json::from_str(&text(secret, "credentials.json").unwrap_or_default())
            .unwrap_or(Value::Null);
    let expected_process = json!({
        "Version": 1,
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "SessionToken": creds.session_token,
        "Expiration": creds.expiration,
    });
    if process != expected_process {
        problems.push(format!(
            "`credentials.json` is not credential_process output for the AWS_* entries \
             (Version {}, Expiration {}, AccessKeyId {})",
            process["Version"], process["Expiration"], process["AccessKeyId"]
        ));
    }
    let config = ini_default(&text(secret, "config").unwrap_or_default());
    let mut expected_config: BTreeMap<String, String> = region
        .map(|r| ("region".to_owned(), r.to_owned()))
        .into_iter()
        .collect();
    expected_config.insert(
        "credential_process".to_owned(),
        format!("cat {DEFAULT_MOUNT_PATH}/credentials.json"),
    );
    if config.as_ref() != Ok(&expected_config) {
        problems.push(format!(
            "`config` is {config:?}, expected {expected_config:?}"
        ));
    }
    if text(secret, "AWS_REGION").as_deref() != region {
        problems.push(format!("AWS_REGION {:?}", text(secret, "AWS_REGION")));
    }
    if text(secret, "role_arn").as_deref() != Some(arn) {
        problems.push(format!(
            "role_arn {:?}, expected {arn}",
            text(secret, "role_arn")
        ));
    }
    problems
}

/// Polls Secret `name` until `check` accepts it.
async fn wait_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Secret) -> Result<(), String>,
) -> Secret {
    let check = &check;
    let outcome = common::try_poll(CONVERGE, || async move {
        let secret = get_secret(client, namespace, name)
            .await
            .ok_or_else(|| "the Secret does not exist".to_owned())?;
        check(&secret).map(|()| secret)
    })
    .await;
    outcome.unwrap_or_else(|last| {
        fail(
            &format!("timed out waiting for Secret {namespace}/{name}: {what}"),
            &last,
        )
    })
}

/// Records the successive states of one object, projected by `project` (`None`: deleted), from a
/// watch started before the test changes anything: polling could miss states in between.
struct Recorder<T> {
    state: Arc<Mutex<RecorderState<T>>>,
    task: tokio::task::JoinHandle<()>,
}

struct RecorderState<T> {
    synced: bool,
    /// Watch restarts after the first list: states in between may be missing.
    relists: u32,
    values: Vec<Option<T>>,
}

impl<T: Clone + PartialEq + Send + 'static> Recorder<T> {
    async fn start<K>(api: Api<K>, name: &str, project: impl Fn(&K) -> T + Send + 'static) -> Self
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let state = Arc::new(Mutex::new(RecorderState {
            synced: false,
            relists: 0,
            values: Vec::new(),
        }));
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(api, config).default_backoff().boxed();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
                let value = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        Some(project(&o))
                    }
                    Ok(watcher::Event::Delete(_)) => None,
                    Ok(watcher::Event::Init) => {
                        if state.synced {
                            state.relists += 1;
                        }
                        continue;
                    }
                    Ok(watcher::Event::InitDone) => {
                        state.synced = true;
                        continue;
                    }
                    Err(_) => continue,
                };
                if state.values.last() != Some(&value) {
                    state.values.push(value);
                }
            }
        });
        let recorder = Self { state, task };
        common::poll("the watch to list", Duration::from_secs(20), || {
            let synced = recorder.lock().synced;
            async move {
                if synced {
                    Ok(())
                } else {
                    Err("not listed yet".into())
                }
            }
        })
        .await;
        recorder
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecorderState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn values(&self) -> Vec<Option<T>> {
        self.lock().values.clone()
    }

    fn relists(&self) -> u32 {
        self.lock().relists
    }

    /// Waits until the last recorded state satisfies `check`.
    async fn wait_last(&self, what: &str, check: impl Fn(Option<&T>) -> bool) -> Vec<Option<T>>
    where
        T: std::fmt::Debug,
    {
        let check = &check;
        let outcome = common::try_poll(CONVERGE, || async move {
            let values = self.values();
            match values.last() {
                Some(last) if check(last.as_ref()) => Ok(values),
                _ => Err(format!("{values:?}")),
            }
        })
        .await;
        outcome.unwrap_or_else(|last| fail(&format!("timed out waiting for {what}"), &last))
    }
}

impl<T> Drop for Recorder<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The distinct access key IDs among recorded Secret states, in order.
fn distinct_keys(values: &[Option<Creds>]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for creds in values.iter().flatten() {
        if !keys.contains(&creds.access_key_id) {
            keys.push(creds.access_key_id.clone());
        }
    }
    keys
}

// ---------------------------------------------------------------------------------------------
// Using the credentials, and looking for them where they must not be.
// ---------------------------------------------------------------------------------------------

struct CliOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs the AWS CLI of the project's venv with nothing but the Secret's `credentials` and
/// `config` files and the endpoint: no inherited AWS variables, a HOME of its own.
async fn aws_cli(secret: &Secret, args: &[&str], stdin: &str) -> CliOutput {
    let dir = std::env::temp_dir().join(common::unique("credentials-test-aws"));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    for (file, key) in [("credentials", "credentials"), ("config", "config")] {
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(dir.join(file))
            .unwrap_or_else(|e| panic!("create {file}: {e}"));
        f.write_all(text(secret, key).unwrap_or_default().as_bytes())
            .unwrap();
    }
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/aws");
    let mut command = Command::new(&program);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("credentials"))
        .env("AWS_CONFIG_FILE", dir.join("config"))
        .env("AWS_ENDPOINT_URL", common::env("AWS_ENDPOINT_URL"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["--cli-connect-timeout", "5", "--cli-read-timeout", "20"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = stdin.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("wait for the AWS CLI")
    })
    .await
    .expect("the AWS CLI thread");
    let _ = std::fs::remove_dir_all(&dir);
    CliOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `sts get-caller-identity` with the Secret's credentials: the caller's ARN.
async fn caller_arn(secret: &Secret) -> String {
    let out = aws_cli(
        secret,
        &["sts", "get-caller-identity", "--output", "json"],
        "",
    )
    .await;
    assert!(
        out.success,
        "get-caller-identity with the Secret's credentials failed: {}",
        out.stderr
    );
    let identity: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("get-caller-identity output ({e}): {}", out.stdout));
    identity["Arn"].as_str().unwrap_or_default().to_owned()
}

fn session_arn(role_name: &str, namespace: &str, name: &str) -> String {
    format!(
        "arn:aws:sts::{}:assumed-role/{role_name}/{namespace}.{name}",
        common::env("TARGET_ACCOUNT_ID")
    )
}

/// None of the secret parts of `issued` appears in the operator log, the events of `namespace`
/// (both APIs), `status` (the CR's status as JSON) or the operator's metrics.
async fn assert_no_secret_material(
    op: &OperatorProcess,
    client: &Client,
    namespace: &str,
    status: &str,
    issued: &[Creds],
) {
    assert!(!issued.is_empty(), "no credentials to look for");
    let log = std::fs::read_to_string(log_path()).expect("read the operator log");
    let new_events = serde_json::to_string(&events(client, namespace).await).unwrap();
    let core_events = serde_json::to_string(
        &Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .expect("list core/v1 events")
            .items,
    )
    .unwrap();
    let metrics = op.metrics_text().await;
    let places = [
        ("the operator log", log.as_str()),
        ("events.k8s.io/v1 events", new_events.as_str()),
        ("core/v1 events", core_events.as_str()),
        ("the CrossAccountRole's status", status),
        ("the operator's metrics", metrics.as_str()),
    ];
    let mut leaks = Vec::new();
    for (n, creds) in issued.iter().enumerate() {
        for (what, value) in creds.secrets() {
            assert!(value.len() >= 16, "{what} of set {n} is implausibly short");
            for (place, haystack) in places {
                if haystack.contains(value) {
                    // Name the leak without repeating the secret.
                    leaks.push(format!("{what} of credential set {n} appears in {place}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secret material leaked: {leaks:#?}");
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn secret_follows_the_contract_and_its_credentials_work() {
    let _serial = common::serial().await;
    let op = operator().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "creds").await;
    let role_name = common::unique("CredsReader");
    let _role = TargetRoleGuard::new(&role_name);
    let _cleanup = CleanupOnPanic {
        namespace: ns.name.clone(),
    };
    let arn = role_arn(&role_name);

    common::create_role(
        &client,
        &ns.name,
        "reader",
        role_spec(&role_name, json!({"region": "us-east-1"})),
    )
    .await;
    let cr = wait_credentials_ready(&client, &ns.name, "reader").await;
    let status = cr.status.clone().expect("status");
    let credentials = status
        .credentials
        .clone()
        .expect("status.credentials is set");
    assert_eq!(credentials.secret_name, "reader-aws", "status.credentials");

    let secret = get_secret(&client, &ns.name, "reader-aws")
        .await
        .expect("the Secret reader-aws exists");
    let problems = secret_problems(&secret, &cr, &arn, Some("us-east-1"));
    assert!(problems.is_empty(), "Secret reader-aws: {problems:#?}");
    let creds = Creds::of(&secret);
    let expiration: Timestamp = creds.expiration.parse().unwrap();
    assert_eq!(
        credentials.expiration.as_ref().map(|t| t.0),
        Some(expiration),
        "status.credentials.expiration equals the Secret's expiration"
    );
    let lifetime = expiration.duration_since(Timestamp::now());
    assert!(
        lifetime > SignedDuration::from_secs(3000) && lifetime <= SignedDuration::from_secs(3610),
        "the default lifetime is an hour; the credentials expire in {lifetime:?}"
    );

    assert_eq!(
        caller_arn(&secret).await,
        session_arn(&role_name, &ns.name, "reader"),
        "the Secret's credentials are a session of the role named after the CR"
    );
    let bucket = common::env("TARGET_BUCKET");
    let listing = aws_cli(&secret, &["s3", "ls", &format!("s3://{bucket}")], "").await;
    assert!(
        listing.success && listing.stdout.contains("hello.txt"),
        "s3 ls s3://{bucket} with the Secret's credentials lists hello.txt; stdout: {} stderr: {}",
        listing.stdout,
        listing.stderr
    );
    let write = aws_cli(
        &secret,
        &["s3", "cp", "-", &format!("s3://{bucket}/x")],
        "not allowed",
    )
    .await;
    assert!(
        !write.success && write.stderr.contains("AccessDenied"),
        "writing to the bucket is denied (the role may only read); success {}, stderr: {}",
        write.success,
        write.stderr
    );

    let status_json = serde_json::to_string(&cr.status).unwrap();
    assert_no_secret_material(&op, &client, &ns.name, &status_json, &[creds]).await;
    delete_role(&client, &ns.name, "reader").await;
}

#[tokio::test]
async fn credentials_are_refreshed_once_per_due_time_and_keep_working() {
    let _serial = common::serial().await;
    let op = operator().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "refresh").await;
    let role_name = common::unique("CredsRefresh");
    let _role = TargetRoleGuard::new(&role_name);
    let _cleanup = CleanupOnPanic {
        namespace: ns.name.clone(),
    };
    let secrets = Recorder::start(
        Api::<Secret>::namespaced(client.clone(), &ns.name),
        "refresh-aws",
        Creds::of,
    )
    .await;
    let before = op.assume_roles().await;

    common::create_role(
        &client,
        &ns.name,
        "refresh",
        role_spec(
            &role_name,
            json!({"durationSeconds": 900, "refreshPercent": 1, "region": "us-east-1"}),
        ),
    )
    .await;
    let cr = wait_credentials_ready(&client, &ns.name, "refresh").await;
    let credentials = cr
        .status
        .as_ref()
        .and_then(|s| s.credentials.clone())
        .expect("status.credentials");
    let expiration = credentials
        .expiration
        .expect("status.credentials.expiration")
        .0;
    let next = credentials
        .next_refresh
        .expect("status.credentials.nextRefresh")
        .0;
    // Issued at about expiration - 900 s. 1 % of 900 s is 9 s, but credentials are never
    // refreshed sooner than a minute after their issue; jitter takes up to a tenth off that.
    let after_issue = next.duration_since(expiration - SignedDuration::from_secs(900));
    assert!(
        after_issue >= SignedDuration::from_secs(52)
            && after_issue <= SignedDuration::from_secs(62),
        "nextRefresh {next} should be 54-60 s after the issue (expiration {expiration} - 900 s), \
         is {after_issue:?}"
    );

    // The access key changes twice: two refreshes after the first issue.
    let outcome = common::try_poll(TWO_REFRESHES, || async {
        let keys = distinct_keys(&secrets.values());
        if keys.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{} distinct access keys so far", keys.len()))
        }
    })
    .await;
    if let Err(last) = outcome {
        fail(
            &format!("the credentials were not refreshed twice within {TWO_REFRESHES:?}"),
            &last,
        );
    }
    let secret = get_secret(&client, &ns.name, "refresh-aws")
        .await
        .expect("the Secret exists");
    assert_eq!(
        caller_arn(&secret).await,
        session_arn(&role_name, &ns.name, "refresh"),
        "refreshed credentials work"
    );
    let expiry = op.expiry_seconds(&ns.name, "refresh").await;
    assert!(
        expiry.is_some_and(|s| s > 0.0 && s <= 900.0),
        "crossaccount_credentials_expiry_seconds for {}/refresh is {expiry:?}, expected 0-900",
        ns.name
    );
    let status_json = serde_json::to_string(
        &common::roles_api(&client, &ns.name)
            .get("refresh")
            .await
            .unwrap()
            .status,
    )
    .unwrap();

    // Deleting the CR stops the refreshes; the watch has seen every state once it saw the
    // Secret deleted (the operator deletes it before it releases the CR).
    delete_role(&client, &ns.name, "refresh").await;
    let values = secrets
        .wait_last("the Secret's deletion to be watched", |last| last.is_none())
        .await;
    let keys = distinct_keys(&values);
    let assumed = op.assume_roles().await - before;
    assert_eq!(
        assumed,
        keys.len() as u64,
        "one AssumeRole per set of credentials the Secret held: {} sets {values:?} (watch \
         restarts: {}){}",
        keys.len(),
        secrets.relists(),
        interference()
    );
    assert_eq!(
        op.expiry_seconds(&ns.name, "refresh").await,
        None,
        "the expiry gauge of a deleted CR is removed"
    );
    let issued: Vec<Creds> = values.iter().flatten().cloned().collect();
    assert_no_secret_material(&op, &client, &ns.name, &status_json, &issued).await;

    // Refreshes come when due, not back to back: each set of credentials is replaced no sooner
    // than the minimum refresh delay (a minute, less up to a tenth of jitter) after the set
    // before it.
    let expirations: Vec<Timestamp> = issued
        .iter()
        .map(|c| c.expiration.parse().expect("RFC 3339 expiration"))
        .collect();
    let back_to_back: Vec<_> = expirations
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .filter(|gap| *gap < SignedDuration::from_secs(52))
        .collect();
    assert!(
        back_to_back.is_empty(),
        "refreshes came sooner than a minute after the issue before them ({back_to_back:?}); \
         expirations: {expirations:?}"
    );
}

#[tokio::test]
async fn a_restarted_operator_reuses_credentials_that_are_not_due() {
    let _serial = common::serial().await;
    operator().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "restart").await;
    let role_name = common::unique("CredsRestart");
    let _role = TargetRoleGuard::new(&role_name);
    let _cleanup = CleanupOnPanic {
        namespace: ns.name.clone(),
    };
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    create_deployment(&client, &ns.name, "app").await;
    common::create_role(
        &client,
        &ns.name,
        "kept",
        role_spec(
            &role_name,
            json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "app"}]}),
        ),
    )
    .await;
    let cr = wait_credentials_ready(&client, &ns.name, "kept").await;
    let secret = get_secret(&client, &ns.name, "kept-aws")
        .await
        .expect("the Secret exists");
    let creds = Creds::of(&secret);
    let issued = issued_at(&secret).expect("the Secret records when its credentials were issued");
    let outcome = common::try_poll(CONVERGE, || {
        let deployments = deployments.clone();
        async move {
            let deployment = deployments.get("app").await.map_err(|e| e.to_string())?;
            match restarted_at(&deployment) {
                stamp if restarted_since(stamp.as_deref(), issued) => Ok(deployment),
                other => Err(format!(
                    "{RESTARTED_AT_ANNOTATION} {other:?}, expected at or after the issue at {issued}"
                )),
            }
        }
    })
    .await;
    let deployment = outcome.unwrap_or_else(|last| fail("the Deployment was not restarted", &last));

    let (exit, op) = restart_operator().await;
    assert_eq!(
        op.assume_roles().await,
        0,
        "a new process starts from zero (old process exit: {exit})"
    );
    // Two reconciles of this CR by the new process, each proven by a status write of its own.
    let first = await_reconcile(&client, &ns.name, "kept").await;
    let second = await_reconcile(&client, &ns.name, "kept").await;
    let reconciles = op.role_reconciles().await;
    assert!(
        reconciles >= 2,
        "the new process reconciled {reconciles} times"
    );
    assert!(
        op.expiry_seconds(&ns.name, "kept").await.is_some(),
        "the new process went through the credentials step (expiry gauge exported)"
    );

    let assumed = op.assume_roles().await;
    let others: Vec<String> = common::roles_api(&client, "")
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|cr| cr.spec.credentials.is_some())
                .map(|cr| format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        assumed,
        0,
        "the restarted operator assumed roles although the credentials were not due \
         (CrossAccountRoles with credentials in the cluster: {others:?}){}\n{}",
        interference(),
        log_tail(40)
    );
    let after = get_secret(&client, &ns.name, "kept-aws")
        .await
        .expect("the Secret still exists");
    assert_eq!(
        Creds::of(&after),
        creds,
        "the Secret keeps its credentials across the restart{}",
        interference()
    );
    assert_eq!(
        after.resource_version(),
        secret.resource_version(),
        "the Secret is not rewritten{}",
        interference()
    );
    for (n, cr_after) in [first, second].iter().enumerate() {
        assert_eq!(
            cr_after.status.as_ref().and_then(|s| s.credentials.clone()),
            cr.status.as_ref().and_then(|s| s.credentials.clone()),
            "status.credentials after reconcile {} of the new process",
            n + 1
        );
        assert!(
            has_condition(cr_after, "Ready", "True", None),
            "{}",
            common::describe_role(cr_after)
        );
    }
    let deployment_after = deployments.get("app").await.unwrap();
    assert_eq!(
        restarted_at(&deployment_after),
        restarted_at(&deployment),
        "no rollout restart without new credentials"
    );
    // The generation, not the resource version: the deployment controller writes the status.
    assert_eq!(
        deployment_after.metadata.generation,
        deployment.metadata.generation,
        "the Deployment's spec is not touched{}",
        interference()
    );
    delete_role(&client, &ns.name, "kept").await;
}

#[tokio::test]
async fn an_edited_or_deleted_secret_is_replaced() {
    let _serial = common::serial().await;
    let op = operator().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "tamper").await;
    let role_name = common::unique("CredsTamper");
    let _role = TargetRoleGuard::new(&role_name);
    let _cleanup = CleanupOnPanic {
        namespace: ns.name.clone(),
    };
    let arn = role_arn(&role_name);
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    common::create_role(
        &client,
        &ns.name,
        "tamper",
        role_spec(&role_name, json!({"region": "eu-west-1"})),
    )
    .await;
    let cr = wait_credentials_ready(&client, &ns.name, "tamper").await;
    let original = get_secret(&client, &ns.name, "tamper-aws")
        .await
        .expect("the Secret exists");
    let intact = |secret: &Secret| {
        let problems = secret_problems(secret, &cr, &arn, Some("eu-west-1"));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{problems:?}"))
        }
    };
    intact(&original).unwrap_or_else(|p| panic!("the first Secret: {p}"));
    let mut issued = vec![Creds::of(&original)];

    // After each repair: no more credentials are minted, the Secret stays as it is.
    let steady = |issued_before: u64| {
        let client = client.clone();
        let op = op.clone();
        let ns = ns.name.clone();
        async move {
            let secret = get_secret(&client, &ns, "tamper-aws").await.unwrap();
            await_reconcile(&client, &ns, "tamper").await;
            await_reconcile(&client, &ns, "tamper").await;
            assert_eq!(
                op.assume_roles().await,
                issued_before,
                "credentials keep being minted after the Secret was repaired{}",
                interference()
            );
            let now = get_secret(&client, &ns, "tamper-aws").await.unwrap();
            assert_eq!(
                now.resource_version(),
                secret.resource_version(),
                "the repaired Secret keeps being rewritten{}",
                interference()
            );
        }
    };

    // An edited access key.
    let before = op.assume_roles().await;
    secrets
        .patch(
            "tamper-aws",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"AWS_ACCESS_KEY_ID": "AKIATAMPEREDBYTEST00"}})),
        )
        .await
        .expect("edit the Secret");
    let repaired = wait_secret(
        &client,
        &ns.name,
        "tamper-aws",
        "a complete, consistent Secret after the edit",
        |s| {
            intact(s)?;
            match text(s, "AWS_ACCESS_KEY_ID").as_deref() {
                Some("AKIATAMPEREDBYTEST00") => Err("still the edited key".into()),
                _ => Ok(()),
            }
        },
    )
    .await;
    let assumed = op.assume_roles().await;
    assert!(
        assumed > before,
        "an edited Secret is replaced with fresh credentials"
    );
    issued.push(Creds::of(&repaired));
    steady(assumed).await;

    // A deleted Secret.
    secrets
        .delete("tamper-aws", &DeleteParams::default())
        .await
        .expect("delete the Secret");
    let recreated = wait_secret(
        &client,
        &ns.name,
        "tamper-aws",
        "the Secret recreated",
        |s| {
            if s.uid() == repaired.uid() {
                return Err("the deleted Secret is still there".into());
            }
            intact(s)
        },
    )
    .await;
    issued.push(Creds::of(&recreated));
    steady(op.assume_roles().await).await;

    let status_json = serde_json::to_string(
        &common::roles_api(&client, &ns.name)
            .get("tamper")
            .await
            .unwrap()
            .status,
    )
    .unwrap();
    assert_no_secret_material(&op, &client, &ns.name, &status_json, &issued).await;

    // A key added by someone else: the Secret is the operator's and its content is the
    // credentials contract, so the key is removed, once, without minting, and the credentials
    // stay as they are.
    let before_extra = op.assume_roles().await;
    let before_secret = get_secret(&client, &ns.name, "tamper-aws").await.unwrap();
    secrets
        .patch(
            "tamper-aws",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"extra": "added-by-test"}})),
        )
        .await
        .expect("add a key to the Secret");
    let cleaned = wait_secret(
        &client,
        &ns.name,
        "tamper-aws",
        "the added key removed",
        |s| match s.data.as_ref().is_some_and(|d| d.contains_key("extra")) {
            true => Err("the added key is still there".into()),
            false => intact(s),
        },
    )
    .await;
    steady(before_extra).await;
    assert_eq!(
        cleaned.data.clone().unwrap_or_default(),
        before_secret.data.clone().unwrap_or_default(),
        "the credentials keys are unchanged"
    );

    delete_role(&client, &ns.name, "tamper").await;
}

#[tokio::test]
async fn new_credentials_restart_rollout_targets_once_each() {
    let _serial = common::serial().await;
    let op = operator().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "rollout").await;
    let role_name = common::unique("CredsRollout");
    let _role = TargetRoleGuard::new(&role_name);
    let _cleanup = CleanupOnPanic {
        namespace: ns.name.clone(),
    };
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    create_deployment(&client, &ns.name, "app").await;
    let secrets = Recorder::start(
        Api::<Secret>::namespaced(client.clone(), &ns.name),
        "rollout-aws",
        Creds::of,
    )
    .await;
    let issue_states = Recorder::start(
        Api::<Secret>::namespaced(client.clone(), &ns.name),
        "rollout-aws",
        issued_at,
    )
    .await;
    let stamps = Recorder::start(deployments.clone(), "app", restarted_at).await;
    let errors_before = op.role_reconcile_errors().await;

    common::create_role(
        &client,
        &ns.name,
        "rollout",
        role_spec(
            &role_name,
            json!({
                "durationSeconds": 900,
                "refreshPercent": 1,
                "rolloutRestartTargets": [
                    {"kind": "Deployment", "name": "app"},
                    {"kind": "Deployment", "name": "missing"},
                ],
            }),
        ),
    )
    .await;
    wait_credentials_ready(&client, &ns.name, "rollout").await;

    // Two refreshes after the first issue, each with its own expiration.
    let outcome = common::try_poll(TWO_REFRESHES, || async {
        let expirations: BTreeSet<String> = secrets
            .values()
            .into_iter()
            .flatten()
            .map(|c| c.expiration)
            .collect();
        if expirations.len() >= 3 {
            Ok(())
        } else {
            Err(format!("expirations so far: {expirations:?}"))
        }
    })
    .await;
    if let Err(last) = outcome {
        fail(
            &format!(
                "the credentials were not refreshed twice (with new expirations) within {TWO_REFRESHES:?}"
            ),
            &last,
        );
    }
    // While refreshes go on, the Deployment follows the Secret: restarted after its last issue
    // (5 s after it, once the credentials issued together have settled).
    let outcome = common::try_poll(CONVERGE, || {
        let deployments = deployments.clone();
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let secret = get_secret(&client, &ns, "rollout-aws").await;
            let deployment = deployments.get("app").await.map_err(|e| e.to_string())?;
            let issued = secret.as_ref().and_then(issued_at);
            let stamp = restarted_at(&deployment);
            match issued {
                Some(issued) if restarted_since(stamp.as_deref(), issued) => Ok(()),
                _ => Err(format!(
                    "(restartedAt, Secret issued-at) ({stamp:?}, {issued:?})"
                )),
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        fail(
            "the Deployment was not restarted after the Secret's last issue",
            &last,
        );
    }
    let missing = events_with_reason(&client, &ns.name, "rollout", "RolloutTargetNotFound").await;
    assert!(
        missing.iter().any(|e| e.type_.as_deref() == Some("Warning")
            && e.note.as_deref().is_some_and(|n| n.contains("missing"))),
        "a Warning event RolloutTargetNotFound names Deployment missing: {missing:#?}"
    );
    let cr = common::roles_api(&client, &ns.name)
        .get("rollout")
        .await
        .unwrap();
    assert!(
        has_condition(&cr, "Ready", "True", None),
        "a missing rollout target does not make the CR unready: {}",
        common::describe_role(&cr)
    );
    assert_eq!(
        op.role_reconcile_errors().await,
        errors_before,
        "a missing rollout target is no reconcile error"
    );

    // Stop the refreshes, then compare everything each watch saw.
    delete_role(&client, &ns.name, "rollout").await;
    let secret_states = secrets
        .wait_last("the Secret's deletion to be watched", |last| last.is_none())
        .await;
    let final_stamp = restarted_at(&deployments.get("app").await.unwrap());
    let stamp_states = stamps
        .wait_last("the Deployment's last state to be watched", |last| {
            last.cloned().flatten() == final_stamp
        })
        .await;
    let issues: Vec<Timestamp> = {
        let mut issues: Vec<Timestamp> = Vec::new();
        for at in issue_states.values().into_iter().flatten().flatten() {
            if issues.last() != Some(&at) {
                issues.push(at);
            }
        }
        issues
    };
    // The first state is the Deployment as created, without the annotation.
    let stamp_values: Vec<String> = stamp_states.iter().flatten().flatten().cloned().collect();
    let stamps_at: Vec<Timestamp> = stamp_values
        .iter()
        .map(|s| s.parse().expect("restartedAt is an RFC 3339 time"))
        .collect();
    // One restart per issue, after it and before the next one: restarts follow real changes of
    // credentials, once each. (The CR may be deleted between the last issue and its restart.)
    let explain = format!(
        "issues {issues:?}, restarts {stamps_at:?} (watch restarts: {} and {}; Secret states: {})",
        secrets.relists(),
        stamps.relists(),
        secret_states.len()
    );
    assert!(
        stamps_at.len() == issues.len() || stamps_at.len() + 1 == issues.len(),
        "one restart per issue: {explain}"
    );
    for (k, at) in stamps_at.iter().enumerate() {
        assert!(
            *at >= issues[k] && issues.get(k + 1).is_none_or(|next| at < next),
            "restart {k} is not between issue {k} and the next one: {explain}"
        );
    }
    // And the stamps really roll the Deployment out: the deployment controller made a ReplicaSet
    // for the last pod template, beside the first one, which keeps the template as created.
    let final_stamp = final_stamp.expect("the Deployment is stamped");
    let rollout = wait_rollout(&client, &ns.name, "app", &final_stamp).await;
    assert_ne!(
        rollout.first_hash, rollout.last_hash,
        "the new ReplicaSet has a pod template hash of its own: {rollout:?}"
    );
    for stamp in &rollout.stamps {
        assert!(
            stamp.as_ref().is_none_or(|s| stamp_values.contains(s)),
            "every ReplicaSet's template is the Deployment's as created or as stamped: {rollout:?}"
        );
    }
    eprintln!("rollout restarts: {rollout:?}");
}

/// The ReplicaSets of a Deployment after its rollouts, as [`wait_rollout`] found them.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read through Debug in failure messages
struct Rollout {
    /// The pod-template-hash of the first ReplicaSet (the template without a stamp).
    first_hash: String,
    /// Its replicas: scaled down, or left as they were while the new Pods are not available
    /// (they never are here: no scheduler, no kubelet).
    first_replicas: Option<i32>,
    /// The pod-template-hash of the ReplicaSet for the last stamp.
    last_hash: String,
    last_replicas: Option<i32>,
    /// The restartedAt annotation of every ReplicaSet's pod template, oldest revision first.
    stamps: Vec<Option<String>>,
}

/// Waits until Deployment `name` has, among the ReplicaSets it controls, the first one (its
/// template without the restartedAt annotation) and one for `stamp` with a higher revision.
async fn wait_rollout(client: &Client, namespace: &str, name: &str, stamp: &str) -> Rollout {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), namespace);
    let template_stamp = |rs: &ReplicaSet| -> Option<String> {
        rs.spec
            .as_ref()?
            .template
            .as_ref()?
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(RESTARTED_AT_ANNOTATION)
            .cloned()
    };
    let revision = |rs: &ReplicaSet| -> u64 {
        rs.annotations()
            .get("deployment.kubernetes.io/revision")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    };
    let hash = |rs: &ReplicaSet| {
        rs.labels()
            .get("pod-template-hash")
            .cloned()
            .unwrap_or_default()
    };
    let replicas = |rs: &ReplicaSet| rs.spec.as_ref().and_then(|s| s.replicas);
    let outcome = common::try_poll(CONVERGE, || {
        let (deployments, replica_sets) = (deployments.clone(), replica_sets.clone());
        async move {
            let deployment = deployments.get(name).await.map_err(|e| e.to_string())?;
            let uid = deployment.uid();
            let mut owned: Vec<ReplicaSet> = replica_sets
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .filter(|rs| {
                    rs.owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
                })
                .collect();
            owned.sort_by_key(revision);
            let summary: Vec<String> = owned
                .iter()
                .map(|rs| {
                    format!(
                        "{} rev {} hash {} replicas {:?} stamp {:?}",
                        rs.name_any(),
                        revision(rs),
                        hash(rs),
                        replicas(rs),
                        template_stamp(rs)
                    )
                })
                .collect();
            let first = owned.iter().find(|rs| template_stamp(rs).is_none());
            let last = owned
                .last()
                .filter(|rs| template_stamp(rs).as_deref() == Some(stamp));
            match (first, last) {
                (Some(first), Some(last)) if revision(last) > revision(first) => Ok(Rollout {
                    first_hash: hash(first),
                    first_replicas: replicas(first),
                    last_hash: hash(last),
                    last_replicas: replicas(last),
                    stamps: owned.iter().map(template_stamp).collect(),
                }),
                _ => Err(format!("ReplicaSets of Deployment {name}: {summary:?}")),
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|last| {
        fail(
            &format!(
                "timed out waiting for Deployment {namespace}/{name} to roll out a ReplicaSet \
                 for restartedAt {stamp}"
            ),
            &last,
        )
    })
}

#[tokio::test]
async fn a_secret_name_owned_by_someone_else_is_left_alone() {
    let _serial = common::serial().await;
    let op = operator().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "taken").await;
    let role_name = common::unique("CredsTaken");
    let _role = TargetRoleGuard::new(&role_name);
    let _cleanup = CleanupOnPanic {
        namespace: ns.name.clone(),
    };
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken", "namespace": ns.name},
        "type": "Opaque",
        "stringData": {"AWS_ACCESS_KEY_ID": "theirs", "note": "not the operator's"},
    }))
    .unwrap();
    let theirs = secrets
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create Secret taken");
    let before = op.assume_roles().await;

    common::create_role(
        &client,
        &ns.name,
        "claim",
        role_spec(&role_name, json!({"secretName": "taken"})),
    )
    .await;
    wait_role(
        &client,
        &ns.name,
        "claim",
        "CredentialsReady=False (SecretNotOwned) and Ready=False",
        |cr| {
            has_condition(cr, "CredentialsReady", "False", Some("SecretNotOwned"))
                && has_condition(cr, "Ready", "False", None)
        },
    )
    .await;
    // And so it stays, reconcile after reconcile.
    let cr = await_reconcile(&client, &ns.name, "claim").await;
    assert!(
        has_condition(&cr, "CredentialsReady", "False", Some("SecretNotOwned"))
            && has_condition(&cr, "Ready", "False", None)
            && has_condition(&cr, "RoleSynced", "True", None),
        "{}",
        common::describe_role(&cr)
    );
    let warnings = events_with_reason(&client, &ns.name, "claim", "SecretNotOwned").await;
    assert!(
        warnings
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning")),
        "a Warning event says why: {warnings:#?}"
    );
    let unchanged = |secret: &Secret, when: &str| {
        assert_eq!(
            secret.resource_version(),
            theirs.resource_version(),
            "Secret taken is not written {when}{}",
            interference()
        );
        assert_eq!(
            secret.data, theirs.data,
            "Secret taken keeps its data {when}"
        );
        assert!(
            secret.owner_references().is_empty(),
            "Secret taken gets no owner {when}"
        );
    };
    unchanged(
        &secrets.get("taken").await.unwrap(),
        "while the CR wants it",
    );
    assert_eq!(
        op.assume_roles().await,
        before,
        "no credentials are minted for a Secret that cannot be written{}",
        interference()
    );

    delete_role(&client, &ns.name, "claim").await;
    let secret = secrets
        .get_opt("taken")
        .await
        .unwrap()
        .expect("Secret taken survives the deletion of the CR");
    unchanged(&secret, "by the deletion of the CR");
}

/// The owner reference on the Secret is right (the garbage collector honours it): when the
/// operator is gone (uninstalled) and an admin deletes a CrossAccountRole by removing the
/// finalizer no one will release, the Secret goes with it.
#[tokio::test]
async fn the_secret_of_a_role_deleted_without_the_operator_is_garbage_collected() {
    let _serial = common::serial().await;
    operator().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "orphan").await;
    let role_name = common::unique("CredsOrphan");
    // The operator will not clean AWS up: this guard does.
    let _role = TargetRoleGuard::new(&role_name);
    let _cleanup = CleanupOnPanic {
        namespace: ns.name.clone(),
    };
    common::create_role(
        &client,
        &ns.name,
        "orphan",
        role_spec(&role_name, json!({})),
    )
    .await;
    wait_credentials_ready(&client, &ns.name, "orphan").await;
    let secret = get_secret(&client, &ns.name, "orphan-aws")
        .await
        .expect("the Secret exists");

    // No operator from here on, until the next test starts one.
    let old = CURRENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("an operator is running");
    tokio::task::spawn_blocking(move || old.stop())
        .await
        .expect("stop the operator");
    let roles = common::roles_api(&client, &ns.name);
    roles
        .delete("orphan", &DeleteParams::default())
        .await
        .expect("delete CrossAccountRole orphan");
    roles
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove the finalizer");
    let outcome = common::try_poll(GONE, || {
        let roles = roles.clone();
        async move {
            match roles.get_opt("orphan").await {
                Ok(None) => Ok(()),
                Ok(Some(cr)) => Err(common::describe_role(&cr)),
                Err(e) => Err(format!("get: {e}")),
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        fail("the CrossAccountRole without finalizer is not gone", &last);
    }

    // The garbage collector learns of the CRD within 30 s of its creation, then acts at once.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let outcome = common::try_poll(Duration::from_secs(90), || {
        let secrets = secrets.clone();
        async move {
            match secrets.get_opt("orphan-aws").await {
                Ok(None) => Ok(()),
                Ok(Some(s)) => Err(format!("still there, owners {:?}", s.owner_references())),
                Err(e) => Err(format!("get: {e}")),
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        fail(
            &format!(
                "the garbage collector did not delete Secret orphan-aws (owners {:?})",
                secret.owner_references()
            ),
            &last,
        );
    }
}

#[tokio::test]
async fn deleting_the_role_removes_its_secret_and_iam_role() {
    let _serial = common::serial().await;
    let op = operator().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "gone").await;
    let role_name = common::unique("CredsGone");
    let _role = TargetRoleGuard::new(&role_name);
    let _cleanup = CleanupOnPanic {
        namespace: ns.name.clone(),
    };
    common::create_role(&client, &ns.name, "gone", role_spec(&role_name, json!({}))).await;
    wait_credentials_ready(&client, &ns.name, "gone").await;
    assert!(
        get_secret(&client, &ns.name, "gone-aws").await.is_some(),
        "the Secret exists"
    );
    assert!(op.expiry_seconds(&ns.name, "gone").await.is_some());
    let target = common::target_iam().await;
    assert!(
        common::get_iam_role(&target, &role_name).await.is_some(),
        "the role exists"
    );

    delete_role(&client, &ns.name, "gone").await;
    assert!(
        get_secret(&client, &ns.name, "gone-aws").await.is_none(),
        "the operator deletes the Secret before it releases the CR (not left to the garbage \
         collector, which a cluster may lack)"
    );
    assert!(
        common::get_iam_role(&target, &role_name).await.is_none(),
        "the IAM role is deleted"
    );
    assert_eq!(
        op.expiry_seconds(&ns.name, "gone").await,
        None,
        "the expiry gauge is removed"
    );
}
