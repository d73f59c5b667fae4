//! The floor: a plain client that knows the answer in advance and issues exactly the minimal
//! call sequence for N roles, with the operator's concurrency, through the same proxy to the
//! same moto. No Kubernetes, no reads beyond the one existence check, no retries of its own.

use std::time::{Duration, Instant};

use aws_sdk_iam::types::Tag;
use futures::{StreamExt, stream};
use serde_json::json;

/// The clients the floor uses: IAM in the target account (management role session), IAM and
/// STS in the source account (the operator's user).
pub struct FloorClients {
    pub target_iam: aws_sdk_iam::Client,
    pub source_iam: aws_sdk_iam::Client,
    pub source_sts: aws_sdk_sts::Client,
}

/// What one floor role looks like: the same shape as the benchmark's CrossAccountRole.
pub struct FloorRole {
    pub name: String,
    pub arn: String,
}

pub struct FloorSpec<'a> {
    pub source_account: &'a str,
    pub operator_user: &'a str,
    pub grant_user: &'a str,
    pub managed_policy: &'a str,
    pub credentials: bool,
}

/// Runs the minimal sequence for every role, `concurrency` roles at a time; returns the wall
/// time. Panics on any error: the floor has no business failing.
pub async fn run(
    clients: &FloorClients,
    spec: &FloorSpec<'_>,
    roles: &[FloorRole],
    concurrency: usize,
) -> (Duration, Vec<f64>) {
    let start = Instant::now();
    grant_once(clients, spec).await;
    let mut done: Vec<f64> = stream::iter(roles)
        .map(|role| async move {
            one_role(clients, spec, role).await;
            start.elapsed().as_secs_f64()
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    done.sort_by(f64::total_cmp);
    (start.elapsed(), done)
}

async fn one_role(clients: &FloorClients, spec: &FloorSpec<'_>, role: &FloorRole) {
    let FloorSpec {
        source_account,
        operator_user,
        grant_user,
        ..
    } = spec;
    let external_id = format!("floor-{}", role.name);
    let trust = trust_policy(
        source_account,
        operator_user,
        grant_user,
        Some(&external_id),
    );
    let absent = clients
        .target_iam
        .get_role()
        .role_name(&role.name)
        .send()
        .await;
    assert!(absent.is_err(), "floor role {} already exists", role.name);
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().expect("tag");
    clients
        .target_iam
        .create_role()
        .role_name(&role.name)
        .assume_role_policy_document(trust.to_string())
        .tags(tag("crossaccount.io/cluster", "floor"))
        .tags(tag("crossaccount.io/namespace", "floor"))
        .tags(tag("crossaccount.io/name", &role.name))
        .tags(tag(&grant_tag_key(spec.grant_user), FLOOR_CLUSTER))
        .send()
        .await
        .unwrap_or_else(|e| panic!("floor CreateRole {}: {e:?}", role.name));
    clients
        .target_iam
        .attach_role_policy()
        .role_name(&role.name)
        .policy_arn(spec.managed_policy)
        .send()
        .await
        .unwrap_or_else(|e| panic!("floor AttachRolePolicy {}: {e:?}", role.name));
    if spec.credentials {
        clients
            .source_sts
            .assume_role()
            .role_arn(&role.arn)
            .role_session_name(format!("floor.{}", role.name))
            .external_id(external_id)
            .duration_seconds(3600)
            .send()
            .await
            .unwrap_or_else(|e| panic!("floor AssumeRole {}: {e:?}", role.name));
    }
}

/// The benchmark's trust policy, the shape the operator generates: the operator (with the
/// external ID, when one is given) and the granted user. The peer's Roles use it too.
pub fn trust_policy(
    source_account: &str,
    operator_user: &str,
    grant_user: &str,
    external_id: Option<&str>,
) -> serde_json::Value {
    let mut operator = json!({
        "Sid": "CrossAccountOperator",
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{source_account}:user/{operator_user}")},
        "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
    });
    if let Some(id) = external_id {
        operator["Condition"] = json!({"StringEquals": {"sts:ExternalId": id}});
    }
    json!({
        "Version": "2012-10-17",
        "Statement": [
            operator,
            {
                "Sid": "Grants",
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{source_account}:user/{grant_user}")},
                "Action": "sts:AssumeRole",
            },
        ],
    })
}

/// The floor's cluster name, in its grant tag and grant policy as the operator's is in its own.
const FLOOR_CLUSTER: &str = "floor";

fn grant_tag_key(user: &str) -> String {
    format!("crossaccount.io/grant/user/{user}")
}

fn grant_policy_name(user: &str) -> String {
    format!("crossaccount-{FLOOR_CLUSTER}-user-{user}")
}

/// The grant's source-account half, as the operator writes it (src/aws/grants.rs): one static
/// policy for the user that allows assuming the roles tagged for it, created and attached once
/// for all N roles; each role then needs only its tag and its trust.
async fn grant_once(clients: &FloorClients, spec: &FloorSpec<'_>) {
    let document = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": "*",
            "Condition": {"StringEquals": {
                format!("iam:ResourceTag/{}", grant_tag_key(spec.grant_user)): FLOOR_CLUSTER
            }},
        }],
    });
    // The policy never changes, so one left by an earlier phase or run is the same policy (the
    // operator's identity may create grant policies but not delete them).
    let created = clients
        .source_iam
        .create_policy()
        .policy_name(grant_policy_name(spec.grant_user))
        .path(format!("/crossaccount/{FLOOR_CLUSTER}/"))
        .policy_document(document.to_string())
        .send()
        .await;
    if let Err(e) = &created {
        let exists = e
            .as_service_error()
            .is_some_and(|e| e.is_entity_already_exists_exception());
        assert!(exists, "floor CreatePolicy: {e:?}");
    }
    let arn = grant_policy_arn(spec);
    clients
        .source_iam
        .attach_user_policy()
        .user_name(spec.grant_user)
        .policy_arn(arn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("floor AttachUserPolicy: {e:?}"));
}

fn grant_policy_arn(spec: &FloorSpec<'_>) -> String {
    format!(
        "arn:aws:iam::{}:policy/crossaccount/{FLOOR_CLUSTER}/{}",
        spec.source_account,
        grant_policy_name(spec.grant_user)
    )
}

/// Removes what `run` created (not timed, not counted). The grant policy's detach and delete may
/// be refused to the operator's identity; the next run reuses the policy.
pub async fn clean(clients: &FloorClients, spec: &FloorSpec<'_>, roles: &[FloorRole]) {
    let arn = grant_policy_arn(spec);
    let _ = clients
        .source_iam
        .detach_user_policy()
        .user_name(spec.grant_user)
        .policy_arn(&arn)
        .send()
        .await;
    let _ = clients
        .source_iam
        .delete_policy()
        .policy_arn(&arn)
        .send()
        .await;
    stream::iter(roles)
        .map(|role| async move {
            let _ = clients
                .target_iam
                .detach_role_policy()
                .role_name(&role.name)
                .policy_arn(spec.managed_policy)
                .send()
                .await;
            let _ = clients
                .target_iam
                .delete_role()
                .role_name(&role.name)
                .send()
                .await;
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}
