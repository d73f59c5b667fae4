//! CrossAccountRoles reconciled by the operator binary against the local apiserver and moto (with
//! IAM enforcement): creation, updates, steady state, drift, deletion, refusals and an AWS outage.
//!
//! What reached AWS is counted at the shared operator's AWS proxy (`common::shared_proxy()`):
//! every attempt of an IAM write, whatever its outcome, not only the successes the operator's
//! metrics report. Every test takes `common::serial()`: what reached AWS between two points is
//! only meaningful while one test runs, and the outage test freezes AWS for everyone. They also
//! assume that no other operator process works on the same environment meanwhile (another test
//! binary's, or one started by hand): it would act on these objects too.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{Operator, TestNamespace};
use cross_account_operator::api::CrossAccountRole;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
const EC2_READ: &str = "arn:aws:iam::aws:policy/AmazonEC2ReadOnlyAccess";
const IAM_READ: &str = "arn:aws:iam::aws:policy/IAMReadOnlyAccess";
const DEVELOPER: &str = "devTest";

/// A reconcile against moto takes well under a second; this leaves room for a slow machine.
const CONVERGE: Duration = Duration::from_secs(60);
/// Deletion of a CrossAccountRole, including the AWS cleanup.
const GONE: Duration = Duration::from_secs(60);
/// Three resyncs at `common::RESYNC_INTERVAL` (3 s, jittered by up to 10 %), with room to spare.
const RESYNC_ROUNDS_DEADLINE: Duration = Duration::from_secs(40);

use common::{account_name, role_arn};

fn operator_principal() -> String {
    format!(
        "arn:aws:iam::{}:user/cross-account-operator",
        common::env("SOURCE_ACCOUNT_ID")
    )
}

fn developer_arn() -> String {
    format!(
        "arn:aws:iam::{}:user/{DEVELOPER}",
        common::env("SOURCE_ACCOUNT_ID")
    )
}

fn logs_policy(action: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}],
    })
    .to_string()
}

/// `value` as a list of values: IAM allows a single value or a list in most places.
fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

fn statements(document: &Value) -> Vec<Value> {
    as_list(&document["Statement"])
}

/// The principal ARNs (`Principal.AWS`) of a statement.
fn principals(statement: &Value) -> Vec<String> {
    as_list(&statement["Principal"]["AWS"])
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn string_list(value: &Value) -> Vec<String> {
    as_list(value)
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The role's trust policy, read from AWS.
async fn trust_policy(iam: &aws_sdk_iam::Client, role_name: &str) -> Value {
    let role = common::get_iam_role(iam, role_name)
        .await
        .unwrap_or_else(|| panic!("role {role_name} does not exist in the target account"));
    common::policy_json(
        role.assume_role_policy_document()
            .expect("GetRole returns the trust policy"),
    )
}

/// Whether `trust` lets the operator in with `external_id`, and trusts each of `others`.
fn trust_problems(trust: &Value, external_id: &str, others: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let statements = statements(trust);
    let operator = statements
        .iter()
        .find(|s| s["Sid"] == "CrossAccountOperator");
    match operator {
        None => problems.push("no statement with Sid CrossAccountOperator".to_owned()),
        Some(s) => {
            if s["Effect"] != "Allow" {
                problems.push(format!("operator statement has Effect {}", s["Effect"]));
            }
            if principals(s) != [operator_principal()] {
                problems.push(format!(
                    "operator statement trusts {:?}, expected {}",
                    principals(s),
                    operator_principal()
                ));
            }
            if !string_list(&s["Action"]).contains(&"sts:AssumeRole".to_owned()) {
                problems.push(format!(
                    "operator statement lacks sts:AssumeRole: {}",
                    s["Action"]
                ));
            }
            let condition = &s["Condition"]["StringEquals"]["sts:ExternalId"];
            if string_list(condition) != [external_id] {
                problems.push(format!(
                    "operator statement's StringEquals sts:ExternalId is {condition}, expected {external_id:?}"
                ));
            }
        }
    }
    for other in others {
        let trusted = statements.iter().any(|s| {
            s["Effect"] == "Allow"
                && principals(s).contains(other)
                && string_list(&s["Action"]).contains(&"sts:AssumeRole".to_owned())
        });
        if !trusted {
            problems.push(format!("{other} may not assume the role"));
        }
    }
    problems
}

/// Whether the developer user is granted role `role_name` by the shared test operator.
async fn developer_granted(role_name: &str) -> bool {
    let source = common::source_iam().await;
    let target = common::target_iam().await;
    common::user_granted(&source, &target, common::CLUSTER_NAME, DEVELOPER, role_name).await
}

/// Inline policies of the developer user naming `role_arn` (what earlier versions wrote).
async fn inline_grants_of_developer(source: &aws_sdk_iam::Client, role_arn: &str) -> Vec<String> {
    common::user_policies(source, DEVELOPER)
        .await
        .into_iter()
        .filter(|(_, document)| {
            statements(document)
                .iter()
                .any(|s| string_list(&s["Resource"]).contains(&role_arn.to_owned()))
        })
        .map(|(name, _)| name)
        .collect()
}

fn status_of(role: &CrossAccountRole) -> &cross_account_operator::api::CrossAccountRoleStatus {
    role.status
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no status", role.name_any()))
}

/// Waits for Ready=True (reason Synced) for the current generation.
async fn wait_ready(client: &Client, ns: &str, name: &str) -> CrossAccountRole {
    common::wait_for_condition(client, ns, name, "Ready", "True", Some("Synced"), CONVERGE).await
}

fn kubectl(args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn seed_role_is_created_with_trust_policy_grant_tags_and_status() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "seed").await;
    let role_name = common::unique("CrossAccountSignin");
    let arn = role_arn(&role_name);

    common::create_role(
        &client,
        &ns.name,
        "signin",
        json!({
            "accountRef": account_name(),
            "roleName": role_name,
            "policies": {"managed": [S3_READ]},
            "grants": [{"user": DEVELOPER}],
        }),
    )
    .await;
    let cr = wait_ready(&client, &ns.name, "signin").await;
    let status = status_of(&cr);
    assert_eq!(
        status.role_arn.as_deref(),
        Some(arn.as_str()),
        "status.roleArn"
    );
    assert_eq!(
        status.observed_generation, cr.metadata.generation,
        "status.observedGeneration"
    );
    assert_eq!(
        status.account_id.as_deref(),
        Some(common::env("TARGET_ACCOUNT_ID").as_str()),
        "status.accountId"
    );
    assert_eq!(
        status.principal_arn.as_deref(),
        Some(operator_principal().as_str()),
        "status.principalArn"
    );
    let external_id = status
        .external_id
        .clone()
        .filter(|id| !id.is_empty())
        .expect("status.externalId is set");
    let synced = common::role_condition(&cr, "RoleSynced").expect("RoleSynced condition");
    assert_eq!(synced.status, "True", "RoleSynced: {synced:?}");

    let target = common::target_iam().await;
    let role = common::get_iam_role(&target, &role_name)
        .await
        .expect("the role exists in the target account");
    assert_eq!(role.arn(), arn);
    let trust = trust_policy(&target, &role_name).await;
    let problems = trust_problems(&trust, &external_id, &[developer_arn()]);
    assert!(problems.is_empty(), "trust policy {trust}: {problems:?}");
    assert_eq!(
        common::attached_policies(&target, &role_name).await,
        BTreeSet::from([S3_READ.to_owned()]),
        "attached managed policies"
    );
    let tags = common::role_tags(&target, &role_name).await;
    for (key, value) in [
        ("crossaccount.io/cluster", common::CLUSTER_NAME),
        ("crossaccount.io/namespace", ns.name.as_str()),
        ("crossaccount.io/name", "signin"),
    ] {
        assert_eq!(
            tags.get(key).map(String::as_str),
            Some(value),
            "tag {key}: {tags:?}"
        );
    }

    let source = common::source_iam().await;
    assert!(
        developer_granted(&role_name).await,
        "{DEVELOPER} is granted {arn}: tagged {:?}, trusted, grant policies {:?}",
        common::role_tags(&target, &role_name)
            .await
            .get(&common::grant_tag(DEVELOPER)),
        common::user_grant_policies(&source, DEVELOPER).await
    );
    assert!(
        inline_grants_of_developer(&source, &arn).await.is_empty(),
        "no inline grant policy (that is what hit IAM's 2,048-character quota)"
    );
    assert_eq!(
        status.granted_principals,
        [developer_arn()],
        "status.grantedPrincipals"
    );

    // Each AWS change has an event of its own that says what was done (not one event whose
    // count grows while later notes are dropped).
    // Events are published from a queue of their own, moments after the status.
    let events =
        kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns.name);
    let wanted = [
        ("CreateRole", role_name.as_str()),
        ("AttachRolePolicy", S3_READ),
        // The grant is the role's tag and trust entry (in CreateRole); the developer's grant
        // policy is attached once, by whichever test granted it first.
    ];
    common::poll("an AwsChange event for each change", CONVERGE, || async {
        let notes: BTreeSet<(String, String)> = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("AwsChange"))
            .map(|e| (e.action.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        match wanted.iter().find(|(action, mentions)| {
            !notes
                .iter()
                .any(|(a, note)| a == action && note.contains(mentions))
        }) {
            None => Ok(()),
            Some((action, mentions)) => Err(format!(
                "no AwsChange event with action {action} mentioning {mentions}: {notes:?}"
            )),
        }
    })
    .await;

    let listing = kubectl(&["get", "xar", "-n", &ns.name]);
    let line = listing
        .lines()
        .find(|l| l.starts_with("signin "))
        .unwrap_or_else(|| panic!("no row for signin in:\n{listing}"));
    assert!(
        line.contains(&arn) && line.split_whitespace().any(|w| w == "True"),
        "kubectl get xar shows the role ARN and Ready True:\n{listing}"
    );

    common::delete_role_and_wait(&client, &ns.name, "signin", GONE).await;
    assert!(
        common::get_iam_role(&target, &role_name).await.is_none(),
        "the role is deleted with its CrossAccountRole (deletionPolicy Delete is the default)"
    );
}

#[tokio::test]
async fn spec_update_makes_only_the_needed_writes() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "update").await;
    let role_name = common::unique("Update");

    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": account_name(),
            "roleName": role_name,
            "policies": {
                "managed": [S3_READ, EC2_READ],
                "inline": [{"name": "logs", "document": logs_policy("logs:GetLogEvents")}],
            },
            "grants": [{"user": DEVELOPER}],
        }),
    )
    .await;
    let before = wait_ready(&client, &ns.name, "app").await;

    let mark = common::shared_proxy().mark();
    let updated = common::patch_role_spec(
        &client,
        &ns.name,
        "app",
        json!({"policies": {
            "managed": [S3_READ, IAM_READ],
            "inline": [{"name": "logs", "document": logs_policy("logs:FilterLogEvents")}],
        }}),
    )
    .await;
    assert!(
        updated.metadata.generation > before.metadata.generation,
        "a spec change bumps the generation"
    );
    let after = wait_ready(&client, &ns.name, "app").await;
    let requests = common::shared_proxy().requests_since(&mark);
    assert_eq!(
        status_of(&after).observed_generation,
        after.metadata.generation,
        "status.observedGeneration follows the new generation"
    );

    // Every attempt counts: a write retried after a failure is a second write.
    let per_operation = common::iam_write_attempts(&requests);
    let delta = |op: &str| per_operation.get(op).copied().unwrap_or(0);
    let writes: u64 = per_operation.values().sum();
    let listing = write_requests(&requests);
    assert_eq!(delta("AttachRolePolicy"), 1, "writes:\n{listing}");
    assert_eq!(delta("DetachRolePolicy"), 1, "writes:\n{listing}");
    assert_eq!(delta("PutRolePolicy"), 1, "writes:\n{listing}");
    assert_eq!(writes, 3, "writes:\n{listing}");

    let target = common::target_iam().await;
    assert_eq!(
        common::attached_policies(&target, &role_name).await,
        BTreeSet::from([S3_READ.to_owned(), IAM_READ.to_owned()])
    );
    let inline = common::inline_policies(&target, &role_name).await;
    let actions: Vec<String> = inline
        .get("logs")
        .map(|doc| {
            statements(doc)
                .iter()
                .flat_map(|s| string_list(&s["Action"]))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        actions,
        ["logs:FilterLogEvents"],
        "inline policies {inline:?}"
    );

    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
    assert!(common::get_iam_role(&target, &role_name).await.is_none());
}

#[tokio::test]
async fn steady_state_resyncs_make_no_writes() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "steady").await;
    let role_name = common::unique("Steady");

    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": account_name(),
            "roleName": role_name,
            "description": "steady-state",
            "maxSessionDurationSeconds": 7200,
            "policies": {
                "managed": [S3_READ],
                "inline": [{"name": "logs", "document": logs_policy("logs:GetLogEvents")}],
            },
            "trust": {"principals": [format!("arn:aws:iam::{}:role/ci", common::env("SOURCE_ACCOUNT_ID"))]},
            "grants": [{"user": DEVELOPER}],
            "tags": {"team": "a"},
        }),
    )
    .await;
    let ready = wait_ready(&client, &ns.name, "app").await;

    let mark = common::shared_proxy().mark();
    // Every role this operator keeps in sync resyncs; wait for three rounds of each of them
    // (three reads of each role, this test's among them).
    let mut synced_roles = roles_synced_by_test_operator(&client).await;
    synced_roles.insert(role_name.clone());
    let synced_roles: Vec<String> = synced_roles.into_iter().collect();
    common::wait_for_role_reads(&mark, &synced_roles, 3, RESYNC_ROUNDS_DEADLINE).await;
    let requests = common::shared_proxy().requests_since(&mark);
    let writes = common::iam_write_attempts(&requests);
    assert!(
        writes.is_empty(),
        "resyncs of roles in sync tried to write to IAM ({writes:?}):\n{}",
        write_requests(&requests)
    );
    let now = common::roles_api(&client, &ns.name)
        .get("app")
        .await
        .unwrap();
    assert_eq!(
        now.resource_version(),
        ready.resource_version(),
        "resyncs of a role in sync rewrote the object: {}",
        common::describe_role(&now)
    );

    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
}

/// The IAM role names of the CrossAccountRoles in the whole cluster that an operator with this
/// test's cluster name reports in sync: each resyncs with AWS.
async fn roles_synced_by_test_operator(client: &Client) -> BTreeSet<String> {
    let all = kube::Api::<CrossAccountRole>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("list CrossAccountRoles");
    let prefix = format!("crossaccount:{}:", common::CLUSTER_NAME);
    all.items
        .iter()
        .filter(|cr| {
            cr.status
                .as_ref()
                .and_then(|s| s.external_id.as_deref())
                .is_some_and(|id| id.starts_with(&prefix))
                && common::role_condition(cr, "Ready").is_some_and(|c| c.status == "True")
        })
        .filter_map(|cr| {
            let arn = cr.status.as_ref()?.role_arn.as_deref()?;
            Some(arn.rsplit('/').next()?.to_owned())
        })
        .collect()
}

/// The IAM write attempts among `requests`, one per line (for failure messages).
fn write_requests(requests: &[common::aws_proxy::LoggedRequest]) -> String {
    common::describe_requests(requests.iter().filter(|r| common::is_iam_write(r)))
}

#[tokio::test]
async fn drift_in_aws_is_corrected_on_resync() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "drift").await;
    let role_name = common::unique("Drift");

    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": account_name(),
            "roleName": role_name,
            "policies": {"managed": [S3_READ]},
            "grants": [{"user": DEVELOPER}],
        }),
    )
    .await;
    let cr = wait_ready(&client, &ns.name, "app").await;
    let external_id = status_of(&cr).external_id.clone().expect("externalId");

    let mark = common::shared_proxy().mark();
    let target = common::target_iam().await;
    target
        .detach_role_policy()
        .role_name(&role_name)
        .policy_arn(S3_READ)
        .send()
        .await
        .expect("detach the policy behind the operator's back");
    // The trust is rewritten, keeping only the operator's own statement (without it the role is
    // no longer the CR's: the operator lets go of it rather than trusting tags alone).
    let current = target
        .get_role()
        .role_name(&role_name)
        .send()
        .await
        .expect("GetRole");
    let current = common::policy_json(
        current
            .role()
            .and_then(|r| r.assume_role_policy_document())
            .unwrap_or_default(),
    );
    let mut statements: Vec<serde_json::Value> = current["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["Sid"] == "CrossAccountOperator")
        .cloned()
        .collect();
    assert_eq!(statements.len(), 1, "the operator's statement: {current}");
    statements.push(json!({
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
        "Action": "sts:AssumeRole",
    }));
    let foreign_trust = json!({"Version": "2012-10-17", "Statement": statements});
    target
        .update_assume_role_policy()
        .role_name(&role_name)
        .policy_document(foreign_trust.to_string())
        .send()
        .await
        .expect("rewrite the trust policy behind the operator's back");

    common::poll(
        "the resync to restore the policy and the trust policy",
        Duration::from_secs(30),
        || async {
            let attached = common::attached_policies(&target, &role_name).await;
            let trust = trust_policy(&target, &role_name).await;
            let mut problems = trust_problems(&trust, &external_id, &[developer_arn()]);
            if trust.to_string().contains("999999999999") {
                problems.push("the foreign principal is still trusted".into());
            }
            if !attached.contains(S3_READ) {
                problems.push(format!("attached: {attached:?}"));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!("{problems:?}"))
            }
        },
    )
    .await;
    // Each repair was made exactly once (attempted once: the proxy sees failed attempts too).
    // The test's own two writes behind the operator's back go to AWS directly, not through the
    // operator's proxy.
    let requests = common::shared_proxy().requests_since(&mark);
    let per_operation = common::iam_write_attempts(&requests);
    let delta = |op: &str| per_operation.get(op).copied().unwrap_or(0);
    let listing = write_requests(&requests);
    assert_eq!(delta("AttachRolePolicy"), 1, "{listing}");
    assert_eq!(delta("UpdateAssumeRolePolicy"), 1, "{listing}");
    assert_eq!(per_operation.values().sum::<u64>(), 2, "{listing}");

    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
    assert!(common::get_iam_role(&target, &role_name).await.is_none());
}

#[tokio::test]
async fn deletion_policy_delete_removes_role_and_grant() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "delete").await;
    let role_name = common::unique("Delete");

    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": account_name(),
            "roleName": role_name,
            "deletionPolicy": "Delete",
            "policies": {
                "managed": [S3_READ],
                "inline": [{"name": "logs", "document": logs_policy("logs:GetLogEvents")}],
            },
            "grants": [{"user": DEVELOPER}],
        }),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let target = common::target_iam().await;
    assert!(common::get_iam_role(&target, &role_name).await.is_some());
    assert!(
        developer_granted(&role_name).await,
        "granted before deletion"
    );

    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
    let err = target
        .get_role()
        .role_name(&role_name)
        .send()
        .await
        .expect_err("the role is deleted");
    assert!(common::is_no_such_entity(&err), "GetRole: {err:?}");
    assert!(
        !developer_granted(&role_name).await,
        "the grant goes with the role"
    );
}

#[tokio::test]
async fn deletion_policy_retain_leaves_the_role() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "retain").await;
    let role_name = common::unique("Retain");
    let _cleanup = common::TargetRoleGuard::new(&role_name);

    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": account_name(),
            "roleName": role_name,
            "deletionPolicy": "Retain",
            "policies": {
                "managed": [S3_READ],
                "inline": [{"name": "logs", "document": logs_policy("logs:GetLogEvents")}],
            },
        }),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;

    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
    let target = common::target_iam().await;
    assert!(
        common::get_iam_role(&target, &role_name).await.is_some(),
        "deletionPolicy Retain keeps the role"
    );
    assert_eq!(
        common::attached_policies(&target, &role_name).await,
        BTreeSet::from([S3_READ.to_owned()]),
        "Retain leaves the role's policies alone"
    );
    assert!(
        common::inline_policies(&target, &role_name)
            .await
            .contains_key("logs")
    );
    // But the operator lets go of it: its ownership tags give way to crossaccount.io/retained,
    // and its own trust statement goes (it can no longer mint credentials for the role, and a
    // later object of the same name gets the role only by adoption).
    let tags = common::role_tags(&target, &role_name).await;
    for key in [
        "crossaccount.io/cluster",
        "crossaccount.io/namespace",
        "crossaccount.io/name",
    ] {
        assert!(!tags.contains_key(key), "tag {key} is removed: {tags:?}");
    }
    assert!(
        tags.get("crossaccount.io/retained")
            .is_some_and(|at| at.parse::<jiff::Timestamp>().is_ok()),
        "tag crossaccount.io/retained records when: {tags:?}"
    );
    let trust = trust_policy(&target, &role_name).await;
    assert!(
        !statements(&trust)
            .iter()
            .any(|s| s.to_string().contains(&operator_principal())),
        "the operator's trust statement is removed: {trust}"
    );

    common::delete_iam_role(&target, &role_name).await;
    assert!(common::get_iam_role(&target, &role_name).await.is_none());
}

/// One refused CrossAccountRole: where it lives, what it asks for, and how it must be refused.
struct Refused {
    namespace: String,
    name: &'static str,
    role_name: String,
    spec: Value,
    reason: &'static str,
    /// Substrings of the condition message.
    message: Vec<String>,
}

#[tokio::test]
async fn refusals_name_the_cause_and_make_no_iam_writes() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "refuse").await;
    let outsider = TestNamespace::not_tenant(&client, "outsider").await;
    let account = account_name();
    let target = common::target_iam().await;

    // An AwsAccount for the same target account that does not allow inline policies.
    let strict = common::AccountGuard {
        name: common::unique("strict"),
    };
    common::create_account(
        &client,
        &strict.name,
        json!({
            "accountId": common::env("TARGET_ACCOUNT_ID"),
            "managementRoleArn": common::env("MANAGEMENT_ROLE_ARN"),
            "allowedNamespaces": {"names": [ns.name]},
            "allowedPolicyArns": ["arn:aws:iam::aws:policy/*"],
            "allowInlinePolicies": false,
            "allowedTrustPrincipals": [format!("arn:aws:iam::{}:user/*", common::env("SOURCE_ACCOUNT_ID"))],
        }),
    )
    .await;
    common::wait_for_account_ready(&client, &strict.name, CONVERGE).await;

    // A role of the same name that nobody tagged.
    let taken = common::unique("Taken");
    let _taken_cleanup = common::TargetRoleGuard::new(&taken);
    target
        .create_role()
        .role_name(&taken)
        .assume_role_policy_document(
            json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{}:root", common::env("TARGET_ACCOUNT_ID"))},
                    "Action": "sts:AssumeRole",
                }],
            })
            .to_string(),
        )
        .send()
        .await
        .expect("create an untagged role");

    let missing_account = common::unique("no-such-account");
    let cases = vec![
        {
            let role_name = common::unique("Outsider");
            Refused {
                namespace: outsider.name.clone(),
                name: "outsider",
                spec: json!({"accountRef": account, "roleName": role_name}),
                role_name,
                reason: "NotPermitted",
                message: vec![
                    format!("namespace {}", outsider.name),
                    "allowedNamespaces".into(),
                ],
            }
        },
        {
            let role_name = common::unique("ForeignPolicy");
            Refused {
                namespace: ns.name.clone(),
                name: "foreign-policy",
                spec: json!({
                    "accountRef": account,
                    "roleName": role_name,
                    "policies": {"managed": [S3_READ, "arn:aws:iam::222222222222:policy/X"]},
                }),
                role_name,
                reason: "NotPermitted",
                message: vec![
                    "spec.policies.managed[1]".into(),
                    "arn:aws:iam::222222222222:policy/X".into(),
                ],
            }
        },
        {
            let role_name = common::unique("Inline");
            Refused {
                namespace: ns.name.clone(),
                name: "inline-not-allowed",
                spec: json!({
                    "accountRef": strict.name,
                    "roleName": role_name,
                    "policies": {"inline": [{"name": "logs", "document": logs_policy("logs:GetLogEvents")}]},
                }),
                role_name,
                reason: "NotPermitted",
                message: vec!["spec.policies.inline".into(), "allowInlinePolicies".into()],
            }
        },
        {
            let role_name = common::unique("Malformed");
            Refused {
                namespace: ns.name.clone(),
                name: "malformed",
                spec: json!({
                    "accountRef": account,
                    "roleName": role_name,
                    "policies": {"inline": [{"name": "broken", "document": "{\"Version\": \"2012-10-17\", \"Statement\": ["}]},
                }),
                role_name,
                reason: "InvalidSpec",
                message: vec!["spec.policies.inline[broken].document".into()],
            }
        },
        {
            let role_name = common::unique("Untrusted");
            Refused {
                namespace: ns.name.clone(),
                name: "untrusted",
                spec: json!({
                    "accountRef": account,
                    "roleName": role_name,
                    "trust": {"principals": ["arn:aws:iam::999999999999:root"]},
                }),
                role_name,
                reason: "NotPermitted",
                message: vec![
                    "spec.trust.principals[0]".into(),
                    "arn:aws:iam::999999999999:root".into(),
                ],
            }
        },
        Refused {
            namespace: ns.name.clone(),
            name: "taken",
            spec: json!({
                "accountRef": account,
                "roleName": taken,
                "policies": {"managed": [S3_READ]},
            }),
            role_name: taken.clone(),
            reason: "RoleNotOwned",
            message: vec![role_arn(&taken), "crossaccount.io/adopt".into()],
        },
        {
            let role_name = common::unique("NoAccount");
            Refused {
                namespace: ns.name.clone(),
                name: "no-account",
                spec: json!({"accountRef": missing_account, "roleName": role_name}),
                role_name,
                reason: "AccountNotReady",
                message: vec![missing_account.clone(), "spec.accountRef".into()],
            }
        },
    ];

    let mark = common::shared_proxy().mark();
    for case in &cases {
        common::create_role(&client, &case.namespace, case.name, case.spec.clone()).await;
    }
    let mut failures = Vec::new();
    for case in &cases {
        let cr = common::wait_for_condition(
            &client,
            &case.namespace,
            case.name,
            "Ready",
            "False",
            Some(case.reason),
            CONVERGE,
        )
        .await;
        for type_ in ["Ready", "RoleSynced"] {
            let condition = common::role_condition(&cr, type_)
                .unwrap_or_else(|| panic!("{}: no {type_} condition", case.name));
            if condition.status != "False" || condition.reason != case.reason {
                failures.push(format!("{} {type_}: {condition:?}", case.name));
            }
            for needle in &case.message {
                if !condition.message.contains(needle.as_str()) {
                    failures.push(format!(
                        "{} {type_}: message {:?} does not mention {needle:?}",
                        case.name, condition.message
                    ));
                }
            }
        }
    }
    let write_attempts: Vec<_> = common::shared_proxy()
        .requests_since(&mark)
        .into_iter()
        .filter(common::is_iam_write)
        .collect();

    for case in &cases {
        let role = common::get_iam_role(&target, &case.role_name).await;
        if case.reason == "RoleNotOwned" {
            // The untagged role is left exactly as it was.
            let role = role.expect("the untagged role still exists");
            let tags = common::role_tags(&target, &case.role_name).await;
            let attached = common::attached_policies(&target, &case.role_name).await;
            if !tags.is_empty() || !attached.is_empty() {
                failures.push(format!(
                    "{}: the foreign role {} was changed: tags {tags:?}, attached {attached:?}",
                    case.name,
                    role.arn()
                ));
            }
        } else if let Some(role) = role {
            failures.push(format!("{}: role {} was created", case.name, role.arn()));
        }
    }
    for case in &cases {
        common::delete_role_and_wait(&client, &case.namespace, case.name, GONE).await;
    }
    // Deleting the refused CrossAccountRole leaves the role it did not own alone.
    if common::get_iam_role(&target, &taken).await.is_none() {
        failures.push(format!(
            "deleting CrossAccountRole taken deleted the foreign role {taken}"
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        write_attempts.len(),
        0,
        "refused CrossAccountRoles caused IAM write attempts:\n{}",
        common::describe_requests(&write_attempts)
    );
}

#[tokio::test]
async fn aws_outage_is_reported_and_recovered_from() {
    let _serial = common::serial().await;
    let operator = Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "outage").await;
    let role_name = common::unique("Outage");
    let retained_name = common::unique("OutageRetained");
    let _retained_cleanup = common::TargetRoleGuard::new(&retained_name);

    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": account_name(),
            "roleName": role_name,
            "policies": {"managed": [S3_READ]},
        }),
    )
    .await;
    common::create_role(
        &client,
        &ns.name,
        "retained",
        json!({
            "accountRef": account_name(),
            "roleName": retained_name,
            "deletionPolicy": "Retain",
        }),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let retained = wait_ready(&client, &ns.name, "retained").await;
    assert!(
        retained
            .finalizers()
            .iter()
            .any(|f| f == "crossaccount.io/cleanup"),
        "a synced role carries the finalizer: {}",
        common::describe_role(&retained)
    );

    let frozen = common::FrozenAws::freeze();
    let started = std::time::Instant::now();
    let patched = common::patch_role_spec(
        &client,
        &ns.name,
        "app",
        json!({"policies": {"managed": [S3_READ, EC2_READ]}}),
    )
    .await;

    // Every status write is seen (the AwsError may last only until the next reconcile reports
    // the AwsAccount as not ready).
    let api = common::roles_api(&client, &ns.name);
    let mut updates = Box::pin(kube::runtime::watcher::watch_object(api.clone(), "app"));
    let aws_error = async {
        let mut last = String::from("(no update)");
        while let Some(update) = updates.next().await {
            match update {
                Ok(Some(cr)) => {
                    if let Some(c) = common::role_condition(&cr, "RoleSynced")
                        && c.status == "False"
                        && c.reason == "AwsError"
                    {
                        return Ok(c.clone());
                    }
                    last = common::describe_role(&cr);
                }
                Ok(None) => return Err("the object disappeared".to_owned()),
                Err(e) => last = format!("watch error: {e}"),
            }
        }
        Err(last)
    };
    // Deleting a Retain role lets go of it in AWS (its trust statement and ownership tags), so
    // while AWS is down the deletion waits, and says why.
    common::roles_api(&client, &ns.name)
        .delete("retained", &Default::default())
        .await
        .expect("delete the retained CrossAccountRole");
    let aws_error = tokio::time::timeout(Duration::from_secs(90), aws_error).await;
    common::wait_for_condition(
        &client,
        &ns.name,
        "retained",
        "Ready",
        "False",
        None,
        Duration::from_secs(90),
    )
    .await;
    let condition = match aws_error {
        Ok(Ok(condition)) => condition,
        Ok(Err(last)) => common::fail_with_operator_log("no AwsError while AWS was frozen", &last),
        Err(_) => common::fail_with_operator_log(
            "no RoleSynced=False/AwsError within 90s of freezing AWS",
            &common::describe_role(&api.get("app").await.unwrap()),
        ),
    };
    assert!(
        condition.message.contains("AWS"),
        "the AwsError message says what failed: {condition:?}"
    );
    eprintln!(
        "AwsError after {:?} (generation {:?}, condition for {:?}): {}",
        started.elapsed(),
        patched.metadata.generation,
        condition.observed_generation,
        condition.message
    );
    assert_eq!(
        operator.healthz().await,
        Ok(200),
        "the operator stays healthy while AWS is down"
    );
    assert!(operator.exited().is_none(), "the operator is still running");

    drop(frozen);
    // The shared AwsAccount may have gone not-ready during the outage; it recovers too.
    common::wait_for_account_ready(&client, &account_name(), Duration::from_secs(90)).await;
    common::wait_for_condition(
        &client,
        &ns.name,
        "app",
        "Ready",
        "True",
        Some("Synced"),
        Duration::from_secs(90),
    )
    .await;
    let target = common::target_iam().await;
    assert_eq!(
        common::attached_policies(&target, &role_name).await,
        BTreeSet::from([S3_READ.to_owned(), EC2_READ.to_owned()]),
        "the change made during the outage is applied afterwards"
    );
    // Once AWS is back, the retained role's deletion completes; the role stays.
    common::wait_until_role_gone(&client, &ns.name, "retained", Duration::from_secs(90)).await;
    assert!(
        common::get_iam_role(&target, &retained_name)
            .await
            .is_some(),
        "the retained role is still there"
    );

    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
    assert!(common::get_iam_role(&target, &role_name).await.is_none());
    common::delete_iam_role(&target, &retained_name).await;
}

const PLAN_ONLY: &str = "crossaccount.io/plan-only";

/// Sets (`Some`) or removes the plan-only annotation of `name`, with an optional spec change.
async fn set_plan_only(client: &Client, ns: &str, name: &str, value: Option<&str>, spec: Value) {
    let mut patch = json!({"metadata": {"annotations": {PLAN_ONLY: value}}});
    if !spec.is_null() {
        patch["spec"] = spec;
    }
    common::roles_api(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("patch {ns}/{name}: {e}"));
}

/// Waits for Ready=False (reason PlanPending) for the current generation.
async fn wait_planned(client: &Client, ns: &str, name: &str) -> CrossAccountRole {
    common::wait_for_condition(
        client,
        ns,
        name,
        "Ready",
        "False",
        Some("PlanPending"),
        CONVERGE,
    )
    .await
}

/// No IAM write and no mint since `mark`, after the operator read the role `rounds` more times.
async fn assert_nothing_written_since(
    mark: &common::aws_proxy::RequestMark,
    role: &str,
    rounds: u64,
) {
    common::wait_for_role_reads(mark, &[role.to_owned()], rounds, RESYNC_ROUNDS_DEADLINE).await;
    let requests = common::shared_proxy().requests_since(mark);
    let written: Vec<_> = requests
        .iter()
        .filter(|r| {
            (common::is_iam_write(r) || common::is_credential_mint(r))
                && (r.param("RoleName") == Some(role)
                    || r.param("RoleArn")
                        .is_some_and(|a| a.ends_with(&format!("/{role}")))
                    || r.param("PolicyArn").is_some())
        })
        .collect();
    assert!(
        written.is_empty(),
        "a plan-only object made writes:\n{}",
        common::describe_requests(written)
    );
}

#[tokio::test]
async fn a_plan_only_object_shows_its_iam_changes_and_makes_none_until_released() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "plan").await;
    let role_name = common::unique("Plan");
    let _role = common::TargetRoleGuard::new(&role_name);
    let api = common::roles_api(&client, &ns.name);
    let mark = common::shared_proxy().mark();
    let cr: CrossAccountRole = serde_json::from_value(json!({
        "apiVersion": "crossaccount.io/v1alpha1",
        "kind": "CrossAccountRole",
        "metadata": {"name": "app", "namespace": ns.name, "annotations": {PLAN_ONLY: "true"}},
        "spec": {
            "accountRef": account_name(),
            "roleName": role_name,
            "policies": {"managed": [S3_READ]},
            "credentials": {},
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &cr).await.unwrap();

    // The plan, in words, in status; the Reason column says a plan is pending.
    let planned = wait_planned(&client, &ns.name, "app").await;
    let changes = &status_of(&planned).planned_changes;
    for expected in [
        format!("create role {role_name}"),
        format!("attach {S3_READ} to role {role_name}"),
    ] {
        assert!(
            changes.contains(&expected),
            "{expected:?} not in {changes:?}"
        );
    }
    let ready = common::role_condition(&planned, "Ready").unwrap();
    assert!(
        ready
            .message
            .contains("remove the annotation to apply them"),
        "{}",
        ready.message
    );
    let row = kubectl(&["get", "xar", "app", "-n", &ns.name]);
    assert!(row.contains("PlanPending"), "{row}");
    // Nothing is written, in IAM or by STS, however often it is looked at; no finalizer (there
    // is nothing to clean up) and no Secret.
    assert_nothing_written_since(&mark, &role_name, 3).await;
    let still = api.get("app").await.unwrap();
    assert!(still.finalizers().is_empty(), "{:?}", still.finalizers());
    assert!(
        common::get_iam_role(&common::target_iam().await, &role_name)
            .await
            .is_none()
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        secrets
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Released: the plan is applied and the credentials issued.
    set_plan_only(&client, &ns.name, "app", None, Value::Null).await;
    let synced = wait_ready(&client, &ns.name, "app").await;
    assert!(status_of(&synced).planned_changes.is_empty());
    let credentials = common::wait_for_condition(
        &client,
        &ns.name,
        "app",
        "CredentialsReady",
        "True",
        None,
        CONVERGE,
    )
    .await;
    let issued = status_of(&credentials)
        .credentials
        .clone()
        .expect("credentials status");

    // Plan-only again with a spec change: planned, not applied, and the role's credentials stay.
    let mark = common::shared_proxy().mark();
    set_plan_only(
        &client,
        &ns.name,
        "app",
        Some("true"),
        json!({"policies": {"managed": [S3_READ, EC2_READ]}}),
    )
    .await;
    let planned = wait_planned(&client, &ns.name, "app").await;
    assert_eq!(
        status_of(&planned).planned_changes,
        [format!("attach {EC2_READ} to role {role_name}")]
    );
    assert!(
        common::role_condition(&planned, "CredentialsReady").is_some_and(|c| c.status == "True"),
        "{}",
        common::describe_role(&planned)
    );
    assert_nothing_written_since(&mark, &role_name, 3).await;
    let target = common::target_iam().await;
    assert_eq!(
        common::attached_policies(&target, &role_name).await,
        BTreeSet::from([S3_READ.to_owned()])
    );
    assert_eq!(
        status_of(&api.get("app").await.unwrap()).credentials,
        Some(issued),
        "the held credentials are kept"
    );

    // Released again ("false" works as removing it does): the change is applied.
    set_plan_only(&client, &ns.name, "app", Some("false"), Value::Null).await;
    wait_ready(&client, &ns.name, "app").await;
    assert_eq!(
        common::attached_policies(&target, &role_name).await,
        BTreeSet::from([S3_READ.to_owned(), EC2_READ.to_owned()])
    );
    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
}
