//! The CrossAccountRole controller: runs the pipeline for one object and records the outcome in
//! status, events and metrics.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Future, Stream};
use k8s_openapi::{
    api::core::v1::{ObjectReference, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::{DeserializeGuard, PartialObjectMeta, error_boundary::InvalidObject},
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::Action,
        events::{Event, EventType},
        predicates,
        reflector::{self, ObjectRef},
        watcher::{self, watcher},
    },
};
use serde_json::json;
use tracing::info_span;

use super::{
    Context, ReconcileError,
    apply::apply_changes,
    backoff::jitter,
    caches::CacheFeeds,
    cleanup::delete_role,
    credentials::{
        CredentialsOutcome, RoleForCredentials, ensure_credentials, outcome_reason, remove_secret,
    },
    desired::{Owner, desired_role},
    observe::observe,
    plan::{Ownership, ownership, plan_role_changes},
    recent_sync::{SyncInputs, SyncedRole},
    rollout::{RestartResult, restart_targets},
    status::{ConditionUpdate, apply_status, condition, set_condition},
    validate::{Refusal, ValidatedSpec, default_role_name, validate},
};
use crate::{
    api::{
        AwsAccount, CredentialsStatus, CrossAccountRole, CrossAccountRoleStatus, DeletionPolicy,
        names::{FINALIZER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, condition as cond, reason},
    },
    aws::{AccountAccess, Aws, Change, Principal},
    controller::watch::{NoTriggerBackoff, recovering},
};

const KIND: &str = "CrossAccountRole";

/// A CrossAccountRole as the watch delivers it: one stored in a shape this version cannot read
/// (written under another CRD version, say) is an `Err` with its metadata, reported on the
/// object instead of stalling the watch of every other object.
type Guarded = DeserializeGuard<CrossAccountRole>;

/// The controller's stream (drive it to run) and a future that completes once its cache synced.
pub fn controller<A: Aws>(
    ctx: Arc<Context<A>>,
    feeds: CacheFeeds,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (
    impl Stream<Item = ()> + Send,
    impl Future<Output = ()> + Send,
) {
    let client = ctx.client.clone();
    // Status-only updates (our own writes) do not trigger a reconcile: only spec (generation,
    // which deletion also bumps) and annotation (adoption) changes do, besides resync.
    let (store, writer) = reflector::store();
    let trigger = recovering(
        "CrossAccountRole",
        watcher(
            Api::<Guarded>::all(client.clone()),
            watcher::Config::default(),
        ),
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
        .owns_stream(
            recovering(
                "Secret",
                watcher(
                    Api::<PartialObjectMeta<Secret>>::all(client),
                    watcher::Config::default()
                        .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
                ),
            )
            .touched_objects(),
        )
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
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        });
    (stream, super::synced(ready_store))
}

use futures::StreamExt;

fn key(obj: &impl ResourceExt) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

async fn reconcile<A: Aws>(
    guarded: Arc<Guarded>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
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
    super::measured(&ctx, KIND, &key(cr), span, reconcile_role(cr, &ctx)).await
}

fn error_policy<A: Aws>(
    guarded: Arc<Guarded>,
    error: &ReconcileError,
    ctx: Arc<Context<A>>,
) -> Action {
    super::retry_later(&ctx, KIND, &key(&*guarded), error)
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
    publish_to(
        &guarded.object_ref(&()),
        ctx,
        EventType::Warning,
        reason::INVALID_SPEC,
        message.clone(),
    )
    .await;
    let generation = guarded.meta().generation;
    let now = Timestamp::now();
    let mut status = CrossAccountRoleStatus {
        observed_generation: generation,
        ..Default::default()
    };
    for type_ in [cond::READY, cond::ROLE_SYNCED] {
        set_condition(
            &mut status.conditions,
            ConditionUpdate::new(type_, false, reason::INVALID_SPEC, message.clone()),
            generation,
            now,
        );
    }
    let api: Api<CrossAccountRole> =
        Api::namespaced(ctx.client.clone(), &guarded.namespace().unwrap_or_default());
    apply_status(&api, &guarded.name_any(), &status)
        .await
        .map_err(ReconcileError::kube("writing status"))?;
    Ok(Action::await_change())
}

/// How a reconcile of a live (not deleted) object ended, short of an error.
enum Outcome {
    Synced {
        role_arn: String,
        account_id: String,
        external_id: String,
        /// `None` when the spec asks for no credentials.
        credentials: Option<Box<CredentialsOutcome>>,
    },
    Refused {
        reason: &'static str,
        message: String,
    },
}

async fn reconcile_role<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
) -> Result<Action, ReconcileError> {
    if cr.meta().deletion_timestamp.is_some() {
        return finalize(cr, ctx).await;
    }
    let result = sync(cr, ctx).await;
    record_status(cr, ctx, &result).await?;
    match result {
        Ok(Outcome::Synced { credentials, .. }) => Ok(next_visit(ctx, credentials.as_deref())),
        // Terminal: a change to the CR or its AwsAccount triggers the next reconcile.
        Ok(Outcome::Refused { .. }) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

fn owner_of(cr: &CrossAccountRole, ctx: &Context<impl Aws>) -> Owner {
    Owner {
        cluster: ctx.operator.cluster_name.clone(),
        namespace: cr.namespace().unwrap_or_default(),
        name: cr.name_any(),
    }
}

fn access_of(account: &AwsAccount) -> AccountAccess {
    AccountAccess {
        account_id: account.spec.account_id.clone(),
        management_role_arn: account.spec.management_role_arn.clone(),
        external_id: account.spec.management_external_id.clone(),
    }
}

fn account_ready(account: &AwsAccount) -> Result<(), String> {
    let conditions = account
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    match condition(conditions, cond::READY) {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(format!(
            "AwsAccount {} is not Ready: {}",
            account.name_any(),
            c.message
        )),
        None => Err(format!(
            "AwsAccount {} has not been verified yet",
            account.name_any()
        )),
    }
}

async fn sync<A: Aws>(cr: &CrossAccountRole, ctx: &Context<A>) -> Result<Outcome, ReconcileError> {
    let refused = |reason, message: String| Ok(Outcome::Refused { reason, message });
    let Some(account) = ctx.caches.account(&cr.spec.account_ref).await? else {
        return refused(
            reason::ACCOUNT_NOT_READY,
            format!(
                "AwsAccount {} (spec.accountRef) does not exist",
                cr.spec.account_ref
            ),
        );
    };
    if let Err(message) = account_ready(&account) {
        return refused(reason::ACCOUNT_NOT_READY, message);
    }
    let namespace = cr.namespace().unwrap_or_default();
    let labels = ctx.caches.namespace_labels(&namespace).await?;
    let spec = match validate(cr, &account, &labels, &ctx.operator) {
        Ok(spec) => spec,
        Err(Refusal { reason, message }) => return refused(reason, message),
    };

    let owner = owner_of(cr, ctx);
    let source = ctx.aws.source();
    let inputs = SyncInputs {
        generation: cr.meta().generation,
        account_version: account.resource_version(),
    };
    let key = key(cr);
    let role = match ctx.recent.get(&key, &inputs, Instant::now()) {
        Some(role) => role,
        None => {
            let role = sync_iam(cr, ctx, &account, &spec, &owner, &source).await;
            match role {
                Ok(Ok(role)) => {
                    ctx.recent
                        .remember(&key, inputs, role.clone(), Instant::now());
                    role
                }
                Ok(Err(refusal)) => {
                    ctx.recent.forget(&key);
                    return Ok(refusal);
                }
                Err(e) => {
                    ctx.recent.forget(&key);
                    return Err(e);
                }
            }
        }
    };
    let for_credentials = RoleForCredentials {
        arn: &role.arn,
        max_session_duration: role.max_session_duration,
        account_cap: account.spec.max_session_duration_seconds,
        created: role.created,
        external_id: owner.external_id(),
    };
    let credentials = sync_credentials(cr, ctx, &source, &for_credentials)
        .await?
        .map(Box::new);
    Ok(Outcome::Synced {
        role_arn: role.arn.clone(),
        account_id: account.spec.account_id.clone(),
        external_id: owner.external_id(),
        credentials,
    })
}

/// Observe, plan and apply: brings the IAM role and the grants to the spec. Returns the role,
/// or the refusal when the role belongs to someone else.
async fn sync_iam<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
    account: &AwsAccount,
    spec: &ValidatedSpec,
    owner: &Owner,
    source: &A::Account,
) -> Result<Result<SyncedRole, Outcome>, ReconcileError> {
    let target = ctx.aws.target(&access_of(account)).await;
    let desired = desired_role(spec, owner, &ctx.operator, &account.spec.account_id);
    let (observed, previously_granted) = observe(
        &target,
        source,
        &desired.name,
        &desired.grant_policy_name,
        &desired.grants,
        &ctx.operator.source_account_id,
    )
    .await?;
    if let Ownership::Foreign(message) = ownership(observed.role.as_ref(), owner, spec.adopt) {
        return Ok(Err(Outcome::Refused {
            reason: reason::ROLE_NOT_OWNED,
            message,
        }));
    }
    // Only now, after a successful read of the target account, is there something to clean up.
    ensure_finalizer(cr, ctx).await?;

    let changes = plan_role_changes(&desired, &observed, &previously_granted);
    let (applied, result) = apply_changes(&target, source, &changes).await;
    publish_changes(cr, ctx, &applied).await;
    result?;

    let max_session_duration = desired.max_session_duration;
    Ok(Ok(match observed.role {
        Some(role) => SyncedRole {
            arn: role.arn,
            created: role.created,
            max_session_duration,
        },
        None => SyncedRole {
            arn: desired.arn,
            created: Some(Timestamp::now()),
            max_session_duration,
        },
    }))
}

/// The credentials step, and what follows from it: events, rollout restarts, the expiry metric,
/// and removing a Secret the spec no longer asks for.
async fn sync_credentials<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
    source: &A::Account,
    role: &RoleForCredentials<'_>,
) -> Result<Option<CredentialsOutcome>, ReconcileError> {
    let namespace = cr.namespace().unwrap_or_default();
    let previous_secret = cr
        .status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .map(|c| c.secret_name.clone());
    let Some(spec) = &cr.spec.credentials else {
        if let Some(old) = previous_secret {
            remove_secret(&ctx.client, cr, &old).await?;
        }
        ctx.metrics
            .credentials_expiry
            .remove(&namespace, &cr.name_any());
        return Ok(None);
    };
    let outcome = ensure_credentials(&ctx.client, source, &ctx.operator, cr, spec, role).await?;
    if let CredentialsOutcome::Ready {
        secret_name,
        content,
        issued,
    } = &outcome
    {
        if let Some(old) = previous_secret.filter(|old| old != secret_name) {
            remove_secret(&ctx.client, cr, &old).await?;
        }
        ctx.metrics.credentials_expiry.set(
            &namespace,
            &cr.name_any(),
            content.credentials.expiration,
        );
        if *issued {
            let expiration = content.credentials.expiration.to_string();
            publish(
                cr,
                ctx,
                EventType::Normal,
                reason::CREDENTIALS_ISSUED,
                format!(
                    "issued credentials for {} into Secret {secret_name}, valid until {expiration}",
                    role.arn
                ),
            )
            .await;
            let targets = &spec.rollout_restart_targets;
            for (target, result) in
                restart_targets(&ctx.client, &namespace, targets, &expiration).await
            {
                let (type_, why, note) = match result {
                    RestartResult::Restarted => (
                        EventType::Normal,
                        "RolloutRestarted",
                        format!("restarted {target} for new credentials"),
                    ),
                    RestartResult::NotFound => (
                        EventType::Warning,
                        "RolloutTargetNotFound",
                        format!("rollout restart target {target} does not exist in this namespace"),
                    ),
                    RestartResult::Failed(e) => (
                        EventType::Warning,
                        "RolloutRestartFailed",
                        format!("could not restart {target}: {e}"),
                    ),
                };
                publish(cr, ctx, type_, why, note).await;
            }
        }
    }
    Ok(Some(outcome))
}

/// When to look again: at the next refresh if that comes before the resync, soon when waiting.
fn next_visit<A: Aws>(ctx: &Context<A>, credentials: Option<&CredentialsOutcome>) -> Action {
    let resync = jitter(ctx.resync_interval, 0.2);
    match credentials {
        Some(CredentialsOutcome::Ready { content, .. }) => {
            let until_refresh = content.refresh_at.duration_since(Timestamp::now());
            let until_refresh = Duration::try_from(until_refresh)
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1));
            Action::requeue(resync.min(until_refresh))
        }
        Some(CredentialsOutcome::Waiting { .. }) => {
            Action::requeue(jitter(Duration::from_secs(10), 0.5))
        }
        Some(CredentialsOutcome::SecretNotOwned { .. }) | None => Action::requeue(resync),
    }
}

/// One event per AWS change. The action is the IAM operation: kube's recorder folds events of
/// the same object, type, reason and action within minutes into one (keeping the first note),
/// so with a shared action every change after the first would only raise a count.
async fn publish_changes<A: Aws>(cr: &CrossAccountRole, ctx: &Context<A>, applied: &[Change]) {
    for change in applied {
        tracing::info!(operation = change.operation(), "{}", change.describe());
        let event = Event {
            type_: EventType::Normal,
            reason: "AwsChange".to_owned(),
            note: Some(change.describe()),
            action: change.operation().to_owned(),
            secondary: None,
        };
        record(ctx, &event, &cr.object_ref(&())).await;
    }
}

async fn publish<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_to(&cr.object_ref(&()), ctx, type_, reason, note).await;
}

async fn publish_to<A: Aws>(
    object: &ObjectReference,
    ctx: &Context<A>,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    record(ctx, &event, object).await;
}

async fn record<A: Aws>(ctx: &Context<A>, event: &Event, object: &ObjectReference) {
    if let Err(e) = ctx.recorder.publish(event, object).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

/// Writes conditions and the reconciled identifiers; an event goes out when the outcome's reason
/// changes (not on every retry).
async fn record_status<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
    result: &Result<Outcome, ReconcileError>,
) -> Result<(), ReconcileError> {
    let old = cr.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let generation = cr.meta().generation;
    let now = Timestamp::now();
    let mut credentials_condition = None;
    let (ok, why, message) = match result {
        Ok(Outcome::Synced {
            role_arn,
            account_id,
            external_id,
            credentials,
        }) => {
            status.role_arn = Some(role_arn.clone());
            status.account_id = Some(account_id.clone());
            status.external_id = Some(external_id.clone());
            status.principal_arn = Some(ctx.operator.principal_arn.clone());
            credentials_condition = credentials_status(&mut status, credentials.as_deref());
            (
                true,
                reason::SYNCED,
                format!("IAM role {role_arn} is in sync"),
            )
        }
        Ok(Outcome::Refused { reason, message }) => (false, *reason, message.clone()),
        Err(e) => (false, reason::AWS_ERROR, e.to_string()),
    };
    let previous = |type_| condition(&old.conditions, type_).map(|c| c.reason.clone());
    set_condition(
        &mut status.conditions,
        ConditionUpdate::new(cond::ROLE_SYNCED, ok, why, message.clone()),
        generation,
        now,
    );
    // Ready: the role is in sync and, when asked for, the credentials are too.
    let ready = match &credentials_condition {
        Some(update) if ok && !update.status => {
            ConditionUpdate::new(cond::READY, false, update.reason, update.message.clone())
        }
        _ => ConditionUpdate::new(cond::READY, ok, why, message.clone()),
    };
    if let Some(update) = credentials_condition {
        if !update.status && previous(cond::CREDENTIALS_READY).as_deref() != Some(update.reason) {
            publish(
                cr,
                ctx,
                EventType::Warning,
                update.reason,
                update.message.clone(),
            )
            .await;
        }
        set_condition(&mut status.conditions, update, generation, now);
    } else if ok && cr.spec.credentials.is_none() {
        status
            .conditions
            .retain(|c| c.type_ != cond::CREDENTIALS_READY);
    }
    set_condition(&mut status.conditions, ready, generation, now);
    status.observed_generation = generation;
    if !ok && previous(cond::ROLE_SYNCED).as_deref() != Some(why) {
        publish(cr, ctx, EventType::Warning, why, message).await;
    }
    if status != old {
        write_status(cr, ctx, &status).await?;
    }
    Ok(())
}

/// Fills `status.credentials` and returns the `CredentialsReady` condition for an outcome.
fn credentials_status(
    status: &mut CrossAccountRoleStatus,
    outcome: Option<&CredentialsOutcome>,
) -> Option<ConditionUpdate> {
    let outcome = match outcome {
        None => {
            status.credentials = None;
            return None;
        }
        Some(outcome) => outcome,
    };
    let why = outcome_reason(outcome);
    Some(match outcome {
        CredentialsOutcome::Ready {
            secret_name,
            content,
            ..
        } => {
            status.credentials = Some(CredentialsStatus {
                secret_name: secret_name.clone(),
                expiration: Some(Time(content.credentials.expiration)),
                next_refresh: Some(Time(content.refresh_at)),
            });
            ConditionUpdate::new(
                cond::CREDENTIALS_READY,
                true,
                why,
                format!("Secret {secret_name} holds valid credentials"),
            )
        }
        CredentialsOutcome::Waiting { message }
        | CredentialsOutcome::SecretNotOwned { message } => {
            ConditionUpdate::new(cond::CREDENTIALS_READY, false, why, message.clone())
        }
    })
}

async fn write_status<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
    status: &CrossAccountRoleStatus,
) -> Result<(), ReconcileError> {
    let api: Api<CrossAccountRole> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    apply_status(&api, &cr.name_any(), status)
        .await
        .map_err(ReconcileError::kube("writing status"))
}

async fn ensure_finalizer<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
) -> Result<(), ReconcileError> {
    if cr.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let api: Api<CrossAccountRole> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    // A JSON patch with a resourceVersion test: never overwrite finalizers added concurrently.
    let mut ops = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": cr.resource_version()}),
    ];
    if cr.meta().finalizers.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}));
    }
    let patch: json_patch::Patch = serde_json::from_value(json!(ops)).expect("valid JSON patch");
    api.patch(
        &cr.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(ReconcileError::kube("adding the finalizer"))?;
    Ok(())
}

/// The last step of deletion: the credentials Secret goes (also where no garbage collector runs),
/// the expiry metric is dropped, the finalizer is released.
async fn release<A: Aws>(cr: &CrossAccountRole, ctx: &Context<A>) -> Result<(), ReconcileError> {
    if let Some(credentials) = cr.status.as_ref().and_then(|s| s.credentials.as_ref()) {
        remove_secret(&ctx.client, cr, &credentials.secret_name).await?;
    }
    ctx.metrics
        .credentials_expiry
        .remove(&cr.namespace().unwrap_or_default(), &cr.name_any());
    remove_finalizer(cr, ctx).await
}

async fn remove_finalizer<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
) -> Result<(), ReconcileError> {
    let api: Api<CrossAccountRole> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let Some(index) = cr.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]))
    .expect("valid JSON patch");
    match api
        .patch(
            &cr.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ReconcileError::kube("removing the finalizer")(e)),
    }
}

/// Deletion: clean up AWS (unless Retain), then release the finalizer.
async fn finalize<A: Aws>(
    cr: &CrossAccountRole,
    ctx: &Context<A>,
) -> Result<Action, ReconcileError> {
    if !cr.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    if cr.spec.deletion_policy == DeletionPolicy::Retain {
        publish(
            cr,
            ctx,
            EventType::Normal,
            "Retained",
            "deletionPolicy is Retain: the IAM role is left in AWS".to_owned(),
        )
        .await;
        release(cr, ctx).await?;
        return Ok(Action::await_change());
    }
    ctx.recent.forget(&key(cr));
    let Some(account) = ctx.caches.account(&cr.spec.account_ref).await? else {
        // Without the AwsAccount there is no way into the target account; blocking deletion
        // forever would help nobody, so say what may be left behind.
        let role = cr
            .status
            .as_ref()
            .and_then(|s| s.role_arn.clone())
            .unwrap_or_else(|| "(unknown)".into());
        publish(
            cr,
            ctx,
            EventType::Warning,
            reason::ACCOUNT_NOT_READY,
            format!(
                "AwsAccount {} no longer exists; role {role} could not be removed",
                cr.spec.account_ref
            ),
        )
        .await;
        release(cr, ctx).await?;
        return Ok(Action::await_change());
    };
    let owner = owner_of(cr, ctx);
    let role_name = cleanup_role_name(cr, &account, &owner);
    let spec_grants: BTreeSet<Principal> = cr
        .spec
        .grants
        .iter()
        .filter_map(|g| match (&g.user, &g.role) {
            (Some(user), None) => Some(Principal::User(user.clone())),
            (None, Some(role)) => Some(Principal::Role(role.clone())),
            _ => None,
        })
        .collect();
    let target = ctx.aws.target(&access_of(&account)).await;
    let source = ctx.aws.source();
    let (applied, result) = delete_role(
        &target,
        &source,
        &role_name,
        &owner,
        &spec_grants,
        &ctx.operator.source_account_id,
    )
    .await;
    publish_changes(cr, ctx, &applied).await;
    result?;
    release(cr, ctx).await?;
    Ok(Action::await_change())
}

/// The role to delete: the one status recorded, else the name the spec gives or defaults to.
fn cleanup_role_name(cr: &CrossAccountRole, account: &AwsAccount, owner: &Owner) -> String {
    let from_status = cr
        .status
        .as_ref()
        .and_then(|s| s.role_arn.as_deref())
        .and_then(|arn| arn.rsplit('/').next())
        .map(str::to_owned);
    from_status
        .or_else(|| cr.spec.role_name.clone())
        .unwrap_or_else(|| {
            default_role_name(
                account.spec.role_name_prefix.as_deref().unwrap_or_default(),
                &owner.namespace,
                &owner.name,
            )
        })
}
