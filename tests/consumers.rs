//! Real consumers of the credentials Secret (issue 12): long-running processes with the real AWS
//! SDKs (boto3, Go v2, JavaScript v3, Rust) and the AWS CLI, each reading its own
//! CrossAccountRole's Secret as kubelet mounts it (tests/common/kubelet_mount.rs: the `..data`
//! swap, changes shown at the pod's next sync), through the `credential_process` of the Secret's
//! `config` or the `credentials-endpoint` sidecar, and calling sts:GetCallerIdentity every few
//! seconds through the AWS proxy for longer than one credential lifetime. The proxy's request log
//! is the ground truth: which access key signed each call and how AWS answered, never what the
//! consumer says. A negative control reads the static `credentials` file (the old layout) and
//! must keep its first key and fail once it expired: the test can fail.
//!
//! Lifetimes are not shortened. The SDKs decide when to refresh from the `Expiration` they were
//! given and their own clock, with windows that are absolute durations (botocore 15/10 min, Go v2
//! 5 min for the endpoint and none for credential_process, JavaScript v3 5 min, Rust 5-10 s), and
//! the operator's refresh floors are absolute too. A session made shorter than those windows
//! (rewriting STS's `Expiration`) would have every SDK refresh on every call and the operator
//! refresh at once; moving the proxy's clock (`advance_clock`) would expire sessions that the SDKs,
//! on the real clock, still hold valid, which tests clock skew, not refresh. So the sessions are
//! STS's shortest real ones (900 s, the CRD's minimum), on one clock, and all consumers run at once
//! in one test (about 16 minutes).
//!
//! The installed consumers come from `make consumers-deps` (hack/consumers/install.sh, run by
//! `make integration`): `CONSUMER_GO_BIN`, and `CONSUMER_JS_DIR` or `CONSUMER_JS_UNAVAILABLE`
//! (then the JavaScript consumers are skipped, and the test says so on its output); the Rust one
//! is the example `sdk-consumer`; boto3 and the CLI are in target/venv.
//!
//! Also: the examples `examples/3*-*.yaml` pass a server-side dry run, and the mount itself is
//! laid out as kubelet lays out a Secret volume.

mod common;

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use common::{
    ExitSlot, TargetRoleGuard, TestNamespace,
    aws_proxy::{LoggedRequest, Outcome},
    kubelet_mount::{KubeletMount, SecretVersion},
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_cross-account-operator");
/// STS's shortest session and the CRD's minimum `durationSeconds`.
const SESSION_SECONDS: i64 = 900;
/// Kubelet's default `syncFrequency`: a changed Secret shows up in a running pod at its next sync.
const KUBELET_SYNC: Duration = Duration::from_secs(60);
/// botocore's mandatory refresh window (`_DEFAULT_MANDATORY_REFRESH_TIMEOUT`, 10 min): the widest
/// window in which an SDK must have new credentials. New credentials must be in the volume before
/// the ones they replace enter it.
const SDK_MANDATORY_WINDOW: SignedDuration = SignedDuration::from_secs(600);
/// How often an SDK consumer calls AWS, and the CLI loop (a Python start per call costs CPU).
const CALL_INTERVAL: Duration = Duration::from_secs(3);
const CLI_INTERVAL: Duration = Duration::from_secs(6);
/// The longest a consumer may go without a call reaching AWS.
const MAX_GAP: SignedDuration = SignedDuration::from_secs(30);
/// Calls each consumer must make after the credentials it started with expired.
const CALLS_AFTER_EXPIRY: usize = 5;
/// How long the consumers may take, at most, past the expiry of their first credentials.
const RUN_PAST_EXPIRY: Duration = Duration::from_secs(300);
const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
const REGION: &str = "us-east-1";

// ---------------------------------------------------------------------------------------------
// Output that cargo's test harness does not capture: the figures of a passing run and a skipped
// consumer are shown, not swallowed.
// ---------------------------------------------------------------------------------------------

fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The consumers.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sdk {
    Boto3,
    AwsCli,
    GoV2,
    JsV3,
    Rust,
}

/// Where the consumer's SDK gets its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// `AWS_CONFIG_FILE=<mount>/config`: `credential_process = cat <mount>/credentials.json`.
    CredentialProcess,
    /// The `credentials-endpoint` sidecar over the mount, with the token file.
    Endpoint,
    /// `AWS_SHARED_CREDENTIALS_FILE=<mount>/credentials`: static keys, the old layout.
    StaticFile,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Every call succeeds, with newer credentials after each refresh the SDK makes.
    Follows,
    /// Keeps the credentials it started with, and fails once they expired (negative control).
    KeepsFirstAndFails,
}

struct ConsumerSpec {
    name: &'static str,
    sdk: Sdk,
    source: Source,
    expect: Expect,
}

const CONSUMERS: &[ConsumerSpec] = &[
    ConsumerSpec {
        name: "boto3-process",
        sdk: Sdk::Boto3,
        source: Source::CredentialProcess,
        expect: Expect::Follows,
    },
    ConsumerSpec {
        name: "boto3-endpoint",
        sdk: Sdk::Boto3,
        source: Source::Endpoint,
        expect: Expect::Follows,
    },
    ConsumerSpec {
        name: "cli-process",
        sdk: Sdk::AwsCli,
        source: Source::CredentialProcess,
        expect: Expect::Follows,
    },
    // A new CLI process per call reads the files afresh: even the static file works for it.
    ConsumerSpec {
        name: "cli-static",
        sdk: Sdk::AwsCli,
        source: Source::StaticFile,
        expect: Expect::Follows,
    },
    ConsumerSpec {
        name: "go-process",
        sdk: Sdk::GoV2,
        source: Source::CredentialProcess,
        expect: Expect::Follows,
    },
    ConsumerSpec {
        name: "go-endpoint",
        sdk: Sdk::GoV2,
        source: Source::Endpoint,
        expect: Expect::Follows,
    },
    ConsumerSpec {
        name: "js-process",
        sdk: Sdk::JsV3,
        source: Source::CredentialProcess,
        expect: Expect::Follows,
    },
    ConsumerSpec {
        name: "js-endpoint",
        sdk: Sdk::JsV3,
        source: Source::Endpoint,
        expect: Expect::Follows,
    },
    ConsumerSpec {
        name: "rust-process",
        sdk: Sdk::Rust,
        source: Source::CredentialProcess,
        expect: Expect::Follows,
    },
    ConsumerSpec {
        name: "rust-endpoint",
        sdk: Sdk::Rust,
        source: Source::Endpoint,
        expect: Expect::Follows,
    },
    // The negative control: issue 12's long-running boto3 service on the old layout.
    ConsumerSpec {
        name: "boto3-static",
        sdk: Sdk::Boto3,
        source: Source::StaticFile,
        expect: Expect::KeepsFirstAndFails,
    },
];

/// Where the consumers' programs are; panics with the fix when one is missing.
struct Tools {
    python: PathBuf,
    aws_cli: PathBuf,
    go: PathBuf,
    /// The folder of consumer.mjs and its node_modules, or why it could not be installed.
    js: Result<PathBuf, String>,
    rust: PathBuf,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn existing(path: PathBuf, fix: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {fix}", path.display());
    path
}

impl Tools {
    fn find() -> Self {
        let venv = repo().join("target/venv/bin");
        let deps = "run `make consumers-deps` (hack/consumers/install.sh; `make integration` runs \
                    it and loads target/consumers/env)";
        let go = std::env::var_os("CONSUMER_GO_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("CONSUMER_GO_BIN is not set: {deps}"));
        let js = match (
            std::env::var_os("CONSUMER_JS_DIR"),
            std::env::var("CONSUMER_JS_UNAVAILABLE"),
        ) {
            (Some(dir), _) => Ok(existing(PathBuf::from(dir), deps)),
            (None, Ok(why)) => Err(why),
            (None, Err(_)) => {
                panic!("neither CONSUMER_JS_DIR nor CONSUMER_JS_UNAVAILABLE is set: {deps}")
            }
        };
        // target/debug/deps/consumers-<hash> -> target/debug/examples/sdk-consumer
        let exe = std::env::current_exe().expect("the test binary's path");
        let rust = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("examples/sdk-consumer"))
            .expect("the target directory");
        Self {
            python: existing(
                venv.join("python"),
                "run `make env-up` (it installs target/venv)",
            ),
            aws_cli: existing(
                venv.join("aws"),
                "run `make env-up` (it installs target/venv)",
            ),
            go: existing(go, deps),
            js,
            rust: existing(
                rust,
                "run `cargo build --example sdk-consumer` (`make integration` does)",
            ),
        }
    }
}

/// The command of consumer `spec` reading `mount`, calling AWS at `aws_endpoint`, with a HOME of
/// its own and no AWS settings but the ones named here (the test's environment holds the
/// operator's keys). `sidecar`: the URL of its credentials endpoint. `Err`: skipped, and why.
fn consumer_command(
    spec: &ConsumerSpec,
    tools: &Tools,
    mount: &Path,
    home: &Path,
    aws_endpoint: &str,
    sidecar: Option<&str>,
) -> Result<Command, String> {
    let interval = if spec.sdk == Sdk::AwsCli {
        CLI_INTERVAL
    } else {
        CALL_INTERVAL
    };
    let mut command = match spec.sdk {
        Sdk::Boto3 => {
            let mut c = Command::new(&tools.python);
            c.arg(repo().join("hack/consumers/boto3_consumer.py"));
            c
        }
        Sdk::AwsCli => {
            let mut c = Command::new(repo().join("hack/consumers/cli_loop.sh"));
            c.env("AWS_CLI", &tools.aws_cli);
            c
        }
        Sdk::GoV2 => Command::new(&tools.go),
        Sdk::JsV3 => {
            let dir = tools.js.as_ref().map_err(Clone::clone)?;
            let mut c = Command::new("node");
            c.arg(dir.join("consumer.mjs")).current_dir(dir);
            c
        }
        Sdk::Rust => Command::new(&tools.rust),
    };
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_ENDPOINT_URL", aws_endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Files that do not exist, unless the source below names the mounted one.
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("CONSUMER_INTERVAL_MS", interval.as_millis().to_string())
        .env(
            "CONSUMER_DURATION_S",
            (SESSION_SECONDS as u64 + RUN_PAST_EXPIRY.as_secs() + 300).to_string(),
        );
    match spec.source {
        Source::CredentialProcess => {
            command.env("AWS_CONFIG_FILE", mount.join("config"));
        }
        Source::Endpoint => {
            command
                .env(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    sidecar.expect("a sidecar for an endpoint consumer"),
                )
                .env(
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                    mount.join("container-token"),
                )
                .env("AWS_REGION", REGION)
                // botocore and the AWS CLI v1 read only this one.
                .env("AWS_DEFAULT_REGION", REGION);
        }
        Source::StaticFile => {
            command
                .env("AWS_SHARED_CREDENTIALS_FILE", mount.join("credentials"))
                .env("AWS_REGION", REGION)
                .env("AWS_DEFAULT_REGION", REGION);
        }
    }
    Ok(command)
}

/// A child process of the test, in a process group of its own (the CLI loop's `aws`, an SDK's
/// `cat` go with it), stopped when dropped.
struct Running {
    name: String,
    pid: u32,
    exit: ExitSlot,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    fn spawn(name: &str, mut command: Command, logs: &Path) -> Running {
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        let file = |path: &Path| {
            std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        command
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .process_group(0);
        let (pid, exit) = common::spawn_tied_to_test(command)
            .unwrap_or_else(|e| panic!("cannot start consumer {name}: {e}"));
        Running {
            name: name.to_owned(),
            pid,
            exit,
            stdout,
            stderr,
        }
    }

    fn exited(&self) -> Option<String> {
        self.exit
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// SIGTERM to its process group, SIGKILL after 10 s; returns the exit status.
    fn stop(&self) -> String {
        let signal_group = |signal| {
            if self.exited().is_none() {
                // SAFETY: kill(2) on the process group this test created for its own child
                // (the child is the group leader; it has not been reaped while exit is None).
                unsafe {
                    libc::kill(-(self.pid as libc::pid_t), signal);
                }
            }
        };
        let wait = |limit| {
            let (lock, cvar) = &*self.exit;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = cvar
                .wait_timeout_while(guard, limit, |status| status.is_none())
                .unwrap_or_else(|e| e.into_inner());
            guard.clone()
        };
        signal_group(libc::SIGTERM);
        if let Some(status) = wait(Duration::from_secs(10)) {
            return status;
        }
        signal_group(libc::SIGKILL);
        wait(Duration::from_secs(10)).unwrap_or_else(|| "did not exit".into())
    }

    fn log_tail(&self, lines: usize) -> String {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        format!(
            "--- {}: last {lines} lines of {} ---\n{}\n--- and of {} ---\n{}",
            self.name,
            self.stdout.display(),
            tail(&self.stdout),
            self.stderr.display(),
            tail(&self.stderr)
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The operator of this test binary: through the shared proxy, with the default resync (the
// shared test operator resyncs every 3 s, which for a quarter of an hour of a dozen objects
// would keep the emulator busy for nothing).
// ---------------------------------------------------------------------------------------------

static OPERATOR: OnceLock<common::Operator> = OnceLock::new();

fn operator_log() -> PathBuf {
    common::devenv_dir().join("logs/operator-consumers.log")
}

async fn operator() -> &'static common::Operator {
    let operator = OPERATOR.get_or_init(|| {
        let path = operator_log();
        std::fs::create_dir_all(path.parent().unwrap()).expect("create target/devenv/logs");
        let log = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        common::Operator::start_with(
            log,
            path,
            common::OperatorOptions {
                aws_endpoint: Some(common::shared_proxy().endpoint()),
                resync: Some(Duration::from_secs(600)),
                ..common::OperatorOptions::default()
            },
        )
    });
    operator.wait_ready().await;
    operator
}

// ---------------------------------------------------------------------------------------------
// What reached AWS from one consumer, per the proxy's log.
// ---------------------------------------------------------------------------------------------

/// One credential set of a CrossAccountRole, in the order the operator issued them.
#[derive(Clone)]
struct IssuedSet {
    access_key_id: String,
    expiration: Timestamp,
    seen: Timestamp,
    mounted: Option<Timestamp>,
}

fn issued_sets(versions: &[SecretVersion]) -> Vec<IssuedSet> {
    let mut sets: Vec<IssuedSet> = Vec::new();
    for v in versions {
        let (Some(key), Some(expiration)) = (&v.access_key_id, v.expiration) else {
            continue;
        };
        match sets.iter_mut().find(|s| s.access_key_id == *key) {
            Some(set) => set.mounted = set.mounted.or(v.mounted),
            None => sets.push(IssuedSet {
                access_key_id: key.clone(),
                expiration,
                seen: v.seen,
                mounted: v.mounted,
            }),
        }
    }
    sets
}

/// A call of the consumer: when it reached the proxy, which set (index into the issued sets)
/// signed it, and how it ended.
/// The precision of the expiration the Secret records.
const EXPIRATION_GRAIN: SignedDuration = SignedDuration::from_secs(1);

#[derive(Clone, Debug)]
struct Call {
    seq: usize,
    operation: String,
    arrived: Timestamp,
    set: usize,
    outcome: Outcome,
}

impl Call {
    fn succeeded(&self) -> bool {
        matches!(self.outcome, Outcome::Answered(s) if (200..300).contains(&s))
    }

    fn expired_token(&self) -> bool {
        self.outcome == Outcome::Faulted("ExpiredToken")
    }

    fn describe(&self, sets: &[IssuedSet]) -> String {
        format!(
            "#{} {} at {} with set #{} (expires {}) -> {:?}",
            self.seq,
            self.operation,
            self.arrived,
            self.set + 1,
            sets[self.set].expiration,
            self.outcome
        )
    }
}

fn calls_of(requests: &[LoggedRequest], sets: &[IssuedSet]) -> Vec<Call> {
    requests
        .iter()
        .filter_map(|r| {
            let key = r.access_key_id.as_deref()?;
            let set = sets.iter().position(|s| s.access_key_id == key)?;
            Some(Call {
                seq: r.seq,
                operation: format!("{} {}", r.service, r.operation),
                arrived: r.arrived,
                set,
                outcome: r.outcome,
            })
        })
        .collect()
}

/// What one consumer did, and what is wrong with it.
struct Verdict {
    name: &'static str,
    summary: String,
    problems: Vec<String>,
}

fn judge(spec: &ConsumerSpec, sets: &[IssuedSet], calls: &[Call], exited: Option<&str>) -> Verdict {
    let mut problems = Vec::new();
    let Some(first) = calls.first() else {
        return Verdict {
            name: spec.name,
            summary: "no call reached AWS".into(),
            problems: vec!["no call reached AWS".into()],
        };
    };
    let first_expiry = sets[first.set].expiration;
    let after_expiry: Vec<&Call> = calls.iter().filter(|c| c.arrived >= first_expiry).collect();
    let failed: Vec<&Call> = calls.iter().filter(|c| !c.succeeded()).collect();
    let expired: Vec<&Call> = calls.iter().filter(|c| c.expired_token()).collect();
    // Each change of credential set: when, from which to which, how long before the old one
    // expired.
    let mut switches = Vec::new();
    for pair in calls.windows(2) {
        if pair[1].set != pair[0].set {
            let lead = sets[pair[0].set].expiration.duration_since(pair[1].arrived);
            switches.push((pair[0].set, pair[1].set, pair[1].arrived, lead));
        }
    }
    let max_gap = calls
        .windows(2)
        .map(|p| p[1].arrived.duration_since(p[0].arrived))
        .max()
        .unwrap_or_default();
    let describe = |list: &[&Call]| {
        list.iter()
            .take(8)
            .map(|c| format!("\n    {}", c.describe(sets)))
            .collect::<String>()
    };
    match spec.expect {
        Expect::Follows => {
            if !failed.is_empty() {
                problems.push(format!(
                    "{} of {} calls failed ({} with ExpiredToken); the first:{}",
                    failed.len(),
                    calls.len(),
                    expired.len(),
                    describe(&failed)
                ));
            }
            if switches.is_empty() {
                problems.push(format!(
                    "never changed credentials: every call used set #{}",
                    first.set + 1
                ));
            }
            if let Some(back) = switches.iter().find(|(from, to, ..)| to < from) {
                problems.push(format!(
                    "went back from set #{} to the older set #{} at {}",
                    back.0 + 1,
                    back.1 + 1,
                    back.2
                ));
            }
            if after_expiry.len() < CALLS_AFTER_EXPIRY {
                problems.push(format!(
                    "only {} calls after its first credentials expired at {first_expiry}",
                    after_expiry.len()
                ));
            }
            if max_gap > MAX_GAP {
                problems.push(format!(
                    "went {max_gap:#} without a call reaching AWS (at most {MAX_GAP:#})"
                ));
            }
            if let Some(status) = exited {
                problems.push(format!("exited before the end of the run: {status}"));
            }
        }
        Expect::KeepsFirstAndFails => {
            if let Some(other) = calls.iter().find(|c| c.set != first.set) {
                problems.push(format!(
                    "the control changed credentials, so the old layout refreshes after all: {}",
                    other.describe(sets)
                ));
            }
            // The Secret's expiration is cut to whole seconds; STS's own (and so the proxy's)
            // may be up to a second later, so a call in that second may still pass.
            let succeeded_late: Vec<&Call> = after_expiry
                .iter()
                .copied()
                .filter(|c| c.succeeded() && c.arrived >= first_expiry + EXPIRATION_GRAIN)
                .collect();
            if !succeeded_late.is_empty() {
                problems.push(format!(
                    "the control succeeded after its credentials expired (the proxy does not \
                     enforce expiry?):{}",
                    describe(&succeeded_late)
                ));
            }
            let refused = after_expiry.iter().filter(|c| c.expired_token()).count();
            if refused < CALLS_AFTER_EXPIRY {
                problems.push(format!(
                    "the control has {refused} ExpiredToken answers after {first_expiry}, \
                     expected at least {CALLS_AFTER_EXPIRY}"
                ));
            }
        }
    }
    let switch_text: Vec<String> = switches
        .iter()
        .map(|(from, to, _, lead)| {
            format!(
                "#{}->#{} {:.0}s before expiry",
                from + 1,
                to + 1,
                lead.as_secs_f64()
            )
        })
        .collect();
    let summary = format!(
        "{} calls ({} ok, {} failed, {} ExpiredToken), sets used {}, refreshes {} [{}], \
         {} calls after the first set expired, longest gap {:.0}s",
        calls.len(),
        calls.len() - failed.len(),
        failed.len(),
        expired.len(),
        {
            let mut used: Vec<usize> = calls.iter().map(|c| c.set + 1).collect();
            used.dedup();
            used.sort_unstable();
            used.dedup();
            format!("{used:?}")
        },
        switches.len(),
        switch_text.join(", "),
        after_expiry.len(),
        max_gap.as_secs_f64()
    );
    Verdict {
        name: spec.name,
        summary,
        problems,
    }
}

/// What is wrong with the operator's refreshes of one Secret as the mount saw them: each new set
/// must be in the volume while the set it replaces is still outside the SDKs' mandatory window.
fn refresh_problems(name: &str, sets: &[IssuedSet]) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let mut leads = Vec::new();
    for pair in sets.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let seen_lead = old.expiration.duration_since(new.seen);
        leads.push(format!("{:.0}s", seen_lead.as_secs_f64()));
        if let Some(mounted) = new.mounted {
            let lead = old.expiration.duration_since(mounted);
            if lead < SDK_MANDATORY_WINDOW {
                problems.push(format!(
                    "{name}: set #{} reached the volume {:.0}s before set #{} expired, inside \
                     the SDKs' mandatory refresh window ({}s)",
                    sets.iter()
                        .position(|s| s.access_key_id == new.access_key_id)
                        .unwrap()
                        + 1,
                    lead.as_secs_f64(),
                    sets.iter()
                        .position(|s| s.access_key_id == old.access_key_id)
                        .unwrap()
                        + 1,
                    SDK_MANDATORY_WINDOW.as_secs()
                ));
            }
        }
    }
    let keys: Vec<String> = sets
        .iter()
        .map(|s| common::masked_key(&s.access_key_id))
        .collect();
    (
        format!(
            "{} sets issued ({}), each refresh seen this long before the previous set expired: {}",
            sets.len(),
            keys.join(" "),
            leads.join(", ")
        ),
        problems,
    )
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

/// The sidecar of an endpoint consumer: `cross-account-operator credentials-endpoint` over the
/// mount, on a free loopback port; returns the URL once `/healthz` answers.
async fn start_sidecar(name: &str, mount: &Path, logs: &Path) -> (Running, String) {
    let port = common::free_port();
    let mut command = Command::new(OPERATOR_BIN);
    command
        .args(["credentials-endpoint", "--dir"])
        .arg(mount)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let sidecar = Running::spawn(&format!("{name}-sidecar"), command, logs);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let healthz = format!("{base}/healthz");
    common::poll(
        &format!("the sidecar of {name} to answer"),
        Duration::from_secs(30),
        || {
            let (http, healthz) = (http.clone(), healthz.clone());
            async move {
                match http.get(&healthz).send().await {
                    Ok(r) if r.status() == 200 => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    // The protocol: the token is required; with it, the document of the mounted credentials.
    let unauthorized = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(
        unauthorized.status(),
        401,
        "{name}: the sidecar wants the token"
    );
    let token = std::fs::read_to_string(mount.join("container-token")).unwrap();
    let answer = http
        .get(format!("{base}/"))
        .header("Authorization", token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        200,
        "{name}: the sidecar answers the token"
    );
    let document: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    let mounted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mount.join("credentials.json")).unwrap()).unwrap();
    assert!(
        document["AccessKeyId"] == mounted["AccessKeyId"]
            && document["Token"] == mounted["SessionToken"]
            && document["Expiration"] == mounted["Expiration"],
        "{name}: the sidecar serves the mounted credentials in the container shape"
    );
    (sidecar, format!("{base}/"))
}

/// One consumer of the run: its spec, mount, CrossAccountRole and processes.
struct Participant {
    spec: &'static ConsumerSpec,
    mount: KubeletMount,
    _role: TargetRoleGuard,
    sidecar: Option<Running>,
    process: Option<Running>,
}

#[tokio::test]
async fn long_running_consumers_follow_every_refresh() {
    let tools = Tools::find();
    operator().await;
    let proxy = common::shared_proxy();
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "consumers").await;
    let run_dir = std::env::temp_dir().join(common::unique("cao-consumers"));
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let logs = common::devenv_dir().join("logs/consumers");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let mark = proxy.mark();
    let started = Timestamp::now();
    say(&format!(
        "consumers: {} long-running consumers, one {SESSION_SECONDS}s session lifetime and more \
         (about {} minutes); logs in {}",
        CONSUMERS.len(),
        (SESSION_SECONDS as u64 + 120) / 60,
        logs.display()
    ));

    // One CrossAccountRole and one mount per consumer; the skipped ones get none.
    let mut participants = Vec::new();
    let mut skipped = Vec::new();
    for spec in CONSUMERS {
        if spec.sdk == Sdk::JsV3
            && let Err(why) = &tools.js
        {
            skipped.push(format!("{}: {why}", spec.name));
            continue;
        }
        let role_name = common::unique("Consumer");
        let guard = TargetRoleGuard::new(&role_name);
        let mount_dir = run_dir.join(spec.name);
        common::create_role(
            &client,
            &ns.name,
            spec.name,
            json!({
                "accountRef": common::account_name(),
                "roleName": role_name,
                "policies": {"managed": [S3_READ]},
                "credentials": {
                    "durationSeconds": SESSION_SECONDS,
                    "region": REGION,
                    "mountPath": mount_dir.to_str().expect("a UTF-8 path"),
                },
            }),
        )
        .await;
        let mount = KubeletMount::start(
            &client,
            &ns.name,
            &format!("{}-aws", spec.name),
            &mount_dir,
            KUBELET_SYNC,
        );
        participants.push(Participant {
            spec,
            mount,
            _role: guard,
            sidecar: None,
            process: None,
        });
    }
    for skip in &skipped {
        say(&format!(
            "consumers: SKIPPED {skip} (hack/consumers/install.sh could not install it)"
        ));
    }
    for p in &participants {
        p.mount.wait_mounted(Duration::from_secs(120)).await;
    }
    for p in &mut participants {
        let home = run_dir.join(format!("{}-home", p.spec.name));
        std::fs::create_dir_all(&home).unwrap();
        let sidecar_url = if p.spec.source == Source::Endpoint {
            let (sidecar, url) = start_sidecar(p.spec.name, p.mount.dir(), &logs).await;
            p.sidecar = Some(sidecar);
            Some(url)
        } else {
            None
        };
        let command = consumer_command(
            p.spec,
            &tools,
            p.mount.dir(),
            &home,
            &proxy.endpoint(),
            sidecar_url.as_deref(),
        )
        .expect("only installed consumers take part");
        p.process = Some(Running::spawn(p.spec.name, command, &logs));
    }

    // Until every consumer has made enough calls after the credentials it started with expired
    // (or one of them stopped, or the deadline passed).
    let state = |participants: &[Participant]| {
        let requests = proxy.requests_since(&mark);
        participants
            .iter()
            .map(|p| {
                let sets = issued_sets(&p.mount.versions());
                let calls = calls_of(&requests, &sets);
                let after = calls
                    .first()
                    .map(|first| sets[first.set].expiration)
                    .map(|expiry| calls.iter().filter(|c| c.arrived >= expiry).count())
                    .unwrap_or(0);
                (p.spec.name, calls.len(), after)
            })
            .collect::<Vec<_>>()
    };
    let deadline = Duration::from_secs(SESSION_SECONDS as u64) + RUN_PAST_EXPIRY;
    let mut last_progress = Timestamp::now();
    let outcome = common::try_poll(deadline, || {
        let now = Timestamp::now();
        let counts = state(&participants);
        if now.duration_since(last_progress) >= SignedDuration::from_secs(120) {
            last_progress = now;
            say(&format!(
                "consumers: {:.0}s in; calls (after first expiry) {}",
                now.duration_since(started).as_secs_f64(),
                counts
                    .iter()
                    .map(|(n, c, a)| format!("{n} {c} ({a})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let stopped: Vec<String> = participants
            .iter()
            .filter_map(|p| {
                let process = p.process.as_ref()?;
                process
                    .exited()
                    .map(|s| format!("{} exited: {s}", p.spec.name))
            })
            .collect();
        let short: Vec<String> = counts
            .iter()
            .filter(|(_, _, after)| *after < CALLS_AFTER_EXPIRY)
            .map(|(n, c, a)| format!("{n}: {c} calls, {a} after its first credentials expired"))
            .collect();
        async move {
            if !stopped.is_empty() {
                Ok(Err(stopped.join("; ")))
            } else if short.is_empty() {
                Ok(Ok(()))
            } else {
                Err(short.join("; "))
            }
        }
    })
    .await;
    let early_exit = match &outcome {
        Ok(Err(why)) => Some(why.clone()),
        _ => None,
    };
    // Stop the consumers and their sidecars; what ran until now is judged.
    let exits: BTreeMap<&str, Option<String>> = participants
        .iter()
        .map(|p| (p.spec.name, p.process.as_ref().and_then(Running::exited)))
        .collect();
    for p in &participants {
        if let Some(process) = &p.process {
            process.stop();
        }
        if let Some(sidecar) = &p.sidecar {
            sidecar.stop();
        }
    }
    let requests = proxy.requests_since(&mark);
    let mut report = vec![format!(
        "consumers: run of {:.0}s, kubelet sync every {}s, sessions of {SESSION_SECONDS}s",
        Timestamp::now().duration_since(started).as_secs_f64(),
        KUBELET_SYNC.as_secs()
    )];
    let mut problems = Vec::new();
    if let Err(last) = &outcome {
        problems.push(format!(
            "not every consumer made {CALLS_AFTER_EXPIRY} calls after its first credentials \
             expired within {deadline:?}: {last}"
        ));
    }
    if let Some(why) = &early_exit {
        problems.push(format!("a consumer stopped before the end: {why}"));
    }
    for p in &participants {
        let sets = issued_sets(&p.mount.versions());
        let calls = calls_of(&requests, &sets);
        let exited = exits.get(p.spec.name).cloned().flatten();
        let verdict = judge(p.spec, &sets, &calls, exited.as_deref());
        let (refreshes, refresh_problems) = refresh_problems(p.spec.name, &sets);
        report.push(format!(
            "  {:<15} {:?}/{:?}, expected {:?}: {}\n  {:<15} operator: {refreshes}",
            verdict.name, p.spec.sdk, p.spec.source, p.spec.expect, verdict.summary, ""
        ));
        let mount_errors = p.mount.errors();
        if !mount_errors.is_empty() {
            problems.push(format!(
                "{}: the mount failed: {mount_errors:?}",
                p.spec.name
            ));
        }
        problems.extend(refresh_problems);
        if !verdict.problems.is_empty() {
            let tail = p
                .process
                .as_ref()
                .map(|r| r.log_tail(15))
                .unwrap_or_default();
            let sidecar = p
                .sidecar
                .as_ref()
                .map(|r| r.log_tail(10))
                .unwrap_or_default();
            problems.push(format!(
                "{} ({:?} over {:?}):\n  - {}\n{tail}\n{sidecar}",
                verdict.name,
                p.spec.sdk,
                p.spec.source,
                verdict.problems.join("\n  - ")
            ));
        }
    }
    for skip in &skipped {
        report.push(format!("  SKIPPED {skip}"));
    }
    let report = report.join("\n");
    say(&report);
    let _ = std::fs::write(logs.join("report.txt"), format!("{report}\n"));
    // The operator removes what it created while it still runs (the IAM roles' guards are only
    // the fallback).
    for p in &participants {
        common::delete_role_and_wait(&client, &ns.name, p.spec.name, Duration::from_secs(60)).await;
    }
    drop(participants);
    let _ = std::fs::remove_dir_all(&run_dir);
    if !problems.is_empty() {
        let operator_tail = OPERATOR.get().map(|op| op.log_tail(40)).unwrap_or_default();
        panic!(
            "{} problem(s) with the consumers:\n{}\n\n{report}\n{operator_tail}",
            problems.len(),
            problems.join("\n")
        );
    }
}

/// Server-side dry runs of the consumption-pattern examples against the local apiserver, in a
/// namespace of the test's own (the examples' `namespace: demo` is replaced).
#[tokio::test]
async fn the_consumer_examples_pass_a_server_side_dry_run() {
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "examples").await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('3') && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "the three consumption-pattern examples: {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let objects = text.matches("namespace: demo").count();
        assert!(
            objects > 0,
            "{}: no `namespace: demo` to replace",
            file.display()
        );
        let text = text.replace("namespace: demo", &format!("namespace: {}", ns.name));
        let mut child = Command::new("kubectl")
            .args(["apply", "--dry-run=server", "-o", "name", "-f", "-"])
            .env("KUBECONFIG", common::env("KUBECONFIG"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let applied = stdout.lines().filter(|l| !l.trim().is_empty()).count();
        if !output.status.success() || applied != objects {
            failures.push(format!(
                "{}: {} ({applied} of {objects} objects accepted)\n{stdout}{}",
                file.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "examples the apiserver rejects:\n{}",
        failures.join("\n")
    );
}

/// The mount is laid out as kubelet lays out a Secret volume, and swaps versions atomically: a
/// reader never finds a key missing while the Secret changes under it.
#[tokio::test]
async fn the_mount_is_laid_out_as_kubelet_lays_out_a_secret_volume() {
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "mount").await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    };
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("mounted".into()),
            ..Default::default()
        },
        data: Some(data(&[("config", "one"), ("credentials.json", "{}")])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(common::unique("cao-mount"));
    let mount = KubeletMount::start(&client, &ns.name, "mounted", &dir, Duration::ZERO);
    mount.wait_mounted(Duration::from_secs(30)).await;

    let layout = |dir: &Path| -> Result<(String, BTreeMap<String, String>), String> {
        let data = std::fs::read_link(dir.join("..data")).map_err(|e| format!("..data: {e}"))?;
        let ts = data.to_string_lossy().into_owned();
        let mut visible = BTreeMap::new();
        let mut timestamped = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name == "..data" {
                continue;
            }
            if name.starts_with("..") {
                timestamped.push(name);
                continue;
            }
            let link = std::fs::read_link(dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
            if link != Path::new("..data").join(&name) {
                return Err(format!("{name} -> {}", link.display()));
            }
            let mode = std::fs::metadata(dir.join(&name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            if mode != 0o644 {
                return Err(format!("{name} has mode {mode:o}"));
            }
            visible.insert(
                name.clone(),
                std::fs::read_to_string(dir.join(&name)).unwrap(),
            );
        }
        let stamp_shape = ts.len() > 22
            && ts.starts_with("..")
            && ts[2..21].chars().all(|c| c.is_ascii_digit() || c == '_')
            && ts[21..].starts_with('.');
        if timestamped != [ts.clone()] || !stamp_shape {
            return Err(format!(
                "..data -> {ts}, timestamped directories {timestamped:?}"
            ));
        }
        Ok((ts, visible))
    };
    let (first_ts, visible) = layout(&dir).unwrap();
    assert_eq!(
        visible,
        BTreeMap::from([
            ("config".to_owned(), "one".to_owned()),
            ("credentials.json".to_owned(), "{}".to_owned())
        ])
    );

    // A reader on another thread, all through the changes: `config` is there every time. The
    // symlink itself is never absent. A read can still lose one race, as it can under kubelet:
    // it resolves `..data` to the old directory just before that directory is removed (step 12).
    // The file is then found again at once, through the new `..data`; only a second miss in a
    // row counts as missing.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), dir.join("config"));
        std::thread::spawn(move || {
            let (mut reads, mut missing) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let present = std::fs::symlink_metadata(&path).is_ok();
                let read = std::fs::read(&path).or_else(|_| std::fs::read(&path));
                match (present, read) {
                    (true, Ok(_)) => reads += 1,
                    _ => missing += 1,
                }
            }
            (reads, missing)
        })
    };
    for n in 0..20 {
        let value = format!("v{n}");
        secrets
            .patch(
                "mounted",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"config": value}})),
            )
            .await
            .unwrap();
        let dir = dir.clone();
        common::poll("the change to be mounted", Duration::from_secs(30), || {
            let result = layout(&dir).and_then(|(_, visible)| {
                if visible.get("config") == Some(&value) {
                    Ok(())
                } else {
                    Err(format!("{visible:?}"))
                }
            });
            async move { result }
        })
        .await;
    }
    // A key added and one removed: their symlinks come and go.
    secrets
        .replace(
            "mounted",
            &PostParams::default(),
            &Secret {
                data: Some(data(&[("config", "last"), ("container-token", "t")])),
                ..secrets.get("mounted").await.unwrap()
            },
        )
        .await
        .unwrap();
    let dir_for_poll = dir.clone();
    let (last_ts, visible) = common::poll("the last version", Duration::from_secs(30), || {
        let result = layout(&dir_for_poll).and_then(|(ts, visible)| {
            if visible.contains_key("container-token") {
                Ok((ts, visible))
            } else {
                Err(format!("{visible:?}"))
            }
        });
        async move { result }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, missing) = reader.join().unwrap();
    assert_ne!(first_ts, last_ts, "a new timestamped directory per version");
    assert_eq!(
        visible,
        BTreeMap::from([
            ("config".to_owned(), "last".to_owned()),
            ("container-token".to_owned(), "t".to_owned())
        ]),
        "credentials.json is gone, container-token is new"
    );
    assert!(
        reads > 0 && missing == 0,
        "{missing} of {} reads found config missing",
        reads + missing
    );
    assert!(mount.errors().is_empty(), "{:?}", mount.errors());
    assert!(mount.versions().len() >= 22, "{:?}", mount.versions());
    drop(mount);
    assert!(!dir.exists(), "the mount removes its directory");
}
