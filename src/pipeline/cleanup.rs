//! Deletion (AWS): removes what a CrossAccountRole created (`Delete`), or lets go of it
//! (`Retain`). It works from what is observed in AWS and the CR's identity, never from a
//! validated spec, so an invalid CR can still be deleted; the same ownership rules as the sync
//! decide what it may touch.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::{
    apply::apply_changes,
    desired::{granted_principals, without_operator},
    observe::{LegacyProbes, access_of, holds_legacy},
    ownership::{Claim, Ownership, ownership},
    plan::plan_delete,
    validate::{grant_permitted, grant_principal},
};
use crate::{
    api::{AwsAccount, CrossAccountRole, names::tags},
    aws::{AccountApi, Arn, Aws, AwsError, AwsErrorKind, Change, Principal},
    naming::{OperatorIdentity, Owner},
};

/// What deletion needs to know besides the object and its account.
pub(crate) struct Scope<'a> {
    /// Roles no object may manage (every AwsAccount's management role, the operator's own).
    pub protected: &'a [String],
    /// The labels of the object's namespace (which grants it may revoke).
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// Which principals were seen without the object's legacy grant policy.
    pub legacy: &'a LegacyProbes,
}

/// `Delete`: removes the role of `cr` (reached through `account`) and revokes its grants when the
/// role is this object's; a role of someone else is left alone. Returns the changes made and the
/// failure, if any.
pub(crate) async fn cleanup_role<A: Aws>(
    aws: &A,
    operator: &OperatorIdentity,
    cr: &CrossAccountRole,
    account: &AwsAccount,
    scope: &Scope<'_>,
) -> (Vec<Change>, Result<(), AwsError>) {
    let owner = Owner::of(cr, operator);
    let role_name = role_to_delete(cr, account, &owner);
    let target = aws.target(&access_of(account)).await;
    let source = aws.source();
    let role = match target.get_role(&role_name).await {
        Ok(role) => role,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let claim = claim(&owner, account, scope);
    let decision = ownership(role.as_ref(), &claim);
    let owned = role.as_ref().filter(|_| decision == Ownership::Owned);
    let foreign = role.is_some() && owned.is_none();
    // The grants are the role's tags and trust entries and go with it. What may be left is the
    // inline grant policy an earlier version put on each granted principal: looked for on those
    // the role records and those the spec names that its guardrails allow (in case the record
    // was lost), never for a role that is not ours, and deleted only where it is.
    let mut granted = BTreeSet::new();
    if !foreign {
        let namespace = owner.namespace.clone();
        granted.extend(spec_grants(cr).into_iter().filter(|p| {
            let arn = p
                .arn(&operator.partition, &operator.source_account_id)
                .to_string();
            grant_permitted(account, &namespace, scope.namespace_labels, &arn, operator)
        }));
    }
    if let Some(role) = owned {
        granted.extend(granted_principals(role, &operator.source_account_id));
    }
    let legacy_name = owner.grant_policy_name();
    let mut legacy = BTreeSet::new();
    for principal in granted {
        match holds_legacy(&source, scope.legacy, &principal, &legacy_name).await {
            Ok(true) => {
                legacy.insert(principal);
            }
            Ok(false) => {}
            Err(e) => return (Vec::new(), Err(e)),
        }
    }
    let changes = plan_delete(&role_name, owned, &legacy, &legacy_name);
    let (applied, result) = apply_changes(&target, &source, &changes).await;
    if result.is_ok() {
        scope.legacy.forget(&legacy_name);
    }
    match result {
        Err(e) if e.kind == AwsErrorKind::Conflict && e.operation == "DeleteRole" => {
            (applied, Err(explain_conflict(&target, &role_name, e).await))
        }
        other => (applied, other),
    }
}

/// A role that cannot be deleted because it is in instance profiles (which the operator never
/// makes, so never removes it from): the error names them and what to do.
async fn explain_conflict<A: AccountApi>(target: &A, role_name: &str, e: AwsError) -> AwsError {
    match target.instance_profiles(role_name).await {
        Ok(profiles) if !profiles.is_empty() => AwsError {
            message: format!(
                "role {role_name} is in instance profile(s) {}, which this operator did not make: remove it from them (aws iam remove-role-from-instance-profile) or set deletionPolicy: Retain",
                profiles.join(", ")
            )
            .into(),
            ..e
        },
        _ => e,
    }
}

/// `Retain`: the role stays in AWS, but the operator lets go of it: its own trust statement goes
/// (it can no longer mint for the role) and the ownership tags give way to
/// `crossaccount.io/retained`, so that a later object of the same name gets it only by adoption.
pub(crate) async fn retain_role<A: Aws>(
    aws: &A,
    operator: &OperatorIdentity,
    cr: &CrossAccountRole,
    account: &AwsAccount,
    scope: &Scope<'_>,
    now: Timestamp,
) -> (Vec<Change>, Result<(), AwsError>) {
    let owner = Owner::of(cr, operator);
    let role_name = role_to_delete(cr, account, &owner);
    let target = aws.target(&access_of(account)).await;
    let role = match target.get_role(&role_name).await {
        Ok(Some(role)) => role,
        Ok(None) => return (Vec::new(), Ok(())),
        Err(e) => return (Vec::new(), Err(e)),
    };
    if ownership(Some(&role), &claim(&owner, account, scope)) != Ownership::Owned {
        return (Vec::new(), Ok(()));
    }
    let changes = plan_retain(&role_name, &role, &owner, now);
    apply_changes(&target, &aws.source(), &changes).await
}

/// The writes that let go of a retained role.
pub(crate) fn plan_retain(
    role_name: &str,
    role: &crate::aws::ObservedRole,
    owner: &Owner,
    now: Timestamp,
) -> Vec<Change> {
    vec![
        Change::UpdateTrustPolicy {
            role: role_name.to_owned(),
            trust_policy: without_operator(&role.trust_policy),
        },
        Change::UntagRole {
            role: role_name.to_owned(),
            keys: owner.tags().into_keys().collect(),
        },
        Change::TagRole {
            role: role_name.to_owned(),
            tags: BTreeMap::from([(
                tags::RETAINED.to_owned(),
                now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            )]),
        },
    ]
}

fn claim<'a>(owner: &'a Owner, account: &'a AwsAccount, scope: &'a Scope<'_>) -> Claim<'a> {
    Claim {
        owner,
        adopt: false,
        protected: scope.protected,
        role_path: account.spec.role_path.as_deref().unwrap_or("/"),
        boundary: account.spec.permissions_boundary_arn.as_deref(),
    }
}

/// The role to delete: the one status recorded, else the name the spec gives or defaults to.
fn role_to_delete(cr: &CrossAccountRole, account: &AwsAccount, owner: &Owner) -> String {
    let from_status = cr
        .status
        .as_ref()
        .and_then(|s| s.role_arn.as_deref())
        .and_then(Arn::parse)
        .map(|arn| arn.name().to_owned());
    from_status
        .or_else(|| cr.spec.role_name.clone())
        .unwrap_or_else(|| {
            owner.default_role_name(account.spec.role_name_prefix.as_deref().unwrap_or_default())
        })
}

/// The grants the spec names (whether or not it validates).
fn spec_grants(cr: &CrossAccountRole) -> BTreeSet<Principal> {
    cr.spec.grants.iter().filter_map(grant_principal).collect()
}

/// Deletes `role` (when given) with everything attached to it, and the legacy inline grant
/// policies of `legacy`.
#[cfg(test)]
pub(crate) async fn delete_role<A: AccountApi>(
    target: &A,
    source: &A,
    role_name: &str,
    role: Option<&crate::aws::ObservedRole>,
    legacy: &BTreeSet<Principal>,
    owner: &Owner,
) -> (Vec<Change>, Result<(), AwsError>) {
    let changes = plan_delete(role_name, role, legacy, &owner.grant_policy_name());
    apply_changes(target, source, &changes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ObservedRole;
    use serde_json::json;

    #[test]
    fn a_retained_role_drops_the_operators_statement_and_its_ownership_tags() {
        let owner = Owner {
            cluster: "dev".into(),
            namespace: "a".into(),
            name: "r".into(),
            uid: "u".into(),
        };
        let role = ObservedRole {
            trust_policy: json!({"Statement": [
                {"Sid": "CrossAccountOperator", "Effect": "Allow", "Principal": {"AWS": "x"}, "Action": "sts:AssumeRole"},
                {"Sid": "Grants", "Effect": "Allow", "Principal": {"AWS": ["y"]}, "Action": "sts:AssumeRole"},
            ]}),
            tags: owner.tags(),
            ..ObservedRole::default()
        };
        let changes = plan_retain("r", &role, &owner, Timestamp::UNIX_EPOCH);
        let Change::UpdateTrustPolicy { trust_policy, .. } = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(trust_policy["Statement"].as_array().unwrap().len(), 1);
        assert_eq!(trust_policy["Statement"][0]["Sid"], "Grants");
        let Change::UntagRole { keys, .. } = &changes[1] else {
            panic!("{changes:?}")
        };
        assert_eq!(keys.len(), 3);
        // Nothing left but the operator's statement: nobody may assume the role.
        let lone = ObservedRole {
            trust_policy: json!({"Statement": [role.trust_policy["Statement"][0].clone()]}),
            ..role
        };
        let Change::UpdateTrustPolicy { trust_policy, .. } =
            &plan_retain("r", &lone, &owner, Timestamp::UNIX_EPOCH)[0]
        else {
            panic!()
        };
        assert_eq!(trust_policy["Statement"][0]["Effect"], "Deny");
    }

    #[tokio::test]
    async fn a_role_in_an_instance_profile_is_not_deleted_and_the_error_says_why() {
        use crate::aws::fake::FakeAccount;
        let target = FakeAccount::new("111111111111");
        let source = FakeAccount::new("123456789012");
        target
            .apply(&Change::CreateRole {
                role: "r".into(),
                path: "/".into(),
                trust_policy: json!({"Version": "2012-10-17", "Statement": []}),
                description: None,
                max_session_duration: None,
                permissions_boundary: None,
                tags: BTreeMap::new(),
            })
            .await
            .unwrap();
        target.add_to_instance_profile("r", "web-servers");
        let changes = plan_delete("r", target.role("r").as_ref(), &BTreeSet::new(), "legacy");
        let (_, result) = apply_changes(&target, &source, &changes).await;
        let e = result.unwrap_err();
        assert_eq!(e.kind, AwsErrorKind::Conflict);
        let e = explain_conflict(&target, "r", e).await;
        assert!(
            e.message.contains("instance profile(s) web-servers"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("deletionPolicy: Retain"),
            "{}",
            e.message
        );
        assert!(target.role("r").is_some());
    }
}
