//! The guardrails at admission (`crds/admission-policy.yaml`) on the real apiserver: the policy
//! type-checks, each guardrail the apiserver checks refuses its violation at create time with the
//! message the operator writes for it, valid objects are accepted, and an object written before
//! its AwsAccount was narrowed can still be updated by the operator (finalizer) and deleted.
//!
//! The policy is installed under a name of its own, bound to this binary's namespaces only (other
//! binaries create objects the operator must refuse itself). No operator runs here.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{AccountGuard, TestNamespace};
use cross_account_operator::{
    api::{AwsAccount, CrossAccountRole},
    naming::OperatorIdentity,
};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::Namespace,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const TEST_LABEL: &str = "crossaccount.io/admission-test";
const SOURCE: &str = "123456789012";

/// The policy and binding of `crds/`, renamed and bound to namespaces labelled `label`;
/// deleted when dropped.
struct InstalledPolicy {
    name: String,
}

impl InstalledPolicy {
    async fn install(client: &Client, label: &str) -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/admission-policy.yaml");
        let list: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let name = common::unique("guardrails");
        let mut policy = list["items"][0].clone();
        let mut binding = list["items"][1].clone();
        assert_eq!(policy["kind"], "ValidatingAdmissionPolicy");
        assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
        policy["metadata"]["name"] = json!(name);
        binding["metadata"]["name"] = json!(name);
        binding["spec"]["policyName"] = json!(name);
        binding["spec"]["matchResources"] =
            json!({"namespaceSelector": {"matchLabels": {TEST_LABEL: label}}});
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(policy).unwrap();
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(binding).unwrap();
        Api::<ValidatingAdmissionPolicy>::all(client.clone())
            .create(&PostParams::default(), &policy)
            .await
            .expect("the apiserver takes the policy");
        let installed = Self { name };
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("the apiserver takes the binding");
        installed
    }
}

impl Drop for InstalledPolicy {
    fn drop(&mut self) {
        let name = self.name.clone();
        common::on_own_runtime(async move {
            if let Ok(client) = Client::try_default().await {
                let dp = DeleteParams::default();
                let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                    .delete(&name, &dp)
                    .await;
                let _ = Api::<ValidatingAdmissionPolicy>::all(client)
                    .delete(&name, &dp)
                    .await;
            }
        });
    }
}

fn role(namespace: &str, name: &str, spec: Value) -> CrossAccountRole {
    serde_json::from_value(json!({
        "apiVersion": "crossaccount.io/v1alpha1",
        "kind": "CrossAccountRole",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}

/// Creates `cr` without storing it (admission runs on dry runs too): `Err` with the refusal.
async fn dry_run_create(client: &Client, cr: &CrossAccountRole) -> Result<(), String> {
    let api: Api<CrossAccountRole> = Api::namespaced(client.clone(), &cr.namespace().unwrap());
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&pp, cr)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn operator() -> OperatorIdentity {
    OperatorIdentity {
        cluster_name: "it".into(),
        source_account_id: SOURCE.into(),
        partition: "aws".into(),
        principal_arn: format!("arn:aws:iam::{SOURCE}:user/cross-account-operator"),
        chained: false,
    }
}

async fn labels_of(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    Api::<Namespace>::all(client.clone())
        .get(namespace)
        .await
        .unwrap()
        .labels()
        .clone()
}

#[tokio::test]
async fn the_apiserver_refuses_what_the_guardrails_forbid_with_the_operators_message() {
    let client = common::kube_client().await;
    let label = common::unique("adm");
    let ns = |extra: Value| {
        let mut labels = json!({TEST_LABEL: label});
        labels
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        labels
    };
    let listed = TestNamespace::with_labels(&client, "adm-listed", ns(json!({}))).await;
    let selected =
        TestNamespace::with_labels(&client, "adm-selected", ns(json!({"team": "blue"}))).await;
    let other = TestNamespace::with_labels(&client, "adm-other", ns(json!({"team": "red"}))).await;

    let account_name = common::unique("adm-account");
    let _account = AccountGuard {
        name: account_name.clone(),
    };
    let account = common::create_account(
        &client,
        &account_name,
        json!({
            "accountId": "111111111111",
            "allowedNamespaces": {
                "names": [listed.name],
                "selector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["blue"]}]},
            },
            "allowedPolicyArns": [
                "arn:aws:iam::aws:policy/ReadOnlyAccess",
                "arn:aws:iam::aws:policy/AmazonS3*",
                "arn:aws:iam::111111111111:policy/team.read",
            ],
            "allowedTrustPrincipals": [
                format!("arn:aws:iam::{SOURCE}:role/ci-*"),
                format!("arn:aws:iam::{SOURCE}:*"),
            ],
            "roleNamePrefix": "team-",
        }),
    )
    .await;
    let policy = InstalledPolicy::install(&client, &label).await;

    // The apiserver type-checks the policy against the two CRDs' schemas: no warning.
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let checked = common::poll("the policy's type check", Duration::from_secs(60), || {
        let policies = policies.clone();
        let name = policy.name.clone();
        async move {
            let p = policies.get(&name).await.map_err(|e| e.to_string())?;
            let status = p.status.clone().unwrap_or_default();
            match status.type_checking {
                Some(tc) if status.observed_generation == p.metadata.generation => Ok(tc),
                _ => Err(format!("{status:?}")),
            }
        }
    })
    .await;
    assert!(
        checked.expression_warnings.unwrap_or_default().is_empty(),
        "the policy's CEL does not type-check"
    );

    let valid = json!({
        "accountRef": account_name,
        "roleName": "team-reader",
        "policies": {"managed": ["arn:aws:iam::aws:policy/ReadOnlyAccess", "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess", "arn:aws:iam::111111111111:policy/team.read"]},
        "trust": {"principals": [format!("arn:aws:iam::{SOURCE}:role/ci-deploy"), format!("arn:aws:iam::{SOURCE}:user/alice")]},
    });
    let with = |patch: Value| {
        let mut spec = valid.clone();
        json_patch::merge(&mut spec, &patch);
        spec
    };
    // The policy takes effect a moment after it is created: wait for the first refusal.
    let refused_namespace = role(&other.name, "r", valid.clone());
    common::poll("the policy to take effect", Duration::from_secs(60), || {
        let (client, cr) = (client.clone(), refused_namespace.clone());
        async move {
            match dry_run_create(&client, &cr).await {
                Err(e) if e.contains("is not allowed to use AwsAccount") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    let cases = [
        (
            "valid, listed namespace",
            listed.name.clone(),
            valid.clone(),
        ),
        (
            "valid, selected namespace",
            selected.name.clone(),
            valid.clone(),
        ),
        (
            "another AwsAccount (left to the operator)",
            other.name.clone(),
            with(json!({"accountRef": "no-such-account"})),
        ),
        ("namespace", other.name.clone(), valid.clone()),
        (
            "role name prefix",
            listed.name.clone(),
            with(json!({"roleName": "other-reader"})),
        ),
        (
            "managed policy",
            listed.name.clone(),
            with(
                json!({"policies": {"managed": ["arn:aws:iam::aws:policy/ReadOnlyAccess", "arn:aws:iam::aws:policy/AdministratorAccess"]}}),
            ),
        ),
        (
            "a dot in a pattern is a dot",
            listed.name.clone(),
            with(json!({"policies": {"managed": ["arn:aws:iam::111111111111:policy/teamXread"]}})),
        ),
        (
            "a literal pattern is not a prefix",
            listed.name.clone(),
            with(json!({"policies": {"managed": ["arn:aws:iam::aws:policy/ReadOnlyAccessX"]}})),
        ),
        (
            "inline policies",
            listed.name.clone(),
            with(
                json!({"policies": {"inline": [{"name": "extra", "document": "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"s3:GetObject\",\"Resource\":\"*\"}]}"}]}}),
            ),
        ),
        (
            "trust principal of another account",
            listed.name.clone(),
            with(json!({"trust": {"principals": ["arn:aws:iam::999999999999:role/ci-deploy"]}})),
        ),
        (
            "an account root needs a pattern that names :root",
            listed.name.clone(),
            with(json!({"trust": {"principals": [format!("arn:aws:iam::{SOURCE}:root")]}})),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, namespace, spec) in cases {
        let cr = role(&namespace, "r", spec);
        // What the operator would say of this object (the account is the one it names; an
        // object naming another AwsAccount is not this account's to judge).
        let expected = if cr.spec.account_ref == account_name {
            let labels = labels_of(&client, &namespace).await;
            cross_account_operator::guardrail_refusals(&cr, &account, &labels, &operator())
        } else {
            Vec::new()
        };
        let got = dry_run_create(&client, &cr).await;
        match (&got, expected.first()) {
            (Ok(()), None) => {}
            (Err(message), Some(first)) if expected.iter().any(|e| message.contains(e)) => {
                assert!(
                    message.contains(&policy.name),
                    "{what}: refused by something else: {message} (expected {first})"
                );
            }
            _ => wrong.push(format!(
                "{what}: the apiserver said {got:?}, the operator says {expected:?}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn objects_written_before_a_narrowing_can_still_be_finalized_and_deleted() {
    let client = common::kube_client().await;
    let label = common::unique("adm");
    let ns = TestNamespace::with_labels(&client, "adm-narrowed", json!({TEST_LABEL: label})).await;
    let account_name = common::unique("adm-account");
    let _account = AccountGuard {
        name: account_name.clone(),
    };
    common::create_account(
        &client,
        &account_name,
        json!({
            "accountId": "111111111111",
            "allowedNamespaces": {"names": [ns.name]},
            "allowedPolicyArns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
        }),
    )
    .await;
    let policy = InstalledPolicy::install(&client, &label).await;
    let spec = json!({"accountRef": account_name, "policies": {"managed": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]}});
    let api: Api<CrossAccountRole> = Api::namespaced(client.clone(), &ns.name);
    // Stored while allowed (the policy may not be in effect yet; it allows this either way).
    api.create(
        &PostParams::default(),
        &role(&ns.name, "kept", spec.clone()),
    )
    .await
    .expect("a valid object is stored");

    // The admin narrows the account: the policy is no longer allowed.
    Api::<AwsAccount>::all(client.clone())
        .patch(
            &account_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"allowedPolicyArns": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]}})),
        )
        .await
        .unwrap();
    // A spec write is now refused, once the policy sees the narrowed account.
    common::poll(
        "a spec write to be refused",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let pp = PatchParams {
                    dry_run: true,
                    ..Default::default()
                };
                let patch = Patch::Merge(json!({"spec": {"description": "edited"}}));
                match api.patch("kept", &pp, &patch).await {
                    Err(e) if e.to_string().contains("spec.policies.managed[0]") => Ok(()),
                    other => Err(format!("{:?}", other.map(|_| ()))),
                }
            }
        },
    )
    .await;
    // The operator's own writes go through: its finalizer is added and removed, and the object
    // is deleted.
    let finalizer = json!({"metadata": {"finalizers": ["crossaccount.io/cleanup"]}});
    api.patch("kept", &PatchParams::default(), &Patch::Merge(finalizer))
        .await
        .unwrap_or_else(|e| panic!("the finalizer is refused by {}: {e}", policy.name));
    api.delete("kept", &DeleteParams::default()).await.unwrap();
    let release = json!({"metadata": {"finalizers": null}});
    api.patch("kept", &PatchParams::default(), &Patch::Merge(release))
        .await
        .unwrap_or_else(|e| panic!("releasing the finalizer is refused: {e}"));
    common::poll("the object to go", Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            match api.get_opt("kept").await {
                Ok(None) => Ok(()),
                other => Err(format!(
                    "{:?}",
                    other.map(|o| o.map(|o| o.metadata.finalizers))
                )),
            }
        }
    })
    .await;
}
