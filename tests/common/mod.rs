//! Shared helpers for the integration tests. They run against the local environment that
//! `make env-up` starts; its variables come from `target/devenv/env` (the Makefile loads it).
//!
//! The shared test operator of a test binary ([`Operator::shared`]) reaches AWS through an AWS
//! proxy without faults ([`shared_proxy`], tests/common/aws_proxy.rs): what it did to AWS is
//! counted there, every attempt whatever its outcome, not in the operator's own metrics (which
//! report only what the operator believes it did). Every operator the tests start reaches AWS
//! through a proxy with IAM as AWS (the proxy's default): IAM's quotas and parameter
//! constraints are enforced as AWS enforces them, which moto alone does not.
#![allow(dead_code)] // each test binary uses a different subset

pub mod aws_proxy;
pub mod kubelet_mount;
pub mod tenant;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex, OnceLock},
    time::Duration,
};

use aws_proxy::{AwsProxy, LoggedRequest};
use cross_account_operator::api::{AwsAccount, CrossAccountRole};
use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

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
/// allows those). Deleted when the guard drops: the environment's namespace controller deletes
/// what is in it, and the namespace goes once nothing is left. CrossAccountRoles with the
/// operator's finalizer keep it Terminating until an operator releases them (the next test
/// binary's, if this one's has exited), which is fine: nothing waits for it.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        Self::with_labels(client, prefix, json!({"crossaccount.io/tenant": "true"})).await
    }

    /// A namespace without the tenant label: the devenv AwsAccount does not allow it.
    pub async fn not_tenant(client: &Client, prefix: &str) -> Self {
        Self::with_labels(client, prefix, json!({})).await
    }

    /// A namespace with exactly `labels`.
    pub async fn with_labels(client: &Client, prefix: &str, labels: Value) -> Self {
        let name = unique(prefix);
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels}
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
        // A test that failed half-way leaves CrossAccountRoles behind; with an operator running
        // in this binary, delete them and give it the chance to clean up AWS and release them
        // now, while it runs (the namespace controller would delete them too, but only once the
        // namespace is deleted, and an operator may no longer run by then).
        if std::thread::panicking() && Operator::running().is_some() {
            delete_roles_of(&name, Duration::from_secs(60));
        }
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
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    try_poll(timeout, check).await.unwrap_or_else(|last| {
        panic!("timed out after {timeout:?} waiting for {what}; last state: {last}")
    })
}

/// Like [`poll`], but returns the last state `check` reported instead of panicking at the
/// deadline (for callers that add more context to the failure).
pub async fn try_poll<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if tokio::time::Instant::now() >= deadline => return Err(last),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The exit status of a child process, filled in (and signalled) by the thread that waits for it.
pub type ExitSlot = Arc<(Mutex<Option<String>>, Condvar)>;

/// Starts `command` from a thread of its own that lives as long as the process does, with
/// `PR_SET_PDEATHSIG` so the child dies with the test binary. (The signal fires when the *thread*
/// that spawned the child ends, and test threads end after each test.) Returns the pid and the
/// slot its exit status lands in.
pub fn spawn_tied_to_test(mut command: Command) -> Result<(u32, ExitSlot), String> {
    let exit: ExitSlot = Arc::new((Mutex::new(None), Condvar::new()));
    let exit_of_thread = exit.clone();
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tied-process".into())
        .spawn(move || {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = pid_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = pid_tx.send(Ok(child.id()));
            let status = match child.wait() {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            let (lock, cvar) = &*exit_of_thread;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
            cvar.notify_all();
        })
        .map_err(|e| e.to_string())?;
    let pid = pid_rx
        .recv()
        .map_err(|_| "the spawning thread ended without reporting".to_owned())??;
    Ok((pid, exit))
}

/// Name of the devenv's AwsAccount for the target account.
pub fn account_name() -> String {
    env("TARGET_ACCOUNT_NAME")
}

/// ARN of a role (path `/`) in the target account.
pub fn role_arn(role_name: &str) -> String {
    format!("arn:aws:iam::{}:role/{role_name}", env("TARGET_ACCOUNT_ID"))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// The operator binary, shared by the tests of one test binary.
// ---------------------------------------------------------------------------------------------

/// How often the shared test operator resyncs every object with AWS.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(3);
/// `--cluster-name` of the shared test operator: part of ownership tags and external IDs.
pub const CLUSTER_NAME: &str = "it";

/// How [`Operator::start_with`] differs from the default test operator.
#[derive(Default, Clone)]
pub struct OperatorOptions {
    /// `AWS_ENDPOINT_URL` of the operator (default: a proxy of the operator's own in front of
    /// the environment's, with IAM as AWS).
    pub aws_endpoint: Option<String>,
    /// `--resync-interval` (default [`RESYNC_INTERVAL`]).
    pub resync: Option<Duration>,
    /// Flags after the default ones.
    pub args: Vec<String>,
    /// Environment variables besides the inherited ones.
    pub env: Vec<(String, String)>,
}

/// The operator binary running as a child process of this test binary, with its HTTP endpoints
/// on a free loopback port and its log in `<devenv>/logs/operator-<test binary>.log`.
pub struct Operator {
    pid: u32,
    base_url: String,
    log_path: PathBuf,
    exit: Arc<(Mutex<Option<String>>, Condvar)>,
    /// The operator's own AWS proxy, when no endpoint was given.
    _proxy: Option<AwsProxy>,
}

static OPERATOR: OnceLock<Operator> = OnceLock::new();
static SHARED_PROXY: OnceLock<AwsProxy> = OnceLock::new();

/// The AWS proxy (no fault rules) between this test binary's shared operator and the
/// environment's AWS: the ground truth of what that operator did to AWS. It runs on a runtime of
/// its own (each `#[tokio::test]` has its own runtime, and this proxy must outlive the test that
/// started it) and lives as long as the test binary.
/// An access key ID as test output may show it: its first four and last two characters.
pub fn masked_key(key: &str) -> String {
    let n = key.len();
    if n < 8 || !key.is_ascii() {
        return "****".into();
    }
    format!("{}…{}", &key[..4], &key[n - 2..])
}

pub fn shared_proxy() -> &'static AwsProxy {
    SHARED_PROXY.get_or_init(|| AwsProxy::start_on_own_runtime(&env("AWS_ENDPOINT_URL")))
}

/// IAM operations that change something: every request of one counts as a write attempt,
/// whatever its outcome.
pub const IAM_WRITE_OPERATIONS: &[&str] = &[
    "CreateRole",
    "UpdateAssumeRolePolicy",
    "UpdateRole",
    "PutRolePermissionsBoundary",
    "DeleteRolePermissionsBoundary",
    "TagRole",
    "UntagRole",
    "AttachRolePolicy",
    "DetachRolePolicy",
    "PutRolePolicy",
    "DeleteRolePolicy",
    "DeleteRole",
    "PutUserPolicy",
    "DeleteUserPolicy",
    // Grants: customer managed policies on source-account principals.
    "CreatePolicy",
    "CreatePolicyVersion",
    "DeletePolicyVersion",
    "DeletePolicy",
    "AttachUserPolicy",
    "DetachUserPolicy",
];

/// The session name of the operator's own management-role sessions: their AssumeRole calls do
/// not mint credentials for a CrossAccountRole.
pub const MANAGEMENT_SESSION_NAME: &str = "cross-account-operator";

/// Whether `request` is an attempt of an IAM write (whatever its outcome).
pub fn is_iam_write(request: &LoggedRequest) -> bool {
    request.service == "iam" && IAM_WRITE_OPERATIONS.contains(&request.operation.as_str())
}

/// Whether `request` is an AssumeRole that mints credentials (whatever its outcome): any but the
/// operator's management-role sessions.
pub fn is_credential_mint(request: &LoggedRequest) -> bool {
    request.is("sts", "AssumeRole")
        && request.param("RoleSessionName") != Some(MANAGEMENT_SESSION_NAME)
}

/// Attempts of IAM writes among `requests`, per operation (operations without any left out).
pub fn iam_write_attempts(requests: &[LoggedRequest]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for request in requests.iter().filter(|r| is_iam_write(r)) {
        *counts.entry(request.operation.clone()).or_default() += 1;
    }
    counts
}

/// Polls until `proxy` has seen at least `at_least` GetRole requests for each of `role_names`
/// since `since` (each a reconcile that read the role from IAM), for up to `timeout`; returns
/// the GetRole counts per role name, or the roles still short at the deadline.
pub async fn try_wait_for_role_reads(
    proxy: &AwsProxy,
    since: &aws_proxy::RequestMark,
    role_names: &[String],
    at_least: u64,
    timeout: Duration,
) -> Result<BTreeMap<String, u64>, String> {
    try_poll(timeout, || async {
        let reads = proxy.count_per_param_since(since, "GetRole", "RoleName");
        let count = |name: &String| reads.get(name).copied().unwrap_or(0);
        let short: Vec<String> = role_names
            .iter()
            .filter(|name| count(name) < at_least)
            .map(|name| format!("{name}: {}", count(name)))
            .collect();
        if short.is_empty() {
            Ok(role_names.iter().map(|n| (n.clone(), count(n))).collect())
        } else {
            Err(format!("GetRole requests so far: {}", short.join(", ")))
        }
    })
    .await
}

/// [`try_wait_for_role_reads`] on the shared operator's proxy; panics with the counts and the
/// operator's log at the deadline.
pub async fn wait_for_role_reads(
    since: &aws_proxy::RequestMark,
    role_names: &[String],
    at_least: u64,
    timeout: Duration,
) {
    if let Err(last) =
        try_wait_for_role_reads(shared_proxy(), since, role_names, at_least, timeout).await
    {
        fail_with_operator_log(
            &format!(
                "timed out after {timeout:?} waiting for {at_least} GetRole requests for each of \
                 {role_names:?}"
            ),
            &last,
        );
    }
}

/// One line per request (their summaries, no credentials), for failure messages.
pub fn describe_requests<'a>(requests: impl IntoIterator<Item = &'a LoggedRequest>) -> String {
    let lines: Vec<String> = requests.into_iter().map(LoggedRequest::summary).collect();
    if lines.is_empty() {
        "  (none)".to_owned()
    } else {
        format!("  {}", lines.join("\n  "))
    }
}

impl Operator {
    /// The operator of this test binary: started on first use, shared by all its tests, reaching
    /// AWS through [`shared_proxy`]. Returns once `/readyz` answers 200. It is stopped (SIGTERM)
    /// when the test binary exits.
    pub async fn shared() -> &'static Operator {
        let operator = OPERATOR.get_or_init(Operator::spawn);
        operator.wait_ready().await;
        operator
    }

    /// The shared operator, if a test of this binary started it.
    pub fn running() -> Option<&'static Operator> {
        OPERATOR.get()
    }

    fn spawn() -> Operator {
        Operator::start_logged(
            env!("CARGO_CRATE_NAME"),
            OperatorOptions {
                aws_endpoint: Some(shared_proxy().endpoint()),
                ..OperatorOptions::default()
            },
        )
    }

    /// [`Operator::start_with`] writing its log to `<devenv>/logs/operator-<name>.log`.
    pub fn start_logged(name: &str, options: OperatorOptions) -> Operator {
        let log_dir = devenv_dir().join("logs");
        std::fs::create_dir_all(&log_dir).expect("create target/devenv/logs");
        let log_path = log_dir.join(format!("operator-{name}.log"));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        Operator::start_with(log, log_path, options)
    }

    /// Starts an operator process of this binary's own (`--cluster-name it`, the short resync)
    /// that writes to `log` (found at `log_path`), tied to the test binary's life. Tests that need
    /// to restart the operator use this instead of [`Operator::shared`].
    pub fn start(log: std::fs::File, log_path: PathBuf) -> Operator {
        Operator::start_with(log, log_path, OperatorOptions::default())
    }

    /// [`Operator::start`] with `options`: another AWS endpoint (a fault proxy), more flags and
    /// environment variables.
    pub fn start_with(log: std::fs::File, log_path: PathBuf, options: OperatorOptions) -> Operator {
        env("KUBECONFIG");
        env("AWS_ENDPOINT_URL");
        hold_environment();
        let port = free_port();
        let log_err = log.try_clone().expect("clone the log file handle");
        let mut command = Command::new(OPERATOR_BIN);
        command
            .args([
                "--cluster-name",
                CLUSTER_NAME,
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--resync-interval",
                &format!(
                    "{}ms",
                    options.resync.unwrap_or(RESYNC_INTERVAL).as_millis()
                ),
            ])
            .args(&options.args)
            .env("RUST_LOG", "info,cross_account_operator=debug")
            .env("NO_COLOR", "1")
            // No IAM budget to speak of (moto answers about 110 requests a second): tests load
            // one account far beyond the default's. tests/fairness.rs tries the budget itself.
            .env("IAM_RATE", "1000")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // Never straight to moto: AWS's rules hold for every operator (IAM as AWS).
        let proxy = options
            .aws_endpoint
            .is_none()
            .then(|| AwsProxy::start_on_own_runtime(&env("AWS_ENDPOINT_URL")));
        let endpoint = options
            .aws_endpoint
            .clone()
            .or_else(|| proxy.as_ref().map(AwsProxy::endpoint));
        if let Some(endpoint) = &endpoint {
            command.env("AWS_ENDPOINT_URL", endpoint);
        }
        let (pid, exit) = spawn_tied_to_test(command).unwrap_or_else(|e| {
            panic!("cannot start {OPERATOR_BIN}: {e} (run `cargo build --bins`)")
        });
        Operator {
            pid,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path,
            exit,
            _proxy: proxy,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status when the process has ended.
    pub fn exited(&self) -> Option<String> {
        self.exit
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Returns once `/readyz` answers 200; panics with the log tail if the process exits first.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.base_url);
        let outcome = try_poll(Duration::from_secs(60), || {
            let url = url.clone();
            let exited = self.exited();
            async move {
                if let Some(status) = exited {
                    return Ok(Err(format!("the operator exited with {status}")));
                }
                match http_get(&url).await {
                    Ok((200, _)) => Ok(Ok(())),
                    Ok((status, body)) => Err(format!("status {status}: {body}")),
                    Err(e) => Err(e),
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => panic!("{why}\n{}", self.log_tail(40)),
            Err(last) => panic!(
                "the operator's /readyz did not answer 200 within 60s; last: {last}\n{}",
                self.log_tail(40)
            ),
        }
    }

    /// The HTTP status of `/healthz`.
    pub async fn healthz(&self) -> Result<u16, String> {
        http_get(&format!("{}/healthz", self.base_url))
            .await
            .map(|(status, _)| status)
    }

    /// `/metrics` in the Prometheus text format.
    pub async fn metrics_text(&self) -> String {
        match http_get(&format!("{}/metrics", self.base_url)).await {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("/metrics answered {status}: {body}"),
            Err(e) => panic!("/metrics: {e}\n{}", self.log_tail(40)),
        }
    }

    /// `crossaccount_reconciles_total` for `kind`.
    pub async fn reconciles(&self, kind: &str) -> u64 {
        let text = self.metrics_text().await;
        metric_sum(&text, "crossaccount_reconciles_total", &[("kind", kind)])
    }

    /// The last `lines` lines of the operator's log, headed by the file's path.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        // DEBUG lines (every AWS error answer, e.g. the NoSuchEntity of each probe) would
        // crowd out the warnings that explain a failure.
        let all: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
            .collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- last {lines} lines (INFO and above) of {} ---\n{tail}\n--- end of operator log ---",
            self.log_path.display()
        )
    }

    /// SIGKILL (no chance to finish anything), then waits for the process to end; returns its
    /// exit status.
    pub fn kill(&self) -> String {
        if self.exited().is_none() {
            // SAFETY: kill(2) on the pid of our own child, not reaped yet (see `stop`).
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let (lock, cvar) = &*self.exit;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cvar
            .wait_timeout_while(guard, Duration::from_secs(10), |status| status.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard
            .clone()
            .unwrap_or_else(|| panic!("the operator survived SIGKILL for 10s"))
    }

    /// SIGTERM, then waits (up to 30 s) for the process to end; returns its exit status.
    pub fn stop(&self) -> String {
        if self.exited().is_none() {
            // SAFETY: plain kill(2) on the pid of our own child, which has not been reaped yet
            // (the exit status is recorded only after the reap).
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let (lock, cvar) = &*self.exit;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cvar
            .wait_timeout_while(guard, Duration::from_secs(30), |status| status.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard
            .clone()
            .unwrap_or_else(|| panic!("the operator ignored SIGTERM for 30s"))
    }
}

const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_cross-account-operator");

/// The state directory of the environment the tests talk to: the directory of `$KUBECONFIG`
/// when that is a devenv (`make env-up` writes `target/devenv/kubeconfig`, next to `pids/` and
/// `logs/`), else `target/devenv` of this repository.
/// Every test operator reconciles every CrossAccountRole of the environment (one cluster name,
/// all namespaces), so two test binaries running operators at once (from two checkouts sharing
/// one environment) would act on each other's objects and each count the other's AWS calls. The
/// first operator a binary starts takes an exclusive lock on the environment, held until the
/// binary exits; another binary's operator waits for it.
pub fn hold_environment() {
    use std::os::fd::AsRawFd;
    static HELD: OnceLock<std::fs::File> = OnceLock::new();
    HELD.get_or_init(|| {
        let path = devenv_dir().join("operators.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: flock on a file descriptor this function owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!(
                "waiting for another test binary's operators to finish ({})",
                path.display()
            );
            // SAFETY: as above.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            assert_eq!(rc, 0, "lock {}", path.display());
        }
        file
    });
}

pub fn devenv_dir() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .and_then(|kubeconfig| kubeconfig.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("pids").is_dir())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/devenv"))
}

/// GET `url`: status and body. A fresh client per call: connection pools are bound to the
/// runtime that created them, and every test has its own runtime.
async fn http_get(url: &str) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// The sum of the samples of `name` in a Prometheus text exposition whose labels include all of
/// `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((sample_name, sample_labels, value)) = parse_sample(line) else {
            continue;
        };
        if sample_name == name
            && labels
                .iter()
                .all(|(k, v)| sample_labels.get(*k).map(String::as_str) == Some(*v))
        {
            sum += value;
        }
    }
    sum as u64
}

/// `name{k="v",...} value` (labels optional) into its parts.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            let value = value.split_whitespace().next()?.parse().ok()?;
            return Some((name, BTreeMap::new(), value));
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    let end = loop {
        let (start, c) = chars.next()?;
        if c == '}' {
            break start;
        }
        if c == ',' || c == ' ' {
            continue;
        }
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].to_owned();
        while chars.peek().is_some_and(|&(i, _)| i <= eq + 1) {
            chars.next();
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                (_, '\\') => value.push(chars.next()?.1),
                (_, '"') => break,
                (_, c) => value.push(c),
            }
        }
        labels.insert(key, value);
    };
    let value = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Tests that compare what reached AWS between two points (or metric deltas), or disturb the
/// shared environment (freezing AWS), take this lock so that one of them runs at a time.
/// Async-aware; a test that panics while holding it releases it (no poisoning).
pub async fn serial() -> futures::lock::MutexGuard<'static, ()> {
    static SERIAL: futures::lock::Mutex<()> = futures::lock::Mutex::new(());
    SERIAL.lock().await
}

// ---------------------------------------------------------------------------------------------
// AWS (moto) as the tests see it.
// ---------------------------------------------------------------------------------------------

/// Bounded timeouts for the tests' own AWS clients, so a frozen endpoint fails a test instead of
/// hanging it.
fn test_aws_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(45))
        .build()
}

/// The SDK configuration of the operator's own identity (its keys from `target/devenv/env`).
pub async fn operator_aws_config() -> aws_config::SdkConfig {
    env("AWS_ENDPOINT_URL");
    env("AWS_ACCESS_KEY_ID");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(test_aws_timeouts())
        .load()
        .await
}

/// IAM in the source account as the operator's user (it may read and write inline policies of
/// users and roles there, enough to inspect grants).
pub async fn source_iam() -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&operator_aws_config().await)
}

/// From a panicking test's drop: deletes every CrossAccountRole of `namespaces` and waits up to a
/// minute for them to go, on a thread and runtime of its own (the test's runtime is blocked in
/// the drop), so that an operator still running removes their roles before it exits.
pub fn delete_roles_while_the_operator_runs(namespaces: Vec<String>) {
    on_own_runtime(async move {
        if let Ok(client) = Client::try_default().await {
            for ns in &namespaces {
                let _ = delete_roles_and_wait(&client, ns, Duration::from_secs(60)).await;
            }
        }
    });
}

/// The test bed's administrator of the source account (`SOURCE_ADMIN_*` in `target/devenv/env`,
/// made by the seed): for what the operator's identity may not do, such as making principals
/// and cleaning up after tests.
pub fn source_admin_config() -> aws_config::ConfigLoader {
    let credentials = aws_credential_types::Credentials::new(
        env("SOURCE_ADMIN_ACCESS_KEY_ID"),
        env("SOURCE_ADMIN_SECRET_ACCESS_KEY"),
        None,
        None,
        "devenv-admin",
    );
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(test_aws_timeouts())
        .credentials_provider(credentials)
}

/// IAM in the source account as the test bed's administrator.
pub async fn source_admin_iam() -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&source_admin_config().load().await)
}

/// IAM in the target account, through the management role (AssumeRole with the operator's keys).
pub async fn target_iam() -> aws_sdk_iam::Client {
    let base = operator_aws_config().await;
    let role_arn = env("MANAGEMENT_ROLE_ARN");
    let assumed = aws_sdk_sts::Client::new(&base)
        .assume_role()
        .role_arn(&role_arn)
        .role_session_name("integration-test")
        .send()
        .await
        .unwrap_or_else(|e| panic!("AssumeRole {role_arn}: {e:?}"));
    let c = assumed
        .credentials()
        .expect("AssumeRole returns credentials");
    let credentials = aws_credential_types::Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "integration-test",
    );
    let config = base
        .to_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
        )
        .build();
    aws_sdk_iam::Client::new(&config)
}

/// A policy document as IAM returns it (percent-encoded JSON), parsed.
pub fn policy_json(text: &str) -> Value {
    let decoded = if text.trim_start().starts_with('{') {
        text.to_owned()
    } else {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .unwrap_or_else(|e| panic!("policy document is not UTF-8 after decoding: {e}"))
            .into_owned()
    };
    serde_json::from_str(&decoded)
        .unwrap_or_else(|e| panic!("policy document is not JSON ({e}): {decoded}"))
}

/// Whether an IAM error is `NoSuchEntity`.
pub fn is_no_such_entity<E>(err: &aws_sdk_iam::error::SdkError<E>) -> bool
where
    E: aws_sdk_iam::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "NoSuchEntity")
}

/// The role `name` in the account of `iam`, or `None` when it does not exist.
pub async fn get_iam_role(
    iam: &aws_sdk_iam::Client,
    name: &str,
) -> Option<aws_sdk_iam::types::Role> {
    match iam.get_role().role_name(name).send().await {
        Ok(out) => out.role().cloned(),
        Err(e) if is_no_such_entity(&e) => None,
        Err(e) => panic!("GetRole {name}: {e:?}"),
    }
}

/// The ARNs of the managed policies attached to role `name`.
pub async fn attached_policies(iam: &aws_sdk_iam::Client, name: &str) -> BTreeSet<String> {
    let out = iam
        .list_attached_role_policies()
        .role_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ListAttachedRolePolicies {name}: {e:?}"));
    out.attached_policies()
        .iter()
        .filter_map(|p| p.policy_arn().map(str::to_owned))
        .collect()
}

/// The inline policies of role `name`, parsed.
pub async fn inline_policies(iam: &aws_sdk_iam::Client, name: &str) -> BTreeMap<String, Value> {
    let names = iam
        .list_role_policies()
        .role_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ListRolePolicies {name}: {e:?}"));
    let mut policies = BTreeMap::new();
    for policy in names.policy_names() {
        let out = iam
            .get_role_policy()
            .role_name(name)
            .policy_name(policy)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetRolePolicy {name} {policy}: {e:?}"));
        policies.insert(policy.clone(), policy_json(out.policy_document()));
    }
    policies
}

/// The tags of role `name`.
pub async fn role_tags(iam: &aws_sdk_iam::Client, name: &str) -> BTreeMap<String, String> {
    let out = iam
        .list_role_tags()
        .role_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ListRoleTags {name}: {e:?}"));
    out.tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

/// The inline policies of user `user`, parsed.
pub async fn user_policies(iam: &aws_sdk_iam::Client, user: &str) -> BTreeMap<String, Value> {
    let names = iam
        .list_user_policies()
        .user_name(user)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ListUserPolicies {user}: {e:?}"));
    let mut policies = BTreeMap::new();
    for policy in names.policy_names() {
        let out = iam
            .get_user_policy()
            .user_name(user)
            .policy_name(policy)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetUserPolicy {user} {policy}: {e:?}"));
        policies.insert(policy.clone(), policy_json(out.policy_document()));
    }
    policies
}

/// The operator's grant policies attached to user `user` (names under `/crossaccount/`); empty
/// when the user has none or does not exist.
pub async fn user_grant_policies(iam: &aws_sdk_iam::Client, user: &str) -> BTreeSet<String> {
    match iam
        .list_attached_user_policies()
        .user_name(user)
        .path_prefix("/crossaccount/")
        .send()
        .await
    {
        Ok(out) => out
            .attached_policies()
            .iter()
            .filter_map(|p| p.policy_name().map(str::to_owned))
            .collect(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_no_such_entity_exception()) =>
        {
            BTreeSet::new()
        }
        Err(e) => panic!("ListAttachedUserPolicies {user}: {e:?}"),
    }
}

/// The tag of role grants to user `user` (its value is the cluster name).
pub fn grant_tag(user: &str) -> String {
    format!("crossaccount.io/grant/user/{user}")
}

/// Whether the operator (of cluster `cluster`) granted user `user` role `role_name`, both halves:
/// the role is tagged for the user and its trust policy allows the user (target account), and
/// the user has the cluster's grant policy (source account).
pub async fn user_granted(
    source: &aws_sdk_iam::Client,
    target: &aws_sdk_iam::Client,
    cluster: &str,
    user: &str,
    role_name: &str,
) -> bool {
    let Some(role) = get_iam_role(target, role_name).await else {
        return false;
    };
    let tagged = role_tags(target, role_name)
        .await
        .get(&grant_tag(user))
        .map(String::as_str)
        == Some(cluster);
    let user_arn = format!("arn:aws:iam::{}:user/{user}", env("SOURCE_ACCOUNT_ID"));
    let trust = policy_json(role.assume_role_policy_document().unwrap_or_default());
    let trusted = trust.to_string().contains(&format!("\"{user_arn}\""));
    let policy = user_grant_policies(source, user)
        .await
        .contains(&format!("crossaccount-{cluster}-user-{user}"));
    tagged && trusted && policy
}

/// Removes role `name` with its attached and inline policies; nothing happens when it does not
/// exist.
pub async fn delete_iam_role(iam: &aws_sdk_iam::Client, name: &str) {
    if get_iam_role(iam, name).await.is_none() {
        return;
    }
    for arn in attached_policies(iam, name).await {
        if let Err(e) = iam
            .detach_role_policy()
            .role_name(name)
            .policy_arn(&arn)
            .send()
            .await
            && !is_no_such_entity(&e)
        {
            panic!("DetachRolePolicy {name} {arn}: {e:?}");
        }
    }
    for policy in inline_policies(iam, name).await.into_keys() {
        if let Err(e) = iam
            .delete_role_policy()
            .role_name(name)
            .policy_name(&policy)
            .send()
            .await
            && !is_no_such_entity(&e)
        {
            panic!("DeleteRolePolicy {name} {policy}: {e:?}");
        }
    }
    if let Err(e) = iam.delete_role().role_name(name).send().await
        && !is_no_such_entity(&e)
    {
        panic!("DeleteRole {name}: {e:?}");
    }
}

/// Deletes IAM role `name` in the target account when dropped (also when the test panics), for
/// roles a test creates itself or that the operator leaves behind on purpose (`Retain`).
pub struct TargetRoleGuard {
    pub name: String,
}

impl TargetRoleGuard {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }
}

impl Drop for TargetRoleGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        on_own_runtime(async move {
            let iam = target_iam().await;
            delete_iam_role(&iam, &name).await;
        });
    }
}

/// Runs `work` to completion on a runtime of its own in another thread. Drop impls use it: the
/// test's runtime is blocked in the drop, so clients living on it cannot be used there.
/// Deletes every CrossAccountRole of `namespace` and waits (up to `timeout`, best effort) until
/// a running operator has released them; for a test that panics half-way. It runs on a runtime
/// and client of its own: the test's runtime is blocked in the drop that calls this.
pub fn delete_roles_of(namespace: &str, timeout: Duration) {
    let namespace = namespace.to_owned();
    on_own_runtime(async move {
        if let Ok(client) = Client::try_default().await {
            let _ = delete_roles_and_wait(&client, &namespace, timeout).await;
        }
    });
}

/// Deletes every CrossAccountRole of `namespace` and waits up to `timeout` until they are gone
/// (an operator running has released them); `Err` says how many were left.
pub async fn delete_roles_and_wait(
    client: &Client,
    namespace: &str,
    timeout: Duration,
) -> Result<(), String> {
    let api = roles_api(client, namespace);
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .map_err(|e| format!("delete the CrossAccountRoles of {namespace}: {e}"))?;
    try_poll(timeout, || {
        let api = api.clone();
        async move {
            match api.list(&ListParams::default()).await {
                Ok(list) if list.items.is_empty() => Ok(()),
                Ok(list) => Err(format!("{} left in {namespace}", list.items.len())),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

pub fn on_own_runtime<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let result = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work)
    })
    .join();
    if let Err(panic) = result
        && !std::thread::panicking()
    {
        std::panic::resume_unwind(panic);
    }
}

/// SIGSTOP on the local moto server until dropped (SIGCONT, also when the test panics): AWS stops
/// answering, as it does in an outage, without refusing connections.
pub struct FrozenAws {
    pid: libc::pid_t,
}

impl FrozenAws {
    pub fn freeze() -> Self {
        let pid_file = devenv_dir().join("pids/moto.pid");
        let text = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", pid_file.display()));
        let pid: libc::pid_t = text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
        // Never signal a recycled pid, nor another environment's moto: it must be the moto
        // server listening on the port of AWS_ENDPOINT_URL.
        let endpoint = env("AWS_ENDPOINT_URL");
        let port = endpoint
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            args.iter().any(|a| a.ends_with("moto_server")) && args.iter().any(|a| a == port),
            "pid {pid} from {} is not the moto_server of {endpoint} but {args:?} \
             (is the environment up? `make env-up`)",
            pid_file.display()
        );
        // SAFETY: kill(2) with a pid checked above.
        let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(
            rc,
            0,
            "SIGSTOP moto ({pid}): {}",
            std::io::Error::last_os_error()
        );
        Self { pid }
    }
}

impl Drop for FrozenAws {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid checked in `freeze`.
        unsafe {
            libc::kill(self.pid, libc::SIGCONT);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CrossAccountRoles and AwsAccounts.
// ---------------------------------------------------------------------------------------------

pub fn roles_api(client: &Client, namespace: &str) -> Api<CrossAccountRole> {
    Api::namespaced(client.clone(), namespace)
}

/// Creates CrossAccountRole `name` in `namespace` with `spec` (JSON as in YAML manifests).
pub async fn create_role(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> CrossAccountRole {
    let role: CrossAccountRole = serde_json::from_value(json!({
        "apiVersion": "crossaccount.io/v1alpha1",
        "kind": "CrossAccountRole",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("CrossAccountRole {namespace}/{name}: {e}"));
    roles_api(client, namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("create CrossAccountRole {namespace}/{name}: {e}"))
}

/// Merge-patches the spec of CrossAccountRole `name`; returns the object with its new generation.
pub async fn patch_role_spec(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> CrossAccountRole {
    roles_api(client, namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap_or_else(|e| panic!("patch CrossAccountRole {namespace}/{name}: {e}"))
}

/// A condition of `role`, if set.
pub fn role_condition<'a>(role: &'a CrossAccountRole, type_: &str) -> Option<&'a Condition> {
    role.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// What a failing wait shows about a CrossAccountRole: generation, finalizers and status.
pub fn describe_role(role: &CrossAccountRole) -> String {
    format!(
        "{}/{}: generation {:?}, finalizers {:?}, deletionTimestamp {:?}, status {}",
        role.namespace().unwrap_or_default(),
        role.name_any(),
        role.metadata.generation,
        role.metadata.finalizers,
        role.metadata.deletion_timestamp,
        serde_json::to_string_pretty(&role.status).unwrap_or_default()
    )
}

/// Panics with `what`, the last state seen and the tail of the operator's log.
pub fn fail_with_operator_log(what: &str, last: &str) -> ! {
    let log = Operator::running()
        .map(|op| op.log_tail(60))
        .unwrap_or_else(|| "(no operator running in this test binary)".into());
    panic!(
        "{what}\nlast state: {last}\n{log}{}",
        other_operators_note()
    )
}

/// A note naming operator processes other than this binary's: they reconcile the same objects
/// (the environment is shared), which disturbs ownership, status and metric deltas.
fn other_operators_note() -> String {
    let ours = Operator::running().map(|op| op.pid);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    let others: Vec<String> = entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_operator = args
                .first()
                .is_some_and(|a| a.ends_with("/cross-account-operator"))
                && args.iter().any(|a| a == "--cluster-name");
            (is_operator && Some(pid) != ours).then(|| format!("  pid {pid}: {}", args.join(" ")))
        })
        .collect();
    if others.is_empty() {
        String::new()
    } else {
        format!(
            "\nnote: other operator processes are running against the environment and act on \
             the same objects:\n{}",
            others.join("\n")
        )
    }
}

/// Waits until condition `type_` of CrossAccountRole `name` has `status` (and `reason`, when
/// given) for the object's current generation; returns the object.
pub async fn wait_for_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> CrossAccountRole {
    let api = roles_api(client, namespace);
    let outcome = try_poll(timeout, || {
        let api = api.clone();
        async move {
            let role = api
                .get_opt(name)
                .await
                .map_err(|e| format!("get: {e}"))?
                .ok_or_else(|| "the object does not exist".to_owned())?;
            let matches = role_condition(&role, type_).is_some_and(|c| {
                c.status == status
                    && reason.is_none_or(|r| c.reason == r)
                    && c.observed_generation == role.metadata.generation
            });
            if matches {
                Ok(role)
            } else {
                Err(describe_role(&role))
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|last| {
        fail_with_operator_log(
            &format!(
                "timed out after {timeout:?} waiting for {namespace}/{name} to have {type_}={status} \
                 (reason {reason:?}) for its current generation"
            ),
            &last,
        )
    })
}

/// Deletes CrossAccountRole `name` (if it exists) and waits until it is gone, i.e. the operator
/// released its finalizer.
pub async fn delete_role_and_wait(client: &Client, namespace: &str, name: &str, timeout: Duration) {
    let api = roles_api(client, namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return,
        Err(e) => panic!("delete CrossAccountRole {namespace}/{name}: {e}"),
    }
    wait_until_role_gone(client, namespace, name, timeout).await;
}

/// Waits until CrossAccountRole `name` no longer exists.
pub async fn wait_until_role_gone(client: &Client, namespace: &str, name: &str, timeout: Duration) {
    let api = roles_api(client, namespace);
    let outcome = try_poll(timeout, || {
        let api = api.clone();
        async move {
            match api.get_opt(name).await {
                Ok(None) => Ok(()),
                Ok(Some(role)) => Err(describe_role(&role)),
                Err(e) => Err(format!("get: {e}")),
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        fail_with_operator_log(
            &format!("timed out after {timeout:?} waiting for {namespace}/{name} to be gone"),
            &last,
        );
    }
}

/// Creates AwsAccount `name` with `spec`.
pub async fn create_account(client: &Client, name: &str, spec: Value) -> AwsAccount {
    let account: AwsAccount = serde_json::from_value(json!({
        "apiVersion": "crossaccount.io/v1alpha1",
        "kind": "AwsAccount",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("AwsAccount {name}: {e}"));
    Api::<AwsAccount>::all(client.clone())
        .create(&PostParams::default(), &account)
        .await
        .unwrap_or_else(|e| panic!("create AwsAccount {name}: {e}"))
}

/// Waits until AwsAccount `name` is `Ready=True` for its current generation.
pub async fn wait_for_account_ready(client: &Client, name: &str, timeout: Duration) -> AwsAccount {
    let api = Api::<AwsAccount>::all(client.clone());
    let outcome = try_poll(timeout, || {
        let api = api.clone();
        async move {
            let account = api
                .get_opt(name)
                .await
                .map_err(|e| format!("get: {e}"))?
                .ok_or_else(|| "the AwsAccount does not exist".to_owned())?;
            let ready = account.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == "True"
                        && c.observed_generation == account.metadata.generation
                })
            });
            if ready {
                Ok(account)
            } else {
                Err(serde_json::to_string(&account.status).unwrap_or_default())
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|last| {
        fail_with_operator_log(
            &format!("timed out after {timeout:?} waiting for AwsAccount {name} to be Ready"),
            &last,
        )
    })
}

/// Waits until the operator process `child` answers `GET <base_url>/readyz` with 200 (within a
/// minute) and returns the body; fails when the process exits first.
pub async fn wait_for_readyz(child: &mut std::process::Child, base_url: &str) -> String {
    let http = reqwest::Client::new();
    poll("/readyz to answer 200", Duration::from_secs(60), || {
        let http = http.clone();
        let url = format!("{base_url}/readyz");
        let exited = child.try_wait().unwrap();
        async move {
            if let Some(status) = exited {
                panic!("the operator exited early with {status}");
            }
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(r.text().await.unwrap()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// Deletes AwsAccount `name` when dropped (also when the test panics).
pub struct AccountGuard {
    pub name: String,
}

impl AccountGuard {
    /// A new AwsAccount for the environment's target account that admits `namespaces` and AWS
    /// managed policies, once it is Ready (within `timeout`).
    pub async fn ready_for(
        client: &Client,
        tag: &str,
        namespaces: &[&str],
        timeout: Duration,
    ) -> AccountGuard {
        let account = AccountGuard { name: unique(tag) };
        create_account(
            client,
            &account.name,
            serde_json::json!({
                "accountId": env("TARGET_ACCOUNT_ID"),
                "managementRoleArn": env("MANAGEMENT_ROLE_ARN"),
                "allowedNamespaces": {"names": namespaces},
                "allowedPolicyArns": ["arn:aws:iam::aws:policy/*"],
            }),
        )
        .await;
        wait_for_account_ready(client, &account.name, timeout).await;
        account
    }
}

impl Drop for AccountGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        on_own_runtime(async move {
            if let Ok(client) = Client::try_default().await {
                let _ = Api::<AwsAccount>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await;
            }
        });
    }
}
