//! IAM as AWS enforces it, against the operator binary, the local apiserver and moto (with IAM
//! enforcement, behind the shared AWS proxy): grants that scale to a hundred roles for one user
//! (who, with its own keys, assumes each and no other), the console's session revocation kept and
//! followed, revocation on request, principals with paths and deleted ones, grants to groups
//! (whose members, and no one else, assume the role), tags and policies
//! others own, a role held by an instance profile, and session tags.
//!
//! Principals that are granted roles are users the test makes with the test bed's administrator
//! of the source account (`SOURCE_ADMIN_*` in `target/devenv/env`), never the operator's identity.
//! Every test takes `common::serial()`.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{Operator, TestNamespace};
use kube::{Api, ResourceExt, api::PatchParams};
use serde_json::json;

const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
const CONVERGE: Duration = Duration::from_secs(60);
const GONE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Principals of the source account, made by the test bed's administrator.
// ---------------------------------------------------------------------------------------------

async fn admin_iam() -> aws_sdk_iam::Client {
    common::source_admin_iam().await
}

/// A user of the source account with keys of its own; deleted (with whatever is attached to it)
/// when dropped.
struct SourceUser {
    name: String,
    credentials: aws_credential_types::Credentials,
}

impl SourceUser {
    async fn create(prefix: &str, path: &str) -> Self {
        let iam = admin_iam().await;
        let name = common::unique(prefix);
        iam.create_user()
            .user_name(&name)
            .path(path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateUser {name}: {e:?}"));
        let key = iam
            .create_access_key()
            .user_name(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateAccessKey {name}: {e:?}"));
        let key = key.access_key().expect("an access key");
        Self {
            credentials: aws_credential_types::Credentials::new(
                key.access_key_id(),
                key.secret_access_key(),
                None,
                None,
                "test-user",
            ),
            name,
        }
    }

    /// Assumes `role_arn` with the user's own keys, through the shared AWS proxy (moto alone
    /// evaluates neither the role's trust policy nor the conditions of the user's policies; the
    /// proxy does, as AWS does); the error code when refused.
    async fn assume(&self, role_arn: &str) -> Result<(), String> {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(common::shared_proxy().endpoint())
            .credentials_provider(self.credentials.clone())
            .load()
            .await;
        aws_sdk_sts::Client::new(&config)
            .assume_role()
            .role_arn(role_arn)
            .role_session_name("grantee")
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                use aws_sdk_sts::error::ProvideErrorMetadata;
                e.code().unwrap_or("no code").to_owned()
            })
    }

    fn arn(&self, path: &str) -> String {
        format!(
            "arn:aws:iam::{}:user{path}{}",
            common::env("SOURCE_ACCOUNT_ID"),
            self.name
        )
    }
}

/// Detaches, deletes the keys and inline policies of, and deletes user `name`.
async fn delete_user(name: &str) {
    let iam = admin_iam().await;
    if let Ok(out) = iam
        .list_attached_user_policies()
        .user_name(name)
        .send()
        .await
    {
        for policy in out.attached_policies() {
            let _ = iam
                .detach_user_policy()
                .user_name(name)
                .policy_arn(policy.policy_arn().unwrap_or_default())
                .send()
                .await;
        }
    }
    if let Ok(out) = iam.list_access_keys().user_name(name).send().await {
        for key in out.access_key_metadata() {
            let _ = iam
                .delete_access_key()
                .user_name(name)
                .access_key_id(key.access_key_id().unwrap_or_default())
                .send()
                .await;
        }
    }
    let _ = iam.delete_user().user_name(name).send().await;
}

impl Drop for SourceUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        common::on_own_runtime(async move { delete_user(&name).await });
    }
}

async fn wait_ready(client: &kube::Client, namespace: &str, name: &str) {
    common::wait_for_condition(client, namespace, name, "Ready", "True", None, CONVERGE).await;
}

// ---------------------------------------------------------------------------------------------
// Grants that scale.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hundred_roles_granted_to_one_user_each_work_and_no_other_does() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "grants").await;
    let user = SourceUser::create("grantee", "/").await;
    let prefix = common::unique("Granted");
    let names: Vec<String> = (0..100).map(|i| format!("{prefix}-{i:03}")).collect();
    let _roles: Vec<_> = names
        .iter()
        .map(|n| common::TargetRoleGuard::new(n))
        .collect();
    for (i, role_name) in names.iter().enumerate() {
        common::create_role(
            &client,
            &ns.name,
            &format!("r{i:03}"),
            json!({
                "accountRef": common::account_name(),
                "roleName": role_name,
                "policies": {"managed": [S3_READ]},
                "grants": [{"user": user.name}],
            }),
        )
        .await;
    }
    // And one role that does not grant the user.
    let other = common::unique("NotGranted");
    let _other = common::TargetRoleGuard::new(&other);
    common::create_role(
        &client,
        &ns.name,
        "other",
        json!({"accountRef": common::account_name(), "roleName": other, "policies": {"managed": [S3_READ]}}),
    )
    .await;
    let api = common::roles_api(&client, &ns.name);
    let outcome = common::try_poll(Duration::from_secs(240), || {
        let api = api.clone();
        async move {
            let list = api
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let not_ready: Vec<String> = list
                .items
                .iter()
                .filter(|cr| common::role_condition(cr, "Ready").is_none_or(|c| c.status != "True"))
                .map(common::describe_role)
                .collect();
            match not_ready.first() {
                None if list.items.len() == 101 => Ok(()),
                None => Err(format!("{} CrossAccountRoles", list.items.len())),
                Some(first) => Err(format!("{} not Ready, e.g. {first}", not_ready.len())),
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        common::fail_with_operator_log("the hundred CrossAccountRoles did not become Ready", &last);
    }

    // The user, with its own keys, assumes each granted role, and not the other one.
    let mark = common::shared_proxy().mark();
    let mut refused = Vec::new();
    for role_name in &names {
        if let Err(code) = user.assume(&common::role_arn(role_name)).await {
            refused.push(format!("{role_name}: {code}"));
        }
    }
    assert!(refused.is_empty(), "granted roles refused: {refused:?}");
    assert!(
        user.assume(&common::role_arn(&other)).await.is_err(),
        "the user assumed a role nobody granted it"
    );
    // Each judged on the roles' trust and the grant policy's condition, none let through
    // unjudged; the other one refused by the proxy as AWS refuses it.
    let assumes: Vec<_> = common::shared_proxy()
        .requests_since(&mark)
        .into_iter()
        .filter(|r| r.is("sts", "AssumeRole") && r.param("RoleSessionName") == Some("grantee"))
        .collect();
    assert_eq!(assumes.len(), 101);
    let unjudged: Vec<String> = assumes
        .iter()
        .filter(|r| r.unjudged.is_some())
        .map(|r| r.summary())
        .collect();
    assert!(unjudged.is_empty(), "{unjudged:?}");
    assert_eq!(
        assumes.last().map(|r| r.outcome),
        Some(common::aws_proxy::Outcome::Refused("AccessDenied"))
    );
    // Within the quotas: one managed policy attached, no inline policy at all.
    let source = admin_iam().await;
    let grant_policies = common::user_grant_policies(&source, &user.name).await;
    assert_eq!(
        grant_policies,
        BTreeSet::from([format!(
            "crossaccount-{}-user-{}",
            common::CLUSTER_NAME,
            user.name
        )]),
        "one grant policy for a hundred grants"
    );
    assert!(common::user_policies(&source, &user.name).await.is_empty());

    for i in 0..100 {
        let _ = api.delete(&format!("r{i:03}"), &Default::default()).await;
    }
    common::delete_role_and_wait(&client, &ns.name, "other", GONE).await;
    for i in 0..100 {
        common::wait_until_role_gone(&client, &ns.name, &format!("r{i:03}"), GONE).await;
    }
    assert!(
        user.assume(&common::role_arn(&names[0])).await.is_err(),
        "a deleted role is not assumed any more"
    );
}

#[tokio::test]
async fn a_user_with_a_path_is_trusted_by_its_real_arn() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "pathed").await;
    let user = SourceUser::create("pathed", "/team/").await;
    let role_name = common::unique("Pathed");
    let _role = common::TargetRoleGuard::new(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({"accountRef": common::account_name(), "roleName": role_name, "grants": [{"user": user.name}]}),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let target = common::target_iam().await;
    let role = common::get_iam_role(&target, &role_name).await.unwrap();
    let trust = common::policy_json(role.assume_role_policy_document().unwrap_or_default());
    assert!(
        trust.to_string().contains(&user.arn("/team/")),
        "the trust policy names {}: {trust}",
        user.arn("/team/")
    );
    user.assume(&common::role_arn(&role_name))
        .await
        .expect("the user assumes the role");
    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
}

#[tokio::test]
async fn a_deleted_principal_is_named_its_grant_revoked_and_the_rest_still_applies() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "deleted").await;
    let user = SourceUser::create("leaver", "/").await;
    let role_name = common::unique("Deleted");
    let _role = common::TargetRoleGuard::new(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": common::account_name(),
            "roleName": role_name,
            "grants": [{"user": user.name}, {"user": "devTest"}],
        }),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    // The user leaves the company: deleted (IAM now shows its unique ID in the trust policy).
    delete_user(&user.name).await;
    // A change to the role at the same time still applies.
    common::patch_role_spec(&client, &ns.name, "app", json!({"tags": {"team": "a"}})).await;
    let cr = common::wait_for_condition(
        &client,
        &ns.name,
        "app",
        "RoleSynced",
        "False",
        Some("PrincipalNotFound"),
        CONVERGE,
    )
    .await;
    let message = common::role_condition(&cr, "RoleSynced")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains(&format!("user {}", user.name)),
        "the condition names the deleted user: {message}"
    );
    let target = common::target_iam().await;
    let source = common::source_iam().await;
    let tags = common::role_tags(&target, &role_name).await;
    assert_eq!(tags.get("team").map(String::as_str), Some("a"), "{tags:?}");
    assert!(
        !tags.contains_key(&common::grant_tag(&user.name)),
        "the deleted user's grant tag is removed: {tags:?}"
    );
    assert!(
        common::user_granted(
            &source,
            &target,
            common::CLUSTER_NAME,
            "devTest",
            &role_name
        )
        .await,
        "the other grant stays"
    );
    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
}

/// A group of the source account; its members are taken out, its policies detached and it is
/// deleted when dropped (before its members: declare it after them).
struct SourceGroup {
    name: String,
}

impl SourceGroup {
    async fn create(prefix: &str, members: &[&SourceUser]) -> Self {
        let iam = admin_iam().await;
        let name = common::unique(prefix);
        iam.create_group()
            .group_name(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateGroup {name}: {e:?}"));
        for user in members {
            iam.add_user_to_group()
                .group_name(&name)
                .user_name(&user.name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("AddUserToGroup {name} {}: {e:?}", user.name));
        }
        Self { name }
    }

    /// The managed policies attached to the group, by name.
    async fn attached(&self) -> BTreeSet<String> {
        let out = admin_iam()
            .await
            .list_attached_group_policies()
            .group_name(&self.name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListAttachedGroupPolicies {}: {e:?}", self.name));
        out.attached_policies()
            .iter()
            .filter_map(|p| p.policy_name().map(str::to_owned))
            .collect()
    }
}

impl Drop for SourceGroup {
    fn drop(&mut self) {
        let name = self.name.clone();
        common::on_own_runtime(async move {
            let iam = admin_iam().await;
            if let Ok(out) = iam.get_group().group_name(&name).send().await {
                for user in out.users() {
                    let _ = iam
                        .remove_user_from_group()
                        .group_name(&name)
                        .user_name(user.user_name())
                        .send()
                        .await;
                }
            }
            if let Ok(out) = iam
                .list_attached_group_policies()
                .group_name(&name)
                .send()
                .await
            {
                for policy in out.attached_policies() {
                    let _ = iam
                        .detach_group_policy()
                        .group_name(&name)
                        .policy_arn(policy.policy_arn().unwrap_or_default())
                        .send()
                        .await;
                }
            }
            let _ = iam.delete_group().group_name(&name).send().await;
        });
    }
}

/// The role's tags and trust policy, read now.
async fn tags_and_trust(role_name: &str) -> (std::collections::BTreeMap<String, String>, String) {
    let target = common::target_iam().await;
    let role = common::get_iam_role(&target, role_name).await.unwrap();
    let trust = common::policy_json(role.assume_role_policy_document().unwrap_or_default());
    (
        common::role_tags(&target, role_name).await,
        trust.to_string(),
    )
}

#[tokio::test]
async fn a_granted_groups_members_assume_the_role_and_no_one_else_until_it_is_revoked() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "groups").await;
    let source = common::env("SOURCE_ACCOUNT_ID");
    // An AwsAccount that lets this namespace grant groups (the shared one grants users and
    // roles only).
    let account = common::AccountGuard {
        name: common::unique("groups"),
    };
    common::create_account(
        &client,
        &account.name,
        json!({
            "accountId": common::env("TARGET_ACCOUNT_ID"),
            "managementRoleArn": common::env("MANAGEMENT_ROLE_ARN"),
            "allowedNamespaces": {"names": [ns.name]},
            "allowedGrants": [{
                "namespaces": {"names": [ns.name]},
                "principals": [format!("arn:aws:iam::{source}:group/developers-*")],
            }],
        }),
    )
    .await;
    common::wait_for_account_ready(&client, &account.name, CONVERGE).await;
    let member = SourceUser::create("member", "/").await;
    let outsider = SourceUser::create("outsider", "/").await;
    let group = SourceGroup::create("developers", &[&member]).await;
    let role_name = common::unique("Grouped");
    let _role = common::TargetRoleGuard::new(&role_name);
    let role_arn = common::role_arn(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({"accountRef": account.name, "roleName": role_name, "grants": [{"group": group.name}]}),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let policy = format!("crossaccount-{}-group-{}", common::CLUSTER_NAME, group.name);
    assert_eq!(group.attached().await, BTreeSet::from([policy.clone()]));
    let (tags, trust) = tags_and_trust(&role_name).await;
    assert_eq!(
        tags.get(&format!("crossaccount.io/grant/group/{}", group.name)),
        Some(&common::CLUSTER_NAME.to_owned()),
        "{tags:?}"
    );
    assert!(
        trust.contains(&format!("arn:aws:iam::{source}:root")) && !trust.contains(":group/"),
        "the source account's users are trusted, the group is not named: {trust}"
    );

    // The member, with its own keys and through its group's policy, assumes the role; a user
    // outside the group does not (judged by the proxy as AWS judges it).
    let mark = common::shared_proxy().mark();
    member
        .assume(&role_arn)
        .await
        .expect("the member assumes the role");
    assert_eq!(
        outsider.assume(&role_arn).await,
        Err("AccessDenied".to_owned()),
        "a user outside the group"
    );
    let unjudged: Vec<String> = common::shared_proxy()
        .requests_since(&mark)
        .into_iter()
        .filter(|r| r.is("sts", "AssumeRole") && r.unjudged.is_some())
        .map(|r| r.summary())
        .collect();
    assert!(unjudged.is_empty(), "{unjudged:?}");

    // The grant removed from the spec: the tag and the account's trust go.
    common::patch_role_spec(&client, &ns.name, "app", json!({"grants": []})).await;
    let revoked = common::try_poll(CONVERGE, || async {
        let (tags, trust) = tags_and_trust(&role_name).await;
        let left: Vec<&String> = tags.keys().filter(|k| k.contains("/grant/")).collect();
        if left.is_empty() && !trust.contains(":root") {
            Ok(())
        } else {
            Err(format!("grant tags {left:?}, trust {trust}"))
        }
    })
    .await;
    if let Err(last) = revoked {
        common::fail_with_operator_log("the group's grant was not revoked", &last);
    }
    assert_eq!(
        member.assume(&role_arn).await,
        Err("AccessDenied".to_owned()),
        "the member after the revocation"
    );
    let cr = common::roles_api(&client, &ns.name)
        .get("app")
        .await
        .unwrap();
    assert!(
        cr.status.as_ref().unwrap().granted_principals.is_empty(),
        "{}",
        common::describe_role(&cr)
    );

    // Deleted: the role goes; in the source account the group holds nothing of this object
    // (no inline policy; the cluster's grant policy, which allows only roles tagged for the
    // group, stays attached as it does for users and roles).
    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
    let target = common::target_iam().await;
    assert!(common::get_iam_role(&target, &role_name).await.is_none());
    let inline = admin_iam()
        .await
        .list_group_policies()
        .group_name(&group.name)
        .send()
        .await
        .expect("ListGroupPolicies");
    assert!(inline.policy_names().is_empty(), "{inline:?}");
    assert_eq!(group.attached().await, BTreeSet::from([policy]));
}

// ---------------------------------------------------------------------------------------------
// Session revocation.
// ---------------------------------------------------------------------------------------------

/// The Secret's access key ID and issue time.
async fn held(client: &kube::Client, namespace: &str, secret: &str) -> (String, jiff::Timestamp) {
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace)
        .get(secret)
        .await
        .expect("the Secret exists");
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get("AWS_ACCESS_KEY_ID"))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default();
    let issued = secret
        .annotations()
        .get("crossaccount.io/issued-at")
        .and_then(|t| t.parse().ok())
        .expect("the Secret records when its credentials were issued");
    (key, issued)
}

async fn revocation_of(role_name: &str) -> Option<serde_json::Value> {
    common::inline_policies(&common::target_iam().await, role_name)
        .await
        .remove("AWSRevokeOlderSessions")
}

#[tokio::test]
async fn the_consoles_revocation_survives_resyncs_and_older_credentials_are_replaced() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "revoke").await;
    let role_name = common::unique("Revoked");
    let _role = common::TargetRoleGuard::new(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({"accountRef": common::account_name(), "roleName": role_name, "credentials": {}}),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let (first_key, first_issued) = held(&client, &ns.name, "app-aws").await;

    // "Revoke active sessions" in the console, a second after the credentials were issued.
    let revoked_at = jiff::Timestamp::now().max(first_issued + jiff::SignedDuration::from_secs(1));
    let stamp = revoked_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let revoked_at: jiff::Timestamp = stamp.parse().unwrap();
    let console = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Action": ["*"], "Resource": ["*"],
        "Condition": {"DateLessThan": {"aws:TokenIssueTime": stamp}},
    }]});
    common::target_iam()
        .await
        .put_role_policy()
        .role_name(&role_name)
        .policy_name("AWSRevokeOlderSessions")
        .policy_document(console.to_string())
        .send()
        .await
        .expect("revoke sessions as the console does");

    // Within a resync (3 s here) the Secret holds credentials issued after the revocation.
    let outcome = common::try_poll(CONVERGE, || {
        let client = client.clone();
        let ns = ns.name.clone();
        let first_key = first_key.clone();
        async move {
            let (key, issued) = held(&client, &ns, "app-aws").await;
            if key != first_key && issued >= revoked_at {
                Ok(())
            } else {
                Err(format!("key changed {}, issued {issued}", key != first_key))
            }
        }
    })
    .await;
    if let Err(last) = outcome {
        common::fail_with_operator_log("the revoked credentials were not replaced", &last);
    }
    let cr = common::roles_api(&client, &ns.name)
        .get("app")
        .await
        .unwrap();
    assert_eq!(
        cr.status
            .as_ref()
            .and_then(|s| s.sessions_revoked_before.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        Some(stamp.clone()),
        "status.sessionsRevokedBefore"
    );
    // The policy survives resyncs: wait for three more rounds of reads of the role.
    let mark = common::shared_proxy().mark();
    common::wait_for_role_reads(&mark, std::slice::from_ref(&role_name), 3, CONVERGE).await;
    assert_eq!(
        revocation_of(&role_name).await,
        Some(console),
        "the console's policy is kept as it is"
    );
    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
}

#[tokio::test]
async fn revoking_by_annotation_writes_the_consoles_policy_and_reissues() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "revoke-now").await;
    let role_name = common::unique("RevokeNow");
    let _role = common::TargetRoleGuard::new(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({"accountRef": common::account_name(), "roleName": role_name, "credentials": {}}),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let (first_key, _) = held(&client, &ns.name, "app-aws").await;
    common::roles_api(&client, &ns.name)
        .patch(
            "app",
            &PatchParams::apply("incident-responder").force(),
            &kube::api::Patch::Apply(json!({
                "apiVersion": "crossaccount.io/v1alpha1",
                "kind": "CrossAccountRole",
                "metadata": {"annotations": {"crossaccount.io/revoke-sessions": "now"}},
            })),
        )
        .await
        .expect("annotate");
    let outcome = common::try_poll(CONVERGE, || {
        let client = client.clone();
        let ns = ns.name.clone();
        let first_key = first_key.clone();
        let role_name = role_name.clone();
        async move {
            let policy = revocation_of(&role_name).await;
            let (key, _) = held(&client, &ns, "app-aws").await;
            match policy {
                Some(policy) if key != first_key => Ok(policy),
                policy => Err(format!(
                    "policy {policy:?}, key changed {}",
                    key != first_key
                )),
            }
        }
    })
    .await;
    let policy = outcome.unwrap_or_else(|last| {
        common::fail_with_operator_log("the annotation revoked nothing", &last)
    });
    assert_eq!(
        policy["Statement"][0]["Effect"], "Deny",
        "the console's policy: {policy}"
    );
    let cr = common::roles_api(&client, &ns.name)
        .get("app")
        .await
        .unwrap();
    let before = cr
        .status
        .as_ref()
        .and_then(|s| s.sessions_revoked_before.clone())
        .expect("status.sessionsRevokedBefore");
    let (_, issued) = held(&client, &ns.name, "app-aws").await;
    assert!(
        issued >= before.0,
        "the new credentials ({issued}) are issued after {}",
        before.0
    );
    // Events are published from a queue of their own, moments after the status.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns.name);
    common::poll("an event that says who asked", GONE, || async {
        let listed = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        listed
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("SessionsRevoked")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("incident-responder"))
            })
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "{} events, none SessionsRevoked naming incident-responder",
                    listed.items.len()
                )
            })
    })
    .await;
    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
}

// ---------------------------------------------------------------------------------------------
// Coexistence with others' tags and instance profiles.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tags_others_manage_are_left_alone_and_others_are_removed() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "coexist").await;
    let account = common::AccountGuard {
        name: common::unique("coexist"),
    };
    common::create_account(
        &client,
        &account.name,
        json!({
            "accountId": common::env("TARGET_ACCOUNT_ID"),
            "managementRoleArn": common::env("MANAGEMENT_ROLE_ARN"),
            "allowedNamespaces": {"names": [ns.name]},
            "allowedPolicyArns": ["arn:aws:iam::aws:policy/*"],
            "ignoredTagKeys": ["cost-*"],
        }),
    )
    .await;
    common::wait_for_account_ready(&client, &account.name, CONVERGE).await;
    let role_name = common::unique("Coexist");
    let _role = common::TargetRoleGuard::new(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({"accountRef": account.name, "roleName": role_name, "tags": {"team": "a"}}),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let target = common::target_iam().await;
    target
        .tag_role()
        .role_name(&role_name)
        .tags(
            aws_sdk_iam::types::Tag::builder()
                .key("cost-center")
                .value("42")
                .build()
                .unwrap(),
        )
        .tags(
            aws_sdk_iam::types::Tag::builder()
                .key("stray")
                .value("x")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("tag the role as other tools would");
    let outcome = common::try_poll(CONVERGE, || {
        let target = target.clone();
        let role_name = role_name.clone();
        async move {
            let tags = common::role_tags(&target, &role_name).await;
            if !tags.contains_key("stray") {
                Ok(tags)
            } else {
                Err(format!("{tags:?}"))
            }
        }
    })
    .await;
    let tags = outcome.unwrap_or_else(|last| {
        common::fail_with_operator_log("the stray tag was not removed", &last)
    });
    assert_eq!(
        tags.get("cost-center").map(String::as_str),
        Some("42"),
        "an ignored key stays: {tags:?}"
    );
    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
}

#[tokio::test]
async fn a_role_in_an_instance_profile_is_not_deleted_until_it_leaves_it() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "profile").await;
    let role_name = common::unique("Profiled");
    let _role = common::TargetRoleGuard::new(&role_name);
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({"accountRef": common::account_name(), "roleName": role_name, "policies": {"managed": [S3_READ]}}),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let target = common::target_iam().await;
    let profile = common::unique("web");
    target
        .create_instance_profile()
        .instance_profile_name(&profile)
        .send()
        .await
        .expect("create an instance profile");
    target
        .add_role_to_instance_profile()
        .instance_profile_name(&profile)
        .role_name(&role_name)
        .send()
        .await
        .expect("put the role in it");
    common::roles_api(&client, &ns.name)
        .delete("app", &Default::default())
        .await
        .expect("delete");
    let cr = common::poll("the deletion to say why it waits", CONVERGE, || {
        let client = client.clone();
        let ns = ns.name.clone();
        let profile = profile.clone();
        async move {
            let cr = common::roles_api(&client, &ns)
                .get("app")
                .await
                .map_err(|e| e.to_string())?;
            if common::role_condition(&cr, "Ready")
                .is_some_and(|c| c.status == "False" && c.message.contains(&profile))
            {
                Ok(cr)
            } else {
                Err(common::describe_role(&cr))
            }
        }
    })
    .await;
    let message = common::role_condition(&cr, "Ready")
        .unwrap()
        .message
        .clone();
    assert!(message.contains("deletionPolicy: Retain"), "{message}");
    target
        .remove_role_from_instance_profile()
        .instance_profile_name(&profile)
        .role_name(&role_name)
        .send()
        .await
        .expect("take the role out");
    let _ = target
        .delete_instance_profile()
        .instance_profile_name(&profile)
        .send()
        .await;
    common::wait_until_role_gone(&client, &ns.name, "app", GONE).await;
    assert!(common::get_iam_role(&target, &role_name).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Session tags.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_carry_the_objects_tags_transitively_and_allowed_tenant_tags() {
    let _serial = common::serial().await;
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "tags").await;
    let account = common::AccountGuard {
        name: common::unique("abac"),
    };
    common::create_account(
        &client,
        &account.name,
        json!({
            "accountId": common::env("TARGET_ACCOUNT_ID"),
            "managementRoleArn": common::env("MANAGEMENT_ROLE_ARN"),
            "allowedNamespaces": {"names": [ns.name]},
            "allowedSessionTagKeys": ["team", "project-*"],
        }),
    )
    .await;
    common::wait_for_account_ready(&client, &account.name, CONVERGE).await;
    let role_name = common::unique("Tagged");
    let _role = common::TargetRoleGuard::new(&role_name);
    let mark = common::shared_proxy().mark();
    common::create_role(
        &client,
        &ns.name,
        "app",
        json!({
            "accountRef": account.name,
            "roleName": role_name,
            "credentials": {"sessionTags": {"team": "payments"}},
        }),
    )
    .await;
    wait_ready(&client, &ns.name, "app").await;
    let mint = common::shared_proxy()
        .requests_since(&mark)
        .into_iter()
        .find(|r| {
            r.is("sts", "AssumeRole") && r.param("RoleArn") == Some(&common::role_arn(&role_name))
        })
        .unwrap_or_else(|| {
            let log: Vec<String> = common::shared_proxy()
                .requests_since(&mark)
                .iter()
                .map(|r| r.summary())
                .collect();
            panic!("the mint reached AWS: {log:#?}")
        });
    // Judged as AWS judges it (trust with the external ID, sts:TagSession and
    // sts:SetSourceIdentity, the operator's policy) and allowed.
    assert!(
        mint.succeeded() && mint.unjudged.is_none(),
        "{}",
        mint.summary()
    );
    let mut tags = std::collections::BTreeMap::new();
    for n in 1..=10 {
        if let (Some(k), Some(v)) = (
            mint.param(&format!("Tags.member.{n}.Key")),
            mint.param(&format!("Tags.member.{n}.Value")),
        ) {
            tags.insert(k.to_owned(), v.to_owned());
        }
    }
    assert_eq!(
        tags.get("crossaccount.io/namespace"),
        Some(&ns.name),
        "{tags:?}"
    );
    assert_eq!(
        tags.get("crossaccount.io/name").map(String::as_str),
        Some("app")
    );
    assert_eq!(tags.get("team").map(String::as_str), Some("payments"));
    let transitive: BTreeSet<&str> = (1..=10)
        .filter_map(|n| mint.param(&format!("TransitiveTagKeys.member.{n}")))
        .collect();
    assert_eq!(
        transitive,
        BTreeSet::from([
            "crossaccount.io/cluster",
            "crossaccount.io/name",
            "crossaccount.io/namespace"
        ]),
        "the object's tags are transitive, the tenant's are not"
    );
    // A key the account does not allow is refused, naming it.
    common::create_role(
        &client,
        &ns.name,
        "refused",
        json!({
            "accountRef": account.name,
            "credentials": {"sessionTags": {"cost": "x"}},
        }),
    )
    .await;
    let cr = common::wait_for_condition(
        &client,
        &ns.name,
        "refused",
        "Ready",
        "False",
        Some("NotPermitted"),
        CONVERGE,
    )
    .await;
    assert!(
        common::role_condition(&cr, "Ready")
            .unwrap()
            .message
            .contains("spec.credentials.sessionTags[cost]")
    );
    common::delete_role_and_wait(&client, &ns.name, "refused", GONE).await;
    common::delete_role_and_wait(&client, &ns.name, "app", GONE).await;
}
