//! Deletion (AWS): removes what a CrossAccountRole created. It works from what is observed in AWS
//! and the CR's identity, never from a validated spec, so an invalid CR can still be deleted.

use std::collections::BTreeSet;

use super::{
    apply::apply_changes,
    desired::granted_principals,
    observe::access_of,
    ownership::{Ownership, ownership},
    plan::plan_delete,
};
use crate::{
    api::{AwsAccount, CrossAccountRole},
    aws::{AccountApi, Arn, Aws, AwsError, Change, Principal},
    naming::{OperatorIdentity, Owner},
};

/// Removes the role of `cr` (reached through `account`) and revokes its grants. Returns the
/// changes made and the failure, if any.
pub(crate) async fn cleanup_role<A: Aws>(
    aws: &A,
    operator: &OperatorIdentity,
    cr: &CrossAccountRole,
    account: &AwsAccount,
) -> (Vec<Change>, Result<(), AwsError>) {
    let owner = Owner::of(cr, operator);
    let role_name = role_to_delete(cr, account, &owner);
    let target = aws.target(&access_of(account)).await;
    let source = aws.source();
    delete_role(
        &target,
        &source,
        &role_name,
        &owner,
        &spec_grants(cr),
        &operator.source_account_id,
    )
    .await
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

/// The grants the spec names (whether or not it validates): revoked too, in case the role's
/// trust policy no longer records them.
fn spec_grants(cr: &CrossAccountRole) -> BTreeSet<Principal> {
    cr.spec
        .grants
        .iter()
        .filter_map(|g| match (&g.user, &g.role) {
            (Some(user), None) => Some(Principal::User(user.clone())),
            (None, Some(role)) => Some(Principal::Role(role.clone())),
            _ => None,
        })
        .collect()
}

/// Revokes the grants and deletes the role when it carries `owner`'s tags; a role owned by
/// someone else (or already gone) is left alone. `spec_grants` are revoked too, in case the role's
/// trust policy no longer records them.
pub(crate) async fn delete_role<A: AccountApi>(
    target: &A,
    source: &A,
    role_name: &str,
    owner: &Owner,
    spec_grants: &BTreeSet<Principal>,
    source_account: &str,
) -> (Vec<Change>, Result<(), AwsError>) {
    let role = match target.get_role(role_name).await {
        Ok(role) => role,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let owned = role
        .as_ref()
        .filter(|r| ownership(Some(r), owner, false) == Ownership::Owned);
    let mut grants = spec_grants.clone();
    if let Some(role) = owned {
        grants.extend(granted_principals(&role.trust_policy, source_account));
    }
    let changes = plan_delete(role_name, owned, &grants, &owner.grant_policy_name());
    apply_changes(target, source, &changes).await
}
