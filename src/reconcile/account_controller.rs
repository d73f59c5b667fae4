//! The AwsAccount controller: verifies that the operator can act in the account (GetCallerIdentity
//! through the management role) and reports it as the `Ready` condition.

use std::sync::Arc;

use futures::{Future, Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, WatchStreamExt, controller::Action, reflector, watcher},
};
use tracing::info_span;

use super::{
    Context, ReconcileError,
    backoff::jitter,
    status::{ConditionUpdate, apply_status, set_condition},
};
use crate::{
    api::{
        AwsAccount, AwsAccountStatus,
        names::{condition as cond, reason},
    },
    aws::{AccountAccess, AccountApi, Aws},
    controller::watch::{NoTriggerBackoff, recovering},
};

const KIND: &str = "AwsAccount";

/// An AwsAccount as the watch delivers it; one this version cannot read is reported on the
/// object instead of stalling the watch.
type Guarded = DeserializeGuard<AwsAccount>;

/// The controller's stream and a future that completes once its cache synced.
pub fn controller<A: Aws>(
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
    .applied_objects();
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
        Err(invalid) => {
            tracing::warn!(account = %guarded.name_any(), error = %invalid.error, "unreadable AwsAccount");
            let mut status = AwsAccountStatus::default();
            set_condition(
                &mut status.conditions,
                ConditionUpdate::new(
                    cond::READY,
                    false,
                    reason::INVALID_SPEC,
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
    super::measured(&ctx, KIND, &account.name_any(), span, verify(account, &ctx)).await
}

fn error_policy<A: Aws>(
    account: Arc<Guarded>,
    error: &ReconcileError,
    ctx: Arc<Context<A>>,
) -> Action {
    super::retry_later(&ctx, KIND, &account.name_any(), error)
}

/// The account ID in an ARN (`arn:aws:sts::123456789012:assumed-role/...`).
pub fn arn_account(arn: &str) -> Option<&str> {
    arn.split(':').nth(4)
}

async fn verify<A: Aws>(account: &AwsAccount, ctx: &Context<A>) -> Result<Action, ReconcileError> {
    let access = AccountAccess {
        account_id: account.spec.account_id.clone(),
        management_role_arn: account.spec.management_role_arn.clone(),
        external_id: account.spec.management_external_id.clone(),
    };
    let identity = ctx.aws.target(&access).await.caller_arn().await;
    let (update, caller_arn, result) = match identity {
        Ok(arn) if arn_account(&arn) == Some(account.spec.account_id.as_str()) => (
            ConditionUpdate::new(
                cond::READY,
                true,
                reason::VERIFIED,
                format!(
                    "the operator acts in account {} as {arn}",
                    account.spec.account_id
                ),
            ),
            Some(arn),
            Ok(Action::requeue(jitter(ctx.resync_interval, 0.2))),
        ),
        Ok(arn) => (
            ConditionUpdate::new(
                cond::READY,
                false,
                reason::INVALID_SPEC,
                format!(
                    "the management identity {arn} is not in account {} (spec.accountId); check spec.managementRoleArn",
                    account.spec.account_id
                ),
            ),
            Some(arn),
            Ok(Action::await_change()),
        ),
        Err(e) => (
            ConditionUpdate::new(cond::READY, false, reason::AWS_ERROR, e.to_string()),
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
