//! Step 3 (AWS reads): the role in the target account, the grant policies of the desired
//! principals in the source account, and what an earlier reconcile granted.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::desired::{DesiredRole, granted_principals};
use crate::{
    api::AwsAccount,
    aws::{AccountAccess, AccountApi, AwsError, ObservedRole, Principal},
};

/// What observe read.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Observed {
    /// The role, when it exists.
    pub role: Option<ObservedRole>,
    /// Grant policy document per desired principal; `None` when the principal lacks it.
    pub grants: BTreeMap<Principal, Option<Value>>,
    /// The principals the role's trust policy records as granted by an earlier reconcile (its
    /// `Grants` statement), so that grants removed from the spec can be revoked.
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
        // A role that does not exist yet is created with every grant put as planned
        // (PutUserPolicy overwrites), so reading the grants first would only add calls.
        return Ok(Observed {
            role,
            ..Observed::default()
        });
    };
    let previously_granted = granted_principals(&existing.trust_policy, source_account);
    let mut grants = BTreeMap::new();
    for principal in &desired.grants {
        let document = source
            .get_principal_policy(principal, &desired.grant_policy_name)
            .await?;
        grants.insert(principal.clone(), document);
    }
    Ok(Observed {
        role,
        grants,
        previously_granted,
    })
}

/// How the operator reaches the AwsAccount's target account.
pub(crate) fn access_of(account: &AwsAccount) -> AccountAccess {
    AccountAccess {
        account_id: account.spec.account_id.clone(),
        management_role_arn: account.spec.management_role_arn.clone(),
        external_id: account.spec.management_external_id.clone(),
    }
}
