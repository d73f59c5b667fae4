//! Step 3 (AWS reads): the role in the target account, the grant policies of the desired
//! principals in the source account, and what an earlier reconcile granted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Mutex,
};

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

/// The principals this process has seen without an object's legacy inline grant policy, by the
/// policy's name (one per object). Only operator versions before the managed grant policies
/// wrote that policy, and this one never does, so once absent it stays absent: the probe
/// (`GetUserPolicy`/`GetRolePolicy`) is made once per process for each principal and object, not
/// at every drift resync (it was one of the four or five reads a role costs a resync). A
/// restarted operator probes again, so a policy an older replica wrote meanwhile is still found.
#[derive(Debug, Default)]
pub(crate) struct LegacyProbes(Mutex<HashMap<String, BTreeSet<Principal>>>);

impl LegacyProbes {
    /// Whether `principal` was seen without the legacy policy `policy`.
    pub(crate) fn cleared(&self, policy: &str, principal: &Principal) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(policy)
            .is_some_and(|seen| seen.contains(principal))
    }

    /// `principal` was seen without the legacy policy `policy`.
    pub(crate) fn clear(&self, policy: &str, principal: &Principal) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(policy.to_owned())
            .or_default()
            .insert(principal.clone());
    }

    /// Forgets what was seen of the legacy policy `policy` (its object is gone).
    pub(crate) fn forget(&self, policy: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(policy);
    }
}

/// Whether `principal` holds the legacy inline grant policy `policy`: asked of the source
/// account unless `probes` saw it without.
pub(crate) async fn holds_legacy<A: AccountApi>(
    source: &A,
    probes: &LegacyProbes,
    principal: &Principal,
    policy: &str,
) -> Result<bool, AwsError> {
    if probes.cleared(policy, principal) {
        return Ok(false);
    }
    let held = match source.get_principal_policy(principal, policy).await {
        Ok(found) => found.is_some(),
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e),
    };
    if !held {
        probes.clear(policy, principal);
    }
    Ok(held)
}

/// Reads what the plan compares. The grants are read only when the role exists.
pub(crate) async fn observe<A: AccountApi>(
    target: &A,
    source: &A,
    desired: &DesiredRole,
    source_account: &str,
    legacy: &LegacyProbes,
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
        let legacy =
            holds_legacy(source, legacy, principal, &desired.legacy_grant_policy_name).await?;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::aws::fake::FakeAccount;

    #[tokio::test]
    async fn the_legacy_probe_is_made_until_the_policy_is_seen_absent_and_again_once_forgotten() {
        let source = FakeAccount::new("123456789012");
        source.add_user("devTest");
        let user = Principal::User("devTest".into());
        let name = "crossaccount-dev-team-a-reader";
        let put = |present: bool| {
            source.edit_principal_policies(|policies| {
                let key = (user.clone(), name.to_owned());
                if present {
                    policies.insert(key, json!({"Version": "2012-10-17", "Statement": []}));
                } else {
                    policies.remove(&key);
                }
            })
        };
        let probes = LegacyProbes::default();
        put(true);
        assert!(holds_legacy(&source, &probes, &user, name).await.unwrap());
        assert!(
            !probes.cleared(name, &user),
            "a policy found is probed again"
        );
        put(false);
        assert!(!holds_legacy(&source, &probes, &user, name).await.unwrap());
        assert!(probes.cleared(name, &user));
        // Seen absent, it is not asked again: a policy put back behind the operator's back is
        // not seen (no operator version writes it any more)...
        put(true);
        assert!(!holds_legacy(&source, &probes, &user, name).await.unwrap());
        // ...until the object is gone or the process restarts.
        probes.forget(name);
        assert!(holds_legacy(&source, &probes, &user, name).await.unwrap());
    }
}
