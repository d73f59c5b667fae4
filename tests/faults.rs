//! Fault tests: the operator under AWS throttling and server errors, an apiserver restart, an AWS
//! outage during a credentials refresh, SIGKILL at random points, and two instances without
//! leader election. Each test ends with the invariants of docs/reliability.md checked explicitly:
//! every CrossAccountRole converged (or is gone), the target account holds exactly the expected
//! roles (no duplicates, no leaks), the source principal exactly the expected grants, credentials
//! never lapsed while AWS was reachable, and the AWS calls stayed bounded.
//!
//! The operators of these tests talk to AWS through the fault proxy (tests/common/aws_proxy.rs),
//! which also counts their calls and logs each request: claims about every CR (each reconciled,
//! each throttled, each written once) are checked per CR from that log, so that one CR skipped
//! cannot hide behind a total. One operator runs at a time (except in the two-instance test),
//! and every test holds `common::serial()`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::{
    Operator, OperatorOptions, TestNamespace, account_name,
    aws_proxy::{AwsProxy, CallCount, Fault, FaultRule, LoggedRequest, RequestMark},
    env,
};
use cross_account_operator::api::CrossAccountRole;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
const EC2_READ: &str = "arn:aws:iam::aws:policy/AmazonEC2ReadOnlyAccess";
const DEVELOPER: &str = "devTest";
const INLINE_NAME: &str = "list-buckets";
const INLINE_DOCUMENT: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListAllMyBuckets","Resource":"*"}]}"#;
const EXPIRATION_ANNOTATION: &str = "crossaccount.io/expiration";
const MANAGED_SECRETS: &str = "app.kubernetes.io/managed-by=cross-account-operator";

// ---------------------------------------------------------------------------------------------
// Operators behind the fault proxy.
// ---------------------------------------------------------------------------------------------

/// The AWS endpoint of the environment behind a fault proxy, the operators started against it,
/// and the namespaces of the test. When the test fails, the faults stop and the last operator
/// gets a minute to delete the test's CrossAccountRoles (so their IAM roles and grants) before
/// every operator is killed.
struct Scenario {
    proxy: AwsProxy,
    operators: Vec<Operator>,
    namespaces: Vec<String>,
}

impl Scenario {
    async fn new() -> Self {
        Self {
            proxy: AwsProxy::start(&env("AWS_ENDPOINT_URL")).await,
            operators: Vec::new(),
            namespaces: Vec::new(),
        }
    }

    /// Starts an operator that reaches AWS through the proxy, logging to
    /// `<devenv>/logs/operator-faults-<tag>.log`; returns its index once it is ready.
    async fn start_operator(&mut self, tag: &str, resync: Option<Duration>) -> usize {
        let options = OperatorOptions {
            resync,
            ..OperatorOptions::default()
        };
        let index = self.spawn(tag, options);
        self.operators[index].wait_ready().await;
        index
    }

    /// [`Scenario::start_operator`] with more flags and environment variables.
    async fn start_operator_with(
        &mut self,
        tag: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> usize {
        let index = self.spawn_operator_with(tag, args, env);
        self.operators[index].wait_ready().await;
        index
    }

    /// Starts an operator like [`Scenario::start_operator_with`] without waiting for it to be
    /// ready (the apiserver may be down).
    fn spawn_operator_with(
        &mut self,
        tag: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> usize {
        let options = OperatorOptions {
            args,
            env,
            ..OperatorOptions::default()
        };
        self.spawn(tag, options)
    }

    fn spawn(&mut self, tag: &str, options: OperatorOptions) -> usize {
        let operator = Operator::start_logged(
            &format!("faults-{tag}"),
            OperatorOptions {
                aws_endpoint: Some(self.proxy.endpoint()),
                ..options
            },
        );
        self.operators.push(operator);
        self.operators.len() - 1
    }

    fn operator(&self, index: usize) -> &Operator {
        &self.operators[index]
    }

    /// The log tail of every operator still running (for failure messages).
    fn logs(&self) -> String {
        self.operators
            .iter()
            .filter(|op| op.exited().is_none())
            .map(|op| op.log_tail(40))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn namespace(&mut self, client: &Client, prefix: &str) -> TestNamespace {
        let ns = TestNamespace::new(client, prefix).await;
        self.namespaces.push(ns.name.clone());
        ns
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::thread::panicking() && self.operators.iter().any(|op| op.exited().is_none()) {
            self.proxy.clear_rules();
            common::delete_roles_while_the_operator_runs(self.namespaces.clone());
        }
        for operator in &self.operators {
            if operator.exited().is_none() {
                operator.kill();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The state of AWS and Kubernetes the invariants are about.
// ---------------------------------------------------------------------------------------------

/// Names of the roles in the target account whose name starts with `prefix`.
async fn roles_with_prefix(iam: &aws_sdk_iam::Client, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut pages = iam.list_roles().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("ListRoles: {e:?}"));
        names.extend(
            page.roles()
                .iter()
                .map(|r| r.role_name().to_owned())
                .filter(|name| name.starts_with(prefix)),
        );
    }
    names
}

/// The operator-managed Secrets of `namespace`: name -> (expiration, resourceVersion).
async fn managed_secrets(
    client: &Client,
    namespace: &str,
) -> BTreeMap<String, (Option<Timestamp>, String)> {
    let list = Api::<Secret>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(MANAGED_SECRETS))
        .await
        .unwrap_or_else(|e| panic!("list Secrets in {namespace}: {e}"));
    list.items
        .iter()
        .map(|s| {
            let expiration = s
                .annotations()
                .get(EXPIRATION_ANNOTATION)
                .and_then(|t| t.parse::<Timestamp>().ok());
            (
                s.name_any(),
                (expiration, s.resource_version().unwrap_or_default()),
            )
        })
        .collect()
}

/// Whether `role` is Ready=True for its current generation.
fn is_ready(role: &CrossAccountRole) -> bool {
    common::role_condition(role, "Ready")
        .is_some_and(|c| c.status == "True" && c.observed_generation == role.metadata.generation)
}

fn short_state(role: &CrossAccountRole) -> String {
    let conditions = role
        .status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| format!("{}={}/{} ({})", c.type_, c.status, c.reason, c.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|| "no status".into());
    format!(
        "{} gen {:?}: {conditions}",
        role.name_any(),
        role.metadata.generation
    )
}

/// Waits until all `expected` CrossAccountRoles of `namespace` are Ready for their current
/// generation; returns how long that took.
async fn wait_all_ready(
    client: &Client,
    namespace: &str,
    expected: usize,
    timeout: Duration,
    scenario: &Scenario,
) -> Duration {
    let started = Instant::now();
    let api = common::roles_api(client, namespace);
    let outcome = common::try_poll(timeout, || {
        let api = api.clone();
        async move {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("list: {e}"))?;
            let waiting: Vec<String> = list
                .items
                .iter()
                .filter(|r| !is_ready(r))
                .map(short_state)
                .collect();
            if list.items.len() == expected && waiting.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {expected} exist, {} not ready, e.g.: {}",
                    list.items.len(),
                    waiting.len(),
                    waiting
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" | ")
                ))
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        panic!(
            "{namespace}: not all {expected} CrossAccountRoles Ready within {timeout:?}: {last}\n{}",
            scenario.logs()
        );
    }
    started.elapsed()
}

/// Waits until `namespace` has no CrossAccountRoles left; returns how long that took.
async fn wait_all_gone(
    client: &Client,
    namespace: &str,
    timeout: Duration,
    scenario: &Scenario,
) -> Duration {
    let started = Instant::now();
    let api = common::roles_api(client, namespace);
    let outcome = common::try_poll(timeout, || {
        let api = api.clone();
        async move {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("list: {e}"))?;
            if list.items.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} left, e.g.: {}",
                    list.items.len(),
                    list.items
                        .iter()
                        .take(3)
                        .map(short_state)
                        .collect::<Vec<_>>()
                        .join(" | ")
                ))
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        panic!(
            "{namespace}: CrossAccountRoles not gone within {timeout:?}: {last}\n{}",
            scenario.logs()
        );
    }
    started.elapsed()
}

/// The names of the objects of `namespace` with an event of `reason` (and of type Warning when
/// `warnings_only`), once `expected` all have one or after a deadline, whichever is first: the
/// operator publishes events from a queue of their own, moments after the status it wrote.
async fn objects_with_event(
    client: &Client,
    namespace: &str,
    reason: &str,
    warnings_only: bool,
    expected: &BTreeSet<String>,
) -> BTreeSet<String> {
    let api = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), namespace);
    let seen = || async {
        api.list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list events in {namespace}: {e}"))
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| !warnings_only || e.type_.as_deref() == Some("Warning"))
            .filter_map(|e| e.regarding.and_then(|r| r.name))
            .collect::<BTreeSet<String>>()
    };
    let found = common::try_poll(Duration::from_secs(30), || async {
        let names = seen().await;
        if expected.is_subset(&names) {
            Ok(names)
        } else {
            Err(String::new())
        }
    })
    .await;
    match found {
        Ok(names) => names,
        Err(_) => seen().await,
    }
}

/// `crossaccount_reconcile_errors_total` of CrossAccountRoles with `category`.
async fn reconcile_errors(operator: &Operator, category: &str) -> u64 {
    common::metric_sum(
        &operator.metrics_text().await,
        "crossaccount_reconcile_errors_total",
        &[("kind", "CrossAccountRole"), ("category", category)],
    )
}

/// AssumeRole requests that mint credentials (not the operators' management-role sessions) the
/// proxy saw since `mark`, whatever their outcome.
fn credential_mints(proxy: &AwsProxy, mark: &RequestMark) -> Vec<LoggedRequest> {
    proxy
        .requests_since(mark)
        .into_iter()
        .filter(common::is_credential_mint)
        .collect()
}

/// Requests since `mark` of `operation` per `RoleName` that `keep` selects.
fn per_role(
    proxy: &AwsProxy,
    mark: &RequestMark,
    operation: &str,
    keep: impl Fn(&LoggedRequest) -> bool,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for request in proxy.requests_since(mark) {
        if request.operation == operation
            && keep(&request)
            && let Some(role) = request.param("RoleName")
        {
            *counts.entry(role.to_owned()).or_default() += 1;
        }
    }
    counts
}

fn writes_forwarded(counts: &BTreeMap<(String, String), CallCount>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .filter(|((service, op), c)| {
            service == "iam"
                && common::IAM_WRITE_OPERATIONS.contains(&op.as_str())
                && c.forwarded > 0
        })
        .map(|((_, op), c)| (op.clone(), c.forwarded))
        .collect()
}

fn sum_counts(counts: &BTreeMap<(String, String), CallCount>) -> CallCount {
    counts
        .values()
        .fold(CallCount::default(), |sum, c| CallCount {
            forwarded: sum.forwarded + c.forwarded,
            succeeded: sum.succeeded + c.succeeded,
            faulted: sum.faulted + c.faulted,
            delayed: sum.delayed + c.delayed,
        })
}

fn forwarded(counts: &BTreeMap<(String, String), CallCount>, op: &str) -> u64 {
    counts
        .iter()
        .filter(|((_, o), _)| o == op)
        .map(|(_, c)| c.forwarded)
        .sum()
}

/// Requests of `op` that AWS carried out (answered with success).
fn succeeded(counts: &BTreeMap<(String, String), CallCount>, op: &str) -> u64 {
    counts
        .iter()
        .filter(|((_, o), _)| o == op)
        .map(|(_, c)| c.succeeded)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// A fleet of CrossAccountRoles with a mix of features.
// ---------------------------------------------------------------------------------------------

/// One member of a fleet: CR `rNN`, role `<prefix>-NN`. Every third has an inline policy, every
/// fifth grants the developer, every second asks for credentials.
#[derive(Clone)]
struct Member {
    index: usize,
    prefix: String,
}

impl Member {
    fn name(&self) -> String {
        format!("r{:02}", self.index)
    }
    fn role_name(&self) -> String {
        format!("{}-{:02}", self.prefix, self.index)
    }
    fn inline(&self) -> bool {
        self.index.is_multiple_of(3)
    }
    fn grant(&self) -> bool {
        self.index.is_multiple_of(5)
    }
    fn credentials(&self) -> bool {
        self.index.is_multiple_of(2)
    }

    fn spec(&self, managed: &[&str], wave: u32) -> Value {
        let mut spec = json!({
            "accountRef": account_name(),
            "roleName": self.role_name(),
            "policies": {"managed": managed},
            "tags": {"wave": wave.to_string()},
        });
        if self.inline() {
            spec["policies"]["inline"] =
                json!([{"name": INLINE_NAME, "document": INLINE_DOCUMENT}]);
        }
        if self.grant() {
            spec["grants"] = json!([{"user": DEVELOPER}]);
        }
        if self.credentials() {
            spec["credentials"] = json!({"durationSeconds": 3600});
        }
        spec
    }
}

fn fleet(prefix: &str, size: usize) -> Vec<Member> {
    (0..size)
        .map(|index| Member {
            index,
            prefix: prefix.to_owned(),
        })
        .collect()
}

/// What is wrong with AWS and the Secrets compared with `members` (all present, with `managed`
/// attached and tag `wave`): exactly their roles exist under `prefix`, each with its policies and
/// ownership tags; the developer holds exactly their grants; each with credentials has a Secret
/// that has not expired; no other managed Secret exists.
async fn fleet_problems(
    client: &Client,
    namespace: &str,
    prefix: &str,
    members: &[Member],
    managed: &[&str],
    wave: u32,
) -> Vec<String> {
    let target = common::target_iam().await;
    let source = common::source_iam().await;
    let mut problems = Vec::new();

    let expected_roles: BTreeSet<String> = members.iter().map(Member::role_name).collect();
    let roles = roles_with_prefix(&target, prefix).await;
    if roles != expected_roles {
        problems.push(format!(
            "roles under {prefix}: missing {:?}, unexpected {:?}",
            expected_roles.difference(&roles).collect::<Vec<_>>(),
            roles.difference(&expected_roles).collect::<Vec<_>>()
        ));
    }
    let expected_managed: BTreeSet<String> = managed.iter().map(|s| (*s).to_owned()).collect();
    for member in members.iter().filter(|m| roles.contains(&m.role_name())) {
        let role = member.role_name();
        let attached = common::attached_policies(&target, &role).await;
        if attached != expected_managed {
            problems.push(format!(
                "{role}: attached {attached:?}, want {expected_managed:?}"
            ));
        }
        let inline: BTreeSet<String> = common::inline_policies(&target, &role)
            .await
            .into_keys()
            .collect();
        let want: BTreeSet<String> = member
            .inline()
            .then(|| INLINE_NAME.to_owned())
            .into_iter()
            .collect();
        if inline != want {
            problems.push(format!("{role}: inline policies {inline:?}, want {want:?}"));
        }
        let tags = common::role_tags(&target, &role).await;
        let name = member.name();
        let wave = wave.to_string();
        for (key, value) in [
            ("crossaccount.io/cluster", common::CLUSTER_NAME),
            ("crossaccount.io/namespace", namespace),
            ("crossaccount.io/name", name.as_str()),
            ("wave", wave.as_str()),
        ] {
            if tags.get(key).map(String::as_str) != Some(value) {
                problems.push(format!(
                    "{role}: tag {key}={:?}, want {value}",
                    tags.get(key)
                ));
            }
        }
        let granted =
            common::user_granted(&source, &target, common::CLUSTER_NAME, DEVELOPER, &role).await;
        if granted != member.grant() {
            problems.push(format!(
                "{role}: {DEVELOPER} granted {granted}, want {} (grant tag {:?})",
                member.grant(),
                tags.get(&common::grant_tag(DEVELOPER))
            ));
        }
    }

    let secrets = managed_secrets(client, namespace).await;
    let expected_secrets: BTreeSet<String> = members
        .iter()
        .filter(|m| m.credentials())
        .map(|m| format!("{}-aws", m.name()))
        .collect();
    let names: BTreeSet<String> = secrets.keys().cloned().collect();
    if names != expected_secrets {
        problems.push(format!(
            "Secrets: missing {:?}, unexpected {:?}",
            expected_secrets.difference(&names).collect::<Vec<_>>(),
            names.difference(&expected_secrets).collect::<Vec<_>>()
        ));
    }
    let now = Timestamp::now();
    for (name, (expiration, _)) in &secrets {
        match expiration {
            Some(t) if *t > now => {}
            other => problems.push(format!(
                "Secret {name}: expiration {other:?} is not in the future"
            )),
        }
    }
    problems
}

async fn assert_fleet(
    client: &Client,
    namespace: &str,
    prefix: &str,
    members: &[Member],
    managed: &[&str],
    wave: u32,
    when: &str,
) {
    let problems = fleet_problems(client, namespace, prefix, members, managed, wave).await;
    assert!(
        problems.is_empty(),
        "{when}: {} problems:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

async fn create_fleet(client: &Client, namespace: &str, members: &[Member], managed: &[&str]) {
    for member in members {
        common::create_role(client, namespace, &member.name(), member.spec(managed, 1)).await;
    }
}

/// The rules of "30 % throttling and 5 % 5xx on IAM and STS": the 5xx rules come first, so that
/// the throttling rule sees the remaining 95 % and throttles 30 % of all requests.
fn chaos_rules() -> Vec<FaultRule> {
    let mut rules = Vec::new();
    for service in ["iam", "sts"] {
        rules.push(
            FaultRule::new(Fault::InternalFailure)
                .service(service)
                .probability(0.025),
        );
        rules.push(
            FaultRule::new(Fault::ServiceUnavailable)
                .service(service)
                .probability(0.025 / 0.975),
        );
        rules.push(
            FaultRule::new(Fault::Throttling)
                .service(service)
                .probability(0.30 / 0.95),
        );
    }
    rules
}

// ---------------------------------------------------------------------------------------------
// 1. Throttling and server errors while 50 CRs are created, updated and deleted.
// ---------------------------------------------------------------------------------------------

const FLEET_SIZE: usize = 50;
/// Long enough that no periodic resync falls into a phase: the calls counted are those the
/// changes and the faults cause.
const FLEET_RESYNC: Duration = Duration::from_secs(120);
/// How long IAM throttles every request of some roles in the no-hot-loop phase.
const SUSTAINED_THROTTLING: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_roles_converge_under_throttling_and_server_errors() {
    let _serial = common::serial().await;
    let client = common::kube_client().await;
    let mut scenario = Scenario::new().await;
    let op = scenario.start_operator("fleet", Some(FLEET_RESYNC)).await;
    let ns = scenario.namespace(&client, "fleet").await;
    let prefix = common::unique("Fleet");
    let members = fleet(&prefix, FLEET_SIZE);
    let n = FLEET_SIZE as u64;
    let inline_count = members.iter().filter(|m| m.inline()).count() as u64;
    let grant_count = members.iter().filter(|m| m.grant()).count() as u64;
    let credential_count = members.iter().filter(|m| m.credentials()).count() as u64;

    // Create under 30 % throttling and 5 % 5xx.
    scenario.proxy.set_rules(chaos_rules());
    scenario.proxy.reset_counts();
    create_fleet(&client, &ns.name, &members, &[S3_READ]).await;
    let created_in = wait_all_ready(
        &client,
        &ns.name,
        FLEET_SIZE,
        Duration::from_secs(180),
        &scenario,
    )
    .await;
    let create_counts = scenario.proxy.counts();
    let total = sum_counts(&create_counts);
    let fault_share = total.faulted as f64 / total.total() as f64;
    eprintln!(
        "create: {FLEET_SIZE} Ready in {created_in:?}; {} requests ({} faulted, {:.0} %), {:.1} per role; writes {:?}",
        total.total(),
        total.faulted,
        fault_share * 100.0,
        total.total() as f64 / n as f64,
        writes_forwarded(&create_counts)
    );
    assert!(
        (0.25..=0.45).contains(&fault_share),
        "the proxy faulted {:.0} % of the requests; the test wants about 35 %",
        fault_share * 100.0
    );
    // A write the proxy faulted never reached AWS, so what reached it must be exactly the needed
    // writes: a second CreateRole would be a duplicate attempt.
    for (op_name, want) in [
        ("CreateRole", n),
        ("AttachRolePolicy", n),
        ("PutRolePolicy", inline_count),
    ] {
        assert_eq!(
            forwarded(&create_counts, op_name),
            want,
            "{op_name} calls that reached AWS while creating: {:?}",
            writes_forwarded(&create_counts)
        );
    }
    // The developer's grant policy is created and attached once at most (earlier tests may have
    // attached it already); the grants themselves are tags in CreateRole.
    assert!(
        forwarded(&create_counts, "AttachUserPolicy") <= 1
            && forwarded(&create_counts, "CreatePolicy") <= 1,
        "the grant policy is attached once: {:?}",
        writes_forwarded(&create_counts)
    );
    let mints = forwarded(&create_counts, "AssumeRole");
    assert!(
        (credential_count..=credential_count + 2).contains(&mints),
        "AssumeRole calls that reached AWS: {mints}; want one per role with credentials \
         ({credential_count}) plus the management role's session"
    );
    // The least a create takes: GetRole, CreateRole, AttachRolePolicy, per feature its read and
    // write, and AssumeRole. Retries of faulted calls (1/(1-0.35) on average) and whole
    // reconciles redone after a call failed three times stay well under four times that.
    let minimum = 3 * n + 2 * grant_count + inline_count + credential_count;
    assert!(
        total.total() <= 4 * minimum,
        "{} AWS requests to create {FLEET_SIZE} roles, more than 4 x the minimum {minimum}",
        total.total()
    );
    assert_fleet(
        &client,
        &ns.name,
        &prefix,
        &members,
        &[S3_READ],
        1,
        "after create",
    )
    .await;

    // Update under 30 % / 5 %: one more managed policy and a changed tag on every role.
    scenario.proxy.reset_counts();
    for member in &members {
        common::patch_role_spec(
            &client,
            &ns.name,
            &member.name(),
            member.spec(&[S3_READ, EC2_READ], 2),
        )
        .await;
    }
    let updated_in = wait_all_ready(
        &client,
        &ns.name,
        FLEET_SIZE,
        Duration::from_secs(120),
        &scenario,
    )
    .await;
    let update_counts = scenario.proxy.counts();
    eprintln!(
        "update: {FLEET_SIZE} Ready in {updated_in:?}; {} requests, {:.1} per role; writes {:?}",
        sum_counts(&update_counts).total(),
        sum_counts(&update_counts).total() as f64 / n as f64,
        writes_forwarded(&update_counts)
    );
    // Exactly the needed writes: the added policy and the changed tag; the unchanged trust,
    // inline policies and grants are not written again.
    assert_eq!(
        writes_forwarded(&update_counts),
        BTreeMap::from([
            ("AttachRolePolicy".to_owned(), n),
            ("TagRole".to_owned(), n)
        ]),
        "IAM writes that reached AWS for the update"
    );
    assert_fleet(
        &client,
        &ns.name,
        &prefix,
        &members,
        &[S3_READ, EC2_READ],
        2,
        "after update",
    )
    .await;
    // Events are aggregated per (object, reason) for six minutes by kube's recorder, keeping the
    // first note (see docs/reliability.md): each role has its AwsChange event.
    let fleet: BTreeSet<String> = members.iter().map(Member::name).collect();
    let changed = objects_with_event(&client, &ns.name, "AwsChange", false, &fleet).await;
    assert_eq!(
        changed.len(),
        FLEET_SIZE,
        "AwsChange events exist for every role: {changed:?}"
    );

    // Work pending for every role (a tag change) while IAM throttles every request about ten of
    // them (roles -00 to -09): per-object backoff must keep their request rate low instead of
    // spinning, the other forty must not be held up, and status, events and metrics say why.
    let throttled_roles = 10;
    let throttled_before = reconcile_errors(scenario.operator(op), "AwsThrottled").await;
    let reconciles_before = scenario.operator(op).reconciles("CrossAccountRole").await;
    scenario.proxy.set_rules(vec![
        FaultRule::new(Fault::Throttling)
            .service("iam")
            .body_contains(&format!("RoleName={prefix}-0")),
    ]);
    scenario.proxy.reset_counts();
    let throttling_mark = scenario.proxy.mark();
    for member in &members {
        common::patch_role_spec(
            &client,
            &ns.name,
            &member.name(),
            member.spec(&[S3_READ, EC2_READ], 3),
        )
        .await;
    }
    let window_started = Instant::now();
    let others_ready = common::try_poll(SUSTAINED_THROTTLING, || {
        let api = common::roles_api(&client, &ns.name);
        async move {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let waiting = list
                .items
                .iter()
                .filter(|r| r.name_any().as_str() >= "r10" && !is_ready(r))
                .count();
            if waiting == 0 {
                Ok(())
            } else {
                Err(format!("{waiting} unthrottled roles not Ready"))
            }
        }
    })
    .await;
    if let Err(last) = others_ready {
        panic!(
            "the unthrottled roles were held up by the throttled ones: {last}\n{}",
            scenario.logs()
        );
    }
    // The rest of the measurement window (the fault lasts this long).
    tokio::time::sleep(SUSTAINED_THROTTLING.saturating_sub(window_started.elapsed())).await;
    let throttled = scenario.proxy.total(Some("iam")).faulted;
    let reconciles = scenario.operator(op).reconciles("CrossAccountRole").await - reconciles_before;
    let throttled_after = reconcile_errors(scenario.operator(op), "AwsThrottled").await;
    let failed = throttled_after - throttled_before;
    eprintln!(
        "sustained throttling of {throttled_roles} roles for {SUSTAINED_THROTTLING:?}: {throttled} throttled \
         requests, {failed} failed reconciles ({:.1} per role), {reconciles} reconciles of all {FLEET_SIZE}",
        failed as f64 / throttled_roles as f64
    );
    // Per object: reconciles after 0, ~1, ~3, ~7, ~15 s of backoff (jitter 0.75x to 1.25x): at
    // most six in the window, each failing on its first call after at most three SDK attempts.
    // Retrying without backoff would be a reconcile every SDK retry cycle (1 to 2 s).
    let most_reconciles = throttled_roles * 6;
    assert!(
        (throttled_roles..=most_reconciles).contains(&failed),
        "{failed} failed reconciles of {throttled_roles} throttled roles in {SUSTAINED_THROTTLING:?}; \
         per-object backoff allows at most {most_reconciles} (a hot loop?)"
    );
    assert!(
        throttled <= most_reconciles * 3,
        "{throttled} throttled requests in {SUSTAINED_THROTTLING:?}: more than {}, the most \
         per-object backoff allows (a hot loop?)",
        most_reconciles * 3
    );
    // Per role, from the proxy's log: each throttled role was tried (its work is pending) and
    // none of them spun, whatever the total says.
    let window = scenario.proxy.requests_since(&throttling_mark);
    let faulted_per_role: BTreeMap<String, u64> = members[..throttled_roles as usize]
        .iter()
        .map(|m| {
            let role = m.role_name();
            let faulted = window
                .iter()
                .filter(|r| r.faulted() && r.param("RoleName") == Some(role.as_str()))
                .count() as u64;
            (role, faulted)
        })
        .collect();
    let get_role_per_role = per_role(&scenario.proxy, &throttling_mark, "GetRole", |_| true);
    let most_per_role = most_reconciles / throttled_roles * 3;
    let off: Vec<(&String, &u64)> = faulted_per_role
        .iter()
        .filter(|(_, n)| !(1..=most_per_role).contains(*n))
        .collect();
    assert!(
        off.is_empty(),
        "throttled requests per throttled role must be 1 to {most_per_role} (tried, no hot \
         loop): {off:?}; all: {faulted_per_role:?}; GetRole per role: {get_role_per_role:?}"
    );
    let list = common::roles_api(&client, &ns.name)
        .list(&ListParams::default())
        .await
        .expect("list CrossAccountRoles");
    let throttled_members: Vec<&CrossAccountRole> = list
        .items
        .iter()
        .filter(|r| r.name_any().as_str() < "r10")
        .collect();
    let not_reporting: Vec<String> = throttled_members
        .iter()
        .filter(|r| {
            !common::role_condition(r, "RoleSynced").is_some_and(|c| {
                c.status == "False"
                    && c.reason == "AwsError"
                    && c.message.contains("Rate exceeded")
                    && c.observed_generation == r.metadata.generation
            })
        })
        .map(|r| short_state(r))
        .collect();
    assert!(
        throttled_members.len() == throttled_roles as usize && not_reporting.is_empty(),
        "{} throttled CRs do not report RoleSynced=False/AwsError naming the throttling, e.g. {:?}",
        not_reporting.len(),
        not_reporting.iter().take(3).collect::<Vec<_>>()
    );
    let throttled_names: BTreeSet<String> =
        throttled_members.iter().map(|r| r.name_any()).collect();
    let warned = objects_with_event(&client, &ns.name, "AwsError", true, &throttled_names).await;
    let unwarned: Vec<&&CrossAccountRole> = throttled_members
        .iter()
        .filter(|r| !warned.contains(&r.name_any()))
        .collect();
    assert!(
        unwarned.is_empty(),
        "a Warning event with reason AwsError for every throttled role; missing for {:?}",
        unwarned.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );

    // The throttling ends: every role converges within its backoff.
    scenario.proxy.clear_rules();
    scenario.proxy.reset_counts();
    let recovery_mark = scenario.proxy.mark();
    let recovered_in = wait_all_ready(
        &client,
        &ns.name,
        FLEET_SIZE,
        Duration::from_secs(60),
        &scenario,
    )
    .await;
    let recovery_counts = scenario.proxy.counts();
    eprintln!(
        "recovery: Ready {recovered_in:?} after the throttling ended; writes {:?}",
        writes_forwarded(&recovery_counts)
    );
    assert_eq!(
        writes_forwarded(&recovery_counts),
        BTreeMap::from([("TagRole".to_owned(), throttled_roles)]),
        "IAM writes that reached AWS after the throttling: the tags of the throttled roles"
    );
    let tagged = per_role(&scenario.proxy, &recovery_mark, "TagRole", |_| true);
    let want: BTreeMap<String, u64> = members[..throttled_roles as usize]
        .iter()
        .map(|m| (m.role_name(), 1))
        .collect();
    assert_eq!(
        tagged, want,
        "TagRole attempts per role after the throttling: each throttled role once, no other"
    );
    assert_fleet(
        &client,
        &ns.name,
        &prefix,
        &members,
        &[S3_READ, EC2_READ],
        3,
        "after the throttling",
    )
    .await;

    // Delete under 30 % / 5 %.
    scenario.proxy.set_rules(chaos_rules());
    scenario.proxy.reset_counts();
    common::roles_api(&client, &ns.name)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete the CrossAccountRoles");
    let deleted_in = wait_all_gone(&client, &ns.name, Duration::from_secs(150), &scenario).await;
    let delete_counts = scenario.proxy.counts();
    eprintln!(
        "delete: gone in {deleted_in:?}; {} requests; writes {:?}",
        sum_counts(&delete_counts).total(),
        writes_forwarded(&delete_counts)
    );
    for (op_name, want) in [
        ("DeleteRole", n),
        ("DetachRolePolicy", 2 * n),
        ("DeleteRolePolicy", inline_count),
    ] {
        assert_eq!(
            forwarded(&delete_counts, op_name),
            want,
            "{op_name} calls that reached AWS while deleting: {:?}",
            writes_forwarded(&delete_counts)
        );
    }
    // The grants were the roles' tags and trust entries, gone with the roles: nothing to write
    // in the source account (and no blind deletes of what is not there).
    assert_eq!(
        forwarded(&delete_counts, "DeleteUserPolicy"),
        0,
        "no inline grant policy to delete: {:?}",
        writes_forwarded(&delete_counts)
    );
    assert_fleet(&client, &ns.name, &prefix, &[], &[], 0, "after delete").await;
    scenario.proxy.clear_rules();
}

// ---------------------------------------------------------------------------------------------
// 2. Apiserver restart mid-run.
// ---------------------------------------------------------------------------------------------

/// Runs hack/devenv/restart-apiserver.sh (the apiserver stays down `down` seconds).
async fn restart_apiserver(down: u32) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/devenv/restart-apiserver.sh");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&script)
            .arg(down.to_string())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()))
    })
    .await
    .expect("restart task");
    assert!(
        output.status.success(),
        "restart-apiserver.sh failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How soon after the apiserver is ready again a CrossAccountRole created then must be Ready:
/// the watches relist at once after "too old resource version" and retry a lost connection
/// within seconds (src/controller/watch.rs; docs/reliability.md F3).
const READY_AFTER_RESTART: Duration = Duration::from_secs(15);

/// Restarts the apiserver, creates `member` as soon as it is ready again, and returns how long
/// the new CrossAccountRole took to be Ready (`expected` CRs in the namespace then); panics past
/// [`READY_AFTER_RESTART`].
async fn restart_then_create(
    client: &Client,
    namespace: &str,
    member: &Member,
    down: u32,
    expected: usize,
    scenario: &Scenario,
) -> Duration {
    restart_apiserver(down).await;
    let ready_again = Instant::now();
    common::create_role(
        client,
        namespace,
        &member.name(),
        member.spec(&[S3_READ, EC2_READ], 2),
    )
    .await;
    wait_all_ready(client, namespace, expected, READY_AFTER_RESTART, scenario).await;
    ready_again.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rides_out_an_apiserver_restart() {
    let _serial = common::serial().await;
    let client = common::kube_client().await;
    let mut scenario = Scenario::new().await;
    let op = scenario.start_operator("apiserver", None).await;
    let ns = scenario.namespace(&client, "restart").await;
    let prefix = common::unique("Restart");
    let members = fleet(&prefix, 8);
    create_fleet(&client, &ns.name, &members[..5], &[S3_READ]).await;
    wait_all_ready(&client, &ns.name, 5, Duration::from_secs(60), &scenario).await;

    // Changes in flight when the apiserver goes away: the operator is reconciling them.
    scenario.proxy.reset_counts();
    let changes_mark = scenario.proxy.mark();
    for member in &members[..5] {
        common::patch_role_spec(
            &client,
            &ns.name,
            &member.name(),
            member.spec(&[S3_READ, EC2_READ], 2),
        )
        .await;
    }
    // Three restarts in a row, so that a slow path cannot pass by luck: after each, a CR created
    // as soon as the apiserver is ready again is Ready within the bound.
    let mut times = Vec::new();
    for (round, member) in members[5..].iter().enumerate() {
        let took = restart_then_create(&client, &ns.name, member, 3, 6 + round, &scenario).await;
        let operator = scenario.operator(op);
        assert!(
            operator.exited().is_none(),
            "the operator (no leader election) exited during the apiserver restart: {:?}\n{}",
            operator.exited(),
            operator.log_tail(40)
        );
        times.push(took);
    }
    eprintln!("apiserver ready -> new CR Ready, per restart: {times:?}");
    let operator = scenario.operator(op);
    assert_eq!(operator.healthz().await, Ok(200), "the operator is healthy");
    assert_fleet(
        &client,
        &ns.name,
        &prefix,
        &members,
        &[S3_READ, EC2_READ],
        2,
        "after the restarts",
    )
    .await;
    let counts = scenario.proxy.counts();
    assert_eq!(
        forwarded(&counts, "CreateRole"),
        3,
        "only the new roles are created: {:?}",
        writes_forwarded(&counts)
    );
    assert_eq!(
        forwarded(&counts, "AttachRolePolicy"),
        11,
        "EC2 on five roles, two on each new one"
    );
    // Per role: each old role got EC2 attached once, each new one was created once with both.
    let reached = |r: &LoggedRequest| r.reached_upstream();
    let attached = per_role(&scenario.proxy, &changes_mark, "AttachRolePolicy", reached);
    let created = per_role(&scenario.proxy, &changes_mark, "CreateRole", reached);
    let want_attached: BTreeMap<String, u64> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.role_name(), if i < 5 { 1 } else { 2 }))
        .collect();
    let want_created: BTreeMap<String, u64> =
        members[5..].iter().map(|m| (m.role_name(), 1)).collect();
    assert_eq!(attached, want_attached, "AttachRolePolicy per role");
    assert_eq!(created, want_created, "CreateRole per role");

    common::roles_api(&client, &ns.name)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete the CrossAccountRoles");
    wait_all_gone(&client, &ns.name, Duration::from_secs(60), &scenario).await;
    assert_fleet(&client, &ns.name, &prefix, &[], &[], 0, "after delete").await;
    scenario.operator(op).stop();
}

/// With `--leader-elect`, an apiserver outage longer than the lease: the leader cannot renew
/// within its renew deadline, stops and exits; restarted as kubelet would (same pod name), it
/// takes its Lease back and reconciles a CR created after the apiserver is ready within the
/// same bound as without leader election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_longer_than_its_lease_exits_and_its_restart_rejoins() {
    let _serial = common::serial().await;
    let client = common::kube_client().await;
    let mut scenario = Scenario::new().await;
    let ns = scenario.namespace(&client, "lease-cut").await;
    let lease = common::unique("lease");
    let leader_args = vec![
        "--leader-elect".to_owned(),
        "--leader-election-namespace".to_owned(),
        ns.name.clone(),
        "--leader-election-id".to_owned(),
        lease.clone(),
    ];
    let pod = vec![("POD_NAME".to_owned(), "operator-0".to_owned())];
    let first = scenario
        .start_operator_with("lease-cut-0", leader_args.clone(), pod.clone())
        .await;
    let prefix = common::unique("LeaseCut");
    let members = fleet(&prefix, 2);
    create_fleet(&client, &ns.name, &members[..1], &[S3_READ]).await;
    wait_all_ready(&client, &ns.name, 1, Duration::from_secs(60), &scenario).await;

    // 25 s down: past the renew deadline (10 s) and the lease (15 s).
    let restart = tokio::spawn(restart_apiserver(25));
    let exited = common::try_poll(Duration::from_secs(40), || {
        let exited = scenario.operator(first).exited();
        async move { exited.ok_or_else(|| "still running".to_owned()) }
    })
    .await
    .unwrap_or_else(|last| {
        panic!(
            "the leader did not give up its lease during the outage: {last}\n{}",
            scenario.logs()
        )
    });
    assert!(
        scenario
            .operator(first)
            .log_tail(400)
            .contains("could not renew the lease within its renew deadline"),
        "exit {exited}: {}",
        scenario.operator(first).log_tail(40)
    );
    // kubelet restarts the container while the apiserver is still down; the new process waits
    // for it to come back.
    let second = scenario.spawn_operator_with("lease-cut-1", leader_args, pod);
    restart.await.expect("restart task");
    let ready_again = Instant::now();
    common::create_role(
        &client,
        &ns.name,
        &members[1].name(),
        members[1].spec(&[S3_READ], 1),
    )
    .await;
    wait_all_ready(&client, &ns.name, 2, READY_AFTER_RESTART, &scenario).await;
    eprintln!(
        "leader restarted after losing its lease; apiserver ready -> new CR Ready in {:?}",
        ready_again.elapsed()
    );
    let operator = scenario.operator(second);
    assert!(operator.exited().is_none(), "{}", operator.log_tail(40));
    assert_fleet(
        &client,
        &ns.name,
        &prefix,
        &members,
        &[S3_READ],
        1,
        "after the outage",
    )
    .await;
    common::roles_api(&client, &ns.name)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete the CrossAccountRoles");
    wait_all_gone(&client, &ns.name, Duration::from_secs(60), &scenario).await;
    scenario.operator(second).stop();
}

// ---------------------------------------------------------------------------------------------
// 3. AWS outage of a minute while credentials are due for refresh.
// ---------------------------------------------------------------------------------------------

/// Long enough to hold the first refresh: credentials are refreshed no sooner than a minute after
/// their issue (less up to a tenth of jitter).
const OUTAGE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_stay_valid_through_an_aws_outage_during_refresh() {
    let _serial = common::serial().await;
    let client = common::kube_client().await;
    let mut scenario = Scenario::new().await;
    let op = scenario.start_operator("outage", None).await;
    let ns = scenario.namespace(&client, "outage").await;
    let role_name = common::unique("OutageRefresh");
    // 900 s credentials refreshed at 3 % of their life, which the minimum refresh delay makes
    // 54 to 60 s after issue: inside the outage that starts right after they are issued.
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": account_name(),
            "roleName": role_name,
            "credentials": {"durationSeconds": 900, "refreshPercent": 3},
        }),
    )
    .await;
    wait_all_ready(&client, &ns.name, 1, Duration::from_secs(60), &scenario).await;
    let secrets = managed_secrets(&client, &ns.name).await;
    let (first_expiration, _) = secrets
        .get("app-aws")
        .cloned()
        .unwrap_or_else(|| panic!("no Secret app-aws: {secrets:?}"));
    let first_expiration = first_expiration.expect("the Secret has an expiration");
    let api = common::roles_api(&client, &ns.name);
    let cr = api.get("app").await.expect("get app");
    let next_refresh = cr
        .status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .and_then(|c| c.next_refresh.clone())
        .expect("status.credentials.nextRefresh")
        .0;

    let operator = scenario.operator(op);
    // Reconcile errors of both kinds: the AwsAccount's verification may notice the outage first,
    // and its CrossAccountRoles then wait for it (AccountNotReady) rather than fail.
    let errors_before = common::metric_sum(
        &operator.metrics_text().await,
        "crossaccount_reconcile_errors_total",
        &[],
    );
    scenario
        .proxy
        .set_rules(vec![FaultRule::new(Fault::Outage)]);
    let outage_started = Instant::now();
    let outage_end = Timestamp::now() + OUTAGE;
    assert!(
        next_refresh < outage_end,
        "the refresh ({next_refresh}) must fall into the outage (until {outage_end})"
    );
    // Throughout the outage: the Secret keeps its credentials, they have not expired, and the
    // CR and the metrics show the problem once the refresh is due.
    let mut seen_problem: Option<String> = None;
    let mut reasons_seen = BTreeSet::new();
    let mut errors_during = errors_before;
    while outage_started.elapsed() < OUTAGE {
        let secrets = managed_secrets(&client, &ns.name).await;
        match secrets.get("app-aws") {
            Some((Some(expiration), _)) => {
                assert!(
                    *expiration > Timestamp::now(),
                    "the credentials expired during the outage ({expiration})"
                );
                assert_eq!(
                    *expiration, first_expiration,
                    "the credentials changed while AWS was unreachable"
                );
            }
            other => panic!(
                "the Secret lost its credentials during the outage: {other:?}\n{}",
                scenario.logs()
            ),
        }
        let cr = api.get("app").await.expect("get app");
        if let Some(ready) = common::role_condition(&cr, "Ready") {
            reasons_seen.insert(format!("Ready={}/{}", ready.status, ready.reason));
        }
        if seen_problem.is_none()
            && let Some(ready) = common::role_condition(&cr, "Ready")
            && ready.status == "False"
        {
            let credentials = common::role_condition(&cr, "CredentialsReady");
            seen_problem = Some(format!(
                "after {:?}: Ready=False/{}: {}; CredentialsReady {:?}",
                outage_started.elapsed(),
                ready.reason,
                ready.message,
                credentials.map(|c| (&c.status, &c.reason))
            ));
        }
        errors_during = common::metric_sum(
            &operator.metrics_text().await,
            "crossaccount_reconcile_errors_total",
            &[],
        );
        // One sample a second (the Secret must hold valid credentials at every sample).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during = scenario.proxy.total(None);
    scenario.proxy.clear_rules();
    eprintln!(
        "outage: {} requests failed in {OUTAGE:?}; first {}; conditions seen {reasons_seen:?}; reconcile errors +{}",
        during.faulted,
        seen_problem.as_deref().unwrap_or("no problem reported"),
        errors_during - errors_before
    );
    let problem = seen_problem.unwrap_or_else(|| {
        panic!(
            "the CR never showed Ready=False during a {OUTAGE:?} outage with its refresh due\n{}",
            scenario.logs()
        )
    });
    assert!(
        problem.contains("AwsError") || problem.contains("AccountNotReady"),
        "the condition names the AWS problem: {problem}"
    );
    assert!(
        errors_during > errors_before,
        "crossaccount_reconcile_errors_total did not rise during the outage"
    );
    assert_eq!(
        operator.healthz().await,
        Ok(200),
        "healthy during and after the outage"
    );

    // After the outage: the overdue refresh happens and the CR is Ready again.
    let refreshed = common::try_poll(Duration::from_secs(90), || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let secrets = managed_secrets(&client, &ns).await;
            match secrets.get("app-aws") {
                Some((Some(expiration), _)) if *expiration > first_expiration => Ok(*expiration),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap_or_else(|last| {
        panic!(
            "no refresh within 90s after the outage; Secret: {last}\n{}",
            scenario.logs()
        )
    });
    let recovered_in =
        wait_all_ready(&client, &ns.name, 1, Duration::from_secs(90), &scenario).await;
    eprintln!(
        "refreshed after the outage: expiration {first_expiration} -> {refreshed}; Ready {:?} after the outage",
        outage_started.elapsed().saturating_sub(OUTAGE) + recovered_in
    );
    let expiry_gauge = common::metric_sum(
        &operator.metrics_text().await,
        "crossaccount_credentials_expiry_seconds",
        &[("namespace", ns.name.as_str()), ("name", "app")],
    );
    assert!(
        expiry_gauge > 600,
        "the expiry metric shows the new credentials: {expiry_gauge}s"
    );

    common::delete_role_and_wait(&client, &ns.name, "app", Duration::from_secs(60)).await;
    let target = common::target_iam().await;
    assert!(
        common::get_iam_role(&target, &role_name).await.is_none(),
        "no leaked role"
    );
    assert!(
        managed_secrets(&client, &ns.name).await.is_empty(),
        "no leaked Secret"
    );
    scenario.operator(op).stop();
}

// ---------------------------------------------------------------------------------------------
// 4. SIGKILL at random points of create, update and delete.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_leaves_nothing_behind() {
    let _serial = common::serial().await;
    let seed: u64 = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("sigkill test seed {seed} (rerun with FAULTS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let client = common::kube_client().await;
    let mut scenario = Scenario::new().await;
    let ns = scenario.namespace(&client, "sigkill").await;
    let prefix = common::unique("Kill");
    let members = fleet(&prefix, 8);
    // Slower IAM makes the work of a round take seconds, so that a kill lands inside it.
    scenario.proxy.set_rules(vec![
        FaultRule::new(Fault::Latency(Duration::from_millis(400))).service("iam"),
    ]);

    // Each round: start an operator, make a change, kill it at a random moment.
    let rounds: [(&str, std::ops::Range<usize>); 6] = [
        ("create", 0..4),
        ("create", 4..8),
        ("update", 0..8),
        ("update", 0..4),
        ("delete", 6..8),
        ("delete", 4..6),
    ];
    let mut alive: BTreeSet<usize> = BTreeSet::new();
    let mut wave: BTreeMap<usize, u32> = BTreeMap::new();
    let mut killed_mid_work = 0;
    let mut interrupted_creates = 0u64;
    for (round, (action, range)) in rounds.iter().enumerate() {
        let op = scenario
            .start_operator(&format!("kill-{round}"), None)
            .await;
        for i in range.clone() {
            let member = &members[i];
            match *action {
                "create" => {
                    common::create_role(
                        &client,
                        &ns.name,
                        &member.name(),
                        member.spec(&[S3_READ], 1),
                    )
                    .await;
                    alive.insert(i);
                    wave.insert(i, 1);
                }
                "update" => {
                    let next = wave[&i] + 1;
                    common::patch_role_spec(
                        &client,
                        &ns.name,
                        &member.name(),
                        member.spec(&[S3_READ, EC2_READ], next),
                    )
                    .await;
                    wave.insert(i, next);
                }
                _ => {
                    common::roles_api(&client, &ns.name)
                        .delete(&member.name(), &DeleteParams::default())
                        .await
                        .unwrap_or_else(|e| panic!("delete {}: {e}", member.name()));
                    alive.remove(&i);
                }
            }
        }
        let delay = Duration::from_millis(rng.random_range(200..2500));
        // The kill moment (the fault being injected), not a wait for a state.
        tokio::time::sleep(delay).await;
        let pending = pending_work(&client, &ns.name, range.len(), action).await;
        let status = scenario.operator(op).kill();
        eprintln!(
            "round {round} ({action} {range:?}): SIGKILL after {delay:?} with {pending} of {} CRs unfinished ({status})",
            range.len()
        );
        if pending > 0 {
            killed_mid_work += 1;
        }
        if *action == "create" {
            interrupted_creates += pending as u64;
        }
    }
    assert!(
        killed_mid_work >= rounds.len() / 2,
        "only {killed_mid_work} of {} kills interrupted unfinished work: the test did not test much",
        rounds.len()
    );

    // A last operator, without faults: everything converges.
    scenario.proxy.clear_rules();
    let op = scenario.start_operator("kill-final", None).await;
    let converged_in = wait_all_ready(
        &client,
        &ns.name,
        alive.len(),
        Duration::from_secs(90),
        &scenario,
    )
    .await;
    eprintln!("converged {converged_in:?} after the last restart");
    // Members 0..4 were updated twice (wave 3), 4..6 once and deleted, 6..8 deleted.
    let remaining: Vec<Member> = alive.iter().map(|i| members[*i].clone()).collect();
    assert!(
        alive.iter().all(|i| wave[i] == 3),
        "the remaining members were all updated twice: {wave:?}"
    );
    assert_fleet(
        &client,
        &ns.name,
        &prefix,
        &remaining,
        &[S3_READ, EC2_READ],
        3,
        "after the kills",
    )
    .await;
    // Each role is created exactly once. A CreateRole that a killed operator sent still reaches
    // AWS (the proxy delays it, as a slow AWS would, and carries it out after its caller died);
    // a successor that looked before it landed tries again and is answered EntityAlreadyExists:
    // at most one such attempt per CR whose creation a kill interrupted.
    let counts = scenario.proxy.counts();
    let created = succeeded(&counts, "CreateRole");
    let refused = forwarded(&counts, "CreateRole") - created;
    eprintln!(
        "IAM writes over all rounds: {:?}; CreateRole refused as existing: {refused} ({interrupted_creates} creations interrupted)",
        writes_forwarded(&counts)
    );
    assert_eq!(
        created,
        members.len() as u64,
        "each of the {} roles is created once",
        members.len()
    );
    assert!(
        refused <= interrupted_creates,
        "{refused} CreateRole attempts for existing roles, more than the {interrupted_creates} interrupted creations"
    );

    // No refresh storm: a restart (after one more SIGKILL) mints nothing that is not due.
    let secrets_before = managed_secrets(&client, &ns.name).await;
    let reconciles_needed = scenario.operator(op).reconciles("CrossAccountRole").await;
    scenario.operator(op).kill();
    // Everything the killed operator sent arrived before this mark.
    let restart_mark = scenario.proxy.mark();
    let op = scenario.start_operator("kill-restart", None).await;
    let operator = scenario.operator(op);
    // Every CR reconciled at least twice (start, then a resync) by the new operator: its role
    // read from IAM twice, counted per CR so that one skipped CR fails the test.
    let role_names: Vec<String> = remaining.iter().map(Member::role_name).collect();
    let reads = common::try_wait_for_role_reads(
        &scenario.proxy,
        &restart_mark,
        &role_names,
        2,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|last| {
        panic!(
            "the restarted operator did not reconcile every CR twice: {last}\n{}",
            operator.log_tail(40)
        )
    });
    let mints = credential_mints(&scenario.proxy, &restart_mark);
    let secrets_after = managed_secrets(&client, &ns.name).await;
    eprintln!(
        "restart: GetRole per role {reads:?}, {} credential mints (the killed operator had made \
         {reconciles_needed} reconciles)",
        mints.len()
    );
    assert!(
        mints.is_empty(),
        "the restarted operator minted credentials that were not due:\n{}",
        common::describe_requests(&mints)
    );
    assert_eq!(
        secrets_before, secrets_after,
        "the Secrets were rewritten by the restarted operator"
    );

    common::roles_api(&client, &ns.name)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete the CrossAccountRoles");
    wait_all_gone(&client, &ns.name, Duration::from_secs(60), &scenario).await;
    assert_fleet(&client, &ns.name, &prefix, &[], &[], 0, "after delete").await;
    scenario.operator(op).stop();
}

/// How many of the `count` CRs a round touched are unfinished: not Ready for their generation
/// (create, update), or still there (delete).
async fn pending_work(client: &Client, namespace: &str, count: usize, action: &str) -> usize {
    let list = common::roles_api(client, namespace)
        .list(&ListParams::default())
        .await
        .expect("list CrossAccountRoles");
    match action {
        "delete" => list
            .items
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_some())
            .count()
            .min(count),
        _ => list
            .items
            .iter()
            .filter(|r| !is_ready(r))
            .count()
            .min(count),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Two operators without leader election.
// ---------------------------------------------------------------------------------------------

/// Several resyncs of both operators.
const QUIET_WINDOW: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_without_leader_election_agree() {
    let _serial = common::serial().await;
    let client = common::kube_client().await;
    let mut scenario = Scenario::new().await;
    let first = scenario.start_operator("twin-a", None).await;
    let second = scenario.start_operator("twin-b", None).await;
    let ns = scenario.namespace(&client, "twins").await;
    let prefix = common::unique("Twin");
    let members = fleet(&prefix, 6);
    create_fleet(&client, &ns.name, &members, &[S3_READ]).await;
    wait_all_ready(
        &client,
        &ns.name,
        members.len(),
        Duration::from_secs(60),
        &scenario,
    )
    .await;
    for member in &members {
        common::patch_role_spec(
            &client,
            &ns.name,
            &member.name(),
            member.spec(&[S3_READ, EC2_READ], 2),
        )
        .await;
    }
    wait_all_ready(
        &client,
        &ns.name,
        members.len(),
        Duration::from_secs(60),
        &scenario,
    )
    .await;
    assert_fleet(
        &client,
        &ns.name,
        &prefix,
        &members,
        &[S3_READ, EC2_READ],
        2,
        "with two operators",
    )
    .await;

    // Settled: over several resyncs of both, nothing is written anywhere.
    let api = common::roles_api(&client, &ns.name);
    let versions = |list: Vec<CrossAccountRole>| -> BTreeMap<String, String> {
        list.into_iter()
            .map(|r| (r.name_any(), r.resource_version().unwrap_or_default()))
            .collect()
    };
    // Let both finish what the update started (credential Secrets re-read, status written).
    let settled = common::try_poll(Duration::from_secs(30), || {
        let api = api.clone();
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let a = (
                versions(
                    api.list(&ListParams::default())
                        .await
                        .map_err(|e| e.to_string())?
                        .items,
                ),
                managed_secrets(&client, &ns).await,
            );
            tokio::time::sleep(Duration::from_secs(4)).await;
            let b = (
                versions(
                    api.list(&ListParams::default())
                        .await
                        .map_err(|e| e.to_string())?
                        .items,
                ),
                managed_secrets(&client, &ns).await,
            );
            if a == b {
                Ok(b)
            } else {
                Err("still changing".to_owned())
            }
        }
    })
    .await;
    let (roles_before, secrets_before) = settled.unwrap_or_else(|last| {
        panic!(
            "two operators keep rewriting CRs or Secrets: {last}\n{}",
            scenario.logs()
        )
    });
    scenario.proxy.reset_counts();
    let quiet_mark = scenario.proxy.mark();
    // The measurement window.
    tokio::time::sleep(QUIET_WINDOW).await;
    let counts = scenario.proxy.counts();
    let roles_after = versions(api.list(&ListParams::default()).await.expect("list").items);
    let secrets_after = managed_secrets(&client, &ns.name).await;
    let quiet_requests = scenario.proxy.requests_since(&quiet_mark);
    let mints = credential_mints(&scenario.proxy, &quiet_mark);
    let write_attempts = common::iam_write_attempts(&quiet_requests);
    let reads = sum_counts(&counts).total();
    eprintln!(
        "two operators, {QUIET_WINDOW:?} settled: {reads} AWS requests (reads), writes {:?}",
        writes_forwarded(&counts)
    );
    assert!(reads > 0, "the operators resynced during the window");
    assert!(
        writes_forwarded(&counts).is_empty() && write_attempts.is_empty(),
        "IAM writes while settled: {write_attempts:?}:\n{}",
        common::describe_requests(quiet_requests.iter().filter(|r| common::is_iam_write(r)))
    );
    assert!(
        mints.is_empty(),
        "credentials minted while settled:\n{}",
        common::describe_requests(&mints)
    );
    assert_eq!(
        roles_before, roles_after,
        "CR status flapped (resourceVersion changed)"
    );
    assert_eq!(
        secrets_before, secrets_after,
        "Secrets rewritten (resourceVersion changed)"
    );

    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete the CrossAccountRoles");
    wait_all_gone(&client, &ns.name, Duration::from_secs(60), &scenario).await;
    assert_fleet(&client, &ns.name, &prefix, &[], &[], 0, "after delete").await;
    for index in [first, second] {
        scenario.operator(index).stop();
    }
}
