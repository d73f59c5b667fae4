//! `make bench`: convergence time, AWS call efficiency, memory and CPU of the operator at N
//! CrossAccountRoles, side by side with the floor (a plain client issuing the minimal calls)
//! and with ACK's IAM controller, all in one run against the local environment. Writes
//! `target/bench/results.json` and `target/bench/results.md`. See bench/README.md.
//!
//! Settings (environment): BENCH_N (default 200), BENCH_CHURN_ROUNDS (default 5),
//! BENCH_CONCURRENCY (default 8, the operator's default), BENCH_RESYNC_SECONDS (default 10),
//! BENCH_OUT (default target/bench), and ACK_IAM_CONTROLLER / ACK_IAM_CRDS / ACK_IAM_VERSION for
//! the peer.

#[path = "../tests/common/aws_proxy.rs"]
mod aws_proxy;
mod floor;
mod peer_ack;
mod process;
mod report;
mod workload;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aws_proxy::AwsProxy;
use cross_account_operator::api::CrossAccountRole;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, PostParams},
};
use process::Measured;
use report::{AwsCalls, Memory, PhaseResult, Results};
use serde_json::json;
use workload::{condition_status, converge, delete_all};

const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_cross-account-operator");
const MANAGED_POLICY: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
const GRANT_USER: &str = "devTest";
const OPERATOR_USER: &str = "cross-account-operator";
/// Parallel create/delete requests the benchmark itself sends to the apiserver.
const CLIENT_PARALLEL: usize = 32;

/// Benchmark settings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    pub n: usize,
    pub concurrency: usize,
    pub resync_seconds: u64,
    /// Resyncs in the steady-state window.
    pub steady_resyncs: u32,
    /// Rounds of the churn phase (N created, then deleted, each round); 0 skips it.
    pub churn_rounds: u32,
    #[serde(skip)]
    pub out: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str, default: u64| -> u64 {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => v
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a whole number")),
                _ => default,
            }
        };
        let n = number("BENCH_N", 200) as usize;
        assert!(n > 0, "BENCH_N must be at least 1");
        Settings {
            n,
            concurrency: number("BENCH_CONCURRENCY", 8) as usize,
            resync_seconds: number("BENCH_RESYNC_SECONDS", 10),
            steady_resyncs: 3,
            churn_rounds: number("BENCH_CHURN_ROUNDS", 5) as u32,
            out: PathBuf::from(
                std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench".into()),
            ),
        }
    }

    fn timeout(&self) -> Duration {
        // Generous: a bound that only a stuck run hits.
        Duration::from_secs(120 + self.n as u64)
    }
}

/// The local environment's variables (`target/devenv/env`).
struct DevEnv {
    kubeconfig: String,
    aws_endpoint: String,
    access_key: String,
    secret_key: String,
    source_account: String,
    management_role: String,
    account_name: String,
}

impl DevEnv {
    fn from_env() -> DevEnv {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run `make bench` (it starts the local environment)")
            })
        };
        DevEnv {
            kubeconfig: var("KUBECONFIG"),
            aws_endpoint: var("AWS_ENDPOINT_URL"),
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
            source_account: var("SOURCE_ACCOUNT_ID"),
            management_role: var("MANAGEMENT_ROLE_ARN"),
            account_name: var("TARGET_ACCOUNT_NAME"),
        }
    }

    /// SDK configuration with the operator's keys against `endpoint`.
    async fn sdk_config(&self, endpoint: &str) -> aws_config::SdkConfig {
        let credentials = aws_credential_types::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "bench",
        );
        self.sdk_config_with(endpoint, credentials).await
    }

    async fn sdk_config_with(
        &self,
        endpoint: &str,
        credentials: aws_credential_types::Credentials,
    ) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .load()
            .await
    }

    /// A session of the management role in the target account (what the floor and the peer
    /// use to act there), obtained directly from moto so it is not counted.
    async fn management_session(&self) -> aws_credential_types::Credentials {
        let sts = aws_sdk_sts::Client::new(&self.sdk_config(&self.aws_endpoint).await);
        let out = sts
            .assume_role()
            .role_arn(&self.management_role)
            .role_session_name("bench")
            .duration_seconds(3600)
            .send()
            .await
            .expect("assume the management role for the floor and the peer");
        let c = out.credentials().expect("credentials in AssumeRole output");
        aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            None,
            "bench-management",
        )
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if std::env::args().skip(1).any(|a| a != "--bench") {
        eprintln!("usage: make bench [BENCH_N=200] (settings are environment variables)");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let settings = Settings::from_env();
    let env = DevEnv::from_env();
    std::fs::create_dir_all(&settings.out).expect("create the output directory");
    let client = Client::try_default()
        .await
        .expect("kube client from KUBECONFIG");
    let proxy = AwsProxy::start(&env.aws_endpoint).await;
    let started = Instant::now();
    eprintln!(
        "[bench] N={} concurrency={} resync={}s, AWS through {}",
        settings.n,
        settings.concurrency,
        settings.resync_seconds,
        proxy.endpoint()
    );

    let minimum_roles = minimum(&client, &env, false).await;
    let minimum_credentials = minimum(&client, &env, true).await;
    let credentials = operator_phase(&client, &env, &proxy, &settings, true).await;
    let roles_only = operator_phase(&client, &env, &proxy, &settings, false).await;
    let churn = churn_phase(&client, &env, &proxy, &settings).await;
    let management = env.management_session().await;
    let floor_clients = floor::FloorClients {
        target_iam: aws_sdk_iam::Client::new(
            &env.sdk_config_with(&proxy.endpoint(), management.clone())
                .await,
        ),
        source_iam: aws_sdk_iam::Client::new(&env.sdk_config(&proxy.endpoint()).await),
        source_sts: aws_sdk_sts::Client::new(&env.sdk_config(&proxy.endpoint()).await),
    };
    let floor_credentials = floor_phase(&floor_clients, &env, &proxy, &settings, true).await;
    let floor_roles = floor_phase(&floor_clients, &env, &proxy, &settings, false).await;
    let peer = match peer_ack::AckBuild::from_env() {
        Some(build) => Ok((
            build.version.clone(),
            ack_phase(&client, &env, &proxy, &settings, &build, &management).await,
        )),
        None => Err("ACK_IAM_CONTROLLER/ACK_IAM_CRDS not set or not found: \
                     run `make bench` (it builds the peer) or bench/peer/build-ack.sh"
            .to_owned()),
    };
    let results = Results::new(
        &settings,
        minimum_roles,
        minimum_credentials,
        credentials,
        roles_only,
        floor_credentials,
        floor_roles,
        peer,
        churn,
        started.elapsed(),
    );
    results.write(&settings.out);
    eprintln!("[bench] done in {:.0}s", started.elapsed().as_secs_f64());
}

/// The fewest AWS calls that can bring one benchmark object to Ready, counted from the
/// operator's own plan: the writes it plans for a new role, plus the one read that cannot be
/// skipped (whether the role exists: it may belong to someone else, or be adopted), plus the
/// AssumeRole when credentials are asked for.
async fn minimum(client: &Client, env: &DevEnv, credentials: bool) -> report::Minimum {
    use cross_account_operator::{
        api::AwsAccount, naming::OperatorIdentity, planned_writes_for_new_role,
    };
    let account = Api::<AwsAccount>::all(client.clone())
        .get(&env.account_name)
        .await
        .expect("read the AwsAccount of the local environment");
    let (ns, name) = ("bench", "r00000");
    let mut obj = role_object(credentials, &env.account_name, ns, name);
    obj.metadata.uid = Some("bench".into());
    let cr: CrossAccountRole =
        serde_json::from_value(serde_json::to_value(&obj).expect("object to JSON"))
            .expect("the benchmark object is a CrossAccountRole");
    let operator = OperatorIdentity {
        cluster_name: "bench".into(),
        source_account_id: env.source_account.clone(),
        partition: "aws".into(),
        principal_arn: format!("arn:aws:iam::{}:user/{OPERATOR_USER}", env.source_account),
        chained: false,
    };
    let labels = [("crossaccount.io/tenant".to_owned(), "true".to_owned())].into();
    let writes: Vec<String> = planned_writes_for_new_role(&cr, &account, &labels, &operator)
        .unwrap_or_else(|message| panic!("the benchmark spec is refused: {message}"))
        .into_iter()
        .map(str::to_owned)
        .collect();
    let assume_role = u64::from(credentials);
    report::Minimum {
        reads: 1,
        total: 1 + writes.len() as u64 + assume_role,
        writes,
        assume_role,
    }
}

/// Snapshots of the proxy's counts, by "service:Operation".
fn calls_now(proxy: &AwsProxy) -> BTreeMap<String, u64> {
    proxy
        .counts()
        .into_iter()
        .map(|((service, op), c)| (format!("{service}:{op}"), c.forwarded + c.faulted))
        .collect()
}

fn calls_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> AwsCalls {
    AwsCalls::from(
        after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect::<BTreeMap<_, _>>(),
    )
}

async fn tenant_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"crossaccount.io/tenant": "true"}}
    }))
    .expect("namespace object");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

async fn drop_namespace(client: &Client, name: &str) {
    // Without a controller manager the namespace stays Terminating; its objects are gone.
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `url` until it answers 200.
async fn wait_http_ok(url: &str, what: &str, proc: &mut Measured) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let http = reqwest::Client::new();
    loop {
        proc.now(); // panics if it exited
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer on {url} within 90s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics_text(url: &str) -> String {
    reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics")
}

/// Sum of a counter family over the series whose labels contain `label`.
fn metric_sum(text: &str, family: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct OperatorProcess {
    proc: Measured,
    base_url: String,
}

/// The operator's default `--resync-interval`: what convergence is measured with, so that drift
/// detection of the objects already Ready does not compete with the ones being created.
const DEFAULT_RESYNC_SECONDS: u64 = 600;

fn start_operator(
    env: &DevEnv,
    proxy: &AwsProxy,
    settings: &Settings,
    resync_seconds: u64,
    log: &Path,
) -> OperatorProcess {
    let port = free_port();
    let mut command = Command::new(OPERATOR_BIN);
    command
        .args([
            "--cluster-name",
            "bench",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--resync-interval",
            &format!("{resync_seconds}s"),
            "--concurrency",
            &settings.concurrency.to_string(),
            // Convergence is compared with the floor, which has no budget; moto (about 110
            // requests a second) bounds both. BENCH_IAM_RATE measures the budget instead.
            "--iam-rate",
            &std::env::var("BENCH_IAM_RATE").unwrap_or_else(|_| "1000".into()),
        ])
        .env_clear()
        .env("KUBECONFIG", &env.kubeconfig)
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .env("AWS_ACCESS_KEY_ID", &env.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &env.secret_key)
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    OperatorProcess {
        proc: Measured::start(command, log),
        base_url: format!("http://127.0.0.1:{port}"),
    }
}

fn role_object(settings_credentials: bool, account: &str, ns: &str, name: &str) -> DynamicObject {
    let resource = ApiResource::erase::<CrossAccountRole>(&());
    let mut obj = DynamicObject::new(name, &resource).within(ns);
    let mut spec = json!({
        "accountRef": account,
        "policies": {"managed": [MANAGED_POLICY]},
        "grants": [{"user": GRANT_USER}],
    });
    if settings_credentials {
        spec["credentials"] = json!({"durationSeconds": 3600, "region": "us-east-1"});
    }
    obj.data = json!({ "spec": spec });
    obj
}

fn ours_ready(obj: &DynamicObject) -> bool {
    let generation = obj.metadata.generation;
    let observed = obj
        .data
        .pointer("/status/observedGeneration")
        .and_then(serde_json::Value::as_i64);
    condition_status(obj, "Ready") == Some("True") && observed == generation
}

/// Our operator at N objects: convergence, calls, memory; with credentials also the steady
/// state and a restart.
async fn operator_phase(
    client: &Client,
    env: &DevEnv,
    proxy: &AwsProxy,
    settings: &Settings,
    credentials: bool,
) -> PhaseResult {
    let label = if credentials { "credentials" } else { "roles" };
    // Namespaces of earlier runs may still be Terminating (no controller manager locally).
    let ns = format!("bench-{label}-{}-{}", settings.n, std::process::id());
    eprintln!("[bench] operator, {label}: namespace {ns}");
    tenant_namespace(client, &ns).await;
    let log = settings.out.join(format!("operator-{label}.log"));
    let mut op = start_operator(env, proxy, settings, DEFAULT_RESYNC_SECONDS, &log);
    wait_http_ok(
        &format!("{}/readyz", op.base_url),
        "the operator",
        &mut op.proc,
    )
    .await;
    let idle = op.proc.now();

    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::erase::<CrossAccountRole>(&()),
    );
    let objects = (0..settings.n)
        .map(|i| role_object(credentials, &env.account_name, &ns, &format!("r{i:05}")))
        .collect();
    let before = calls_now(proxy);
    let convergence = converge(
        &api,
        objects,
        ours_ready,
        CLIENT_PARALLEL,
        settings.timeout(),
    )
    .await;
    let at_ready = op.proc.now();
    let to_ready = calls_between(&before, &calls_now(proxy));
    eprintln!(
        "[bench]   all {} Ready in {:.1}s (p50 {:.2}s, p99 {:.2}s)",
        settings.n, convergence.all_ready_seconds, convergence.p50_seconds, convergence.p99_seconds
    );

    let mut result = PhaseResult::new(label, convergence, to_ready, settings.n);
    if credentials {
        // Restart with fresh credentials in every Secret: nothing may be minted again. The new
        // process resyncs every BENCH_RESYNC_SECONDS, for the steady-state window.
        result.rss_mib_over_time = op.proc.rss_over_time();
        op.proc.stop();
        let before_restart = calls_now(proxy);
        let restart_log = settings.out.join("operator-restart.log");
        let mut op2 = start_operator(env, proxy, settings, settings.resync_seconds, &restart_log);
        let restart_began = Instant::now();
        wait_http_ok(
            &format!("{}/readyz", op2.base_url),
            "the restarted operator",
            &mut op2.proc,
        )
        .await;
        let metrics = format!("{}/metrics", op2.base_url);
        let deadline = Instant::now() + settings.timeout();
        loop {
            let text = metrics_text(&metrics).await;
            let done = metric_sum(
                &text,
                "crossaccount_reconciles_total",
                "kind=\"CrossAccountRole\"",
            );
            if done as usize >= settings.n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the restarted operator reconciled only {done} of {}",
                settings.n
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // The operator's own count of AssumeRole is of credential mints only: the session of
        // the management role (one per target account after a start) goes through the SDK's
        // credentials provider, which the proxy counts but the operator's metric does not.
        let credential_mints = metric_sum(
            &metrics_text(&metrics).await,
            "crossaccount_aws_requests_total",
            "operation=\"AssumeRole\"",
        ) as u64;
        result.restart = Some(report::Restart {
            seconds_to_reconcile_all: restart_began.elapsed().as_secs_f64(),
            calls: calls_between(&before_restart, &calls_now(proxy)),
            credential_mints,
        });
        let (steady_state, steady) = steady_window(&mut op2.proc, proxy, settings).await;
        result.steady_state = Some(steady_state);
        result.memory = Some(Memory::new(idle, at_ready, steady, settings.n));
        op = op2;
    } else {
        result.memory = Some(Memory::new(idle, at_ready, op.proc.now(), settings.n));
    }

    let before_delete = calls_now(proxy);
    result.delete_seconds = Some(delete_all(&api, CLIENT_PARALLEL, settings.timeout()).await);
    result.delete_calls = Some(calls_between(&before_delete, &calls_now(proxy)));
    if !credentials {
        result.rss_mib_over_time = op.proc.rss_over_time();
    }
    op.proc.stop();
    drop_namespace(client, &ns).await;
    result
}

/// How long kube's event recorder keeps a published event (`CACHE_TTL` in kube-runtime's
/// events.rs), plus half a minute.
const EVENT_CACHE_TTL: Duration = Duration::from_secs(6 * 60 + 30);

/// Create/delete churn on one operator process: `churn_rounds` rounds of N objects with
/// credentials, created until Ready and deleted until gone. Its resident memory after each
/// round's deletion shows whether what it keeps per object goes with the object (caches,
/// recent syncs, backoff, mint times, metric series): it must return to the level of the first
/// round (the allocator keeps what it once needed), not grow round by round.
async fn churn_phase(
    client: &Client,
    env: &DevEnv,
    proxy: &AwsProxy,
    settings: &Settings,
) -> Option<report::Churn> {
    if settings.churn_rounds == 0 {
        return None;
    }
    let ns = format!("bench-churn-{}-{}", settings.n, std::process::id());
    eprintln!(
        "[bench] churn: {} rounds of {} objects in {ns}",
        settings.churn_rounds, settings.n
    );
    tenant_namespace(client, &ns).await;
    let log = settings.out.join("operator-churn.log");
    let mut op = start_operator(env, proxy, settings, DEFAULT_RESYNC_SECONDS, &log);
    wait_http_ok(
        &format!("{}/readyz", op.base_url),
        "the operator",
        &mut op.proc,
    )
    .await;
    let idle = op.proc.now();
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::erase::<CrossAccountRole>(&()),
    );
    let mut rounds = Vec::new();
    for round in 1..=settings.churn_rounds {
        let began = Instant::now();
        let objects = (0..settings.n)
            .map(|i| role_object(true, &env.account_name, &ns, &format!("c{round}-{i:05}")))
            .collect();
        converge(
            &api,
            objects,
            ours_ready,
            CLIENT_PARALLEL,
            settings.timeout(),
        )
        .await;
        let at_ready = op.proc.now();
        delete_all(&api, CLIENT_PARALLEL, settings.timeout()).await;
        // Let the watch events of the last deletions arrive and be handled.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after_delete = op.proc.now();
        eprintln!(
            "[bench]   round {round}: RSS {:.1} MiB at Ready, {:.1} MiB after deletion",
            at_ready.rss as f64 / 1048576.0,
            after_delete.rss as f64 / 1048576.0
        );
        rounds.push(report::ChurnRound::new(
            at_ready,
            after_delete,
            began.elapsed(),
        ));
    }
    // What is kept for a while by design goes once its time has passed: kube's event recorder
    // keeps the events it published for 6 minutes (to fold repeats into a series) and drops
    // the expired ones when it next publishes. Wait that long, then one object more, so that
    // it publishes.
    eprintln!("[bench]   waiting {EVENT_CACHE_TTL:?} for kube's event cache to expire");
    tokio::time::sleep(EVENT_CACHE_TTL).await;
    let last = vec![role_object(true, &env.account_name, &ns, "c-last")];
    converge(&api, last, ours_ready, 1, settings.timeout()).await;
    delete_all(&api, 1, settings.timeout()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_retention = op.proc.now();
    eprintln!(
        "[bench]   after the event cache expired: RSS {:.1} MiB",
        after_retention.rss as f64 / 1048576.0
    );
    op.proc.stop();
    drop_namespace(client, &ns).await;
    Some(report::Churn::new(idle, rounds, after_retention))
}

/// The floor at N roles, with or without the AssumeRole per role.
async fn floor_phase(
    clients: &floor::FloorClients,
    env: &DevEnv,
    proxy: &AwsProxy,
    settings: &Settings,
    credentials: bool,
) -> report::FloorResult {
    let label = if credentials { "credentials" } else { "roles" };
    eprintln!("[bench] floor, {label}");
    let target_account = std::env::var("TARGET_ACCOUNT_ID").expect("TARGET_ACCOUNT_ID");
    let run_id = std::process::id();
    let roles: Vec<floor::FloorRole> = (0..settings.n)
        .map(|i| {
            let name = format!("bench-floor-{label}-{run_id}-{i:05}");
            floor::FloorRole {
                arn: format!("arn:aws:iam::{target_account}:role/{name}"),
                name,
            }
        })
        .collect();
    let spec = floor::FloorSpec {
        source_account: &env.source_account,
        operator_user: OPERATOR_USER,
        grant_user: GRANT_USER,
        managed_policy: MANAGED_POLICY,
        credentials,
    };
    let before = calls_now(proxy);
    let (wall, ready_at_seconds) = floor::run(clients, &spec, &roles, settings.concurrency).await;
    let calls = calls_between(&before, &calls_now(proxy));
    floor::clean(clients, &spec, &roles).await;
    eprintln!("[bench]   {:.1}s", wall.as_secs_f64());
    report::FloorResult {
        label: label.to_owned(),
        wall_seconds: wall.as_secs_f64(),
        calls_per_object: calls.per_object(settings.n),
        calls,
        ready_at_seconds,
    }
}

/// ACK's IAM controller at N Roles: convergence, calls, memory, steady state.
async fn ack_phase(
    client: &Client,
    env: &DevEnv,
    proxy: &AwsProxy,
    settings: &Settings,
    build: &peer_ack::AckBuild,
    management: &aws_credential_types::Credentials,
) -> PhaseResult {
    let ns = format!("bench-ack-{}-{}", settings.n, std::process::id());
    eprintln!(
        "[bench] ACK iam-controller {}: namespace {ns}",
        build.version
    );
    let status = Command::new("kubectl")
        .args(["apply", "--server-side", "-f"])
        .arg(&build.crds)
        .env("KUBECONFIG", &env.kubeconfig)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run kubectl");
    assert!(status.success(), "kubectl apply of ACK's CRDs failed");
    wait_for_crd(client, "roles.iam.services.k8s.aws").await;
    tenant_namespace(client, &ns).await;
    let metrics_port = free_port();
    let log = settings.out.join("ack-iam-controller.log");
    let mut ack = peer_ack::start(
        build,
        &env.kubeconfig,
        &proxy.endpoint(),
        management,
        &ns,
        settings.concurrency,
        None,
        metrics_port,
        &log,
    );
    wait_http_ok(
        &format!("http://127.0.0.1:{metrics_port}/metrics"),
        "ACK's iam-controller",
        &mut ack,
    )
    .await;
    let idle = ack.now();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &peer_ack::role_resource());
    let trust =
        floor::trust_policy(&env.source_account, OPERATOR_USER, GRANT_USER, None).to_string();
    let objects = (0..settings.n)
        .map(|i| {
            peer_ack::role_object(
                &ns,
                &format!("bench-ack-{}-{i:05}", std::process::id()),
                &trust,
                MANAGED_POLICY,
            )
        })
        .collect();
    let before = calls_now(proxy);
    let convergence = converge(
        &api,
        objects,
        peer_ack::role_ready,
        CLIENT_PARALLEL,
        settings.timeout(),
    )
    .await;
    let at_ready = ack.now();
    let to_ready = calls_between(&before, &calls_now(proxy));
    eprintln!(
        "[bench]   all {} synced in {:.1}s (p50 {:.2}s, p99 {:.2}s)",
        settings.n, convergence.all_ready_seconds, convergence.p50_seconds, convergence.p99_seconds
    );
    let mut result = PhaseResult::new("ack-roles", convergence, to_ready, settings.n);
    // The steady-state window with the same resync as ours: a restarted controller.
    result.rss_mib_over_time = ack.rss_over_time();
    ack.stop();
    let metrics_port = free_port();
    let mut ack = peer_ack::start(
        build,
        &env.kubeconfig,
        &proxy.endpoint(),
        management,
        &ns,
        settings.concurrency,
        Some(settings.resync_seconds),
        metrics_port,
        &settings.out.join("ack-iam-controller-restart.log"),
    );
    wait_http_ok(
        &format!("http://127.0.0.1:{metrics_port}/metrics"),
        "the restarted ACK iam-controller",
        &mut ack,
    )
    .await;
    let (steady_state, steady) = steady_window(&mut ack, proxy, settings).await;
    result.steady_state = Some(steady_state);
    result.memory = Some(Memory::new(idle, at_ready, steady, settings.n));
    let before_delete = calls_now(proxy);
    result.delete_seconds = Some(delete_all(&api, CLIENT_PARALLEL, settings.timeout()).await);
    result.delete_calls = Some(calls_between(&before_delete, &calls_now(proxy)));
    ack.stop();
    drop_namespace(client, &ns).await;
    result
}

/// After a settle period (a restarted controller's first reads of every object), a window of
/// several resyncs: every AWS call in it, and the CPU the controller used.
async fn steady_window(
    proc: &mut Measured,
    proxy: &AwsProxy,
    settings: &Settings,
) -> (report::SteadyState, process::Sample) {
    // A restarted controller reads every object first: give that time to pass (moto answers
    // some 100 calls a second here).
    let settle = settings.resync_seconds.max(settings.n as u64 / 20);
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let window = Duration::from_secs(settings.resync_seconds * u64::from(settings.steady_resyncs))
        + Duration::from_secs(settings.resync_seconds / 2);
    let (start_calls, start_cpu) = (calls_now(proxy), proc.now().cpu_seconds);
    tokio::time::sleep(window).await;
    let end = proc.now();
    let steady = report::SteadyState {
        window_seconds: window.as_secs_f64(),
        resyncs: settings.steady_resyncs,
        calls: calls_between(&start_calls, &calls_now(proxy)),
        cpu_seconds: end.cpu_seconds - start_cpu,
    };
    (steady, end)
}

async fn wait_for_crd(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(crd) = crds.get(name).await {
            let established = crd
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "CRD {name} not established within 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
