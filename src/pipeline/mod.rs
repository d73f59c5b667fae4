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
    credentials::{CredentialsOutcome, HeldCredentials, Minted, RoleForCredentials},
    ownership::{Claim, Ownership},
    rollout::RestartResult,
    status::{Note, Outcome, RoleEnding},
    validate::{AccountLookup, Refusal, ValidatedSpec},
};
use crate::{
    api::{AwsAccount, CredentialsSpec, CrossAccountRole, DEFAULT_MOUNT_PATH, names::Reason},
    aws::{AccountApi, Aws, AwsError, Change},
    error::ReconcileError,
    naming::{OperatorIdentity, Owner},
};

/// The clients and identity the pipeline works with.
pub(crate) struct Io<'a, A: Aws> {
    pub kube: &'a Client,
    pub aws: &'a A,
    pub operator: &'a OperatorIdentity,
    /// Fairness of minting between objects and namespaces.
    pub mints: &'a credentials::MintBudget,
    /// Which principals were seen without an object's legacy grant policy.
    pub legacy: &'a observe::LegacyProbes,
    /// What the source account said lately of each granted principal.
    pub principals: &'a observe::PrincipalReads,
}

/// What the controller looked up for this run.
pub(crate) struct Facts<'a> {
    /// The AwsAccount `spec.accountRef` names.
    pub account: &'a AccountLookup,
    /// The labels of the CR's namespace (for `allowedNamespaces`).
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// A recent IAM sync from the same inputs, which stands in for desired -> apply.
    pub recent: Option<SyncedRole>,
    pub now: Timestamp,
    /// In [0, 1): how much of the refresh jitter new credentials get.
    pub jitter: f64,
    /// Roles no CR may manage: every AwsAccount's management role.
    pub protected_roles: &'a [String],
}

impl Facts<'_> {
    /// What the ownership decision needs for `cr` in `account`.
    fn claim<'a>(&'a self, owner: &'a Owner, account: &'a AwsAccount, adopt: bool) -> Claim<'a> {
        Claim {
            owner,
            adopt,
            protected: self.protected_roles,
            role_path: account.spec.role_path.as_deref().unwrap_or("/"),
            boundary: account.spec.permissions_boundary_arn.as_deref(),
        }
    }
}

/// What a successful IAM sync established, for the credentials step (and for the controller to
/// remember, so that reconciles soon after need not read IAM again).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SyncedRole {
    pub arn: String,
    pub created: Option<Timestamp>,
    /// The role's maximum session duration as synced (caps the credentials' duration).
    pub max_session_duration: i32,
    /// Sessions of the role issued before this time are revoked (`AWSRevokeOlderSessions`).
    pub sessions_revoked_before: Option<Timestamp>,
    /// Granted principals that do not exist in the source account (left out of the role).
    pub missing_grants: Vec<crate::aws::Principal>,
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

/// Why the role part stopped.
enum Stop {
    Refused(Refusal),
    Failed(ReconcileError),
    /// Plan only: these changes (in words) would bring the role to the spec; none was made.
    Planned(Vec<String>),
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
    let mut run = Run::default();
    let outcome = run_steps(io, cr, &facts, &owner, before_first_write, &mut run).await;

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
        if let Err(e) = status::apply_status(&api, &cr.name_any(), &new).await {
            run.errors.push(ReconcileError::kube("writing status")(e));
        }
    }
    Report {
        outcome,
        error: run.errors.into_iter().next(),
        synced: run.synced,
        notes,
    }
}

/// What a run collects besides its outcome.
#[derive(Default)]
struct Run {
    applied: Vec<Change>,
    synced: Option<SyncedRole>,
    errors: Vec<ReconcileError>,
}

/// validate -> (desired -> observe -> ownership -> plan -> apply) -> credentials -> secret ->
/// rollout. Credentials are kept fresh whenever the role is known and the spec permitted, even
/// while IAM management fails or the AwsAccount is not verified: minting needs only STS.
async fn run_steps<A: Aws>(
    io: &Io<'_, A>,
    cr: &CrossAccountRole,
    facts: &Facts<'_>,
    owner: &Owner,
    before_first_write: impl AsyncFnOnce() -> Result<(), ReconcileError>,
    run: &mut Run,
) -> Outcome {
    let mut outcome = Outcome {
        role: RoleEnding::Failed {
            reason: Reason::AwsError,
            message: String::new(),
        },
        credentials: None,
        restarts: Vec::new(),
        applied: Vec::new(),
        revoked: None,
    };
    let checked = validate::named_account(cr, facts.account).and_then(|account| {
        validate::validate(cr, account, facts.namespace_labels, io.operator, owner)
            .map(|checked| (account, checked))
    });
    let (account, checked) = match checked {
        Ok(checked) => checked,
        Err(refusal) => return refused(io, cr, refusal, outcome, run).await,
    };
    let spec = &checked.spec;

    // The role: from a recent sync of the same inputs, else synced now. A spec the guardrails
    // refuse still has its existing role brought back inside them.
    let mut prefetched = None;
    let role = match (
        checked.refusal(),
        validate::verified(account),
        facts.recent.clone(),
    ) {
        (Some(refusal), Ok(()), _) => {
            let claim = facts.claim(owner, account, spec.adopt);
            let restricted = sync_iam(
                io,
                account,
                spec,
                &claim,
                Mode::Restrict,
                before_first_write,
                &mut run.applied,
                facts.now,
            )
            .await;
            let refusal = match restricted {
                Ok(Some(_)) => Refusal::new(
                    refusal.reason,
                    format!(
                        "{}; the role is kept inside the guardrails",
                        refusal.message
                    ),
                ),
                Ok(None) => refusal,
                // A role that is not this object's has nothing to restrict: the refusal stays
                // the spec's own.
                Err(Stop::Refused(other)) if other.reason == Reason::RoleNotOwned => refusal,
                Err(Stop::Refused(other)) => other,
                Err(Stop::Failed(e)) => {
                    run.errors.push(e);
                    refusal
                }
                Err(Stop::Planned(changes)) => Refusal::new(
                    refusal.reason,
                    format!(
                        "{}; plan only ({}), not applied: {}",
                        refusal.message,
                        crate::api::names::PLAN_ONLY_ANNOTATION,
                        changes.join("; ")
                    ),
                ),
            };
            return refused(io, cr, refusal, outcome, run).await;
        }
        (Some(refusal), Err(_), _) => return refused(io, cr, refusal, outcome, run).await,
        (None, Err((message, first)), _) => Err(RoleEnding::AccountNotReady { message, first }),
        (None, Ok(()), Some(role)) => Ok(role),
        (None, Ok(()), None) => {
            let claim = facts.claim(owner, account, spec.adopt);
            // The Secret's read does not depend on IAM: it is made while IAM is synced, not
            // after (the write that follows is conditional on what was read, so reading earlier
            // is as safe).
            let read_secret = async {
                match &cr.spec.credentials {
                    Some(wanted) => {
                        let name = owner.secret_name(wanted.secret_name.as_deref());
                        Some(secret::read(&secrets_of(io, cr), &name).await)
                    }
                    None => None,
                }
            };
            let iam = sync_iam(
                io,
                account,
                spec,
                &claim,
                Mode::Full,
                before_first_write,
                &mut run.applied,
                facts.now,
            );
            let (synced, read) = futures::join!(iam, read_secret);
            prefetched = read;
            match synced {
                Ok(Some(role)) => {
                    run.synced = Some(role.clone());
                    Ok(role)
                }
                Ok(None) => unreachable!("a full sync creates the role"),
                Err(Stop::Refused(refusal)) => {
                    return refused(io, cr, refusal, outcome, run).await;
                }
                Err(Stop::Planned(changes)) => Err(RoleEnding::Planned { changes }),
                Err(Stop::Failed(e)) => {
                    let ending = RoleEnding::Failed {
                        reason: e.reason(),
                        message: e.summary(),
                    };
                    let ending = past_propagation(cr, ending, facts.now);
                    run.errors.push(e);
                    Err(ending)
                }
            }
        }
    };
    // What the credentials are for: the synced role, or, while it cannot be synced, the role an
    // earlier reconcile created (status), which STS can still be asked for.
    let for_credentials = match &role {
        Ok(role) => Some(role.clone()),
        Err(_) => known_role(cr, spec),
    };
    outcome.role = match role {
        Ok(role) => RoleEnding::Synced {
            role_arn: role.arn,
            account_id: account.spec.account_id.clone(),
            external_id: owner.external_id(),
            granted: spec
                .grants
                .iter()
                .map(|p| {
                    p.arn(&io.operator.partition, &io.operator.source_account_id)
                        .to_string()
                })
                .collect(),
            sessions_revoked_before: role.sessions_revoked_before,
            problems: role
                .missing_grants
                .iter()
                .map(|p| {
                    format!(
                        "spec.grants: {} does not exist in the source account (its grant waits until it does)",
                        p.describe()
                    )
                })
                .collect(),
        },
        Err(ending) => ending,
    };
    // Who asked for a revocation the plan just wrote.
    if run.applied.iter().any(|c| {
        matches!(c, Change::PutInlinePolicy { name, .. } if name == crate::aws::REVOKE_SESSIONS_POLICY)
    }) {
        outcome.revoked = spec.revoke_sessions.clone();
    }
    outcome.credentials = match (&cr.spec.credentials, for_credentials) {
        (None, _) => {
            if let Some(old) = previous_secret(cr)
                && let Err(e) = secret::remove(&secrets_of(io, cr), cr, &old).await
            {
                run.errors.push(e);
            }
            None
        }
        (Some(_), None) => Some(CredentialsOutcome::Withheld {
            reason: match outcome.role {
                RoleEnding::Planned { .. } => Reason::PlanPending,
                _ => Reason::AccountNotReady,
            },
            message: "no credentials yet: the role has not been created".to_owned(),
        }),
        (Some(wanted), Some(role)) => {
            let (credentials, restarts) = sync_credentials(
                io, cr, owner, account, &role, wanted, facts, prefetched, run,
            )
            .await;
            outcome.restarts = restarts;
            Some(credentials)
        }
    };
    outcome.applied = std::mem::take(&mut run.applied);
    outcome
}

/// A refused spec: no credentials are issued, and the Secret that held earlier ones goes (they
/// stay valid until they expire; revoking them is the role's session revocation). A missing or
/// unverified AwsAccount keeps the Secret: the spec may well be permitted.
async fn refused<A: Aws>(
    io: &Io<'_, A>,
    cr: &CrossAccountRole,
    refusal: Refusal,
    mut outcome: Outcome,
    run: &mut Run,
) -> Outcome {
    if cr.spec.credentials.is_some() {
        if refusal.reason != Reason::AccountNotReady
            && let Some(old) = previous_secret(cr)
            && let Err(e) = secret::remove(&secrets_of(io, cr), cr, &old).await
        {
            run.errors.push(e);
        }
        outcome.credentials = Some(CredentialsOutcome::Withheld {
            reason: refusal.reason,
            message: format!("no credentials are issued: {}", refusal.message),
        });
    }
    outcome.role = RoleEnding::Refused(refusal);
    outcome.applied = std::mem::take(&mut run.applied);
    outcome
}

/// How long IAM may say "Invalid principal" about a principal before it is taken to not exist:
/// propagation of a new principal takes seconds, rarely a minute.
const PRINCIPAL_PROPAGATION: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// A `Propagating` failure that has lasted longer than [`PRINCIPAL_PROPAGATION`] (the condition
/// has said so since) is a principal that does not exist: `InvalidSpec`, still retried.
fn past_propagation(cr: &CrossAccountRole, ending: RoleEnding, now: Timestamp) -> RoleEnding {
    let RoleEnding::Failed {
        reason: Reason::Propagating,
        message,
    } = ending
    else {
        return ending;
    };
    let since = cr
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == crate::api::names::condition::ROLE_SYNCED)
        })
        .filter(|c| {
            c.reason == Reason::Propagating.as_str() || c.reason == Reason::InvalidSpec.as_str()
        })
        .map(|c| c.last_transition_time.0);
    match since {
        Some(since) if now.duration_since(since) > PRINCIPAL_PROPAGATION => RoleEnding::Failed {
            reason: Reason::InvalidSpec,
            message: format!(
                "{message} (for over {} minutes: a principal of spec.trust.principals or spec.grants does not exist; fix the spec)",
                PRINCIPAL_PROPAGATION.as_mins()
            ),
        },
        _ => RoleEnding::Failed {
            reason: Reason::Propagating,
            message,
        },
    }
}

/// The role an earlier reconcile synced, as status records it. It is an old role (so an
/// AccessDenied from STS is a real denial, not propagation).
fn known_role(cr: &CrossAccountRole, spec: &ValidatedSpec) -> Option<SyncedRole> {
    let arn = cr.status.as_ref()?.role_arn.clone()?;
    Some(SyncedRole {
        arn,
        created: Some(Timestamp::UNIX_EPOCH),
        max_session_duration: spec
            .max_session_duration
            .unwrap_or(crate::aws::IAM_DEFAULT_MAX_SESSION),
        sessions_revoked_before: cr
            .status
            .as_ref()
            .and_then(|s| s.sessions_revoked_before.as_ref())
            .map(|t| t.0),
        missing_grants: Vec::new(),
    })
}

/// How far a sync may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bring the role to the spec (creating it if need be).
    Full,
    /// The spec is refused: only take away from an existing role what the guardrails forbid.
    Restrict,
}

/// desired -> observe -> ownership -> plan -> apply: brings the IAM role and the grants to the
/// spec, and returns the role (`None` when restricting and there is no role).
#[allow(clippy::too_many_arguments)]
async fn sync_iam<A: Aws>(
    io: &Io<'_, A>,
    account: &AwsAccount,
    spec: &ValidatedSpec,
    claim: &Claim<'_>,
    mode: Mode,
    before_first_write: impl AsyncFnOnce() -> Result<(), ReconcileError>,
    applied: &mut Vec<Change>,
    now: Timestamp,
) -> Result<Option<SyncedRole>, Stop> {
    let target = io.aws.target(&observe::access_of(account)).await;
    let source = io.aws.source();
    let (spec, missing_grants) = observe::resolve_grants(&source, io.principals, spec).await?;
    let spec = &spec;
    let mut desired =
        desired::desired_role(spec, claim.owner, io.operator, &account.spec.account_id)?;
    let observed = observe::observe(
        &target,
        &source,
        &desired,
        &io.operator.source_account_id,
        io.legacy,
        io.principals,
    )
    .await?;
    if let Ownership::Foreign(message) = ownership::ownership(observed.role.as_ref(), claim) {
        return Err(Refusal::new(Reason::RoleNotOwned, message).into());
    }
    if mode == Mode::Restrict {
        let Some(current) = &observed.role else {
            return Ok(None);
        };
        desired = plan::within(&desired, current, &observed, spec, io.operator);
    }
    // The account's trust policy quota (read once per account); a management role that may not
    // read it gets IAM's default.
    let trust_quota = target
        .account_quota("AssumeRolePolicySizeQuota")
        .await
        .unwrap_or(None);
    desired::check_trust_policy_size(&desired, trust_quota)?;
    let mut changes = plan::plan_role_changes(&desired, &observed);
    io.principals.drop_known_attached(&mut changes);
    if mode == Mode::Restrict {
        changes.retain(plan::narrows);
    }
    if spec.plan_only && !changes.is_empty() {
        return Err(Stop::Planned(
            changes.iter().map(Change::describe_planned).collect(),
        ));
    }
    // Only now, after a successful read of the target account, is there something to clean up.
    before_first_write().await?;
    let (done, result) = apply::apply_granting(&target, &source, io.principals, changes).await;
    applied.extend(done);
    result?;
    let created = match &observed.role {
        Some(role) => role.created,
        None => Some(now),
    };
    // The console's revocation, or the one the plan just wrote (only to an existing role).
    let sessions_revoked_before = observed.role.as_ref().and_then(|role| {
        desired::sessions_revoked_before(role).max(desired.revoke_sessions_before)
    });
    Ok(Some(SyncedRole {
        arn: observed.role.map_or(desired.arn, |role| role.arn),
        created,
        max_session_duration: desired.max_session_duration,
        sessions_revoked_before,
        missing_grants,
    }))
}

/// credentials -> secret -> rollout: keeps valid credentials for `role` in the CR's Secret,
/// reusing what it holds until its refresh time or until the request changes; restarts the
/// rollout targets after a mint. A failure is part of the outcome (and of the run's errors).
/// `prefetched` is the Secret's read if this run made it already.
#[allow(clippy::too_many_arguments)]
async fn sync_credentials<A: Aws>(
    io: &Io<'_, A>,
    cr: &CrossAccountRole,
    owner: &Owner,
    account: &AwsAccount,
    role: &SyncedRole,
    wanted: &CredentialsSpec,
    facts: &Facts<'_>,
    prefetched: Option<Result<Option<Secret>, ReconcileError>>,
    run: &mut Run,
) -> (CredentialsOutcome, Vec<(String, RestartResult)>) {
    let secrets = secrets_of(io, cr);
    let name = owner.secret_name(wanted.secret_name.as_deref());
    let read = match prefetched {
        Some(read) => read,
        None => secret::read(&secrets, &name).await,
    };
    let existing = match read {
        Ok(existing) => existing,
        Err(e) => return (failed(e, None, run), Vec::new()),
    };
    if let Some(found) = &existing
        && !secret::owned_by(found, cr)
    {
        let message = format!(
            "Secret {name} exists and is not owned by this CrossAccountRole; choose another spec.credentials.secretName"
        );
        return (CredentialsOutcome::SecretNotOwned { message }, Vec::new());
    }
    let for_role = RoleForCredentials {
        arn: &role.arn,
        max_session_duration: role.max_session_duration,
        account_cap: account.spec.max_session_duration_seconds,
    };
    let request = credentials::assume_request(owner, wanted, &for_role, io.operator);
    let held = existing.as_ref().and_then(secret::read_held);
    let layout = secret::Layout::for_secret(
        wanted.mount_path.as_deref().unwrap_or(DEFAULT_MOUNT_PATH),
        existing.as_ref(),
    );
    let reusable = credentials::reusable(held.clone(), &request, wanted, facts.now)
        .filter(|h| credentials::issued_after(h, role.sessions_revoked_before));
    let (held, issued) = match reusable {
        Some(held) => {
            // The credentials stay; the rest of the Secret (its config, its token, keys someone
            // added or removed) is brought back without a mint.
            let rendered = secret::render_secret(cr, &name, &held, &layout);
            if existing.as_ref().and_then(|e| e.data.as_ref()) != rendered.data.as_ref()
                && let Err(e) = secret::write(&secrets, &rendered, existing.as_ref()).await
            {
                return (failed(e, Some(held), run), Vec::new());
            }
            (held, false)
        }
        None => {
            let minted = match mint_fairly(io, cr, &request, role.created, facts.now).await {
                Ok(minted) => minted,
                Err(after) => {
                    let outcome = CredentialsOutcome::Deferred {
                        after,
                        secret_name: name,
                        held,
                    };
                    return (outcome, Vec::new());
                }
            };
            match minted {
                Ok(Minted::Propagating(message)) => {
                    return (CredentialsOutcome::Waiting { message }, Vec::new());
                }
                Ok(Minted::Issued(issued)) => {
                    let fresh =
                        credentials::hold(issued, &request, wanted, facts.now, facts.jitter);
                    let rendered = secret::render_secret(cr, &name, &fresh, &layout);
                    if let Err(e) = secret::write(&secrets, &rendered, existing.as_ref()).await {
                        return (failed(e, held, run), Vec::new());
                    }
                    (fresh, true)
                }
                Err(e) => return (failed(e.into(), held, run), Vec::new()),
            }
        }
    };
    if let Some(old) = previous_secret(cr).filter(|old| *old != name)
        && let Err(e) = secret::remove(&secrets, cr, &old).await
    {
        run.errors.push(e);
    }
    // Workloads that read the credentials from the environment catch up with them.
    let restarts = match (&wanted.rollout_restart_targets[..], held.issued_at) {
        ([], _) | (_, None) => Vec::new(),
        (targets, Some(issued_at)) => {
            let results = rollout::restart_targets(
                io.kube,
                &cr.namespace().unwrap_or_default(),
                targets,
                issued_at,
                facts.now,
            )
            .await;
            // A failed restart stays due: retried with the object's backoff.
            if let Some((target, result)) = results.iter().find(|(_, r)| r.is_failure()) {
                run.errors.push(ReconcileError::RolloutRestart {
                    target: target.clone(),
                    message: result.problem(target).unwrap_or_default(),
                });
            }
            results
        }
    };
    let outcome = CredentialsOutcome::Ready {
        secret_name: name,
        held,
        issued,
        note: credentials::short_session_note(request.duration_seconds),
    };
    (outcome, restarts)
}

/// Mints when the object's and its namespace's turn has come (see `MintBudget`); otherwise says
/// when to try again.
async fn mint_fairly<A: Aws>(
    io: &Io<'_, A>,
    cr: &CrossAccountRole,
    request: &crate::aws::AssumeRoleRequest,
    role_created: Option<Timestamp>,
    now: Timestamp,
) -> Result<Result<Minted, AwsError>, std::time::Duration> {
    let namespace = cr.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", cr.name_any());
    let slot = io
        .mints
        .enter(&namespace, &key, std::time::Instant::now())?;
    let minted = credentials::mint(&io.aws.source(), request, role_created, now).await;
    if matches!(minted, Ok(Minted::Issued(_))) {
        io.mints.minted(&key, std::time::Instant::now());
    }
    drop(slot);
    Ok(minted)
}

/// The credentials step failed with `error`; the Secret still holds `held`.
fn failed(
    error: ReconcileError,
    held: Option<HeldCredentials>,
    run: &mut Run,
) -> CredentialsOutcome {
    let outcome = CredentialsOutcome::Failed {
        reason: error.reason(),
        message: format!("could not issue credentials: {}", error.summary()),
        held,
    };
    run.errors.push(error);
    outcome
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

/// What the operator says of `cr` against the guardrails of `account`, for a namespace with
/// `namespace_labels`: each violation as its status would name it, or the one refusal that stops
/// validation early; empty when the spec is within them. (The admission policy's tests compare
/// the apiserver's messages with these.)
pub fn guardrail_refusals(
    cr: &CrossAccountRole,
    account: &AwsAccount,
    namespace_labels: &BTreeMap<String, String>,
    operator: &OperatorIdentity,
) -> Vec<String> {
    let owner = Owner::of(cr, operator);
    match validate::validate(cr, account, namespace_labels, operator, &owner) {
        Ok(checked) => checked.violations,
        Err(refusal) => vec![refusal.message],
    }
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
    let checked =
        validate::validate(cr, account, namespace_labels, operator, &owner).map_err(refused)?;
    if let Some(refusal) = checked.refusal() {
        return Err(refusal.message);
    }
    let desired = desired::desired_role(&checked.spec, &owner, operator, &account.spec.account_id)
        .map_err(refused)?;
    desired::check_trust_policy_size(&desired, None).map_err(refused)?;
    Ok(
        plan::plan_role_changes(&desired, &observe::Observed::default())
            .iter()
            .map(Change::operation)
            .collect(),
    )
}
