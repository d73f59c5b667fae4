//! Watch-fed caches of what a reconcile looks up by name: AwsAccounts, and the metadata (labels)
//! of namespaces for `allowedNamespaces`. A lookup that misses the cache (an object created a
//! moment ago, whose watch event has not arrived) falls back to one GET. The same watches
//! re-queue the roles that depend on a changed account or namespace.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        WatchStreamExt, predicates,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher::{self, watcher},
    },
};

use super::watch::recovering;
use crate::{
    api::{AwsAccount, names::condition as cond},
    error::ReconcileError,
    pipeline::validate::AccountLookup,
};

/// The read side, shared by all reconciles.
pub(crate) struct Caches {
    client: Client,
    accounts: Store<DeserializeGuard<AwsAccount>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
}

/// The write side: turned into the watch streams the role controller drives.
pub struct CacheFeeds {
    accounts: Writer<DeserializeGuard<AwsAccount>>,
    namespaces: Writer<PartialObjectMeta<Namespace>>,
}

impl Caches {
    pub(crate) fn new(client: Client) -> (Caches, CacheFeeds) {
        let (accounts, accounts_writer) = reflector::store();
        let (namespaces, namespaces_writer) = reflector::store();
        (
            Caches {
                client,
                accounts,
                namespaces,
            },
            CacheFeeds {
                accounts: accounts_writer,
                namespaces: namespaces_writer,
            },
        )
    }

    /// The AwsAccount `name` as the cache knows it; a miss (an object created a moment ago)
    /// asks the apiserver.
    pub(crate) async fn account(&self, name: &str) -> Result<AccountLookup, ReconcileError> {
        match self.accounts.get(&ObjectRef::new(name)) {
            Some(guarded) => Ok(lookup(Some(&guarded))),
            None => self.account_from_apiserver(name).await,
        }
    }

    /// The AwsAccount `name` read from the apiserver, past the cache: before a deletion gives up
    /// on an account that seems gone.
    pub(crate) async fn account_from_apiserver(
        &self,
        name: &str,
    ) -> Result<AccountLookup, ReconcileError> {
        Api::<DeserializeGuard<AwsAccount>>::all(self.client.clone())
            .get_opt(name)
            .await
            .map(|found| lookup(found.as_ref()))
            .map_err(ReconcileError::kube("reading the AwsAccount"))
    }

    /// The roles no CrossAccountRole may manage: every AwsAccount's management role, and the
    /// operator's own principal.
    pub(crate) fn protected_roles(&self, operator_principal: &str) -> Vec<String> {
        let mut roles: Vec<String> = self
            .accounts
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok()?.spec.management_role_arn.clone())
            .collect();
        roles.push(operator_principal.to_owned());
        roles
    }

    /// The labels of namespace `name`.
    pub(crate) async fn namespace_labels(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, String>, ReconcileError> {
        if let Some(ns) = self.namespaces.get(&ObjectRef::new(name)) {
            return Ok(ns.metadata.labels.clone().unwrap_or_default());
        }
        let ns = Api::<Namespace>::all(self.client.clone())
            .get_metadata(name)
            .await
            .map_err(ReconcileError::kube("reading the namespace"))?;
        Ok(ns.metadata.labels.unwrap_or_default())
    }

    /// Completes once both caches hold their initial lists.
    pub(crate) async fn synced(&self) {
        tokio::join!(
            super::synced(self.accounts.clone()),
            super::synced(self.namespaces.clone())
        );
    }
}

fn lookup(found: Option<&DeserializeGuard<AwsAccount>>) -> AccountLookup {
    match found.map(|g| &g.0) {
        None => AccountLookup::Missing,
        Some(Ok(account)) => AccountLookup::Found(Arc::new(account.clone())),
        Some(Err(invalid)) => AccountLookup::Unreadable(invalid.error.clone()),
    }
}

/// What of an AwsAccount its CrossAccountRoles depend on: its spec (generation) and whether it
/// is verified. Its other status changes (a new message, the caller ARN) do not concern them.
fn account_relevance(account: &DeserializeGuard<AwsAccount>) -> u64 {
    let ready = account.0.as_ref().ok().and_then(|a| {
        let conditions = &a.status.as_ref()?.conditions;
        conditions
            .iter()
            .find(|c| c.type_ == cond::READY)
            .map(|c| c.status.clone())
    });
    let mut hasher = DefaultHasher::new();
    (account.meta().generation, account.0.is_ok(), ready).hash(&mut hasher);
    hasher.finish()
}

/// The AwsAccounts whose change must reach their CrossAccountRoles: a new spec, a change of
/// readiness, a deletion; `seen` remembers what each looked like. Errors pass (the watch paces
/// itself).
fn relevant_account_change(
    seen: &mut HashMap<String, u64>,
    event: Result<watcher::Event<DeserializeGuard<AwsAccount>>, watcher::Error>,
) -> Option<Result<DeserializeGuard<AwsAccount>, watcher::Error>> {
    match event {
        Err(e) => Some(Err(e)),
        Ok(watcher::Event::Apply(account) | watcher::Event::InitApply(account)) => {
            let relevance = account_relevance(&account);
            let before = seen.insert(account.name_any(), relevance);
            (before != Some(relevance)).then_some(Ok(account))
        }
        Ok(watcher::Event::Delete(account)) => {
            seen.remove(&account.name_any());
            Some(Ok(account))
        }
        Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
    }
}

impl CacheFeeds {
    /// The watches, reflected into the caches: every AwsAccount change its CrossAccountRoles
    /// depend on, and every namespace whose labels changed.
    pub(crate) fn streams(
        self,
        client: &Client,
    ) -> (
        impl Stream<Item = Result<DeserializeGuard<AwsAccount>, watcher::Error>> + Send + 'static,
        impl Stream<Item = Result<PartialObjectMeta<Namespace>, watcher::Error>> + Send + 'static,
    ) {
        let accounts = recovering(
            "AwsAccount",
            watcher(
                Api::<DeserializeGuard<AwsAccount>>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .reflect(self.accounts)
        .filter_map({
            let mut seen = HashMap::new();
            move |event| std::future::ready(relevant_account_change(&mut seen, event))
        });
        // Metadata only: labels are all that allowedNamespaces needs.
        let namespaces = recovering(
            "Namespace",
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .reflect(self.namespaces)
        .touched_objects()
        .predicate_filter(predicates::labels, Default::default());
        (accounts, namespaces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn account(
        generation: i64,
        ready: Option<&str>,
        message: &str,
    ) -> DeserializeGuard<AwsAccount> {
        let mut value = json!({
            "apiVersion": "crossaccount.io/v1alpha1", "kind": "AwsAccount",
            "metadata": {"name": "target", "generation": generation},
            "spec": {"accountId": "111111111111"},
        });
        if let Some(status) = ready {
            value["status"] = json!({"conditions": [{"type": "Ready", "status": status,
                "reason": "x", "message": message, "lastTransitionTime": "2026-12-01T00:00:00Z"}]});
        }
        serde_json::from_value(value).unwrap()
    }

    fn passes(
        seen: &mut HashMap<String, u64>,
        event: watcher::Event<DeserializeGuard<AwsAccount>>,
    ) -> bool {
        relevant_account_change(seen, Ok(event)).is_some()
    }

    #[test]
    fn only_spec_readiness_and_deletion_reach_the_roles() {
        let mut seen = HashMap::new();
        assert!(passes(
            &mut seen,
            watcher::Event::InitApply(account(1, None, ""))
        ));
        assert!(passes(
            &mut seen,
            watcher::Event::Apply(account(1, Some("False"), "denied (request 1)"))
        ));
        assert!(
            !passes(
                &mut seen,
                watcher::Event::Apply(account(1, Some("False"), "denied (request 2)"))
            ),
            "a new message of the same failure does not fan out"
        );
        assert!(passes(
            &mut seen,
            watcher::Event::Apply(account(1, Some("True"), "ok"))
        ));
        assert!(
            passes(
                &mut seen,
                watcher::Event::Apply(account(2, Some("True"), "ok"))
            ),
            "new guardrails"
        );
        assert!(passes(
            &mut seen,
            watcher::Event::Delete(account(2, Some("True"), "ok"))
        ));
        assert!(!passes(&mut seen, watcher::Event::InitDone));
    }
}
