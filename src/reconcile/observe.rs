//! Step 3 (AWS reads): the role in the target account and the grant policies of the desired
//! principals in the source account.

use std::collections::BTreeSet;

use super::{desired::granted_principals, plan::Observed};
use crate::{
    aws::{AccountApi, Principal},
    error::AwsError,
};

/// Reads what the plan compares. Also returns the principals the role's trust policy records as
/// granted by an earlier reconcile. The grants are read only when the role exists.
pub async fn observe<A: AccountApi>(
    target: &A,
    source: &A,
    role_name: &str,
    grant_policy_name: &str,
    desired_grants: &BTreeSet<Principal>,
    source_account: &str,
) -> Result<(Observed, BTreeSet<Principal>), AwsError> {
    let role = target.get_role(role_name).await?;
    let previously_granted = role
        .as_ref()
        .map(|r| granted_principals(&r.trust_policy, source_account))
        .unwrap_or_default();
    let role_exists = role.is_some();
    let mut observed = Observed {
        role,
        ..Observed::default()
    };
    // A role that does not exist yet is created with every grant put as planned (PutUserPolicy
    // overwrites), so reading the grants first would only add calls.
    if !role_exists {
        return Ok((observed, previously_granted));
    }
    for principal in desired_grants {
        let document = source
            .get_principal_policy(principal, grant_policy_name)
            .await?;
        observed.grants.insert(principal.clone(), document);
    }
    Ok((observed, previously_granted))
}
