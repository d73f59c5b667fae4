//! The AwsAccount controller: verifies that the operator can act in the account (GetCallerIdentity
//! through the management role) and reports it as the `Ready` condition.

use std::{sync::Arc, time::Duration};

use futures::{Future, Stream, StreamExt};
use jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    api::ListParams,
    core::DeserializeGuard,
    runtime::{Controller, WatchStreamExt, controller::Action, predicates, reflector, watcher},
};
use tracing::info_span;

use super::{
    Context,
    backoff::jitter,
    finalizer,
    requeue::RESYNC_SPREAD,
    watch::{NoTriggerBackoff, recovering},
};
use crate::{
    api::{
        AwsAccount, AwsAccountStatus, CrossAccountRole,
        names::{ACCOUNT_FINALIZER, Reason, condition as cond},
    },
    aws::{AccountApi, Arn, Aws},
    error::ReconcileError,
    pipeline::{
        observe::access_of,
        status::{ConditionUpdate, apply_status, set_condition},
    },
};

const KIND: &str = "AwsAccount";

/// An AwsAccount as the watch delivers it; one this version cannot read is reported on the
/// object instead of stalling the watch.
type Guarded = DeserializeGuard<AwsAccount>;

/// The controller's stream and a future that completes once its cache synced.
pub(super) fn controller<A: Aws>(
    ctx: Arc<Context<A>>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (
    impl Stream<Item = ()> + Send,
    impl Future<Output = ()> + Send,
) {
    let (store, writer) = reflector::store();
    let trigger = recovering(
        "AwsAccount",
        watcher::watcher(
            Api::<Guarded>::all(ctx.client.clone()),
            watcher::Config::default(),
        ),
    )
    .reflect(writer)
    .applied_objects()
    // Our own status writes do not trigger a verification: spec changes and the schedule do.
    .predicate_filter(predicates::generation, Default::default());
    let stream = Controller::for_stream(trigger, store.clone())
        // The watch paces its own retries.
        .trigger_backoff(NoTriggerBackoff)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(|_| ());
    (stream, super::synced(store))
}

async fn reconcile<A: Aws>(
    guarded: Arc<Guarded>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let account = match &guarded.0 {
        Ok(account) => account,
        Err(_) if guarded.meta().deletion_timestamp.is_some() => {
            // Unreadable, but deleted: it goes once no CrossAccountRole uses it.
            if users_of(&ctx, &guarded.name_any()).await?.is_empty() {
                let api: Api<Guarded> = Api::all(ctx.client.clone());
                finalizer::release(&api, &*guarded, ACCOUNT_FINALIZER).await?;
                return Ok(Action::await_change());
            }
            return Ok(Action::requeue(IN_USE_RECHECK));
        }
        Err(invalid) => {
            tracing::warn!(account = %guarded.name_any(), error = %invalid.error, "unreadable AwsAccount");
            let mut status = AwsAccountStatus::default();
            set_condition(
                &mut status.conditions,
                ConditionUpdate::new(
                    cond::READY,
                    false,
                    Reason::InvalidSpec,
                    format!(
                        "this AwsAccount cannot be read by the operator ({}); fix the object \
                         (kubectl edit) or run an operator version that understands it",
                        invalid.error
                    ),
                ),
                guarded.meta().generation,
                Timestamp::now(),
            );
            let api: Api<AwsAccount> = Api::all(ctx.client.clone());
            apply_status(&api, &guarded.name_any(), &status)
                .await
                .map_err(ReconcileError::kube("writing status"))?;
            return Ok(Action::await_change());
        }
    };
    let span = info_span!("reconcile", account = %account.name_any(), account_id = %account.spec.account_id);
    let work = async {
        if account.meta().deletion_timestamp.is_some() {
            return finalize(account, &ctx).await;
        }
        let api: Api<AwsAccount> = Api::all(ctx.client.clone());
        finalizer::ensure(&api, account, ACCOUNT_FINALIZER).await?;
        verify(account, &ctx).await
    };
    super::measured(&ctx, KIND, &account.name_any(), span, work).await
}

fn error_policy<A: Aws>(
    account: Arc<Guarded>,
    error: &ReconcileError,
    ctx: Arc<Context<A>>,
) -> Action {
    super::retry_later(&ctx, KIND, &account.name_any(), error)
}

/// How often an AwsAccount whose deletion waits for its CrossAccountRoles looks again.
const IN_USE_RECHECK: Duration = Duration::from_secs(10);

/// Deletion: the account goes once no CrossAccountRole uses it (their roles could otherwise be
/// neither kept inside its guardrails nor removed); until then `Deleting=False/InUse` says which.
async fn finalize<A: Aws>(
    account: &AwsAccount,
    ctx: &Context<A>,
) -> Result<Action, ReconcileError> {
    if !finalizer::has_finalizer(account, ACCOUNT_FINALIZER) {
        return Ok(Action::await_change());
    }
    let users = users_of(ctx, &account.name_any()).await?;
    let api: Api<AwsAccount> = Api::all(ctx.client.clone());
    if users.is_empty() {
        finalizer::release(&api, account, ACCOUNT_FINALIZER).await?;
        return Ok(Action::await_change());
    }
    let shown: Vec<&str> = users.iter().take(5).map(String::as_str).collect();
    let message = format!(
        "{} CrossAccountRole(s) still use this AwsAccount ({}{}); delete them first, then the AwsAccount goes",
        users.len(),
        shown.join(", "),
        if users.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    );
    let old = account.status.clone().unwrap_or_default();
    let mut status = old.clone();
    // Ready stays what verification says: the account still serves its CrossAccountRoles.
    set_condition(
        &mut status.conditions,
        ConditionUpdate::new(cond::DELETING, false, Reason::InUse, message),
        account.meta().generation,
        Timestamp::now(),
    );
    if status != old {
        apply_status(&api, &account.name_any(), &status)
            .await
            .map_err(ReconcileError::kube("writing AwsAccount status"))?;
    }
    Ok(Action::requeue(IN_USE_RECHECK))
}

/// `namespace/name` of every CrossAccountRole whose `spec.accountRef` is `account`, in the
/// namespaces this operator manages (with `--watch-namespaces`, roles elsewhere are another
/// operator's, and its RBAC does not reach them).
async fn users_of<A: Aws>(ctx: &Context<A>, account: &str) -> Result<Vec<String>, ReconcileError> {
    let apis: Vec<Api<DeserializeGuard<CrossAccountRole>>> = match ctx.scope.namespaces() {
        None => vec![Api::all(ctx.client.clone())],
        Some(names) => names
            .iter()
            .map(|ns| Api::namespaced(ctx.client.clone(), ns))
            .collect(),
    };
    let mut roles = Vec::new();
    for api in apis {
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(ReconcileError::kube("listing CrossAccountRoles"))?;
        roles.extend(list.items);
    }
    Ok(roles
        .iter()
        .filter(|g| match &g.0 {
            Ok(cr) => cr.spec.account_ref == account,
            // An unreadable one may use it; keep the account for it.
            Err(_) => true,
        })
        .map(|g| format!("{}/{}", g.namespace().unwrap_or_default(), g.name_any()))
        .collect())
}

async fn verify<A: Aws>(account: &AwsAccount, ctx: &Context<A>) -> Result<Action, ReconcileError> {
    let identity = ctx.aws.target(&access_of(account)).await.caller_arn().await;
    let in_account =
        |arn: &str| Arn::parse(arn).is_some_and(|a| a.account() == account.spec.account_id);
    let (update, caller_arn, result) = match identity {
        Ok(arn) if in_account(&arn) => (
            ConditionUpdate::new(
                cond::READY,
                true,
                Reason::Verified,
                format!(
                    "the operator acts in account {} as {arn}",
                    account.spec.account_id
                ),
            ),
            Some(arn),
            Ok(Action::requeue(jitter(ctx.resync_interval, RESYNC_SPREAD))),
        ),
        Ok(arn) => (
            ConditionUpdate::new(
                cond::READY,
                false,
                Reason::InvalidSpec,
                format!(
                    "the management identity {arn} is not in account {} (spec.accountId); check spec.managementRoleArn",
                    account.spec.account_id
                ),
            ),
            Some(arn),
            Ok(Action::await_change()),
        ),
        Err(e) => (
            ConditionUpdate::new(cond::READY, false, Reason::AwsError, e.summary()),
            None,
            Err(ReconcileError::Aws(e)),
        ),
    };
    let old = account.status.clone().unwrap_or_default();
    let mut status = old.clone();
    set_condition(
        &mut status.conditions,
        update,
        account.meta().generation,
        Timestamp::now(),
    );
    status.caller_arn = caller_arn.or(old.caller_arn.clone());
    status.observed_generation = account.meta().generation;
    if status != old {
        let api: Api<AwsAccount> = Api::all(ctx.client.clone());
        apply_status(&api, &account.name_any(), &status)
            .await
            .map_err(ReconcileError::kube("writing AwsAccount status"))?;
    }
    result
}
