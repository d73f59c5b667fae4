//! The CrossAccountRole controller: what triggers a reconcile, and the reconcile itself: for a
//! live object the pipeline (`crate::pipeline::reconcile`) with the finalizer added before the
//! first AWS write; for a deleted one cleanup, then the finalizer released.

use std::{sync::Arc, time::Instant};

use futures::{Future, Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    core::{DeserializeGuard, PartialObjectMeta, error_boundary::InvalidObject},
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::Action,
        predicates,
        reflector::{self, ObjectRef},
        watcher::{self, watcher},
    },
};
use rand::Rng;
use tracing::info_span;

use super::{
    Context, finalizer,
    recent_sync::SyncInputs,
    requeue::{next_visit, resync_phase, retry_delay},
    scope::WatchScope,
    watch::{NoTriggerBackoff, recovering, scoped_watch},
};
use crate::{
    api::{
        CrossAccountRole, DeletionPolicy,
        names::{FINALIZER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Reason},
    },
    aws::Aws,
    error::ReconcileError,
    pipeline::{
        self, Facts, Io, cleanup,
        credentials::CredentialsOutcome,
        secret,
        status::{self, Note, RoleEnding, Severity},
        validate::AccountLookup,
    },
};

const KIND: &str = "CrossAccountRole";

/// A CrossAccountRole as the watch delivers it: one stored in a shape this version cannot read
/// (written under another CRD version, say) is an `Err` with its metadata, reported on the
/// object instead of stalling the watch of every other object.
type Guarded = DeserializeGuard<CrossAccountRole>;

/// The controller's stream (drive it to run) and a future that completes once its cache synced.
pub(super) fn controller<A: Aws>(
    ctx: Arc<Context<A>>,
    feeds: super::CacheFeeds,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (
    impl Stream<Item = ()> + Send,
    impl Future<Output = ()> + Send,
) {
    let client = ctx.client.clone();
    // Status-only updates (our own writes) do not trigger a reconcile: only spec (generation,
    // which deletion also bumps) and annotation (adoption) changes do, besides resync.
    let (store, writer) = reflector::store();
    let trigger = scoped_watch::<Guarded>(
        "CrossAccountRole",
        &ctx.scope,
        &client,
        watcher::Config::default(),
    )
    .reflect(writer)
    .applied_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::annotations),
        Default::default(),
    );
    let controller = Controller::for_stream(trigger, store.clone());
    let ready_store = store.clone();
    let account_roles = store.clone();
    let (accounts, namespaces) = feeds.streams(&client);
    let stream = controller
        // Each watch paces its own retries; a failing one must not pause the others.
        .trigger_backoff(NoTriggerBackoff)
        // Owned Secrets, and only those (label selector): tampering or deletion is undone.
        .owns_stream(owned_secrets(&client, &ctx.scope))
        // A change to an AwsAccount (readiness, guardrails) re-queues the roles that use it; a
        // change to a namespace's labels (allowedNamespaces) the roles in it.
        .watches_stream(accounts, move |account| {
            let name = account.name_any();
            account_roles
                .state()
                .into_iter()
                .filter(move |g| matches!(&g.0, Ok(cr) if cr.spec.account_ref == name))
                .map(|g| ObjectRef::from_obj(&*g))
        })
        .watches_stream(namespaces, move |ns| {
            let name = ns.name_any();
            store
                .state()
                .into_iter()
                .filter(move |g| g.namespace().as_deref() == Some(name.as_str()))
                .map(|g| ObjectRef::from_obj(&*g))
        })
        // No cap here: kube-runtime's takes held objects in no order, so some can starve under
        // load; `Turns` gives the workers out in order instead (see `turns.rs`).
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        });
    (stream, super::synced(ready_store))
}

/// The Secrets this operator wrote (label selector), in the namespaces it manages: one watch for
/// every namespace or one per listed namespace. No store is kept, so the namespaces' watches are
/// simply merged.
fn owned_secrets(
    client: &kube::Client,
    scope: &WatchScope,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    let config =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let apis: Vec<Api<PartialObjectMeta<Secret>>> = match scope.namespaces() {
        None => vec![Api::all(client.clone())],
        Some(names) => names
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
    };
    stream::select_all(apis.into_iter().map(|api| {
        recovering("Secret", watcher(api, config.clone()))
            .touched_objects()
            .boxed()
    }))
}

fn key(obj: &impl ResourceExt) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The reconcile of one CrossAccountRole (what the controller calls).
pub(super) async fn reconcile<A: Aws>(
    guarded: Arc<Guarded>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    // The watches cover only the managed namespaces; this makes sure nothing is ever written
    // elsewhere.
    if !ctx.scope.contains(&guarded.namespace().unwrap_or_default()) {
        tracing::debug!(object = %key(&*guarded), "not in a watched namespace; left alone");
        return Ok(Action::await_change());
    }
    let Some((_turn, waited)) = ctx.turns.take().await else {
        return Ok(Action::await_change());
    };
    ctx.metrics
        .reconcile_queue
        .get_or_create(&crate::metrics::ReconcileLabels { kind: KIND })
        .observe(waited.as_secs_f64());
    let cr = match &guarded.0 {
        Ok(cr) => cr,
        Err(invalid) => return unreadable(&guarded, invalid, &ctx).await,
    };
    let span = info_span!(
        "reconcile",
        namespace = %cr.namespace().unwrap_or_default(),
        name = %cr.name_any(),
        account = %cr.spec.account_ref,
    );
    let work = async {
        if cr.meta().deletion_timestamp.is_some() {
            finalize(cr, &ctx).await
        } else {
            sync(cr, &ctx).await
        }
    };
    super::measured(&ctx, KIND, &key(cr), span, work).await
}

/// A failed reconcile is retried after the object's backoff, but never after the refresh of the
/// credentials it holds.
fn error_policy<A: Aws>(
    guarded: Arc<Guarded>,
    error: &ReconcileError,
    ctx: Arc<Context<A>>,
) -> Action {
    let next_refresh = guarded
        .0
        .as_ref()
        .ok()
        .and_then(|cr| {
            cr.status
                .as_ref()?
                .credentials
                .as_ref()?
                .next_refresh
                .clone()
        })
        .map(|t| t.0);
    let key = key(&*guarded);
    let delay = retry_delay(ctx.backoff.next(&key), next_refresh, jiff::Timestamp::now());
    tracing::warn!(kind = KIND, object = key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn api_of<A: Aws>(ctx: &Context<A>, namespace: &str) -> Api<CrossAccountRole> {
    Api::namespaced(ctx.client.clone(), namespace)
}

/// A live object: the pipeline, with what the caches know and the recent-sync memo; then its
/// events, metrics and the next visit.
async fn sync<A: Aws>(cr: &CrossAccountRole, ctx: &Context<A>) -> Result<Action, ReconcileError> {
    let namespace = cr.namespace().unwrap_or_default();
    let account = ctx.caches.account(&cr.spec.account_ref).await?;
    let labels = ctx.caches.namespace_labels(&namespace).await?;
    let key = key(cr);
    let inputs = SyncInputs {
        generation: cr.meta().generation,
        account_generation: match &account {
            AccountLookup::Found(a) => a.meta().generation,
            _ => None,
        },
        plan_only: cr
            .annotations()
            .get(crate::api::names::PLAN_ONLY_ANNOTATION)
            .is_some_and(|v| v == "true"),
    };
    let recent = ctx.recent.get(&key, &inputs, Instant::now());
    let reused = recent.is_some();
    let protected = ctx.caches.protected_roles(&ctx.operator.principal_arn);
    let facts = Facts {
        protected_roles: &protected,
        account: &account,
        namespace_labels: &labels,
        recent,
        now: jiff::Timestamp::now(),
        jitter: rand::rng().random(),
    };
    let io = Io {
        kube: &ctx.client,
        aws: &ctx.aws,
        operator: &ctx.operator,
        mints: &ctx.mints,
        legacy: &ctx.legacy,
        principals: &ctx.principals,
    };
    let api = api_of(ctx, &namespace);
    let now = facts.now;
    let report = pipeline::reconcile(&io, cr, facts, async || {
        finalizer::ensure(&api, cr, FINALIZER).await
    })
    .await;

    for change in &report.outcome.applied {
        tracing::info!(operation = change.operation(), "{}", change.describe());
    }
    ctx.events.publish(&cr.object_ref(&()), &report.notes);
    match (&report.synced, &report.outcome.role) {
        (Some(role), _) => ctx
            .recent
            .remember(&key, inputs, role.clone(), Instant::now()),
        // A refusal, or a failure of the IAM part, makes the next reconcile read IAM again.
        (
            None,
            RoleEnding::Refused(_)
            | RoleEnding::AccountNotReady { .. }
            | RoleEnding::Planned { .. },
        ) => ctx.recent.forget(&key),
        (None, RoleEnding::Failed { .. }) if !reused => ctx.recent.forget(&key),
        _ => {}
    }
    record_credentials_metric(cr, ctx, report.outcome.credentials.as_ref());
    if let Some(error) = report.error {
        return Err(error);
    }
    Ok(
        match next_visit(
            &report.outcome,
            ctx.resync_interval,
            resync_phase(cr.metadata.uid.as_deref().unwrap_or(&key)),
            now,
        ) {
            Some(delay) => Action::requeue(delay),
            None => Action::await_change(),
        },
    )
}

/// `crossaccount_credentials_expiry_seconds` follows the credentials the Secret holds.
fn record_credentials_metric<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
    credentials: Option<&CredentialsOutcome>,
) {
    let (namespace, name) = (cr.namespace().unwrap_or_default(), cr.name_any());
    match credentials {
        Some(CredentialsOutcome::Ready { held, .. }) => {
            ctx.metrics
                .credentials_expiry
                .set(&namespace, &name, held.credentials.expiration)
        }
        Some(_) => {}
        None => ctx.metrics.credentials_expiry.remove(&namespace, &name),
    }
}

/// An object this version cannot read: said on the object (a Warning event, and `Ready` false
/// with reason `InvalidSpec` in status) and left alone until it changes. Nothing in AWS is
/// touched, and the finalizer, if any, stays: its cleanup needs a readable spec.
async fn unreadable<A: Aws>(
    guarded: &Guarded,
    invalid: &InvalidObject,
    ctx: &Context<A>,
) -> Result<Action, ReconcileError> {
    let message = format!(
        "this CrossAccountRole cannot be read by the operator ({}); fix the object (kubectl edit) \
         or run an operator version that understands it",
        invalid.error
    );
    tracing::warn!(object = %key(guarded), error = %invalid.error, "unreadable CrossAccountRole");
    let note = Note::new(Severity::Warning, Reason::InvalidSpec, message.clone());
    ctx.events.publish(&guarded.object_ref(&()), &[note]);
    let status =
        status::unreadable_status(guarded.meta().generation, &message, jiff::Timestamp::now());
    let api = api_of(ctx, &guarded.namespace().unwrap_or_default());
    status::apply_status(&api, &guarded.name_any(), &status)
        .await
        .map_err(ReconcileError::kube("writing status"))?;
    Ok(Action::await_change())
}

/// Deletion: clean up AWS (unless Retain), then release the finalizer. The finalizer stays
/// until cleanup succeeded, or the AwsAccount is really gone (then what is left behind is said
/// and counted); while cleanup fails, `Ready` says why.
async fn finalize<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
) -> Result<Action, ReconcileError> {
    let key = key(cr);
    // Nothing of this object needs remembering any more, but its failure count: a cleanup that
    // keeps failing backs off like any failure (`measured` resets the count once one succeeds).
    ctx.recent.forget(&key);
    if !finalizer::has_finalizer(cr, FINALIZER) {
        return Ok(Action::await_change());
    }
    let object = cr.object_ref(&());
    let account = match ctx.caches.account(&cr.spec.account_ref).await? {
        // The cache may lag: only the apiserver may say the account is gone.
        AccountLookup::Missing => {
            ctx.caches
                .account_from_apiserver(&cr.spec.account_ref)
                .await?
        }
        found => found,
    };
    let account = match account {
        AccountLookup::Found(account) => account,
        AccountLookup::Unreadable(error) => {
            let message = format!(
                "cannot delete the IAM role: AwsAccount {} cannot be read by the operator ({error}); fix it and the deletion continues",
                cr.spec.account_ref
            );
            deletion_blocked(cr, ctx, Reason::AccountNotReady, &message).await?;
            return Err(ReconcileError::UnreadableAccount {
                name: cr.spec.account_ref.clone(),
            });
        }
        AccountLookup::Missing if cr.spec.deletion_policy == DeletionPolicy::Retain => {
            let note = Note::new(
                Severity::Normal,
                Reason::Retained,
                "deletionPolicy is Retain: the IAM role is left in AWS (its AwsAccount is gone)",
            );
            ctx.events.publish(&object, &[note]);
            release(cr, ctx).await?;
            return Ok(Action::await_change());
        }
        AccountLookup::Missing => {
            // Without the AwsAccount there is no way into the target account; blocking deletion
            // forever would help nobody, so say (and count) what is left behind.
            let role = cr
                .status
                .as_ref()
                .and_then(|s| s.role_arn.clone())
                .unwrap_or_else(|| "(unknown)".into());
            let message = format!(
                "AwsAccount {} was deleted; role {role} and its grants are left in AWS",
                cr.spec.account_ref
            );
            deletion_blocked(cr, ctx, Reason::AccountNotReady, &message).await?;
            ctx.metrics.abandoned_roles.inc();
            let note = Note::new(Severity::Warning, Reason::AccountNotReady, message);
            ctx.events.publish(&object, &[note]);
            release(cr, ctx).await?;
            return Ok(Action::await_change());
        }
    };
    let protected = ctx.caches.protected_roles(&ctx.operator.principal_arn);
    let labels = ctx
        .caches
        .namespace_labels(&cr.namespace().unwrap_or_default())
        .await?;
    let scope = cleanup::Scope {
        protected: &protected,
        namespace_labels: &labels,
        legacy: &ctx.legacy,
    };
    let (applied, result) = match cr.spec.deletion_policy {
        DeletionPolicy::Delete => {
            cleanup::cleanup_role(&ctx.aws, &ctx.operator, cr, &account, &scope).await
        }
        DeletionPolicy::Retain => {
            let now = jiff::Timestamp::now();
            cleanup::retain_role(&ctx.aws, &ctx.operator, cr, &account, &scope, now).await
        }
    };
    cleanup_notes(ctx, &object, &applied);
    if cr.spec.deletion_policy == DeletionPolicy::Retain && result.is_ok() {
        let note = Note::new(
            Severity::Normal,
            Reason::Retained,
            "deletionPolicy is Retain: the IAM role is left in AWS; the operator no longer trusts itself into it, and a later CrossAccountRole gets it only by adoption",
        );
        ctx.events.publish(&object, &[note]);
    }
    if let Err(e) = result {
        let error = ReconcileError::from(e);
        let message = format!("deleting the IAM role failed: {}", error.summary());
        deletion_blocked(cr, ctx, error.reason(), &message).await?;
        return Err(error);
    }
    release(cr, ctx).await?;
    Ok(Action::await_change())
}

/// A deletion that cannot finish (yet): `Ready` false with `reason` and `message` (written only
/// when it changed).
async fn deletion_blocked<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
    reason: Reason,
    message: &str,
) -> Result<(), ReconcileError> {
    let old = cr.status.clone().unwrap_or_default();
    let new = status::deletion_status(
        &old,
        cr.meta().generation,
        reason,
        message,
        jiff::Timestamp::now(),
    );
    if new == old {
        return Ok(());
    }
    let api = api_of(ctx, &cr.namespace().unwrap_or_default());
    status::apply_status(&api, &cr.name_any(), &new)
        .await
        .map_err(ReconcileError::kube("writing status"))
}

fn cleanup_notes<A: Aws>(
    ctx: &Context<A>,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    applied: &[crate::aws::Change],
) {
    for change in applied {
        tracing::info!(operation = change.operation(), "{}", change.describe());
    }
    let notes: Vec<Note> = applied.iter().map(Note::change).collect();
    ctx.events.publish(object, &notes);
}

/// The last step of deletion: the credentials Secret goes (also where no garbage collector runs),
/// the expiry metric and the last mint's time are dropped, the finalizer is released.
async fn release<A: Aws>(cr: &CrossAccountRole, ctx: &Context<A>) -> Result<(), ReconcileError> {
    let namespace = cr.namespace().unwrap_or_default();
    if let Some(credentials) = cr.status.as_ref().and_then(|s| s.credentials.as_ref()) {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        secret::remove(&secrets, cr, &credentials.secret_name).await?;
    }
    ctx.metrics
        .credentials_expiry
        .remove(&namespace, &cr.name_any());
    ctx.mints.forget(&key(cr));
    finalizer::release(&api_of(ctx, &namespace), cr, FINALIZER).await
}
