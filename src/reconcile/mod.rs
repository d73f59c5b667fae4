//! The reconcilers. A CrossAccountRole goes through the pipeline
//! validate -> desired -> observe -> plan -> apply -> status (one file each; `cleanup` on deletion),
//! orchestrated by `role_controller`; `account_controller` verifies AwsAccounts.

pub mod account_controller;
pub mod apply;
pub mod backoff;
pub mod caches;
pub mod cleanup;
pub mod credentials;
pub mod desired;
pub mod observe;
pub mod plan;
pub mod recent_sync;
pub mod role_controller;
pub mod rollout;
pub mod secret;
pub mod status;
pub mod validate;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::runtime::controller::Action;
use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};
use thiserror::Error;
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    api::names::FIELD_MANAGER,
    aws::Aws,
    error::AwsError,
    http::Readiness,
    metrics::{Metrics, ReconcileErrorLabels, ReconcileLabels},
};
pub use validate::OperatorIdentity;

/// Everything a reconcile needs, shared by all reconciles.
pub struct Context<A: Aws> {
    pub client: Client,
    pub aws: A,
    pub operator: OperatorIdentity,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoff: backoff::PerObjectBackoff,
    pub resync_interval: Duration,
    pub caches: caches::Caches,
    pub recent: recent_sync::RecentSyncs,
}

impl<A: Aws> Context<A> {
    /// The context, and the feeds of its caches for [`run`].
    pub fn new(
        client: Client,
        aws: A,
        operator: OperatorIdentity,
        metrics: Arc<Metrics>,
        resync_interval: Duration,
    ) -> (Self, caches::CacheFeeds) {
        let (caches, feeds) = caches::Caches::new(client.clone());
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let ctx = Self {
            client,
            aws,
            operator,
            metrics,
            recorder,
            backoff: backoff::PerObjectBackoff::default(),
            resync_interval,
            caches,
            recent: recent_sync::RecentSyncs::new(resync_interval),
        };
        (ctx, feeds)
    }
}

/// A reconcile that failed and is retried with backoff.
#[derive(Error, Debug)]
pub enum ReconcileError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("Kubernetes API request failed: {context}")]
    Kube {
        context: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Aws(e) => e.category(),
            ReconcileError::Kube { .. } => "KubeError",
        }
    }

    pub fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| ReconcileError::Kube { context, source }
    }
}

/// Runs one reconcile of the object `key` of `kind` inside `span`, and records it: the reconcile
/// count and duration, the error category on failure; success clears the object's backoff.
pub(crate) async fn measured<A: Aws>(
    ctx: &Context<A>,
    kind: &'static str,
    key: &str,
    span: tracing::Span,
    reconcile: impl std::future::Future<Output = Result<Action, ReconcileError>>,
) -> Result<Action, ReconcileError> {
    let labels = ReconcileLabels { kind };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let result = reconcile.instrument(span).await;
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.backoff.reset(key),
        Err(e) => {
            let labels = ReconcileErrorLabels {
                kind,
                category: e.category(),
            };
            ctx.metrics.reconcile_errors.get_or_create(&labels).inc();
        }
    }
    result
}

/// The error policy of both controllers: retry `key` after its per-object backoff.
pub(crate) fn retry_later<A: Aws>(
    ctx: &Context<A>,
    kind: &'static str,
    key: &str,
    error: &ReconcileError,
) -> Action {
    let delay = ctx.backoff.next(key);
    tracing::warn!(kind, object = key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Completes once `store` has its initial list. kube's `wait_until_ready` wakes only the last task
/// that polled it, and the controller itself waits on the same store, so the wait is re-polled
/// on a short timer instead of relying on the wake-up.
pub async fn synced<K>(store: kube::runtime::reflector::Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    while tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// Runs both controllers until `shutdown` completes. `readiness` turns true once their caches
/// have synced.
pub async fn run<A: Aws>(
    ctx: Arc<Context<A>>,
    feeds: caches::CacheFeeds,
    concurrency: u16,
    readiness: Readiness,
    stop: watch::Receiver<bool>,
) {
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (roles, roles_ready) =
        role_controller::controller(ctx.clone(), feeds, concurrency, stopped(stop.clone()));
    let (accounts, accounts_ready) =
        account_controller::controller(ctx.clone(), concurrency, stopped(stop));
    tokio::spawn(async move {
        let _ = tokio::join!(roles_ready, accounts_ready, ctx.caches.synced());
        readiness.set(true);
        tracing::info!("caches synced; controllers running");
    });
    tokio::join!(
        roles.for_each(|_| async {}),
        accounts.for_each(|_| async {})
    );
}
