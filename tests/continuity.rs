//! Continuity of credentials while the rest fails: a refresh that falls due while IAM denies the
//! management role, while the AwsAccount is not Ready, or while STS is down; and the number of
//! status writes an AwsAccount failing for minutes causes (issue 19, docs/reliability.md).
//!
//! Each test starts an operator of its own behind a fault proxy (tests/common/aws_proxy.rs),
//! with an AwsAccount of its own that allows only the test's namespace, and counts what reached
//! AWS in the proxy's log. A refresh is made due soon as in tests/faults.rs: 900 s credentials
//! refreshed at 3 % of their life, which the minimum refresh delay (60 s, less up to 10 %
//! jitter) makes 54 to 60 s after issue.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    AccountGuard, Operator, OperatorOptions, TestNamespace,
    aws_proxy::{AwsProxy, Fault, FaultRule, LoggedRequest},
    env,
};
use cross_account_operator::api::{AwsAccount, CrossAccountRole};
use futures::StreamExt;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(60);
/// The backoff cap (60 s, `controller/backoff.rs`) plus its jitter, and some slack.
const RECOVER: Duration = Duration::from_secs(90);
const SECRET: &str = "app-aws";

// ---------------------------------------------------------------------------------------------
// The test's operator, proxy, namespace and AwsAccount.
// ---------------------------------------------------------------------------------------------

struct Bench {
    proxy: AwsProxy,
    operator: Operator,
    client: Client,
    ns: TestNamespace,
    account: AccountGuard,
}

impl Bench {
    async fn start(tag: &str) -> Bench {
        let client = common::kube_client().await;
        let proxy = AwsProxy::start(&env("AWS_ENDPOINT_URL")).await;
        let operator = Operator::start_logged(
            &format!("continuity-{tag}"),
            OperatorOptions {
                aws_endpoint: Some(proxy.endpoint()),
                ..OperatorOptions::default()
            },
        );
        operator.wait_ready().await;
        let ns = TestNamespace::new(&client, tag).await;
        let account = AccountGuard::ready_for(&client, tag, &[&ns.name], CONVERGE).await;
        Bench {
            proxy,
            operator,
            client,
            ns,
            account,
        }
    }

    fn roles(&self) -> Api<CrossAccountRole> {
        common::roles_api(&self.client, &self.ns.name)
    }

    /// Creates CR `name` for role `role_name` on the test's account, with credentials that fall
    /// due for refresh 54-60 s after issue when `credentials`.
    async fn create(&self, name: &str, role_name: &str, credentials: bool) {
        let mut spec = json!({"accountRef": self.account.name, "roleName": role_name});
        if credentials {
            spec["credentials"] = json!({"durationSeconds": 900, "refreshPercent": 3});
        }
        common::create_role(&self.client, &self.ns.name, name, spec).await;
    }

    async fn get(&self, name: &str) -> CrossAccountRole {
        self.roles()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
    }

    async fn wait(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> CrossAccountRole {
        common::wait_for_condition(
            &self.client,
            &self.ns.name,
            name,
            type_,
            status,
            reason,
            timeout,
        )
        .await
    }

    /// Waits until the AwsAccount's `Ready` is `status` (any generation); returns its condition.
    async fn wait_account(&self, status: &str, timeout: Duration) -> Value {
        let api = Api::<AwsAccount>::all(self.client.clone());
        let name = self.account.name.clone();
        common::try_poll(timeout, || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let account = api.get(&name).await.map_err(|e| e.to_string())?;
                let ready = account
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| json!({"status": c.status, "reason": c.reason, "message": c.message}));
                match ready {
                    Some(c) if c["status"] == status => Ok(c),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "AwsAccount {name} not Ready={status} within {timeout:?}: {last}\n{}",
                self.operator.log_tail(40)
            )
        })
    }

    /// Deletes CR `name` and waits until its `Ready` is False with a message containing `needle`
    /// (why the deletion waits); returns the CR and that condition.
    async fn delete_blocked(
        &self,
        name: &str,
        needle: &str,
    ) -> (CrossAccountRole, (String, String, String)) {
        self.roles()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
        common::try_poll(CONVERGE, || {
            let api = self.roles();
            async move {
                let cr = api.get(name).await.map_err(|e| e.to_string())?;
                let ready = condition(&cr, "Ready");
                if ready.0 == "False" && ready.2.contains(needle) {
                    Ok((cr, ready))
                } else {
                    Err(format!("{ready:?}"))
                }
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "Ready never said why deleting {name} waits ({needle:?}): {last}\n{}",
                self.operator.log_tail(40)
            )
        })
    }

    /// Deletes CR `name`, waits until it is gone and checks its role went with it.
    async fn delete(&self, name: &str, role_name: &str) {
        common::delete_role_and_wait(&self.client, &self.ns.name, name, CONVERGE).await;
        let target = common::target_iam().await;
        assert!(
            common::get_iam_role(&target, role_name).await.is_none(),
            "role {role_name} left behind"
        );
    }

    /// After faults on STS: the environment's own AwsAccount, which this operator verifies too,
    /// is Ready again before the next test (or test binary) relies on it.
    async fn wait_shared_account(&self) {
        common::wait_for_account_ready(&self.client, &common::account_name(), RECOVER).await;
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.proxy.clear_rules();
        if std::thread::panicking() && self.operator.exited().is_none() {
            // Give the operator a minute to delete the test's CRs (their roles) before it goes.
            common::delete_roles_while_the_operator_runs(vec![self.ns.name.clone()]);
        }
        if self.operator.exited().is_none() {
            self.operator.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials as the Secret holds them, and whether they work.
// ---------------------------------------------------------------------------------------------

/// The Secret's credentials. Debug shows only the masked access key ID.
#[derive(Clone, PartialEq)]
struct Held {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: Timestamp,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Held({}, expires {})",
            common::masked_key(&self.access_key_id),
            self.expiration
        )
    }
}

async fn held(client: &Client, namespace: &str) -> Option<Held> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(SECRET)
        .await
        .unwrap_or_else(|e| panic!("get Secret {SECRET}: {e}"))?;
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    Some(Held {
        access_key_id: text("AWS_ACCESS_KEY_ID")?,
        secret_access_key: text("AWS_SECRET_ACCESS_KEY")?,
        session_token: text("AWS_SESSION_TOKEN")?,
        expiration: text("expiration")?.parse().ok()?,
    })
}

/// Waits until the Secret holds credentials other than `old`.
async fn wait_new_credentials(bench: &Bench, old: &Held, timeout: Duration) -> Held {
    let (client, ns) = (bench.client.clone(), bench.ns.name.clone());
    common::try_poll(timeout, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            match held(&client, &ns).await {
                Some(new) if new.access_key_id != old.access_key_id => Ok(new),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap_or_else(|last| {
        panic!(
            "no refresh within {timeout:?}: the Secret holds {last}\n{}",
            bench.operator.log_tail(40)
        )
    })
}

/// The caller ARN of `credentials` (GetCallerIdentity through `endpoint`, one attempt).
async fn caller_arn(endpoint: &str, credentials: &Held) -> Result<String, String> {
    let provider = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        Some(credentials.session_token.clone()),
        None,
        "continuity-test",
    );
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .credentials_provider(provider)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .map(|out| out.arn().unwrap_or_default().to_owned())
        .map_err(|e| format!("{:?}", aws_sdk_sts::error::DisplayErrorContext(e)))
}

/// The AssumeRoles of `role_name` (the tenant's credentials, not the management session) in
/// `requests`.
fn mints_of<'a>(requests: &'a [LoggedRequest], role_name: &str) -> Vec<&'a LoggedRequest> {
    let suffix = format!(":role/{role_name}");
    requests
        .iter()
        .filter(|r| {
            r.is("sts", "AssumeRole") && r.param("RoleArn").is_some_and(|a| a.ends_with(&suffix))
        })
        .collect()
}

fn condition(cr: &CrossAccountRole, type_: &str) -> (String, String, String) {
    common::role_condition(cr, type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// The condition messages carry no request ID (docs/reliability.md, F6): the proxy's IDs
/// begin so.
const PROXY_REQUEST_ID: &str = "fault-proxy-";

// ---------------------------------------------------------------------------------------------
// 1. IAM denies the management role while a refresh is due.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_due_while_iam_denies_the_management_role_still_happens() {
    let _serial = common::serial().await;
    let bench = Bench::start("iamdenied").await;
    let started = Instant::now();
    let role_name = common::unique("IamDenied");
    let _guard = common::TargetRoleGuard::new(&role_name);
    bench.create("app", &role_name, true).await;
    bench.wait("app", "Ready", "True", None, CONVERGE).await;
    let first = held(&bench.client, &bench.ns.name)
        .await
        .expect("the Secret holds credentials");

    let mark = bench.proxy.mark();
    bench
        .proxy
        .set_rules(vec![FaultRule::new(Fault::AccessDenied).service("iam")]);
    let denied = bench
        .wait("app", "RoleSynced", "False", None, CONVERGE)
        .await;
    let next_refresh = denied
        .status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .and_then(|c| c.next_refresh.clone())
        .expect("status.credentials.nextRefresh")
        .0;
    assert!(
        bench
            .proxy
            .requests_since(&mark)
            .iter()
            .all(|r| r.service != "iam" || r.faulted()),
        "every IAM request since the rule was denied"
    );
    let denied_at = Timestamp::now();
    assert!(
        next_refresh > denied_at,
        "IAM was denied before the refresh fell due ({next_refresh}, now {denied_at})"
    );

    let new = wait_new_credentials(&bench, &first, Duration::from_secs(120)).await;
    let refreshed_at = Timestamp::now();
    let requests = bench.proxy.requests_since(&mark);
    let mints = mints_of(&requests, &role_name);
    assert!(
        mints.iter().any(|r| r.succeeded()),
        "a new AssumeRole of the role reached AWS: {}",
        common::describe_requests(mints.iter().copied())
    );
    let arn = caller_arn(&bench.proxy.endpoint(), &new)
        .await
        .expect("the new credentials work");
    assert!(arn.contains(&role_name), "{arn}");
    assert!(new.expiration > first.expiration);

    let cr = bench
        .wait("app", "CredentialsReady", "True", None, CONVERGE)
        .await;
    let synced = condition(&cr, "RoleSynced");
    assert_eq!(synced.0, "False", "RoleSynced while IAM denies: {synced:?}");
    assert!(
        synced.2.contains("AccessDenied") || synced.2.contains("not authorized"),
        "RoleSynced names the IAM error: {synced:?}"
    );
    assert!(
        !synced.2.contains(PROXY_REQUEST_ID),
        "no request ID in the condition: {synced:?}"
    );
    let iam_denied = requests
        .iter()
        .filter(|r| r.service == "iam" && r.faulted())
        .count();
    assert!(
        requests
            .iter()
            .filter(|r| r.service == "iam")
            .all(LoggedRequest::faulted),
        "IAM stayed denied"
    );

    bench.proxy.clear_rules();
    let cleared = Instant::now();
    bench.wait("app", "RoleSynced", "True", None, RECOVER).await;
    let recovered = cleared.elapsed();
    assert_eq!(
        condition(&bench.get("app").await, "CredentialsReady").0,
        "True"
    );
    bench.delete("app", &role_name).await;
    eprintln!(
        "iam denied: refresh due {next_refresh}, new credentials in the Secret at {refreshed_at} \
         ({} AssumeRole of the role, {iam_denied} IAM requests denied); RoleSynced=False/{}: {}; \
         RoleSynced=True {recovered:?} after the denial ended; test took {:?}",
        mints.len(),
        synced.1,
        synced.2,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 1b. IAM denies the management role while a CR is deleted.
// ---------------------------------------------------------------------------------------------

/// A deletion whose cleanup IAM denies keeps the finalizer and the role (nothing leaked, nothing
/// released), says why in `Ready`, and is retried with the object's backoff: not every second.
/// (It was every second: each attempt of `finalize` reset the failure count.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_iam_denies_keeps_the_finalizer_and_backs_off() {
    const WINDOW: Duration = Duration::from_secs(40);
    let _serial = common::serial().await;
    let bench = Bench::start("deldenied").await;
    let started = Instant::now();
    let role_name = common::unique("DelDenied");
    let _guard = common::TargetRoleGuard::new(&role_name);
    bench.create("app", &role_name, false).await;
    bench.wait("app", "Ready", "True", None, CONVERGE).await;

    bench
        .proxy
        .set_rules(vec![FaultRule::new(Fault::AccessDenied).service("iam")]);
    let mark = bench.proxy.mark();
    let deleted = Instant::now();
    let blocked = bench
        .delete_blocked("app", "deleting the IAM role failed")
        .await;
    assert!(
        !blocked.1.2.contains(PROXY_REQUEST_ID),
        "no request ID: {:?}",
        blocked.1
    );
    tokio::time::sleep(WINDOW.saturating_sub(deleted.elapsed())).await;
    let window = deleted.elapsed();
    let cr = bench.get("app").await;
    assert!(
        cr.finalizers()
            .iter()
            .any(|f| f.starts_with("crossaccount.io/")),
        "the finalizer stays while the cleanup fails: {:?}",
        cr.finalizers()
    );
    let target = common::target_iam().await;
    assert!(
        common::get_iam_role(&target, &role_name).await.is_some(),
        "the role stays while its deletion is denied"
    );
    // Each cleanup attempt begins with a read of the role, denied.
    let attempts = bench
        .proxy
        .requests_since(&mark)
        .iter()
        .filter(|r| r.service == "iam" && r.param("RoleName") == Some(role_name.as_str()))
        .filter(|r| r.is("iam", "GetRole"))
        .count() as u64;
    // One attempt more than the backoff alone allows, for a trigger besides it (a watch event);
    // retrying at the first backoff step, as before F7, makes some 35.
    let bound = most_attempts(window) + 1;
    assert!(
        attempts <= bound,
        "{attempts} cleanup attempts in {window:?}: more than the backoff allows ({bound})"
    );
    assert!(
        attempts >= 2,
        "the cleanup was retried ({attempts} attempts)"
    );

    bench.proxy.clear_rules();
    let cleared = Instant::now();
    common::wait_until_role_gone(&bench.client, &bench.ns.name, "app", RECOVER).await;
    let gone_after = cleared.elapsed();
    assert!(
        common::get_iam_role(&target, &role_name).await.is_none(),
        "the role went with the CR"
    );
    eprintln!(
        "deletion denied: Ready=False/{}: {}; {attempts} cleanup attempts in {window:?} (bound \
         {bound}); gone {gone_after:?} after IAM allowed it again; test took {:?}",
        blocked.1.1,
        blocked.1.2,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 1b. The AwsAccount cannot be read while a CR is deleted.
// ---------------------------------------------------------------------------------------------

const ACCOUNT_CRD: &str = "awsaccounts.crossaccount.io";

/// The AwsAccount CRD's `spec.maxSessionDurationSeconds` without its bounds, as a newer CRD
/// installed ahead of the operator could have it: the apiserver then stores a value the
/// operator's type (an `i32`) cannot hold, and the operator cannot read that AwsAccount. When
/// dropped, also when the test fails, the value goes from AwsAccount `account` and the CRD is
/// put back as it was.
struct LoosenedAccountCrd {
    original: Value,
    account: String,
}

/// AwsAccounts as JSON: the typed client cannot read one this test makes unreadable.
fn untyped_accounts(client: &Client) -> Api<kube::api::DynamicObject> {
    Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<AwsAccount>(&()),
    )
}

/// Removes `spec.maxSessionDurationSeconds` from AwsAccount `name`.
async fn clear_max_session(client: &Client, name: &str) -> Result<(), kube::Error> {
    let patch = json!({"spec": {"maxSessionDurationSeconds": null}});
    untyped_accounts(client)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

impl LoosenedAccountCrd {
    async fn apply(client: &Client, account: &str) -> LoosenedAccountCrd {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let api = Api::<CustomResourceDefinition>::all(client.clone());
        let crd = api.get(ACCOUNT_CRD).await.expect("get the AwsAccount CRD");
        let mut value = serde_json::to_value(&crd).unwrap();
        let original = value["spec"]["versions"].clone();
        for version in value["spec"]["versions"].as_array_mut().unwrap() {
            let field = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                ["maxSessionDurationSeconds"];
            let field = field.as_object_mut().expect("the field in the CRD");
            field.remove("maximum");
            field.remove("minimum");
            field.remove("format");
        }
        api.replace(
            ACCOUNT_CRD,
            &PostParams::default(),
            &serde_json::from_value(value).unwrap(),
        )
        .await
        .expect("loosen the AwsAccount CRD");
        LoosenedAccountCrd {
            original,
            account: account.to_owned(),
        }
    }
}

impl Drop for LoosenedAccountCrd {
    fn drop(&mut self) {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let (original, account) = (self.original.clone(), self.account.clone());
        // On a runtime of its own: drop cannot await, and the test's runtime may be blocked here.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let client = Client::try_default().await.expect("kube client");
                    clear_max_session(&client, &account)
                        .await
                        .expect("make the AwsAccount readable again");
                    let api = Api::<CustomResourceDefinition>::all(client);
                    let crd = api.get(ACCOUNT_CRD).await.expect("get the AwsAccount CRD");
                    let mut value = serde_json::to_value(&crd).unwrap();
                    value["spec"]["versions"] = original;
                    api.replace(
                        ACCOUNT_CRD,
                        &PostParams::default(),
                        &serde_json::from_value(value).unwrap(),
                    )
                    .await
                    .expect("restore the AwsAccount CRD");
                })
        })
        .join()
        .expect("restore the AwsAccount CRD");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_while_the_account_cannot_be_read_keeps_the_finalizer_and_leaks_nothing() {
    let _serial = common::serial().await;
    let bench = Bench::start("unreadable").await;
    let role_name = common::unique("Unreadable");
    let _guard = common::TargetRoleGuard::new(&role_name);
    bench.create("app", &role_name, false).await;
    bench.wait("app", "Ready", "True", None, CONVERGE).await;

    // The AwsAccount becomes unreadable: a value its CRD now admits and the operator cannot hold.
    let crd = LoosenedAccountCrd::apply(&bench.client, &bench.account.name).await;
    let accounts = untyped_accounts(&bench.client);
    let unreadable = json!({"spec": {"maxSessionDurationSeconds": 4_294_967_296_i64}});
    common::poll(
        "the apiserver to admit the value under the loosened CRD",
        CONVERGE,
        || {
            let accounts = accounts.clone();
            let name = bench.account.name.clone();
            let patch = unreadable.clone();
            async move {
                accounts
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    let mark = bench.proxy.mark();
    // The reconcile before the deletion reports the unreadable account too: wait for the
    // deletion's own message.
    let blocked = bench
        .delete_blocked("app", "cannot delete the IAM role: AwsAccount")
        .await;
    let (cr, ready) = blocked;
    assert!(
        cr.finalizers()
            .iter()
            .any(|f| f.starts_with("crossaccount.io/")),
        "the finalizer stays while the account cannot be read: {:?}",
        cr.finalizers()
    );
    assert!(
        ready.2.contains(&bench.account.name) && ready.2.contains("fix it"),
        "the message names the AwsAccount and the way out: {ready:?}"
    );
    let target = common::target_iam().await;
    assert!(
        common::get_iam_role(&target, &role_name).await.is_some(),
        "the role is neither deleted nor abandoned while its account cannot be read"
    );
    let touched: Vec<String> = bench
        .proxy
        .requests_since(&mark)
        .iter()
        .filter(|r| r.service == "iam" && r.param("RoleName") == Some(role_name.as_str()))
        .map(LoggedRequest::summary)
        .collect();
    assert!(
        touched.is_empty(),
        "nothing is done to the role without its account: {touched:#?}"
    );

    // Readable again (the value removed, the CRD as shipped): the deletion goes on and the role
    // goes with the CR.
    drop(crd);
    common::wait_until_role_gone(&bench.client, &bench.ns.name, "app", RECOVER).await;
    assert!(
        common::get_iam_role(&target, &role_name).await.is_none(),
        "the role went with the CR once its account could be read"
    );
    eprintln!("unreadable account: Ready=False/{}: {}", ready.1, ready.2);
}

// ---------------------------------------------------------------------------------------------
// 2. The AwsAccount is not Ready while a refresh is due.
// ---------------------------------------------------------------------------------------------

/// The AwsAccount's verification: GetCallerIdentity signed with the management session
/// (`controller/account.rs`, `verify`). Nothing else the operator does calls it once started
/// (the operator's own identity is read at startup), so the tenant's AssumeRole still works.
fn verification_denied() -> FaultRule {
    FaultRule::new(Fault::AccessDenied)
        .service("sts")
        .operations(&["GetCallerIdentity"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_due_while_the_account_is_not_ready_still_happens() {
    let _serial = common::serial().await;
    let bench = Bench::start("acctdown").await;
    let started = Instant::now();
    let role_name = common::unique("AcctDown");
    let _guard = common::TargetRoleGuard::new(&role_name);
    bench.create("app", &role_name, true).await;
    bench.wait("app", "Ready", "True", None, CONVERGE).await;
    let first = held(&bench.client, &bench.ns.name)
        .await
        .expect("the Secret holds credentials");

    let mark = bench.proxy.mark();
    bench.proxy.set_rules(vec![verification_denied()]);
    let account = bench.wait_account("False", CONVERGE).await;
    let waiting = bench
        .wait(
            "app",
            "RoleSynced",
            "False",
            Some("AccountNotReady"),
            CONVERGE,
        )
        .await;
    let next_refresh = waiting
        .status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .and_then(|c| c.next_refresh.clone())
        .expect("status.credentials.nextRefresh")
        .0;
    assert!(
        next_refresh > Timestamp::now(),
        "the account failed before the refresh fell due ({next_refresh})"
    );

    let new = wait_new_credentials(&bench, &first, Duration::from_secs(120)).await;
    let requests = bench.proxy.requests_since(&mark);
    let mints = mints_of(&requests, &role_name);
    assert!(
        mints.iter().any(|r| r.succeeded()),
        "a new AssumeRole of the role reached AWS: {}",
        common::describe_requests(mints.iter().copied())
    );
    let cr = bench
        .wait("app", "CredentialsReady", "True", None, CONVERGE)
        .await;
    let synced = condition(&cr, "RoleSynced");
    assert_eq!(
        (synced.0.as_str(), synced.1.as_str()),
        ("False", "AccountNotReady"),
        "{synced:?}"
    );
    assert_eq!(
        bench.wait_account("False", Duration::from_secs(1)).await["reason"],
        "AwsError",
        "the account was still failing at the refresh"
    );
    let verifications = requests
        .iter()
        .filter(|r| r.is("sts", "GetCallerIdentity"))
        .count();

    bench.proxy.clear_rules();
    // GetCallerIdentity was denied: the new credentials are checked once it is allowed again.
    let arn = caller_arn(&bench.proxy.endpoint(), &new)
        .await
        .expect("the new credentials work");
    assert!(arn.contains(&role_name), "{arn}");
    let cleared = Instant::now();
    bench.wait_account("True", RECOVER).await;
    bench.wait("app", "RoleSynced", "True", None, RECOVER).await;
    let recovered = cleared.elapsed();
    bench.delete("app", &role_name).await;
    bench.wait_shared_account().await;
    eprintln!(
        "account not ready: account Ready=False/{}; refresh due {next_refresh} happened \
         ({} AssumeRole of the role, {verifications} verifications denied); RoleSynced=False/\
         AccountNotReady: {}; recovered {recovered:?} after; test took {:?}",
        account["reason"],
        mints.len(),
        synced.2,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. STS down from before the refresh until past expiry.
// ---------------------------------------------------------------------------------------------

/// The operator decides on its own clock (the Secret's expiration against `Timestamp::now()`),
/// and STS issues no session shorter than 900 s, so the operator itself cannot be brought past
/// an expiry within minutes. What can be checked: the failed refresh is reported, with the
/// expiration, long before the expiry; and past the expiry as AWS sees it (the proxy's clock
/// moved forward) the Secret's old credentials are refused while the condition still says so,
/// until STS is back and the refresh happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_down_past_expiry_is_reported_before_the_credentials_expire() {
    let _serial = common::serial().await;
    let bench = Bench::start("stsdown").await;
    let started = Instant::now();
    let role_name = common::unique("StsDown");
    let _guard = common::TargetRoleGuard::new(&role_name);
    bench.create("app", &role_name, true).await;
    bench.wait("app", "Ready", "True", None, CONVERGE).await;
    let first = held(&bench.client, &bench.ns.name)
        .await
        .expect("the Secret holds credentials");
    let cr = bench.get("app").await;
    let next_refresh = cr
        .status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .and_then(|c| c.next_refresh.clone())
        .expect("status.credentials.nextRefresh")
        .0;

    bench
        .proxy
        .set_rules(vec![FaultRule::new(Fault::Outage).service("sts")]);
    assert!(
        next_refresh > Timestamp::now(),
        "STS went down before the refresh"
    );
    let failed = bench
        .wait(
            "app",
            "CredentialsReady",
            "False",
            None,
            Duration::from_secs(120),
        )
        .await;
    let reported_at = Timestamp::now();
    let (_, reason, message) = condition(&failed, "CredentialsReady");
    let named = message
        .split("expire at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|t| {
            t.trim_end_matches([';', '.', ','])
                .parse::<Timestamp>()
                .ok()
        });
    assert_eq!(
        named,
        Some(first.expiration),
        "CredentialsReady=False names the expiration of the held credentials: {message}"
    );
    assert!(
        reported_at < first.expiration,
        "reported before the credentials expire ({reported_at} vs {})",
        first.expiration
    );
    let lead = first.expiration.duration_since(reported_at);
    assert!(
        !message.contains(PROXY_REQUEST_ID),
        "no request ID: {message}"
    );
    assert_eq!(
        held(&bench.client, &bench.ns.name).await.as_ref(),
        Some(&first),
        "the Secret keeps the credentials it has"
    );

    // Past the expiry as AWS sees it: the old credentials are refused; the condition stays.
    let past = Duration::try_from(first.expiration.duration_since(bench.proxy.now()))
        .unwrap_or_default()
        + Duration::from_secs(5);
    bench.proxy.advance_clock(past);
    bench.proxy.clear_rules();
    let refused = caller_arn(&bench.proxy.endpoint(), &first).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("ExpiredToken")),
        "past their expiration the old credentials are refused: {refused:?}"
    );
    bench
        .proxy
        .set_rules(vec![FaultRule::new(Fault::Outage).service("sts")]);
    let still = bench.get("app").await;
    assert_eq!(
        condition(&still, "CredentialsReady").0,
        "False",
        "still reported while STS is down"
    );

    // STS back: the refresh happens (sessions issued now expire 900 s after the real clock, i.e.
    // some 60 s after the proxy's, so they are checked at once).
    bench.proxy.clear_rules();
    let cleared = Instant::now();
    let new = wait_new_credentials(&bench, &first, RECOVER).await;
    let refreshed = cleared.elapsed();
    let arn = caller_arn(&bench.proxy.endpoint(), &new)
        .await
        .expect("the new credentials work");
    assert!(arn.contains(&role_name), "{arn}");
    bench
        .wait("app", "CredentialsReady", "True", None, CONVERGE)
        .await;
    bench.delete("app", &role_name).await;
    bench.wait_shared_account().await;
    eprintln!(
        "sts down: CredentialsReady=False/{reason} at {reported_at}, {} s before the \
         expiration {}; refreshed {refreshed:?} after STS was back; test took {:?}",
        lead.as_secs(),
        first.expiration,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. An AwsAccount failing for minutes: writes bounded by the backoff, not one per attempt.
// ---------------------------------------------------------------------------------------------

/// The resourceVersions each object of a watch was seen with, and when first.
type Versions = Arc<Mutex<BTreeMap<String, Vec<(String, Instant)>>>>;

fn record_versions<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Versions, tokio::task::JoinHandle<()>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let versions: Versions = Arc::default();
    let sink = versions.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, config).touched_objects().boxed();
        while let Some(item) = stream.next().await {
            let Ok(object) = item else { continue };
            let rv = object.resource_version().unwrap_or_default();
            let mut seen = sink.lock().unwrap();
            let list = seen.entry(object.name_any()).or_default();
            if !list.iter().any(|(v, _)| *v == rv) {
                list.push((rv, Instant::now()));
            }
        }
    });
    (versions, task)
}

/// How many new resourceVersions each object got after `since` (and before `until`).
fn changes(versions: &Versions, since: Instant, until: Instant) -> BTreeMap<String, usize> {
    versions
        .lock()
        .unwrap()
        .iter()
        .map(|(name, seen)| {
            (
                name.clone(),
                seen.iter()
                    .filter(|(_, at)| *at > since && *at <= until)
                    .count(),
            )
        })
        .collect()
}

/// The most verification attempts the AwsAccount controller can make in `window` when every
/// one fails, from its backoff (`controller/backoff.rs`): the n-th retry waits
/// `min(BASE * 2^(n-1), MAX)` with BASE 1 s and MAX 60 s, jittered by a factor in [0.75, 1.25]
/// (`jitter(.., 0.5)`). The attempts are most frequent when every delay is drawn at its
/// shortest (0.75 of the step), so the bound is one attempt plus every retry whose cumulative
/// shortest delay fits into the window.
fn most_attempts(window: Duration) -> u64 {
    const BASE: f64 = 1.0;
    const MAX: f64 = 60.0;
    const SHORTEST: f64 = 0.75;
    let mut elapsed = 0.0;
    let mut attempts = 1;
    for retry in 1u32.. {
        elapsed += SHORTEST * (BASE * 2f64.powi(retry as i32 - 1)).min(MAX);
        if elapsed > window.as_secs_f64() {
            break;
        }
        attempts += 1;
    }
    attempts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_failing_for_minutes_writes_status_once_not_per_attempt() {
    const CRS: usize = 5;
    const WINDOW: Duration = Duration::from_secs(120);
    let _serial = common::serial().await;
    let bench = Bench::start("storm").await;
    let started = Instant::now();
    let prefix = common::unique("Storm");
    let names: Vec<(String, String)> = (0..CRS)
        .map(|i| (format!("app-{i}"), format!("{prefix}-{i}")))
        .collect();
    let _guards: Vec<_> = names
        .iter()
        .map(|(_, role)| common::TargetRoleGuard::new(role))
        .collect();
    for (name, role) in &names {
        bench.create(name, role, false).await;
    }
    for (name, _) in &names {
        bench.wait(name, "Ready", "True", None, CONVERGE).await;
    }
    let (account_versions, account_watch) = record_versions(
        Api::<AwsAccount>::all(bench.client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", bench.account.name)),
    );
    let (role_versions, role_watch) = record_versions(bench.roles(), watcher::Config::default());
    common::poll("the watches list every object", CONVERGE, || {
        let (a, r) = (account_versions.clone(), role_versions.clone());
        async move {
            let seen = (a.lock().unwrap().len(), r.lock().unwrap().len());
            if seen == (1, CRS) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        }
    })
    .await;

    let mark = bench.proxy.mark();
    let storm_started = Instant::now();
    bench.proxy.set_rules(vec![verification_denied()]);
    bench.wait_account("False", CONVERGE).await;
    for (name, _) in &names {
        bench
            .wait(
                name,
                "RoleSynced",
                "False",
                Some("AccountNotReady"),
                CONVERGE,
            )
            .await;
    }
    let remaining = WINDOW.saturating_sub(storm_started.elapsed());
    tokio::time::sleep(remaining).await;
    let storm_ended = Instant::now();
    let window = storm_ended - storm_started;
    // Verification attempts as AWS saw them: each is one GetCallerIdentity (AccessDenied is not
    // retried by the SDK).
    let attempts = bench
        .proxy
        .requests_since(&mark)
        .iter()
        .filter(|r| r.is("sts", "GetCallerIdentity"))
        .count() as u64;
    let account_changes = changes(&account_versions, storm_started, storm_ended);
    let role_changes = changes(&role_versions, storm_started, storm_ended);
    bench.proxy.clear_rules();
    account_watch.abort();
    role_watch.abort();

    // Every AwsAccount in the cluster is verified by this operator with the same request, and
    // fails the same way: the bound is per account. The resync (3 s) may verify once before the
    // backoff starts.
    let accounts = Api::<AwsAccount>::all(bench.client.clone())
        .list(&ListParams::default())
        .await
        .expect("list AwsAccounts")
        .items
        .len() as u64;
    let bound = accounts * (most_attempts(window) + 1);
    assert!(
        attempts <= bound,
        "{attempts} verification attempts in {window:?}: more than the backoff allows ({bound})"
    );
    assert!(
        attempts >= 5,
        "the account was retried during the window ({attempts} attempts)"
    );
    let account_writes = account_changes
        .get(&bench.account.name)
        .copied()
        .unwrap_or(0);
    // One write for the transition to Ready=False; a retry that fails the same way writes
    // nothing (the condition carries no request ID).
    assert!(
        account_writes <= 1,
        "the AwsAccount was written {account_writes} times in {attempts} failing attempts"
    );
    for (name, _) in &names {
        let writes = role_changes.get(name).copied().unwrap_or(0);
        // One write for RoleSynced (and Ready) False/AccountNotReady; a CR waiting for its
        // account is not retried until the account changes.
        assert!(
            writes <= 1,
            "{name} was written {writes} times while its account failed"
        );
    }
    for (name, _) in &names {
        bench.wait(name, "Ready", "True", None, RECOVER).await;
    }
    for (name, role) in &names {
        bench.delete(name, role).await;
    }
    bench.wait_shared_account().await;
    eprintln!(
        "storm: {window:?} of failing verification, {attempts} attempts of {accounts} \
         AwsAccounts (bound {bound}); \
         AwsAccount writes {account_writes}; CR writes {role_changes:?}; test took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_attempt_bound_follows_the_backoff() {
    // 0.75 + 1.5 + 3 + 6 + 12 + 24 = 47.25 s, then 45 s each: 92.25, 137.25.
    assert_eq!(most_attempts(Duration::from_secs(47)), 6);
    assert_eq!(most_attempts(Duration::from_secs(120)), 8);
    assert_eq!(most_attempts(Duration::from_secs(150)), 9);
}
