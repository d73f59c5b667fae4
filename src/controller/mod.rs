//! The kube-runtime wiring of the controllers, apart from the pipeline they run: the
//! CrossAccountRole controller (`role`: triggers, the reconcile entry, deletion) with its
//! finalizer handling (`finalizer`), events (`events`), when to look again (`requeue`,
//! `backoff`), the watch-fed caches (`caches`), the recent-sync memo (`recent_sync`), the
//! namespaces watched (`scope`), the fair queue for workers (`turns`) and watch recovery
//! (`watch`); and the AwsAccount controller (`account`).

mod account;
mod backoff;
mod caches;
mod events;
mod finalizer;
mod recent_sync;
mod requeue;
mod role;
mod scope;
mod turns;
pub(crate) mod watch;

pub use scope::WatchScope;

#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{Client, runtime::controller::Action};
use tokio::sync::watch as signal;
use tracing::Instrument;

use caches::CacheFeeds;

use crate::{
    aws::{Aws, SdkAws},
    error::ReconcileError,
    http::Readiness,
    metrics::{Metrics, ReconcileErrorLabels, ReconcileLabels},
    naming::OperatorIdentity,
};

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How many objects are reconciled at once.
    pub concurrency: u16,
    /// How often every object is checked against AWS (jittered).
    pub resync_interval: Duration,
    /// This replica's name in the events it publishes (the pod name).
    pub instance: Option<String>,
    /// The namespaces whose CrossAccountRoles are managed.
    pub scope: WatchScope,
}

/// Runs both controllers with the SDK's AWS until `stop` turns true. `readiness` turns true once
/// their caches have synced.
pub async fn run(
    client: Client,
    aws: SdkAws,
    operator: OperatorIdentity,
    metrics: Arc<Metrics>,
    settings: Settings,
    readiness: Readiness,
    stop: signal::Receiver<bool>,
) {
    let concurrency = settings.concurrency;
    let (ctx, feeds) = Context::new(client, aws, operator, metrics, settings);
    run_controllers(Arc::new(ctx), feeds, concurrency, readiness, stop).await;
}

/// Everything a reconcile needs, shared by all reconciles.
pub(crate) struct Context<A: Aws> {
    client: Client,
    aws: A,
    operator: OperatorIdentity,
    metrics: Arc<Metrics>,
    events: events::Events,
    backoff: backoff::PerObjectBackoff,
    resync_interval: Duration,
    scope: WatchScope,
    caches: caches::Caches,
    recent: recent_sync::RecentSyncs,
    mints: crate::pipeline::credentials::MintBudget,
    /// Which principals were seen without an object's legacy grant policy.
    legacy: crate::pipeline::observe::LegacyProbes,
    /// What the source account said lately of each granted principal.
    principals: crate::pipeline::observe::PrincipalReads,
    /// Workers for CrossAccountRole reconciles, first come first served.
    turns: turns::Turns,
}

impl<A: Aws> Context<A> {
    /// The context, and the feeds of its caches, for controllers that run with `settings`.
    pub(crate) fn new(
        client: Client,
        aws: A,
        operator: OperatorIdentity,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> (Self, CacheFeeds) {
        let (caches, feeds) = caches::Caches::new(client.clone());
        let ctx = Self {
            events: events::Events::new(
                client.clone(),
                settings.instance,
                metrics.events_dropped.clone(),
            ),
            client,
            aws,
            operator,
            metrics,
            backoff: backoff::PerObjectBackoff::default(),
            resync_interval: settings.resync_interval,
            scope: settings.scope,
            caches,
            recent: recent_sync::RecentSyncs::new(settings.resync_interval),
            mints: Default::default(),
            legacy: Default::default(),
            principals: crate::pipeline::observe::PrincipalReads::new(settings.resync_interval),
            turns: turns::Turns::new(settings.concurrency),
        };
        (ctx, feeds)
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
pub(crate) async fn synced<K>(store: kube::runtime::reflector::Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    while tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// Runs both controllers until `stop` turns true.
async fn run_controllers<A: Aws>(
    ctx: Arc<Context<A>>,
    feeds: CacheFeeds,
    concurrency: u16,
    readiness: Readiness,
    stop: signal::Receiver<bool>,
) {
    let stopped = |mut rx: signal::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (roles, roles_ready) = role::controller(ctx.clone(), feeds, stopped(stop.clone()));
    // Reconciles still waiting for a worker when the controllers stop are left to the next
    // leader (graceful shutdown waits only for those under way).
    tokio::spawn({
        let (ctx, stop) = (ctx.clone(), stop.clone());
        async move {
            stopped(stop).await;
            ctx.turns.close();
        }
    });
    let (accounts, accounts_ready) = account::controller(ctx.clone(), concurrency, stopped(stop));
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
