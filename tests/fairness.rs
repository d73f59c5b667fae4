//! Fairness of credential minting between tenants (issue 14, item 8), tried as an attacker
//! would: one namespace applies many CrossAccountRoles with credentials at once and keeps
//! editing the Secrets it already has (each edit asks for a new mint), while another namespace
//! needs credentials. The other namespace's mint must not wait for the flood to drain, and no
//! object is minted for more often than the operator's minimum interval between two mints of
//! one object (30 s, `MIN_MINT_INTERVAL` in src/pipeline/credentials.rs), however often its
//! Secret is edited.
//!
//! The operator runs with `--assume-role-rate 1` (bursts of 2), so that a flood of a couple
//! dozen objects keeps the source account's AssumeRole budget busy for about as many seconds:
//! an operator that served mints in arrival order would make the quiet namespace wait for all
//! of them. What was minted, and when, is read from the test's AWS proxy (every attempt).
//!
//! The IAM request budget of a target account (`--iam-rate`) is tried the same way: more roles
//! than it can resync in an interval, and the proxy's log of IAM requests never above the
//! bucket's bound in any window, while every role still gets Ready.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    AccountGuard, Operator, OperatorOptions, TargetRoleGuard, TestNamespace,
    aws_proxy::{AwsProxy, LoggedRequest, RequestMark},
    env,
};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(60);
/// CrossAccountRoles of the flooding namespace.
const FLOOD: usize = 24;
/// `--assume-role-rate` of the test's operator.
const RATE: f64 = 1.0;
/// The stated bound on the quiet namespace's wait: its role's creation in IAM plus its turn at
/// the AssumeRole budget, which a namespace's cap of two mints under way puts behind at most
/// two of the flood's (2 s at this rate). Generous for a loaded machine; an operator serving
/// mints in arrival order would exceed it, as the flood alone takes about FLOOD / RATE seconds.
const FAIR_BOUND: Duration = Duration::from_secs(15);
/// The minimum time between two mints of one object, less a second for the clocks involved
/// (the proxy stamps arrivals, the operator measures from the end of the previous mint).
const MIN_GAP: Duration = Duration::from_secs(29);

fn mints_by_role(proxy: &AwsProxy, mark: &RequestMark) -> BTreeMap<String, Vec<LoggedRequest>> {
    let mut by_role: BTreeMap<String, Vec<LoggedRequest>> = BTreeMap::new();
    for request in proxy
        .requests_since(mark)
        .into_iter()
        .filter(common::is_credential_mint)
    {
        if let Some(arn) = request.param("RoleArn") {
            by_role.entry(arn.to_owned()).or_default().push(request);
        }
    }
    by_role
}

fn role_of(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The attacker: edits every Secret of `namespace` it finds, over and over, until `stop`.
/// Returns how many edits were made.
fn tamper(
    client: Client,
    namespace: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let secrets = Api::<Secret>::namespaced(client, &namespace);
        let edits = AtomicUsize::new(0);
        // The attacker's pace: an edit every 20 ms, about 50 a second.
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        while !stop.load(Ordering::Relaxed) {
            let Ok(list) = secrets.list(&ListParams::default()).await else {
                continue;
            };
            for secret in list.items {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Some(name) = secret.metadata.name else {
                    continue;
                };
                pace.tick().await;
                let n = edits.fetch_add(1, Ordering::Relaxed);
                let forged = ByteString(format!("tampered-{n}").into_bytes());
                let patch = json!({"data": {"AWS_ACCESS_KEY_ID": forged}});
                let _ = secrets
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        }
        edits.into_inner()
    })
}

/// Deletes the CrossAccountRoles of its namespaces if the test fails, while the test's operator
/// still runs (declared after it, so dropped before it), so that their roles are cleaned up.
struct DeleteOnPanic(Vec<String>);

impl Drop for DeleteOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            common::delete_roles_while_the_operator_runs(self.0.clone());
        }
    }
}

#[tokio::test]
async fn one_namespaces_flood_of_mints_does_not_delay_anothers() {
    let client = common::kube_client().await;
    let proxy = AwsProxy::start(&env("AWS_ENDPOINT_URL")).await;
    let operator = Operator::start_logged(
        "fairness",
        OperatorOptions {
            aws_endpoint: Some(proxy.endpoint()),
            args: vec!["--assume-role-rate".into(), RATE.to_string()],
            ..OperatorOptions::default()
        },
    );
    operator.wait_ready().await;
    let flood_ns = TestNamespace::new(&client, "flood").await;
    let quiet_ns = TestNamespace::new(&client, "quiet").await;
    let _cleanup = DeleteOnPanic(vec![flood_ns.name.clone(), quiet_ns.name.clone()]);
    let account =
        AccountGuard::ready_for(&client, "fair", &[&flood_ns.name, &quiet_ns.name], CONVERGE).await;

    let flood_roles: Vec<String> = (0..FLOOD).map(|_| common::unique("Flood")).collect();
    let quiet_role = common::unique("Quiet");
    let _guards: Vec<TargetRoleGuard> = flood_roles
        .iter()
        .chain([&quiet_role])
        .map(|r| TargetRoleGuard::new(r))
        .collect();
    let mark = proxy.mark();

    // The flood: every object asks for credentials at once, and the attacker edits each Secret
    // as soon as it has one.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = tamper(client.clone(), flood_ns.name.clone(), stop.clone());
    for (i, role) in flood_roles.iter().enumerate() {
        common::create_role(
            &client,
            &flood_ns.name,
            &format!("flood-{i}"),
            json!({"accountRef": account.name, "roleName": role, "credentials": {}}),
        )
        .await;
    }
    let minted = |proxy: &AwsProxy| {
        mints_by_role(proxy, &mark)
            .keys()
            .filter(|arn| flood_roles.iter().any(|r| r == role_of(arn)))
            .count()
    };
    // The budget is busy with the flood: its first mints are out, most are still to come.
    common::poll("the flood's first mints", CONVERGE, || {
        let n = minted(&proxy);
        async move {
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} of {FLOOD} flood roles minted"))
            }
        }
    })
    .await;

    // The quiet namespace asks for credentials now.
    let asked = Instant::now();
    common::create_role(
        &client,
        &quiet_ns.name,
        "app",
        json!({"accountRef": account.name, "roleName": quiet_role, "credentials": {}}),
    )
    .await;
    common::wait_for_condition(
        &client,
        &quiet_ns.name,
        "app",
        "CredentialsReady",
        "True",
        None,
        CONVERGE,
    )
    .await;
    let waited = asked.elapsed();
    let flood_minted_then = minted(&proxy);

    // The flood drains; the attacker goes on editing until every flood object was minted once.
    common::poll("every flood role minted", Duration::from_secs(180), || {
        let n = minted(&proxy);
        async move {
            if n == FLOOD {
                Ok(())
            } else {
                Err(format!("{n} of {FLOOD} flood roles minted"))
            }
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let edits = attacker.await.expect("the attacker's task");

    let mut problems = Vec::new();
    if waited > FAIR_BOUND {
        problems.push(format!(
            "the quiet namespace waited {waited:?} for its credentials (bound {FAIR_BOUND:?})"
        ));
    }
    // Served ahead of the flood, not after it: a good part of the flood was still waiting.
    if flood_minted_then > FLOOD - FLOOD / 4 {
        problems.push(format!(
            "the quiet namespace got its credentials only after {flood_minted_then} of the \
             flood's {FLOOD} mints (it waited {waited:?})"
        ));
    }
    let by_role = mints_by_role(&proxy, &mark);
    let quiet_mints = by_role
        .iter()
        .filter(|(arn, _)| role_of(arn) == quiet_role)
        .map(|(_, m)| m.len())
        .sum::<usize>();
    if quiet_mints != 1 {
        problems.push(format!(
            "the quiet role was minted for {quiet_mints} times, expected once"
        ));
    }
    // However often its Secret was edited, an object is minted for at most once per interval.
    let mut flood_mints = 0;
    for (arn, mints) in by_role.iter().filter(|(arn, _)| role_of(arn) != quiet_role) {
        flood_mints += mints.len();
        for pair in mints.windows(2) {
            let gap = pair[1].arrived.duration_since(pair[0].arrived);
            if gap.as_secs_f64() < MIN_GAP.as_secs_f64() {
                problems.push(format!(
                    "{} minted twice {:.1} s apart (minimum {MIN_GAP:?})",
                    role_of(arn),
                    gap.as_secs_f64()
                ));
            }
        }
    }
    // The attack was real: far more edits than mints.
    if edits < 4 * flood_mints {
        problems.push(format!(
            "the attacker made only {edits} edits for {flood_mints} flood mints: no flood"
        ));
    }
    eprintln!(
        "fairness: quiet waited {waited:?} with {flood_minted_then}/{FLOOD} flood roles minted; \
         {edits} Secret edits, {flood_mints} flood mints"
    );

    for ns in [&flood_ns.name, &quiet_ns.name] {
        common::delete_roles_and_wait(&client, ns, Duration::from_secs(120))
            .await
            .unwrap_or_else(|left| panic!("the test's CrossAccountRoles did not go: {left}"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `--iam-rate` of the budget test's operator (bursts of twice as many).
const IAM_RATE: f64 = 4.0;
/// Roles of the budget test: with a 2 s resync they ask for 4 reads each per resync, far more
/// than the budget (ROLES * 4 / 2 s = 24 requests a second against 4).
const ROLES: usize = 12;

/// The most requests a token bucket of `rate` with bursts of `2 * rate` lets through in a window
/// of `seconds`, plus one for the clocks involved (the proxy stamps arrivals, the operator takes
/// tokens before sending).
fn budget_bound(seconds: f64) -> f64 {
    2.0 * IAM_RATE + IAM_RATE * seconds + 1.0
}

#[tokio::test]
async fn iam_requests_into_an_account_stay_within_its_budget() {
    let client = common::kube_client().await;
    let proxy = AwsProxy::start(&env("AWS_ENDPOINT_URL")).await;
    let operator = Operator::start_logged(
        "iam-budget",
        OperatorOptions {
            aws_endpoint: Some(proxy.endpoint()),
            resync: Some(Duration::from_secs(2)),
            args: vec!["--iam-rate".into(), IAM_RATE.to_string()],
            ..OperatorOptions::default()
        },
    );
    operator.wait_ready().await;
    let ns = TestNamespace::new(&client, "budget").await;
    let _cleanup = DeleteOnPanic(vec![ns.name.clone()]);
    let account = AccountGuard::ready_for(&client, "budget", &[&ns.name], CONVERGE).await;
    let roles: Vec<String> = (0..ROLES).map(|_| common::unique("Budget")).collect();
    let _guards: Vec<TargetRoleGuard> = roles.iter().map(|r| TargetRoleGuard::new(r)).collect();
    let mark = proxy.mark();
    for (i, role) in roles.iter().enumerate() {
        common::create_role(
            &client,
            &ns.name,
            &format!("budget-{i}"),
            json!({
                "accountRef": account.name,
                "roleName": role,
                "policyArns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
            }),
        )
        .await;
    }
    // Every role gets Ready through the budget, and resyncs go on after that for a while.
    for i in 0..ROLES {
        common::wait_for_condition(
            &client,
            &ns.name,
            &format!("budget-{i}"),
            "Ready",
            "True",
            None,
            Duration::from_secs(180),
        )
        .await;
    }
    let ready_at = proxy.now();
    common::poll(
        "15 s of resyncs after Ready",
        Duration::from_secs(60),
        || {
            let elapsed = proxy.now().duration_since(ready_at).as_secs_f64();
            async move {
                if elapsed >= 15.0 {
                    Ok(())
                } else {
                    Err(format!("{elapsed:.1} s"))
                }
            }
        },
    )
    .await;

    // Every IAM request of this operator reached this proxy (one account: the management role's
    // and the roles' requests share the budget).
    let iam: Vec<LoggedRequest> = proxy
        .requests_since(&mark)
        .into_iter()
        .filter(|r| r.service == "iam")
        .collect();
    let mut problems = Vec::new();
    let mut worst = (0usize, 0.0f64);
    for i in 0..iam.len() {
        for j in i..iam.len() {
            let seconds = iam[j].arrived.duration_since(iam[i].arrived).as_secs_f64();
            let count = j - i + 1;
            if count as f64 > budget_bound(seconds) && count > worst.0 {
                worst = (count, seconds);
            }
        }
    }
    if worst.0 > 0 {
        problems.push(format!(
            "{} IAM requests within {:.2} s: more than the budget's {:.1}",
            worst.0,
            worst.1,
            budget_bound(worst.1)
        ));
    }
    // The budget was the limit, not the demand: the steady state used most of it.
    let steady: Vec<&LoggedRequest> = iam.iter().filter(|r| r.arrived >= ready_at).collect();
    let steady_seconds = proxy.now().duration_since(ready_at).as_secs_f64();
    let steady_rate = steady.len() as f64 / steady_seconds;
    if steady_rate < 0.7 * IAM_RATE {
        problems.push(format!(
            "{steady_rate:.1} IAM requests a second after Ready: the demand did not reach the \
             budget of {IAM_RATE}, so the test proves nothing"
        ));
    }
    let metrics = operator.metrics_text().await;
    let uses = common::metric_sum(
        &metrics,
        "crossaccount_aws_budget_wait_seconds_count",
        &[("service", "iam")],
    );
    let unhindered = common::metric_sum(
        &metrics,
        "crossaccount_aws_budget_wait_seconds_bucket",
        &[("service", "iam"), ("le", "0.0")],
    );
    if uses < iam.len() as u64 || unhindered >= uses {
        problems.push(format!(
            "budget metric: {uses} uses ({unhindered} without a wait) for {} IAM requests",
            iam.len()
        ));
    }
    eprintln!(
        "iam budget: {} IAM requests, {steady_rate:.1}/s after Ready (budget {IAM_RATE}/s), \
         {} of {uses} waited",
        iam.len(),
        uses - unhindered
    );
    common::delete_roles_and_wait(&client, &ns.name, Duration::from_secs(180))
        .await
        .unwrap_or_else(|left| panic!("the test's CrossAccountRoles did not go: {left}"));
    assert!(problems.is_empty(), "{problems:#?}");
}
