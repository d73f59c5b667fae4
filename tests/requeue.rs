//! What makes the operator look at a CrossAccountRole again without a spec change: a change to
//! its namespace's labels or to its AwsAccount. A refused role is not resynced (refusals are
//! terminal until something changes), so these tests pass only through the watches.

mod common;

use std::time::Duration;

use common::{Operator, TestNamespace};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(60);

async fn set_tenant_label(client: &kube::Client, namespace: &str, value: Option<&str>) {
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"crossaccount.io/tenant": value}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("label namespace {namespace}: {e}"));
}

#[tokio::test]
async fn labelling_the_namespace_admits_a_refused_role_and_unlabelling_refuses_it() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::not_tenant(&client, "relabel").await;
    let role_name = common::unique("Relabel");
    let _cleanup = common::TargetRoleGuard::new(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "relabel",
        json!({"accountRef": common::account_name(), "roleName": role_name}),
    )
    .await;
    common::wait_for_condition(
        &client,
        &ns.name,
        "relabel",
        "Ready",
        "False",
        Some("NotPermitted"),
        CONVERGE,
    )
    .await;

    set_tenant_label(&client, &ns.name, Some("true")).await;
    common::wait_for_condition(
        &client, &ns.name, "relabel", "Ready", "True", None, CONVERGE,
    )
    .await;

    set_tenant_label(&client, &ns.name, None).await;
    common::wait_for_condition(
        &client,
        &ns.name,
        "relabel",
        "Ready",
        "False",
        Some("NotPermitted"),
        CONVERGE,
    )
    .await;
    common::delete_role_and_wait(&client, &ns.name, "relabel", CONVERGE).await;
}

#[tokio::test]
async fn an_account_that_starts_allowing_the_namespace_admits_a_refused_role() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::not_tenant(&client, "admit").await;
    let account = common::AccountGuard {
        name: common::unique("admit"),
    };
    let spec = |names: Vec<String>| {
        json!({
            "accountId": common::env("TARGET_ACCOUNT_ID"),
            "managementRoleArn": common::env("MANAGEMENT_ROLE_ARN"),
            "allowedNamespaces": {"names": names},
            "allowedPolicyArns": ["arn:aws:iam::aws:policy/*"],
            "allowedTrustPrincipals": [],
        })
    };
    common::create_account(&client, &account.name, spec(vec!["nobody".into()])).await;
    common::wait_for_account_ready(&client, &account.name, CONVERGE).await;
    let role_name = common::unique("Admit");
    let _cleanup = common::TargetRoleGuard::new(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "admit",
        json!({"accountRef": account.name, "roleName": role_name}),
    )
    .await;
    common::wait_for_condition(
        &client,
        &ns.name,
        "admit",
        "Ready",
        "False",
        Some("NotPermitted"),
        CONVERGE,
    )
    .await;

    Api::<cross_account_operator::api::AwsAccount>::all(client.clone())
        .patch(
            &account.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec(vec![ns.name.clone()])})),
        )
        .await
        .expect("allow the namespace");
    common::wait_for_condition(&client, &ns.name, "admit", "Ready", "True", None, CONVERGE).await;
    common::delete_role_and_wait(&client, &ns.name, "admit", CONVERGE).await;
}
