//! Grants: the right of a source-account principal to assume roles, kept in customer managed
//! policies shared by every object that grants that principal (see [`GrantScope`]).
//!
//! A grant or revocation reads the principal's grant policies and writes them back, under a lock
//! per principal, so that two objects granting the same user at once never lose each other's
//! role. A policy holds roles up to IAM's managed policy size (`PolicySizeQuota`, 6,144
//! characters without whitespace); beyond that a new policy is attached, within the quota of
//! managed policies attached per user or role (`AttachedPoliciesPerUserQuota`,
//! `AttachedPoliciesPerRoleQuota`, 10 by default), which is checked before anything is written.
//! An update is a new default version; IAM keeps five, so the oldest other version goes first.
//! See IAM's quotas: <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html>.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{AccountApi, Arn, AwsError, AwsErrorKind, Change, GrantScope, Principal, policy};

/// IAM's defaults, when GetAccountSummary does not say.
const DEFAULT_POLICY_SIZE: i64 = 6144;
const DEFAULT_ATTACHED_PER_PRINCIPAL: i64 = 10;
/// Versions IAM keeps of one managed policy.
const MAX_VERSIONS: usize = 5;
/// Statement ID of the grant policies.
const SID: &str = "CrossAccountGrants";

/// One of a principal's grant policies and the roles it allows.
#[derive(Clone, Debug)]
struct Shard {
    name: String,
    arn: String,
    roles: BTreeSet<String>,
}

/// The grant policy document allowing `roles`.
pub(crate) fn document(roles: &BTreeSet<String>) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Sid": SID, "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": roles.iter().collect::<Vec<_>>()}],
    })
}

/// The roles a grant policy document allows.
fn roles_of(document: &Value) -> BTreeSet<String> {
    let statements: Vec<&Value> = match &document["Statement"] {
        Value::Array(list) => list.iter().collect(),
        single => vec![single],
    };
    statements
        .into_iter()
        .filter(|s| s["Sid"] == SID)
        .flat_map(|s| match &s["Resource"] {
            Value::String(arn) => vec![arn.clone()],
            Value::Array(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The principal's grant policies, or `None` when the principal does not exist.
async fn shards<A: AccountApi>(
    account: &A,
    principal: &Principal,
    scope: &GrantScope,
) -> Result<Option<Vec<Shard>>, AwsError> {
    let Some(attached) = account.attached_policies(principal, &scope.path()).await? else {
        return Ok(None);
    };
    let mut shards = Vec::new();
    for policy in attached {
        let roles = match account.policy_document(&policy.arn).await? {
            Some(document) => roles_of(&document),
            None => continue,
        };
        shards.push(Shard {
            name: policy.name,
            arn: policy.arn,
            roles,
        });
    }
    shards.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(shards))
}

/// The roles `principal` is granted through its grant policies (`None`: no such principal).
pub(crate) async fn granted_roles<A: AccountApi>(
    account: &A,
    principal: &Principal,
    scope: &GrantScope,
) -> Result<Option<BTreeSet<String>>, AwsError> {
    Ok(shards(account, principal, scope)
        .await?
        .map(|shards| shards.into_iter().flat_map(|s| s.roles).collect()))
}

fn no_principal(principal: &Principal) -> AwsError {
    AwsError {
        service: "iam",
        operation: "GrantAssumeRole",
        kind: AwsErrorKind::NotFound,
        code: Some("NoSuchEntity".into()),
        message: format!(
            "{} does not exist in the source account",
            principal.describe()
        )
        .into(),
        request_id: None,
        source: None,
    }
}

/// Lets `principal` assume `role_arn`. Returns the IAM writes made (none when it already may).
pub(crate) async fn grant<A: AccountApi>(
    account: &A,
    principal: &Principal,
    role_arn: &str,
    scope: &GrantScope,
) -> (Vec<Change>, Result<(), AwsError>) {
    let lock = account.grant_lock(principal);
    let _held = lock.lock().await;
    let mut writes = Vec::new();
    let result = grant_locked(account, principal, role_arn, scope, &mut writes).await;
    (writes, result)
}

async fn grant_locked<A: AccountApi>(
    account: &A,
    principal: &Principal,
    role_arn: &str,
    scope: &GrantScope,
    writes: &mut Vec<Change>,
) -> Result<(), AwsError> {
    let shards = shards(account, principal, scope)
        .await?
        .ok_or_else(|| no_principal(principal))?;
    if shards.iter().any(|s| s.roles.contains(role_arn)) {
        return Ok(());
    }
    let size_limit = account
        .account_quota("PolicySizeQuota")
        .await?
        .unwrap_or(DEFAULT_POLICY_SIZE) as usize;
    for shard in &shards {
        let mut roles = shard.roles.clone();
        roles.insert(role_arn.to_owned());
        let document = document(&roles);
        if policy::size_without_whitespace(&policy::to_text(&document)) <= size_limit {
            return update(account, &shard.arn, document, writes).await;
        }
    }
    // A new grant policy: within the quota of managed policies attached to the principal.
    let (quota_name, what) = match principal {
        Principal::User(_) => ("AttachedPoliciesPerUserQuota", "user"),
        Principal::Role(_) => ("AttachedPoliciesPerRoleQuota", "role"),
    };
    let quota = account
        .account_quota(quota_name)
        .await?
        .unwrap_or(DEFAULT_ATTACHED_PER_PRINCIPAL);
    let attached = account
        .attached_policies(principal, "/")
        .await?
        .map_or(0, |all| all.len()) as i64;
    if attached >= quota {
        return Err(AwsError {
            service: "iam",
            operation: "GrantAssumeRole",
            kind: AwsErrorKind::LimitExceeded,
            code: Some("LimitExceeded".into()),
            message: format!(
                "granting {} needs another managed policy attached to it, and it has {attached}: IAM allows {quota} per {what} ({quota_name})",
                principal.describe()
            )
            .into(),
            request_id: None,
            source: None,
        });
    }
    let used: BTreeSet<String> = shards.iter().map(|s| s.name.clone()).collect();
    let name = (0..)
        .map(|n| scope.policy_name(principal, n))
        .find(|name| !used.contains(name))
        .expect("a free name");
    let document = document(&BTreeSet::from([role_arn.to_owned()]));
    let path = scope.path();
    let arn = match account.create_policy(&name, &path, &document).await {
        Ok(arn) => {
            writes.push(Change::CreatePolicy {
                name,
                path,
                document,
            });
            arn
        }
        // Left unattached by a grant that failed between creating and attaching it: it is ours
        // (the path is this cluster's), so it is brought up to date and attached.
        Err(e) if e.kind == AwsErrorKind::AlreadyExists => {
            let caller = account.caller_arn().await?;
            let arn = Arn::parse(&caller)
                .map(|c| Arn::iam(c.partition(), c.account(), &format!("policy{path}{name}")))
                .ok_or(e)?
                .to_string();
            update(account, &arn, document, writes).await?;
            arn
        }
        Err(e) => return Err(e),
    };
    let attach = Change::AttachPrincipalPolicy {
        principal: principal.clone(),
        arn,
    };
    account.apply(&attach).await?;
    writes.push(attach);
    Ok(())
}

/// A new default version of `arn` (after making room among IAM's five).
async fn update<A: AccountApi>(
    account: &A,
    arn: &str,
    document: Value,
    writes: &mut Vec<Change>,
) -> Result<(), AwsError> {
    let versions = account.policy_versions(arn).await?;
    if versions.len() >= MAX_VERSIONS
        && let Some(oldest) = versions.iter().find(|v| !v.default)
    {
        let delete = Change::DeletePolicyVersion {
            arn: arn.to_owned(),
            version: oldest.id.clone(),
        };
        account.apply(&delete).await?;
        writes.push(delete);
    }
    let create = Change::CreatePolicyVersion {
        arn: arn.to_owned(),
        document,
    };
    account.apply(&create).await?;
    writes.push(create);
    Ok(())
}

/// `principal` may no longer assume `role_arn`, nor through the inline grant policy
/// `legacy_policy` an earlier version put on it. Returns the IAM writes made: none when it could
/// not anyway or the principal is gone (what is not there is read, never blindly deleted).
pub(crate) async fn revoke<A: AccountApi>(
    account: &A,
    principal: &Principal,
    role_arn: &str,
    scope: &GrantScope,
    legacy_policy: &str,
) -> (Vec<Change>, Result<(), AwsError>) {
    let lock = account.grant_lock(principal);
    let _held = lock.lock().await;
    let mut writes = Vec::new();
    let mut result = revoke_locked(account, principal, role_arn, scope, &mut writes).await;
    if result.is_ok() {
        result = revoke_legacy(account, principal, legacy_policy, &mut writes).await;
    }
    (writes, result)
}

async fn revoke_legacy<A: AccountApi>(
    account: &A,
    principal: &Principal,
    policy_name: &str,
    writes: &mut Vec<Change>,
) -> Result<(), AwsError> {
    match account.get_principal_policy(principal, policy_name).await {
        Ok(Some(_)) => {
            let delete = Change::DeleteGrant {
                principal: principal.clone(),
                policy_name: policy_name.to_owned(),
            };
            apply_tolerant(account, delete, writes).await
        }
        Ok(None) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

async fn revoke_locked<A: AccountApi>(
    account: &A,
    principal: &Principal,
    role_arn: &str,
    scope: &GrantScope,
    writes: &mut Vec<Change>,
) -> Result<(), AwsError> {
    let Some(shards) = shards(account, principal, scope).await? else {
        return Ok(());
    };
    let Some(shard) = shards.into_iter().find(|s| s.roles.contains(role_arn)) else {
        return Ok(());
    };
    let mut roles = shard.roles;
    roles.remove(role_arn);
    if !roles.is_empty() {
        return update(account, &shard.arn, document(&roles), writes).await;
    }
    // The last role: the policy goes (detached, its other versions, then itself).
    let detach = Change::DetachPrincipalPolicy {
        principal: principal.clone(),
        arn: shard.arn.clone(),
    };
    apply_tolerant(account, detach, writes).await?;
    for version in account.policy_versions(&shard.arn).await? {
        if !version.default {
            let delete = Change::DeletePolicyVersion {
                arn: shard.arn.clone(),
                version: version.id,
            };
            apply_tolerant(account, delete, writes).await?;
        }
    }
    apply_tolerant(account, Change::DeletePolicy { arn: shard.arn }, writes).await
}

/// Applies a removal; what is already gone counts as done.
async fn apply_tolerant<A: AccountApi>(
    account: &A,
    change: Change,
    writes: &mut Vec<Change>,
) -> Result<(), AwsError> {
    match account.apply(&change).await {
        Ok(()) => {
            writes.push(change);
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake::FakeAccount;

    fn scope() -> GrantScope {
        GrantScope {
            cluster: "dev".into(),
        }
    }

    fn role(n: usize) -> String {
        format!("arn:aws:iam::111111111111:role/tenants/team-{n:03}_a-role-with-a-rather-long-name")
    }

    fn operations(changes: &[Change]) -> Vec<&'static str> {
        changes.iter().map(Change::operation).collect()
    }

    #[tokio::test]
    async fn a_hundred_roles_granted_to_one_user_stay_within_iams_quotas() {
        let source = FakeAccount::new("123456789012");
        let user = Principal::User("devTest".into());
        source.add_user("devTest");
        for n in 0..100 {
            let (_, result) = grant(&source, &user, &role(n), &scope()).await;
            result.unwrap_or_else(|e| panic!("grant {n}: {e}"));
        }
        let granted = granted_roles(&source, &user, &scope())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(granted.len(), 100);
        let attached = source.attached_policies(&user, "/").await.unwrap().unwrap();
        assert!(
            attached.len() <= 10 && attached.len() > 1,
            "{} policies",
            attached.len()
        );
        for policy in &attached {
            let text =
                policy::to_text(&source.policy_document(&policy.arn).await.unwrap().unwrap());
            assert!(policy::size_without_whitespace(&text) <= 6144);
            assert!(source.policy_versions(&policy.arn).await.unwrap().len() <= 5);
        }
        // Granting again writes nothing.
        let (writes, result) = grant(&source, &user, &role(7), &scope()).await;
        result.unwrap();
        assert!(writes.is_empty(), "{:?}", operations(&writes));
    }

    #[tokio::test]
    async fn revoking_removes_the_role_and_the_last_one_removes_the_policy() {
        let source = FakeAccount::new("123456789012");
        let user = Principal::User("devTest".into());
        source.add_user("devTest");
        for n in 0..2 {
            grant(&source, &user, &role(n), &scope()).await.1.unwrap();
        }
        let (writes, result) = revoke(&source, &user, &role(0), &scope(), "legacy").await;
        result.unwrap();
        assert_eq!(operations(&writes), ["CreatePolicyVersion"]);
        let (writes, result) = revoke(&source, &user, &role(1), &scope(), "legacy").await;
        result.unwrap();
        assert_eq!(
            operations(&writes),
            [
                "DetachUserPolicy",
                "DeletePolicyVersion",
                "DeletePolicyVersion",
                "DeletePolicy"
            ]
        );
        assert!(
            source
                .attached_policies(&user, "/")
                .await
                .unwrap()
                .unwrap()
                .is_empty()
        );
        // Again: nothing to do.
        assert!(
            revoke(&source, &user, &role(1), &scope(), "legacy")
                .await
                .0
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_grant_past_the_attachment_quota_is_refused_before_any_write() {
        let source = FakeAccount::new("123456789012");
        let user = Principal::User("devTest".into());
        source.add_user("devTest");
        for n in 0..10 {
            source.attach_other_policy(&user, &format!("arn:aws:iam::aws:policy/Other{n}"));
        }
        let (writes, result) = grant(&source, &user, &role(0), &scope()).await;
        let error = result.unwrap_err();
        assert_eq!(error.kind, AwsErrorKind::LimitExceeded);
        assert!(
            error.message.contains("AttachedPoliciesPerUserQuota"),
            "{}",
            error.message
        );
        assert!(writes.is_empty());
    }

    #[tokio::test]
    async fn concurrent_grants_to_one_user_lose_nothing() {
        let source = FakeAccount::new("123456789012");
        let user = Principal::User("devTest".into());
        source.add_user("devTest");
        let tasks: Vec<_> = (0..20)
            .map(|n| {
                let (source, user) = (source.clone(), user.clone());
                tokio::spawn(async move { grant(&source, &user, &role(n), &scope()).await.1 })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            granted_roles(&source, &user, &scope())
                .await
                .unwrap()
                .unwrap()
                .len(),
            20
        );
    }

    #[tokio::test]
    async fn a_policy_left_unattached_by_a_failed_grant_is_taken_up_again() {
        let source = FakeAccount::new("123456789012");
        let user = Principal::User("devTest".into());
        source.add_user("devTest");
        grant(&source, &user, &role(0), &scope()).await.1.unwrap();
        let arn = source.attached_policies(&user, "/").await.unwrap().unwrap()[0]
            .arn
            .clone();
        // As if the attach had failed: the policy exists, unattached.
        let detach = Change::DetachPrincipalPolicy {
            principal: user.clone(),
            arn: arn.clone(),
        };
        source.apply(&detach).await.unwrap();
        let (writes, result) = grant(&source, &user, &role(1), &scope()).await;
        result.unwrap();
        assert_eq!(
            operations(&writes),
            ["CreatePolicyVersion", "AttachUserPolicy"]
        );
        let granted = granted_roles(&source, &user, &scope())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            granted,
            BTreeSet::from([role(1)]),
            "the stale role is not granted again"
        );
    }

    #[tokio::test]
    async fn a_revocation_removes_an_earlier_versions_inline_grant_only_if_it_is_there() {
        let source = FakeAccount::new("123456789012");
        let user = Principal::User("devTest".into());
        source.add_user("devTest");
        let (writes, result) = revoke(&source, &user, &role(0), &scope(), "legacy").await;
        result.unwrap();
        assert!(
            writes.is_empty(),
            "nothing read, nothing deleted: {:?}",
            operations(&writes)
        );
        source.edit_principal_policies(|policies| {
            policies.insert(
                (user.clone(), "legacy".into()),
                document(&BTreeSet::from([role(0)])),
            );
        });
        let (writes, result) = revoke(&source, &user, &role(0), &scope(), "legacy").await;
        result.unwrap();
        assert_eq!(operations(&writes), ["DeleteUserPolicy"]);
        assert!(source.principal_policy(&user, "legacy").is_none());
        // A principal that no longer exists holds nothing to revoke.
        let gone = Principal::Role("gone".into());
        let (writes, result) = revoke(&source, &gone, &role(0), &scope(), "legacy").await;
        result.unwrap();
        assert!(writes.is_empty());
    }

    #[test]
    fn grant_policy_names_fit_iams_limit_and_differ_per_cluster() {
        let longest = GrantScope {
            cluster: "c".repeat(40),
        };
        let name = longest.policy_name(&Principal::User("u".repeat(64)), 99);
        assert!(name.len() <= 128, "{} characters", name.len());
        let other = GrantScope {
            cluster: "other".into(),
        };
        let user = Principal::User("devTest".into());
        assert_ne!(scope().policy_name(&user, 0), other.policy_name(&user, 0));
    }

    #[tokio::test]
    async fn a_missing_principal_is_said() {
        let source = FakeAccount::new("123456789012");
        let (_, result) = grant(
            &source,
            &Principal::User("ghost".into()),
            &role(0),
            &scope(),
        )
        .await;
        assert!(
            result
                .unwrap_err()
                .message
                .contains("user ghost does not exist")
        );
    }
}
