//! Step 3 (AWS reads): the role in the target account, the grant policies of the desired
//! principals in the source account, and what an earlier reconcile granted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    desired::{DesiredRole, granted_principals},
    validate::ValidatedSpec,
};
use crate::{
    api::AwsAccount,
    aws::{
        AccountAccess, AccountApi, AwsError, Change, GrantScope, ObservedRole, Principal, grants,
    },
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

/// What the source account said lately of each granted principal: its ARN (`GetUser`,
/// `GetRole` or `GetGroup`) and whether its grant policy is attached (`ListAttached*Policies`).
/// Every role granting a principal asks the same two questions, and the answers are the same for
/// all of them, so within a short lifetime (a twentieth of the resync interval, 30 s at the
/// default 10 minutes) one read answers every role's resync: two of the five IAM reads a role's
/// resync cost become one pair per principal and lifetime. Drift of a principal (its grant
/// policy detached by hand, the principal deleted or made) is found at most that much later
/// than the next resync. Attaching the grant policy is the only write to a principal, and
/// [`PrincipalReads::attached`] records it; a failed attach forgets the principal.
#[derive(Debug)]
pub(crate) struct PrincipalReads {
    /// One attach of a principal's grant policy at a time: the reconciles that wait find it
    /// attached, instead of each reading and attaching it again.
    attaching: Mutex<HashMap<Principal, Arc<tokio::sync::Mutex<()>>>>,
    arns: Reads<Principal, Option<String>>,
    /// By principal and grant policy name: `None` when the principal does not exist.
    attached: Reads<(Principal, String), Option<bool>>,
    lifetime: Duration,
}

/// Answers by question, with when they were read.
type Reads<K, V> = Mutex<HashMap<K, (V, Instant)>>;

/// The share of the resync interval a principal's reads are reused for.
const PRINCIPAL_READS_SHARE: u32 = 20;

fn fresh<K: Eq + std::hash::Hash, V: Clone>(
    map: &Reads<K, V>,
    key: &K,
    lifetime: Duration,
    now: Instant,
) -> Option<V> {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.get(key)
        .filter(|(_, at)| now.saturating_duration_since(*at) < lifetime)
        .map(|(value, _)| value.clone())
}

/// Records `value` for `key`; entries past their life are dropped on the way.
fn record<K: Eq + std::hash::Hash, V>(
    map: &Reads<K, V>,
    key: K,
    value: V,
    lifetime: Duration,
    now: Instant,
) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, (_, at)| now.saturating_duration_since(*at) < lifetime);
    map.insert(key, (value, now));
}

/// Reads nothing is reused from (a lifetime of zero).
impl Default for PrincipalReads {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl PrincipalReads {
    /// Reads reused for a twentieth of `resync_interval`.
    pub(crate) fn new(resync_interval: Duration) -> Self {
        Self {
            attaching: Mutex::default(),
            arns: Mutex::default(),
            attached: Mutex::default(),
            lifetime: resync_interval / PRINCIPAL_READS_SHARE,
        }
    }

    /// `principal`'s ARN (`None`: it does not exist), read at most once per lifetime.
    pub(crate) async fn arn<A: AccountApi>(
        &self,
        source: &A,
        principal: &Principal,
    ) -> Result<Option<String>, AwsError> {
        if let Some(arn) = fresh(&self.arns, principal, self.lifetime, Instant::now()) {
            return Ok(arn);
        }
        let arn = source.principal_arn(principal).await?;
        record(
            &self.arns,
            principal.clone(),
            arn.clone(),
            self.lifetime,
            Instant::now(),
        );
        Ok(arn)
    }

    /// Whether `principal`'s grant policy of `scope` is attached (`None`: no such principal),
    /// read at most once per lifetime.
    pub(crate) async fn is_attached<A: AccountApi>(
        &self,
        source: &A,
        principal: &Principal,
        scope: &GrantScope,
    ) -> Result<Option<bool>, AwsError> {
        let key = (principal.clone(), scope.policy_name(principal));
        if let Some(attached) = fresh(&self.attached, &key, self.lifetime, Instant::now()) {
            return Ok(attached);
        }
        let attached = grants::is_attached(source, principal, scope).await?;
        record(&self.attached, key, attached, self.lifetime, Instant::now());
        Ok(attached)
    }

    /// Whether `principal`'s grant policy of `scope` was seen attached within the lifetime (no
    /// IAM call): a new role that grants it need not attach it again.
    pub(crate) fn known_attached(&self, principal: &Principal, scope: &GrantScope) -> bool {
        let key = (principal.clone(), scope.policy_name(principal));
        fresh(&self.attached, &key, self.lifetime, Instant::now()) == Some(Some(true))
    }

    /// Leaves out of `changes` the grant policies seen attached within the lifetime: another
    /// role's sync attached or read them a moment ago, and attaching would first read the same.
    pub(crate) fn drop_known_attached(&self, changes: &mut Vec<Change>) {
        changes.retain(|change| match change {
            Change::AttachGrantPolicy { principal, scope } => {
                !self.known_attached(principal, scope)
            }
            _ => true,
        });
    }

    /// Waits until no other reconcile attaches the grant policy of any of `principals`, and
    /// holds them until the guards are dropped (taken in order, so that two reconciles never
    /// wait on each other).
    pub(crate) async fn attaching(
        &self,
        principals: &BTreeSet<Principal>,
    ) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let locks: Vec<_> = {
            let mut attaching = self.attaching.lock().unwrap_or_else(|e| e.into_inner());
            // Locks nobody holds or waits for are dropped on the way.
            attaching.retain(|_, lock| Arc::strong_count(lock) > 1);
            principals
                .iter()
                .map(|p| attaching.entry(p.clone()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(locks.len());
        for lock in locks {
            guards.push(lock.lock_owned().await);
        }
        guards
    }

    /// The outcome of attaching `principal`'s grant policy of `scope`: attached, or (on failure)
    /// nothing known of the principal any more.
    pub(crate) fn attached(&self, principal: &Principal, scope: &GrantScope, ok: bool) {
        let key = (principal.clone(), scope.policy_name(principal));
        if ok {
            record(
                &self.attached,
                key,
                Some(true),
                self.lifetime,
                Instant::now(),
            );
        } else {
            self.attached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            self.arns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(principal);
        }
    }
}

/// Reads what the plan compares. The grants are read only when the role exists.
pub(crate) async fn observe<A: AccountApi>(
    target: &A,
    source: &A,
    desired: &DesiredRole,
    source_account: &str,
    legacy: &LegacyProbes,
    principals: &PrincipalReads,
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
            && principals
                .is_attached(source, principal, &desired.grant_scope)
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
    principals: &PrincipalReads,
    spec: &ValidatedSpec,
) -> Result<(ValidatedSpec, Vec<Principal>), AwsError> {
    let mut resolved = spec.clone();
    let mut missing = Vec::new();
    for principal in &spec.grants {
        match principals.arn(source, principal).await? {
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
    async fn a_principals_reads_answer_every_role_within_their_lifetime_and_a_write_updates_them() {
        let source = FakeAccount::new("123456789012");
        source.add_user("devTest");
        let user = Principal::User("devTest".into());
        let scope = GrantScope {
            cluster: "dev".into(),
        };
        // Lifetime 30 s, the default resync's share.
        let reads = PrincipalReads::new(Duration::from_secs(600));
        assert_eq!(
            reads.arn(&source, &user).await.unwrap().as_deref(),
            Some("arn:aws:iam::123456789012:user/devTest")
        );
        assert_eq!(
            reads.is_attached(&source, &user, &scope).await.unwrap(),
            Some(false)
        );
        // Made behind its back: the reads of a moment ago still answer (no IAM call)...
        source.remove_principal(&user);
        assert!(reads.arn(&source, &user).await.unwrap().is_some());
        assert_eq!(
            reads.is_attached(&source, &user, &scope).await.unwrap(),
            Some(false)
        );
        // ...while a memo of zero lifetime asks IAM every time.
        let unshared = PrincipalReads::default();
        assert_eq!(unshared.arn(&source, &user).await.unwrap(), None);
        assert_eq!(
            unshared.is_attached(&source, &user, &scope).await.unwrap(),
            None
        );
        // A failed attach forgets the principal: the next reads go to IAM.
        reads.attached(&user, &scope, false);
        assert_eq!(reads.arn(&source, &user).await.unwrap(), None);
        assert_eq!(
            reads.is_attached(&source, &user, &scope).await.unwrap(),
            None
        );
        // A successful one is what the next resync sees.
        source.add_user("devTest");
        let (_, result) = grants::attach(&source, &user, &scope).await;
        result.unwrap();
        reads.attached(&user, &scope, true);
        source.detach_all(&user);
        assert_eq!(
            reads.is_attached(&source, &user, &scope).await.unwrap(),
            Some(true),
            "within the lifetime, drift waits for the next read"
        );
        assert!(reads.known_attached(&user, &scope));
        assert!(!unshared.known_attached(&user, &scope));
        // Another cluster's grant policy of the same principal is a question of its own.
        let other = GrantScope {
            cluster: "prod".into(),
        };
        assert_eq!(
            reads.is_attached(&source, &user, &other).await.unwrap(),
            Some(false)
        );
    }

    #[tokio::test]
    async fn a_principals_grant_is_attached_by_one_reconcile_at_a_time() {
        let reads = PrincipalReads::default();
        let dev: BTreeSet<_> = [Principal::User("devTest".into())].into();
        let both: BTreeSet<_> = [
            Principal::User("devTest".into()),
            Principal::User("ops".into()),
        ]
        .into();
        let first = reads.attaching(&dev).await;
        let mut second = std::pin::pin!(reads.attaching(&both));
        assert!(futures::poll!(&mut second).is_pending(), "devTest is held");
        // Another principal is not held up.
        let ops: BTreeSet<_> = [Principal::User("ops".into())].into();
        drop(reads.attaching(&ops).await);
        drop(first);
        let guards = second.await;
        assert_eq!(guards.len(), 2);
        drop(guards);
        // Nothing is kept once nobody holds or waits.
        drop(reads.attaching(&BTreeSet::new()).await);
        assert!(reads.attaching.lock().unwrap().is_empty());
    }

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
