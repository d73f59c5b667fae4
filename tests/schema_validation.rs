//! The apiserver itself rejects invalid objects, with a message naming the field, using the
//! schema and CEL rules generated from the API types.

mod common;

use cross_account_operator::api::{AwsAccount, CrossAccountRole};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// The CrossAccountRoles here name an AwsAccount that does not exist, so that a running operator
/// leaves AWS alone (it reports AccountNotReady).
const NO_ACCOUNT: &str = "schema-test-no-such-account";

fn role(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "crossaccount.io/v1alpha1",
        "kind": "CrossAccountRole",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn account(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "crossaccount.io/v1alpha1",
        "kind": "AwsAccount",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// The apiserver's message for a rejected create, or a panic naming the case when it was accepted.
fn rejection(case: &str, result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Ok(_) => panic!("{case}: the apiserver accepted an invalid object"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{case}: {status:?}");
            status.message.clone()
        }
        Err(other) => panic!("{case}: unexpected error {other}"),
    }
}

#[tokio::test]
async fn invalid_cross_account_roles_are_rejected_naming_the_field() {
    let client = common::kube_client().await;
    let ns = common::TestNamespace::new(&client, "schema").await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client,
        &ns.name,
        &ApiResource::erase::<CrossAccountRole>(&()),
    );
    let pp = PostParams::default();

    // Positive control: the same shape, valid, is accepted.
    api.create(
        &pp,
        &role(
            "valid",
            json!({
                "accountRef": NO_ACCOUNT,
                "roleName": "SchemaValid",
                "policies": {"managed": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]},
                "grants": [{"user": "devTest"}],
                "credentials": {"durationSeconds": 900, "refreshPercent": 50},
            }),
        ),
    )
    .await
    .expect("a valid CrossAccountRole is accepted");

    let long_name = "r".repeat(65);
    let eleven_policies: Vec<String> = (0..11)
        .map(|i| format!("arn:aws:iam::aws:policy/P{i}"))
        .collect();
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "missing accountRef",
            json!({"roleName": "x"}),
            &["spec.accountRef", "Required value"],
        ),
        (
            "empty accountRef",
            json!({"accountRef": ""}),
            &["spec.accountRef"],
        ),
        (
            "role name too long",
            json!({"accountRef": "a", "roleName": long_name}),
            &["spec.roleName"],
        ),
        (
            "role name with bad characters",
            json!({"accountRef": "a", "roleName": "my role!"}),
            &["spec.roleName"],
        ),
        (
            "durationSeconds below 900",
            json!({"accountRef": "a", "credentials": {"durationSeconds": 899}}),
            &["spec.credentials.durationSeconds"],
        ),
        (
            "durationSeconds above 43200",
            json!({"accountRef": "a", "credentials": {"durationSeconds": 43201}}),
            &["spec.credentials.durationSeconds"],
        ),
        (
            "refreshPercent 0",
            json!({"accountRef": "a", "credentials": {"refreshPercent": 0}}),
            &["spec.credentials.refreshPercent"],
        ),
        (
            "refreshPercent 95",
            json!({"accountRef": "a", "credentials": {"refreshPercent": 95}}),
            &["spec.credentials.refreshPercent"],
        ),
        (
            "unknown deletionPolicy",
            json!({"accountRef": "a", "deletionPolicy": "Sometimes"}),
            &["spec.deletionPolicy", "Delete", "Retain"],
        ),
        (
            "role max session below IAM minimum",
            json!({"accountRef": "a", "maxSessionDurationSeconds": 100}),
            &["spec.maxSessionDurationSeconds"],
        ),
        (
            "grant with both user and role",
            json!({"accountRef": "a", "grants": [{"user": "u", "role": "r"}]}),
            &["spec.grants[0]", "exactly one of user or role"],
        ),
        (
            "grant with neither user nor role",
            json!({"accountRef": "a", "grants": [{}]}),
            &["spec.grants[0]", "exactly one of user or role"],
        ),
        (
            "managed policy that is not an ARN",
            json!({"accountRef": "a", "policies": {"managed": ["AmazonS3ReadOnlyAccess"]}}),
            &["spec.policies.managed[0]"],
        ),
        (
            "more than 10 managed policies",
            json!({"accountRef": "a", "policies": {"managed": eleven_policies}}),
            &["spec.policies.managed", "Too many"],
        ),
        (
            "duplicate inline policy names",
            json!({"accountRef": "a", "policies": {"inline": [{"name": "p", "document": "{}"}, {"name": "p", "document": "{}"}]}}),
            &["spec.policies.inline[1]", "Duplicate"],
        ),
        (
            "trust principal that is not an IAM ARN",
            json!({"accountRef": "a", "trust": {"principals": ["*"]}}),
            &["spec.trust.principals[0]"],
        ),
        (
            "reserved tag key",
            json!({"accountRef": "a", "tags": {"crossaccount.io/name": "x"}}),
            &["spec.tags", "reserved"],
        ),
        (
            "bad region",
            json!({"accountRef": "a", "credentials": {"region": "Mars"}}),
            &["spec.credentials.region"],
        ),
        (
            "rollout target of an unsupported kind",
            json!({"accountRef": "a", "credentials": {"rolloutRestartTargets": [{"kind": "Pod", "name": "p"}]}}),
            &["spec.credentials.rolloutRestartTargets[0].kind"],
        ),
        (
            "secret name that is not a DNS name",
            json!({"accountRef": "a", "credentials": {"secretName": "My_Secret"}}),
            &["spec.credentials.secretName"],
        ),
    ];
    assert!(cases.len() >= 10);
    for (i, (case, spec, needles)) in cases.into_iter().enumerate() {
        let message = rejection(
            case,
            api.create(&pp, &role(&format!("bad-{i}"), spec)).await,
        );
        for needle in needles {
            assert!(
                message.contains(needle),
                "{case}: message {message:?} lacks {needle:?}"
            );
        }
    }
}

#[tokio::test]
async fn immutable_cross_account_role_fields_cannot_change() {
    let client = common::kube_client().await;
    let ns = common::TestNamespace::new(&client, "immutable").await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client,
        &ns.name,
        &ApiResource::erase::<CrossAccountRole>(&()),
    );
    api.create(
        &PostParams::default(),
        &role(
            "fixed",
            json!({"accountRef": NO_ACCOUNT, "roleName": "Fixed"}),
        ),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &role("derived", json!({"accountRef": NO_ACCOUNT})),
    )
    .await
    .unwrap();

    let cases = [
        (
            "fixed",
            json!({"spec": {"accountRef": "other"}}),
            "accountRef is immutable",
        ),
        (
            "fixed",
            json!({"spec": {"roleName": "Other"}}),
            "roleName is immutable",
        ),
        (
            "derived",
            json!({"spec": {"roleName": "Added"}}),
            "roleName is immutable",
        ),
    ];
    for (name, patch, needle) in cases {
        let result = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let message = rejection(&format!("patch {patch}"), result);
        assert!(message.contains(needle), "{message}");
    }
    // A mutable field still changes.
    api.patch(
        "fixed",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"description": "ok"}})),
    )
    .await
    .expect("description is mutable");
}

#[tokio::test]
async fn invalid_aws_accounts_are_rejected_naming_the_field() {
    let client = common::kube_client().await;
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<AwsAccount>(&()));
    let pp = PostParams::default();
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "short account ID",
            json!({"accountId": "12345"}),
            &["spec.accountId"],
        ),
        (
            "account ID with letters",
            json!({"accountId": "12345678901a"}),
            &["spec.accountId"],
        ),
        (
            "management role that is not a role ARN",
            json!({"accountId": "111111111111", "managementRoleArn": "not-an-arn"}),
            &["spec.managementRoleArn"],
        ),
        (
            "external ID too short",
            json!({"accountId": "111111111111", "managementExternalId": "x"}),
            &["spec.managementExternalId"],
        ),
        (
            "session cap out of range",
            json!({"accountId": "111111111111", "maxSessionDurationSeconds": 60}),
            &["spec.maxSessionDurationSeconds"],
        ),
        (
            "role path without slashes",
            json!({"accountId": "111111111111", "rolePath": "tenants"}),
            &["spec.rolePath"],
        ),
    ];
    for (case, spec, needles) in cases {
        let message = rejection(
            case,
            api.create(&pp, &account(&common::unique("bad"), spec))
                .await,
        );
        for needle in needles {
            assert!(
                message.contains(needle),
                "{case}: message {message:?} lacks {needle:?}"
            );
        }
    }

    let name = common::unique("immutable");
    api.create(&pp, &account(&name, json!({"accountId": "222222222222"})))
        .await
        .expect("a valid AwsAccount is accepted");
    let result = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"accountId": "333333333333"}})),
        )
        .await;
    let message = rejection("change accountId", result);
    assert!(message.contains("accountId is immutable"), "{message}");
    api.delete(&name, &Default::default()).await.unwrap();
}
