//! Watch-fed caches of what a reconcile looks up by name: AwsAccounts, and the metadata (labels)
//! of namespaces for `allowedNamespaces`. A lookup that misses the cache (an object created a
//! moment ago, whose watch event has not arrived) falls back to one GET. The same watches
//! re-queue the roles that depend on a changed account or namespace.

use std::{collections::BTreeMap, sync::Arc};

use futures::Stream;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        WatchStreamExt, predicates,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher::{self, watcher},
    },
};

use super::watch::recovering;
use crate::{api::AwsAccount, error::ReconcileError};

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

    /// The AwsAccount `name`, or `None` when it does not exist (or cannot be read: the account
    /// controller reports that on the AwsAccount).
    pub(crate) async fn account(
        &self,
        name: &str,
    ) -> Result<Option<Arc<AwsAccount>>, ReconcileError> {
        if let Some(guarded) = self.accounts.get(&ObjectRef::new(name)) {
            return Ok(guarded.0.as_ref().ok().map(|a| Arc::new(a.clone())));
        }
        Api::<AwsAccount>::all(self.client.clone())
            .get_opt(name)
            .await
            .map(|a| a.map(Arc::new))
            .map_err(ReconcileError::kube("reading the AwsAccount"))
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

impl CacheFeeds {
    /// The watches, reflected into the caches: every changed AwsAccount, and every namespace
    /// whose labels changed.
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
        .touched_objects();
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
