//! One reconcile of a CrossAccountRole, as a pipeline with one file a step, in the order the data
//! flows (no step imports a later one):
//!
//! validate -> desired -> observe -> ownership -> plan -> apply -> credentials -> secret ->
//! rollout -> status; on deletion, cleanup.
//!
//! [`reconcile`] reads as the whole pipeline. Pure steps (validate, desired, ownership, plan, the
//! credentials decision, secret building, status derivation) take no client; I/O happens in
//! observe, apply, the mint, the Secret and status writes. The controller (`crate::controller`)
//! looks up what the pipeline needs, publishes the events it returns and decides when to look
//! again.

pub(crate) mod apply;
pub(crate) mod cleanup;
pub(crate) mod credentials;
pub(crate) mod desired;
pub(crate) mod observe;
pub(crate) mod ownership;
pub(crate) mod plan;
pub(crate) mod rollout;
pub(crate) mod secret;
pub(crate) mod status;
pub(crate) mod validate;

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, Resource, ResourceExt};

use self::{
    credentials::{CredentialsOutcome, Minted, RoleForCredentials},
    ownership::Ownership,
    rollout::RestartResult,
    status::{Ending, Note, Outcome, Synced},
    validate::{Refusal, ValidatedSpec},
};
use crate::{
    api::{AwsAccount, CredentialsSpec, CrossAccountRole, names::Reason},
    aws::{Aws, AwsError, Change},
    error::ReconcileError,
    naming::{OperatorIdentity, Owner},
};

/// The clients and identity the pipeline works with.
pub(crate) struct Io<'a, A: Aws> {
    pub kube: &'a Client,
    pub aws: &'a A,
    pub operator: &'a OperatorIdentity,
}

/// What the controller looked up for this run.
pub(crate) struct Facts<'a> {
    /// The AwsAccount `spec.accountRef` names, if it exists.
    pub account: Option<&'a AwsAccount>,
    /// The labels of the CR's namespace (for `allowedNamespaces`).
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// A recent IAM sync from the same inputs, which stands in for desired -> apply.
    pub recent: Option<SyncedRole>,
    pub now: Timestamp,
    /// In [0, 1): how much of the refresh jitter new credentials get.
    pub jitter: f64,
}

/// What a successful IAM sync established, for the credentials step (and for the controller to
/// remember, so that reconciles soon after need not read IAM again).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SyncedRole {
    pub arn: String,
    pub created: Option<Timestamp>,
    /// The role's maximum session duration as synced (caps the credentials' duration).
    pub max_session_duration: i32,
}

/// What a run of the pipeline did, for the controller.
#[derive(Debug)]
pub(crate) struct Report {
    pub outcome: Outcome,
    /// The failure to retry with backoff.
    pub error: Option<ReconcileError>,
    /// A successful IAM sync made by this run.
    pub synced: Option<SyncedRole>,
    /// The events to publish.
    pub notes: Vec<Note>,
}

/// Why the pipeline stopped early.
enum Stop {
    Refused(Refusal),
    Failed(ReconcileError),
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Self {
        Stop::Refused(refusal)
    }
}

impl From<ReconcileError> for Stop {
    fn from(error: ReconcileError) -> Self {
        Stop::Failed(error)
    }
}

impl From<AwsError> for Stop {
    fn from(error: AwsError) -> Self {
        Stop::Failed(error.into())
    }
}

/// Runs the pipeline for `cr` (not being deleted) and writes its status. `before_first_write` is
/// called after the first successful read of the target account and before any AWS write (the
/// controller adds its finalizer there).
pub(crate) async fn reconcile<A: Aws>(
    io: &Io<'_, A>,
    cr: &CrossAccountRole,
    facts: Facts<'_>,
    before_first_write: impl AsyncFnOnce() -> Result<(), ReconcileError>,
) -> Report {
    let owner = Owner::of(cr, io.operator);
    let mut applied = Vec::new();
    let mut synced_now = None;
    let result = run(
        io,
        cr,
        &facts,
        &owner,
        before_first_write,
        &mut applied,
        &mut synced_now,
    )
    .await;
    let (ending, mut error) = match result {
        Ok(synced) => (Ending::Synced(Box::new(synced)), None),
        Err(Stop::Refused(refusal)) => (Ending::Refused(refusal), None),
        Err(Stop::Failed(e)) => (
            Ending::Failed {
                reason: e.reason(),
                message: e.summary(),
            },
            Some(e),
        ),
    };
    let outcome = Outcome { ending, applied };

    // Status: derived as data, written only when it changed.
    let old = cr.status.clone().unwrap_or_default();
    let (new, notes) = status::derive_status(
        &old,
        &outcome,
        cr.meta().generation,
        &io.operator.principal_arn,
        facts.now,
    );
    if new != old {
        let api: Api<CrossAccountRole> =
            Api::namespaced(io.kube.clone(), &cr.namespace().unwrap_or_default());
        if let Err(e) = status::apply_status(&api, &cr.name_any(), &new).await
            && error.is_none()
        {
            error = Some(ReconcileError::kube("writing status")(e));
        }
    }
    Report {
        outcome,
        error,
        synced: synced_now,
        notes,
    }
}

/// validate -> (desired -> observe -> ownership -> plan -> apply) -> credentials -> secret ->
/// rollout.
async fn run<A: Aws>(
    io: &Io<'_, A>,
    cr: &CrossAccountRole,
    facts: &Facts<'_>,
    owner: &Owner,
    before_first_write: impl AsyncFnOnce() -> Result<(), ReconcileError>,
    applied: &mut Vec<Change>,
    synced_now: &mut Option<SyncedRole>,
) -> Result<Synced, Stop> {
    let account = validate::ready_account(cr, facts.account)?;
    let spec = validate::validate(cr, account, facts.namespace_labels, io.operator, owner)?;
    let role = match facts.recent.clone() {
        Some(role) => role,
        None => {
            let role = sync_iam(io, account, &spec, owner, before_first_write, applied).await?;
            *synced_now = Some(role.clone());
            role
        }
    };
    let (credentials, restarts) = match &cr.spec.credentials {
        Some(wanted) => {
            let (outcome, restarts) =
                sync_credentials(io, cr, owner, account, &role, wanted, facts).await?;
            (Some(outcome), restarts)
        }
        None => {
            if let Some(old) = previous_secret(cr) {
                secret::remove(&secrets_of(io, cr), cr, &old).await?;
            }
            (None, Vec::new())
        }
    };
    Ok(Synced {
        role_arn: role.arn,
        account_id: account.spec.account_id.clone(),
        external_id: owner.external_id(),
        credentials,
        restarts,
    })
}

/// desired -> observe -> ownership -> plan -> apply: brings the IAM role and the grants to the
/// spec, and returns the role.
async fn sync_iam<A: Aws>(
    io: &Io<'_, A>,
    account: &AwsAccount,
    spec: &ValidatedSpec,
    owner: &Owner,
    before_first_write: impl AsyncFnOnce() -> Result<(), ReconcileError>,
    applied: &mut Vec<Change>,
) -> Result<SyncedRole, Stop> {
    let desired = desired::desired_role(spec, owner, io.operator, &account.spec.account_id)?;
    let target = io.aws.target(&observe::access_of(account)).await;
    let source = io.aws.source();
    let observed =
        observe::observe(&target, &source, &desired, &io.operator.source_account_id).await?;
    if let Ownership::Foreign(message) =
        ownership::ownership(observed.role.as_ref(), owner, spec.adopt)
    {
        return Err(Refusal::new(Reason::RoleNotOwned, message).into());
    }
    // Only now, after a successful read of the target account, is there something to clean up.
    before_first_write().await?;
    let changes = plan::plan_role_changes(&desired, &observed);
    let (done, result) = apply::apply_changes(&target, &source, &changes).await;
    applied.extend(done);
    result?;
    let created = match &observed.role {
        Some(role) => role.created,
        None => Some(Timestamp::now()),
    };
    Ok(SyncedRole {
        arn: observed.role.map_or(desired.arn, |role| role.arn),
        created,
        max_session_duration: desired.max_session_duration,
    })
}

/// credentials -> secret -> rollout: keeps valid credentials for `role` in the CR's Secret,
/// reusing what it holds until its refresh time; restarts the rollout targets after a mint.
async fn sync_credentials<A: Aws>(
    io: &Io<'_, A>,
    cr: &CrossAccountRole,
    owner: &Owner,
    account: &AwsAccount,
    role: &SyncedRole,
    wanted: &CredentialsSpec,
    facts: &Facts<'_>,
) -> Result<(CredentialsOutcome, Vec<(String, RestartResult)>), Stop> {
    let secrets = secrets_of(io, cr);
    let name = owner.secret_name(wanted.secret_name.as_deref());
    let existing = secret::read(&secrets, &name).await?;
    if let Some(found) = &existing
        && !secret::owned_by(found, cr)
    {
        let message = format!(
            "Secret {name} exists and is not owned by this CrossAccountRole; choose another spec.credentials.secretName"
        );
        return Ok((CredentialsOutcome::SecretNotOwned { message }, Vec::new()));
    }
    let for_role = RoleForCredentials {
        arn: &role.arn,
        max_session_duration: role.max_session_duration,
        account_cap: account.spec.max_session_duration_seconds,
    };
    let held = existing.as_ref().and_then(secret::read_held);
    let (held, issued) = match credentials::reusable(held, &for_role, wanted, facts.now) {
        Some(held) => (held, false),
        None => {
            let request = credentials::assume_request(owner, wanted, &for_role, io.operator);
            match credentials::mint(&io.aws.source(), &request, role.created, facts.now).await? {
                Minted::Propagating(message) => {
                    return Ok((CredentialsOutcome::Waiting { message }, Vec::new()));
                }
                Minted::Issued(issued) => {
                    let held =
                        credentials::hold(issued, &for_role, wanted, facts.now, facts.jitter);
                    secret::write(&secrets, &secret::render_secret(cr, &name, &held)).await?;
                    (held, true)
                }
            }
        }
    };
    if let Some(old) = previous_secret(cr).filter(|old| *old != name) {
        secret::remove(&secrets, cr, &old).await?;
    }
    let restarts = if issued {
        // The new expiration is the stamp: one issue restarts each target once.
        let stamp = held.credentials.expiration.to_string();
        rollout::restart_targets(
            io.kube,
            &cr.namespace().unwrap_or_default(),
            &wanted.rollout_restart_targets,
            &stamp,
        )
        .await
    } else {
        Vec::new()
    };
    let outcome = CredentialsOutcome::Ready {
        secret_name: name,
        held,
        issued,
    };
    Ok((outcome, restarts))
}

/// The Secret status says the credentials were last kept in.
fn previous_secret(cr: &CrossAccountRole) -> Option<String> {
    cr.status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .map(|c| c.secret_name.clone())
}

fn secrets_of<A: Aws>(io: &Io<'_, A>, cr: &CrossAccountRole) -> Api<Secret> {
    Api::namespaced(io.kube.clone(), &cr.namespace().unwrap_or_default())
}

/// The IAM operations the pipeline plans for `cr` when nothing of it exists in AWS yet (what
/// `make bench` counts as the minimum), or the refusal's message.
pub fn planned_writes_for_new_role(
    cr: &CrossAccountRole,
    account: &AwsAccount,
    namespace_labels: &BTreeMap<String, String>,
    operator: &OperatorIdentity,
) -> Result<Vec<&'static str>, String> {
    let owner = Owner::of(cr, operator);
    let refused = |r: Refusal| r.message;
    let spec =
        validate::validate(cr, account, namespace_labels, operator, &owner).map_err(refused)?;
    let desired = desired::desired_role(&spec, &owner, operator, &account.spec.account_id)
        .map_err(refused)?;
    Ok(
        plan::plan_role_changes(&desired, &observe::Observed::default())
            .iter()
            .map(Change::operation)
            .collect(),
    )
}
