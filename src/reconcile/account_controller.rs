//! The AwsAccount controller: verifies that the operator can act in the account (GetCallerIdentity
//! through the management role) and reports it as the `Ready` condition.

use std::{sync::Arc, time::Instant};

use futures::{Future, Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{Controller, controller::Action, watcher},
};
use tracing::{Instrument, info_span};

use super::{
    Context, ReconcileError,
    backoff::jitter,
    status::{ConditionUpdate, apply_status, set_condition},
};
use crate::{
    api::{
        AwsAccount,
        names::{condition as cond, reason},
    },
    aws::{AccountAccess, AccountApi, Aws},
    metrics::{ReconcileErrorLabels, ReconcileLabels},
};

const KIND: &str = "AwsAccount";

/// The controller's stream and a future that completes once its cache synced.
pub fn controller<A: Aws>(
    ctx: Arc<Context<A>>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (
    impl Stream<Item = ()> + Send,
    impl Future<Output = ()> + Send,
) {
    let controller = Controller::new(
        Api::<AwsAccount>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let stream = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .map(|_| ());
    (stream, super::synced(store))
}

async fn reconcile<A: Aws>(
    account: Arc<AwsAccount>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let labels = ReconcileLabels { kind: KIND };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = Instant::now();
    let span = info_span!("reconcile", account = %account.name_any(), account_id = %account.spec.account_id);
    let result = verify(&account, &ctx).instrument(span).await;
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.backoff.reset(&account.name_any()),
        Err(e) => {
            ctx.metrics
                .reconcile_errors
                .get_or_create(&ReconcileErrorLabels {
                    kind: KIND,
                    category: e.category(),
                })
                .inc();
        }
    }
    result
}

fn error_policy<A: Aws>(
    account: Arc<AwsAccount>,
    error: &ReconcileError,
    ctx: Arc<Context<A>>,
) -> Action {
    let delay = ctx.backoff.next(&account.name_any());
    tracing::warn!(account = %account.name_any(), error = %error, retry_in = ?delay, "AwsAccount verification failed");
    Action::requeue(delay)
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
