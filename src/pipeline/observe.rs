//! Step 3 (AWS reads): the role in the target account, the grant policies of the desired
//! principals in the source account, and what an earlier reconcile granted.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    desired::{DesiredRole, granted_principals},
    validate::ValidatedSpec,
};
use crate::{
    api::AwsAccount,
    aws::{AccountAccess, AccountApi, AwsError, ObservedRole, Principal, grants},
};

/// What a principal holds of this role's grant, in the source account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GrantState {
    /// Its grant policy is attached (only read for desired principals).
    pub attached: bool,
    /// It still has the inline grant policy of an earlier version (one per object).
    pub legacy: bool,
}

/// What observe read.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Observed {
    /// The role, when it exists.
    pub role: Option<ObservedRole>,
    /// What each desired principal, and each one granted before, holds of the grant.
    pub grants: BTreeMap<Principal, GrantState>,
    /// The principals an earlier reconcile granted, as the role records them (its grant tags and
    /// its trust policy's `Grants` statement), so that grants removed from the spec are revoked.
    pub previously_granted: BTreeSet<Principal>,
}

/// Reads what the plan compares. The grants are read only when the role exists.
pub(crate) async fn observe<A: AccountApi>(
    target: &A,
    source: &A,
    desired: &DesiredRole,
    source_account: &str,
) -> Result<Observed, AwsError> {
    let role = target.get_role(&desired.name).await?;
    let Some(existing) = &role else {
        // A role that does not exist yet is created with every grant attached as planned
        // (attaching reads first), so reading the grants here would only add calls.
        return Ok(Observed {
            role,
            ..Observed::default()
        });
    };
    let previously_granted = granted_principals(existing, source_account);
    let mut grants = BTreeMap::new();
    for principal in desired.grants.union(&previously_granted) {
        let attached = desired.grants.contains(principal)
            && grants::is_attached(source, principal, &desired.grant_scope)
                .await?
                .unwrap_or(false);
        let legacy = source
            .get_principal_policy(principal, &desired.legacy_grant_policy_name)
            .await?
            .is_some();
        grants.insert(principal.clone(), GrantState { attached, legacy });
    }
    Ok(Observed {
        role,
        grants,
        previously_granted,
    })
}

/// `spec` with its granted principals looked up in the source account: their real ARNs (a user
/// or role with a path is trusted by that ARN, not by the one at `/`), and those that do not
/// exist left out (returned, to be named in status; their grants are revoked like any other).
pub(crate) async fn resolve_grants<A: AccountApi>(
    source: &A,
    spec: &ValidatedSpec,
) -> Result<(ValidatedSpec, Vec<Principal>), AwsError> {
    let mut resolved = spec.clone();
    let mut missing = Vec::new();
    for principal in &spec.grants {
        match source.principal_arn(principal).await? {
            Some(arn) => {
                resolved.grant_arns.insert(principal.clone(), arn);
            }
            None => {
                resolved.grants.remove(principal);
                missing.push(principal.clone());
            }
        }
    }
    Ok((resolved, missing))
}

/// How the operator reaches the AwsAccount's target account.
pub(crate) fn access_of(account: &AwsAccount) -> AccountAccess {
    AccountAccess {
        account_id: account.spec.account_id.clone(),
        management_role_arn: account.spec.management_role_arn.clone(),
        external_id: account.spec.management_external_id.clone(),
    }
}
