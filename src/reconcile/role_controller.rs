//! The CrossAccountRole controller: runs the pipeline for one object and records the outcome in
//! status, events and metrics.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use futures::{Future, Stream};
use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
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
use tracing::{Instrument, info_span};

use super::{
    Context, ReconcileError,
    apply::apply_changes,
    backoff::jitter,
    cleanup::delete_role,
    desired::{Owner, desired_role},
    observe::observe,
    plan::{Ownership, ownership, plan_role_changes},
    status::{ConditionUpdate, apply_status, condition, set_condition},
    validate::{Refusal, default_role_name, validate},
};
use crate::{
    api::{
        AwsAccount, CrossAccountRole, CrossAccountRoleStatus, DeletionPolicy,
        names::{FINALIZER, condition as cond, reason},
    },
    aws::{AccountAccess, Aws, Change, Principal},
    metrics::{ReconcileErrorLabels, ReconcileLabels},
};

const KIND: &str = "CrossAccountRole";

/// The controller's stream (drive it to run) and a future that completes once its cache synced.
pub fn controller<A: Aws>(
    ctx: Arc<Context<A>>,
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
    let trigger = watcher(
        Api::<CrossAccountRole>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::annotations),
        Default::default(),
    );
    let controller = Controller::for_stream(trigger, store.clone());
    let ready_store = store.clone();
    let stream = controller
        // A change to an AwsAccount (readiness, guardrails) re-queues the roles that use it.
        .watches(
            Api::<AwsAccount>::all(client),
            watcher::Config::default(),
            move |account| {
                let name = account.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(move |cr| cr.spec.account_ref == name)
                    .map(|cr| ObjectRef::from_obj(&*cr))
            },
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let ready = async move {
        let _ = ready_store.wait_until_ready().await;
    };
    (stream, ready)
}

use futures::StreamExt;

fn key(cr: &CrossAccountRole) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

async fn reconcile<A: Aws>(
    cr: Arc<CrossAccountRole>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let labels = ReconcileLabels { kind: KIND };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = Instant::now();
    let span = info_span!(
        "reconcile",
        namespace = %cr.namespace().unwrap_or_default(),
        name = %cr.name_any(),
        account = %cr.spec.account_ref,
    );
    let result = reconcile_role(&cr, &ctx).instrument(span).await;
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_errors
            .get_or_create(&ReconcileErrorLabels {
                kind: KIND,
                category: e.category(),
            })
            .inc();
    } else {
        ctx.backoff.reset(&key(&cr));
    }
    result
}

fn error_policy<A: Aws>(
    cr: Arc<CrossAccountRole>,
    error: &ReconcileError,
    ctx: Arc<Context<A>>,
) -> Action {
    let delay = ctx.backoff.next(&key(&cr));
    tracing::warn!(namespace = %cr.namespace().unwrap_or_default(), name = %cr.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// How a reconcile of a live (not deleted) object ended, short of an error.
enum Outcome {
    Synced {
        role_arn: String,
        account_id: String,
        external_id: String,
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
        Ok(Outcome::Synced { .. }) => Ok(Action::requeue(jitter(ctx.resync_interval, 0.2))),
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
    let accounts: Api<AwsAccount> = Api::all(ctx.client.clone());
    let Some(account) = accounts
        .get_opt(&cr.spec.account_ref)
        .await
        .map_err(ReconcileError::kube("reading the AwsAccount"))?
    else {
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
    let ns = Api::<Namespace>::all(ctx.client.clone())
        .get(&namespace)
        .await
        .map_err(ReconcileError::kube("reading the namespace"))?;
    let spec = match validate(cr, &account, ns.labels(), &ctx.operator) {
        Ok(spec) => spec,
        Err(Refusal { reason, message }) => return refused(reason, message),
    };

    let owner = owner_of(cr, ctx);
    let target = ctx.aws.target(&access_of(&account)).await;
    let source = ctx.aws.source();
    let desired = desired_role(&spec, &owner, &ctx.operator, &account.spec.account_id);
    let (observed, previously_granted) = observe(
        &target,
        &source,
        &desired.name,
        &desired.grant_policy_name,
        &desired.grants,
        &ctx.operator.source_account_id,
    )
    .await?;
    if let Ownership::Foreign(message) = ownership(observed.role.as_ref(), &owner, spec.adopt) {
        return refused(reason::ROLE_NOT_OWNED, message);
    }
    // Only now, after a successful read of the target account, is there something to clean up.
    ensure_finalizer(cr, ctx).await?;

    let changes = plan_role_changes(&desired, &observed, &previously_granted);
    let (applied, result) = apply_changes(&target, &source, &changes).await;
    publish_changes(cr, ctx, &applied).await;
    result?;
    Ok(Outcome::Synced {
        role_arn: observed.role.map(|r| r.arn).unwrap_or(desired.arn),
        account_id: account.spec.account_id.clone(),
        external_id: owner.external_id(),
    })
}

async fn publish_changes<A: Aws>(cr: &CrossAccountRole, ctx: &Context<A>, applied: &[Change]) {
    for change in applied {
        tracing::info!(operation = change.operation(), "{}", change.describe());
        publish(cr, ctx, EventType::Normal, "AwsChange", change.describe()).await;
    }
}

async fn publish<A: Aws>(
    cr: &CrossAccountRole,
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
    if let Err(e) = ctx.recorder.publish(&event, &cr.object_ref(&())).await {
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
    let (ok, why, message) = match result {
        Ok(Outcome::Synced {
            role_arn,
            account_id,
            external_id,
        }) => {
            status.role_arn = Some(role_arn.clone());
            status.account_id = Some(account_id.clone());
            status.external_id = Some(external_id.clone());
            status.principal_arn = Some(ctx.operator.principal_arn.clone());
            (
                true,
                reason::SYNCED,
                format!("IAM role {role_arn} is in sync"),
            )
        }
        Ok(Outcome::Refused { reason, message }) => (false, *reason, message.clone()),
        Err(e) => (false, reason::AWS_ERROR, e.to_string()),
    };
    let previous_reason = condition(&old.conditions, cond::ROLE_SYNCED).map(|c| c.reason.clone());
    set_condition(
        &mut status.conditions,
        ConditionUpdate::new(cond::ROLE_SYNCED, ok, why, message.clone()),
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        ConditionUpdate::new(cond::READY, ok, why, message.clone()),
        generation,
        now,
    );
    status.observed_generation = generation;
    if !ok && previous_reason.as_deref() != Some(why) {
        publish(cr, ctx, EventType::Warning, why, message).await;
    }
    if status != old {
        write_status(cr, ctx, &status).await?;
    }
    Ok(())
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
        remove_finalizer(cr, ctx).await?;
        return Ok(Action::await_change());
    }
    let accounts: Api<AwsAccount> = Api::all(ctx.client.clone());
    let account = accounts
        .get_opt(&cr.spec.account_ref)
        .await
        .map_err(ReconcileError::kube("reading the AwsAccount"))?;
    let Some(account) = account else {
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
        remove_finalizer(cr, ctx).await?;
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
    remove_finalizer(cr, ctx).await?;
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
