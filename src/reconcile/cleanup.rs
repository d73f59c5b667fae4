//! Deletion (AWS): removes what a CrossAccountRole created. It works from what is observed in AWS
//! and the CR's identity, never from a validated spec, so an invalid CR can still be deleted.

use std::collections::BTreeSet;

use super::{
    apply::apply_changes,
    desired::{Owner, granted_principals},
    plan::{Ownership, ownership, plan_delete},
};
use crate::{
    aws::{AccountApi, Change, Principal},
    error::AwsError,
};

/// Revokes the grants and deletes the role when it carries `owner`'s tags; a role owned by
/// someone else (or already gone) is left alone. `spec_grants` are revoked too, in case the role's
/// trust policy no longer records them.
pub async fn delete_role<A: AccountApi>(
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
