//! Last step: status. The status and the events to publish are derived as data from the outcome
//! of the pipeline (pure); writing is a server-side apply of the status subresource, skipped
//! when nothing but timestamps would change.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::{
    credentials::CredentialsOutcome,
    rollout::RestartResult,
    validate::{Refusal, RevokeSessions},
};
use crate::{
    api::{
        CredentialsStatus, CrossAccountRoleStatus,
        names::{FIELD_MANAGER, Reason, condition as cond},
    },
    aws::Change,
};

/// One condition to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConditionUpdate {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

impl ConditionUpdate {
    pub(crate) fn new(
        type_: &'static str,
        status: bool,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// `conditions` with `update` applied: the transition time is kept when the status did not change.
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if update.status { "True" } else { "False" }.to_owned();
    let previous = conditions.iter().position(|c| c.type_ == update.type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: update.type_.to_owned(),
        status,
        reason: update.reason.as_str().to_owned(),
        message: update.message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// The status of `type_` in `conditions`, if set.
pub(crate) fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether an event is routine or needs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Severity {
    Normal,
    Warning,
}

/// An event to publish about the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Note {
    pub severity: Severity,
    pub reason: Reason,
    /// What was done: the IAM operation for AWS changes, `Reconcile` otherwise. kube's recorder
    /// folds events of the same object, type, reason and action within minutes into one
    /// (keeping the first note), so each kind of change needs its own action.
    pub action: String,
    pub message: String,
}

impl Note {
    pub(crate) fn new(severity: Severity, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            severity,
            reason,
            action: "Reconcile".to_owned(),
            message: message.into(),
        }
    }

    /// One event per AWS change, named by its IAM operation.
    pub(crate) fn change(change: &Change) -> Self {
        Self {
            severity: Severity::Normal,
            reason: Reason::AwsChange,
            action: change.operation().to_owned(),
            message: change.describe(),
        }
    }
}

/// How the role part of a run ended.
#[derive(Debug)]
pub(crate) enum RoleEnding {
    /// The role and its grants match the spec.
    Synced {
        role_arn: String,
        account_id: String,
        external_id: String,
        /// ARNs of the principals granted the role.
        granted: Vec<String>,
        /// Sessions of the role issued before this time are revoked.
        sessions_revoked_before: Option<Timestamp>,
        /// What of the spec could not be done although the rest is in sync (a granted
        /// principal that does not exist).
        problems: Vec<String>,
    },
    /// Refused: nothing is added; resynced so that the guardrails stay enforced on its role.
    Refused(Refusal),
    /// The AwsAccount exists but its management identity is not verified; `first` when it has
    /// never been verified yet (a wait of a moment, not a failure).
    AccountNotReady { message: String, first: bool },
    /// Retried with backoff; the message carries no per-attempt detail.
    Failed { reason: Reason, message: String },
    /// Plan only: the IAM changes (in words) that would bring the role to the spec; none made.
    Planned { changes: Vec<String> },
}

impl RoleEnding {
    fn condition(&self) -> (bool, Reason, String) {
        match self {
            RoleEnding::Synced {
                role_arn, problems, ..
            } if !problems.is_empty() => (
                false,
                Reason::PrincipalNotFound,
                format!(
                    "IAM role {role_arn} is in sync but for: {}",
                    problems.join("; ")
                ),
            ),
            RoleEnding::Synced { role_arn, .. } => (
                true,
                Reason::Synced,
                format!("IAM role {role_arn} is in sync"),
            ),
            RoleEnding::Refused(refusal) => (false, refusal.reason, refusal.message.clone()),
            RoleEnding::AccountNotReady { message, .. } => {
                (false, Reason::AccountNotReady, message.clone())
            }
            RoleEnding::Failed { reason, message } => (false, *reason, message.clone()),
            RoleEnding::Planned { changes } => (
                false,
                Reason::PlanPending,
                format!(
                    "plan only ({} is \"true\"): {} IAM change{} planned and not applied: {}; remove the annotation to apply {}",
                    crate::api::names::PLAN_ONLY_ANNOTATION,
                    changes.len(),
                    if changes.len() == 1 { " is" } else { "s are" },
                    changes.join("; "),
                    if changes.len() == 1 { "it" } else { "them" },
                ),
            ),
        }
    }
}

/// The outcome of one run: how the role and the credentials ended, and the AWS changes and
/// rollout restarts it made on the way.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub role: RoleEnding,
    /// `None` when the spec asks for no credentials.
    pub credentials: Option<CredentialsOutcome>,
    pub restarts: Vec<(String, RestartResult)>,
    pub applied: Vec<Change>,
    /// The revocation of sessions this run wrote at the CR's request.
    pub revoked: Option<RevokeSessions>,
}

/// The status `old` becomes after `outcome`, and the events to publish: one per AWS change, the
/// issued credentials and rollout restarts, and a Warning when a failure's reason changes (not
/// on every retry).
pub(crate) fn derive_status(
    old: &CrossAccountRoleStatus,
    outcome: &Outcome,
    generation: Option<i64>,
    principal_arn: &str,
    now: Timestamp,
) -> (CrossAccountRoleStatus, Vec<Note>) {
    let mut status = old.clone();
    let mut notes: Vec<Note> = outcome.applied.iter().map(Note::change).collect();
    if let Some(revoked) = &outcome.revoked {
        notes.push(Note {
            severity: Severity::Normal,
            reason: Reason::SessionsRevoked,
            action: "RevokeSessions".to_owned(),
            message: format!(
                "sessions of the role issued before {} are revoked, as asked by {} (annotation {}); new credentials follow",
                revoked.before.strftime("%Y-%m-%dT%H:%M:%SZ"),
                revoked.requested_by.as_deref().unwrap_or("an unknown field manager"),
                crate::api::names::REVOKE_SESSIONS_ANNOTATION
            ),
        });
    }
    let previous = |type_| condition(&old.conditions, type_).map(|c| c.reason.clone());
    if let RoleEnding::Synced {
        role_arn,
        account_id,
        external_id,
        granted,
        sessions_revoked_before,
        ..
    } = &outcome.role
    {
        status.granted_principals = granted.clone();
        status.sessions_revoked_before = sessions_revoked_before.map(Time);
        status.role_arn = Some(role_arn.clone());
        status.account_id = Some(account_id.clone());
        status.external_id = Some(external_id.clone());
        status.principal_arn = Some(principal_arn.to_owned());
    }
    status.planned_changes = match &outcome.role {
        RoleEnding::Planned { changes } => changes.clone(),
        _ => Vec::new(),
    };
    let (role_ok, why, message) = outcome.role.condition();
    let role_arn = status.role_arn.clone().unwrap_or_default();
    let credentials = outcome
        .credentials
        .as_ref()
        .map(|c| credentials_condition(&mut status, c, &role_arn, &mut notes));
    notes.extend(outcome.restarts.iter().filter_map(restart_note));
    if outcome.restarts.is_empty() {
        status
            .conditions
            .retain(|c| c.type_ != cond::ROLLOUTS_RESTARTED);
    } else {
        let update = rollouts_condition(&outcome.restarts);
        let changed = previous(cond::ROLLOUTS_RESTARTED).as_deref() != Some(update.reason.as_str());
        if !update.status && changed {
            notes.push(Note::new(
                Severity::Warning,
                update.reason,
                update.message.clone(),
            ));
        }
        set_condition(&mut status.conditions, update, generation, now);
    }

    set_condition(
        &mut status.conditions,
        ConditionUpdate::new(cond::ROLE_SYNCED, role_ok, why, message.clone()),
        generation,
        now,
    );
    // Ready: the role is in sync and, when asked for, the credentials are too.
    let ready = match &credentials {
        Some(update) if role_ok && !update.status => {
            ConditionUpdate::new(cond::READY, false, update.reason, update.message.clone())
        }
        _ => ConditionUpdate::new(cond::READY, role_ok, why, message.clone()),
    };
    match credentials {
        Some(update) => {
            let withheld = matches!(
                outcome.credentials,
                Some(CredentialsOutcome::Withheld { .. })
            );
            let changed =
                previous(cond::CREDENTIALS_READY).as_deref() != Some(update.reason.as_str());
            // A withheld mint repeats the role's problem, which has its own event.
            if !update.status && changed && !withheld {
                notes.push(Note::new(
                    Severity::Warning,
                    update.reason,
                    update.message.clone(),
                ));
            }
            set_condition(&mut status.conditions, update, generation, now);
        }
        None => {
            status.credentials = None;
            status
                .conditions
                .retain(|c| c.type_ != cond::CREDENTIALS_READY);
        }
    }
    set_condition(&mut status.conditions, ready, generation, now);
    status.observed_generation = generation;
    if !role_ok && previous(cond::ROLE_SYNCED).as_deref() != Some(why.as_str()) {
        let severity = match outcome.role {
            // Waiting for an AwsAccount's first verification is a moment, not a failure; a plan
            // was asked for.
            RoleEnding::AccountNotReady { first: true, .. } | RoleEnding::Planned { .. } => {
                Severity::Normal
            }
            _ => Severity::Warning,
        };
        notes.push(Note::new(severity, why, message));
    }
    (status, notes)
}

/// Fills `status.credentials` and returns the `CredentialsReady` condition for an outcome; a
/// newly issued set gets an event.
fn credentials_condition(
    status: &mut CrossAccountRoleStatus,
    outcome: &CredentialsOutcome,
    role_arn: &str,
    notes: &mut Vec<Note>,
) -> ConditionUpdate {
    let why = outcome.reason();
    match outcome {
        CredentialsOutcome::Ready {
            secret_name,
            held,
            issued,
            note,
        } => {
            let expiration = held.credentials.expiration;
            if *issued {
                notes.push(Note::new(
                    Severity::Normal,
                    Reason::CredentialsIssued,
                    format!(
                        "issued credentials for {role_arn} into Secret {secret_name}, valid until {expiration}"
                    ),
                ));
            }
            status.credentials = Some(CredentialsStatus {
                secret_name: secret_name.clone(),
                expiration: Some(Time(expiration)),
                next_refresh: Some(Time(held.refresh_at)),
            });
            let message = match note {
                Some(note) => format!("Secret {secret_name} holds valid credentials; {note}"),
                None => format!("Secret {secret_name} holds valid credentials"),
            };
            ConditionUpdate::new(cond::CREDENTIALS_READY, true, why, message)
        }
        CredentialsOutcome::Deferred {
            secret_name,
            held: Some(_),
            ..
        } => ConditionUpdate::new(
            cond::CREDENTIALS_READY,
            true,
            why,
            format!("Secret {secret_name} holds valid credentials"),
        ),
        CredentialsOutcome::Deferred { held: None, .. } => ConditionUpdate::new(
            cond::CREDENTIALS_READY,
            false,
            why,
            "new credentials wait their turn: this object minted less than 30 s ago, or its namespace has several mints under way",
        ),
        CredentialsOutcome::Failed { message, held, .. } => {
            let message = match held {
                Some(held) => format!(
                    "{message}; the credentials in the Secret expire at {}",
                    held.credentials.expiration
                ),
                None => message.clone(),
            };
            ConditionUpdate::new(cond::CREDENTIALS_READY, false, why, message)
        }
        CredentialsOutcome::Waiting { message }
        | CredentialsOutcome::SecretNotOwned { message }
        | CredentialsOutcome::Withheld { message, .. } => {
            ConditionUpdate::new(cond::CREDENTIALS_READY, false, why, message.clone())
        }
    }
}

/// The event of a restart made now, if any.
fn restart_note((target, result): &(String, RestartResult)) -> Option<Note> {
    matches!(result, RestartResult::Restarted).then(|| {
        Note::new(
            Severity::Normal,
            Reason::RolloutRestarted,
            format!("restarted {target} for new credentials"),
        )
    })
}

/// The `RolloutsRestarted` condition: whether every rollout target runs with the current
/// credentials (restarts pending within the settle time count as fine).
fn rollouts_condition(restarts: &[(String, RestartResult)]) -> ConditionUpdate {
    let problems: Vec<String> = restarts
        .iter()
        .filter_map(|(target, result)| result.problem(target))
        .collect();
    if problems.is_empty() {
        ConditionUpdate::new(
            cond::ROLLOUTS_RESTARTED,
            true,
            Reason::RolloutRestarted,
            "every rollout target runs with the current credentials (or restarts within a minute)",
        )
    } else {
        let reason = if restarts.iter().any(|(_, r)| r.is_failure()) {
            Reason::RolloutRestartFailed
        } else {
            Reason::RolloutTargetNotFound
        };
        ConditionUpdate::new(cond::ROLLOUTS_RESTARTED, false, reason, problems.join("; "))
    }
}

/// The status of an object being deleted whose cleanup cannot finish (yet): `Ready` and
/// `RoleSynced` false with `reason` and `message`; the rest as it was.
pub(crate) fn deletion_status(
    old: &CrossAccountRoleStatus,
    generation: Option<i64>,
    reason: Reason,
    message: &str,
    now: Timestamp,
) -> CrossAccountRoleStatus {
    let mut status = old.clone();
    for type_ in [cond::READY, cond::ROLE_SYNCED] {
        set_condition(
            &mut status.conditions,
            ConditionUpdate::new(type_, false, reason, message),
            generation,
            now,
        );
    }
    status
}

/// The status of an object this version cannot read: `Ready` and `RoleSynced` false with reason
/// `InvalidSpec` and `message`.
pub(crate) fn unreadable_status(
    generation: Option<i64>,
    message: &str,
    now: Timestamp,
) -> CrossAccountRoleStatus {
    let mut status = CrossAccountRoleStatus {
        observed_generation: generation,
        ..Default::default()
    };
    for type_ in [cond::READY, cond::ROLE_SYNCED] {
        set_condition(
            &mut status.conditions,
            ConditionUpdate::new(type_, false, Reason::InvalidSpec, message),
            generation,
            now,
        );
    }
    status
}

/// Server-side applies `status` to the status subresource of `name` (field manager owned by the
/// operator, forced: the operator is the only writer of status).
pub(crate) async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    status: &S,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aws::IssuedCredentials, pipeline::credentials::HeldCredentials};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    const ROLE: &str = "arn:aws:iam::111111111111:role/r";

    fn outcome(role: RoleEnding, credentials: Option<CredentialsOutcome>) -> Outcome {
        Outcome {
            role,
            credentials,
            restarts: Vec::new(),
            applied: Vec::new(),
            revoked: None,
        }
    }

    fn synced(credentials: Option<CredentialsOutcome>) -> Outcome {
        let role = RoleEnding::Synced {
            role_arn: ROLE.into(),
            account_id: "111111111111".into(),
            external_id: "crossaccount:dev:a:r".into(),
            granted: Vec::new(),
            sessions_revoked_before: None,
            problems: Vec::new(),
        };
        outcome(role, credentials)
    }

    fn ready(issued: bool) -> CredentialsOutcome {
        CredentialsOutcome::Ready {
            secret_name: "r-aws".into(),
            held: HeldCredentials {
                credentials: IssuedCredentials {
                    access_key_id: "ASIAKEY".into(),
                    secret_access_key: "secret".into(),
                    session_token: "token".into(),
                    expiration: at(3600),
                },
                role_arn: ROLE.into(),
                region: None,
                refresh_at: at(2400),
                request: None,
                issued_at: None,
            },
            issued,
            note: None,
        }
    }

    fn derive(
        old: &CrossAccountRoleStatus,
        outcome: &Outcome,
        now: i64,
    ) -> (CrossAccountRoleStatus, Vec<Note>) {
        derive_status(
            old,
            outcome,
            Some(1),
            "arn:aws:iam::123456789012:user/op",
            at(now),
        )
    }

    fn reasons(notes: &[Note]) -> Vec<(Severity, &'static str)> {
        notes
            .iter()
            .map(|n| (n.severity, n.reason.as_str()))
            .collect()
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ConditionUpdate::new("Ready", false, Reason::AwsError, "down"),
            Some(1),
            at(10),
        );
        set_condition(
            &mut conditions,
            ConditionUpdate::new("Ready", false, Reason::AwsError, "still down"),
            Some(1),
            at(20),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(at(10)));
        assert_eq!(conditions[0].message, "still down");

        set_condition(
            &mut conditions,
            ConditionUpdate::new("Ready", true, Reason::Synced, "ok"),
            Some(2),
            at(30),
        );
        assert_eq!(conditions[0].last_transition_time, Time(at(30)));
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn a_first_sync_with_credentials_is_ready_with_its_events() {
        let mut outcome = synced(Some(ready(true)));
        outcome
            .applied
            .push(Change::DeleteRole { role: "x".into() });
        let (status, notes) = derive(&CrossAccountRoleStatus::default(), &outcome, 0);
        for type_ in [cond::READY, cond::ROLE_SYNCED, cond::CREDENTIALS_READY] {
            assert_eq!(
                condition(&status.conditions, type_).unwrap().status,
                "True",
                "{type_}"
            );
        }
        assert_eq!(status.role_arn.as_deref(), Some(ROLE));
        assert_eq!(
            status.credentials.as_ref().unwrap().next_refresh,
            Some(Time(at(2400)))
        );
        assert_eq!(
            reasons(&notes),
            [
                (Severity::Normal, "AwsChange"),
                (Severity::Normal, "CredentialsIssued")
            ]
        );
        assert_eq!(notes[0].action, "DeleteRole");
        assert!(
            !notes
                .iter()
                .any(|n| n.message.contains("ASIAKEY") || n.message.contains("secret"))
        );
    }

    #[test]
    fn an_unchanged_steady_state_derives_the_same_status_without_events() {
        let (first, _) = derive(
            &CrossAccountRoleStatus::default(),
            &synced(Some(ready(true))),
            0,
        );
        let (again, notes) = derive(&first, &synced(Some(ready(false))), 600);
        assert_eq!(again, first, "nothing but time passed: no status write");
        assert!(notes.is_empty());
    }

    #[test]
    fn a_failure_warns_once_per_reason_and_keeps_its_transition_time() {
        let (ok, _) = derive(&CrossAccountRoleStatus::default(), &synced(None), 0);
        let failed = |message: &str| {
            let role = RoleEnding::Failed {
                reason: Reason::AwsError,
                message: message.into(),
            };
            outcome(role, None)
        };
        let (first, notes) = derive(&ok, &failed("AWS iam GetRole failed: Rate exceeded"), 10);
        assert_eq!(reasons(&notes), [(Severity::Warning, "AwsError")]);
        let ready = condition(&first.conditions, cond::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "AwsError")
        );
        let (second, notes) = derive(&first, &failed("AWS iam GetRole failed: Rate exceeded"), 20);
        assert!(notes.is_empty(), "no event on a retry with the same reason");
        assert_eq!(second, first, "a stable message writes no new status");
    }

    #[test]
    fn a_refusal_is_terminal_and_said_once() {
        let outcome = outcome(
            RoleEnding::Refused(Refusal::new(
                Reason::NotPermitted,
                "namespace a is not allowed",
            )),
            None,
        );
        let (status, notes) = derive(&CrossAccountRoleStatus::default(), &outcome, 0);
        assert_eq!(reasons(&notes), [(Severity::Warning, "NotPermitted")]);
        assert_eq!(
            condition(&status.conditions, cond::READY).unwrap().reason,
            "NotPermitted"
        );
        let (_, notes) = derive(&status, &outcome, 5);
        assert!(notes.is_empty());
    }

    #[test]
    fn credentials_that_are_switched_off_leave_no_condition() {
        let (with, _) = derive(
            &CrossAccountRoleStatus::default(),
            &synced(Some(ready(true))),
            0,
        );
        let (without, _) = derive(&with, &synced(None), 5);
        assert!(condition(&without.conditions, cond::CREDENTIALS_READY).is_none());
        assert!(without.credentials.is_none());
    }

    #[test]
    fn waiting_for_propagation_is_not_ready_and_warns() {
        let outcome = synced(Some(CredentialsOutcome::Waiting {
            message: "waiting for IAM".into(),
        }));
        let (status, notes) = derive(&CrossAccountRoleStatus::default(), &outcome, 0);
        let ready = condition(&status.conditions, cond::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Propagating")
        );
        assert_eq!(
            condition(&status.conditions, cond::ROLE_SYNCED)
                .unwrap()
                .status,
            "True"
        );
        assert_eq!(reasons(&notes), [(Severity::Warning, "Propagating")]);
    }

    #[test]
    fn unreadable_objects_say_so_in_both_conditions() {
        let status = unreadable_status(Some(3), "cannot be read", at(0));
        for type_ in [cond::READY, cond::ROLE_SYNCED] {
            let c = condition(&status.conditions, type_).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "InvalidSpec")
            );
        }
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn a_failing_iam_sync_and_fresh_credentials_are_both_said() {
        let failed = RoleEnding::Failed {
            reason: Reason::AwsError,
            message: "AWS iam GetRole failed: access denied".into(),
        };
        let (status, notes) = derive(
            &CrossAccountRoleStatus::default(),
            &outcome(failed, Some(ready(true))),
            0,
        );
        let get = |t| condition(&status.conditions, t).unwrap();
        assert_eq!(
            (
                get(cond::ROLE_SYNCED).status.as_str(),
                get(cond::ROLE_SYNCED).reason.as_str()
            ),
            ("False", "AwsError")
        );
        assert_eq!(get(cond::CREDENTIALS_READY).status, "True");
        assert_eq!(get(cond::READY).status, "False");
        assert_eq!(
            reasons(&notes),
            [
                (Severity::Normal, "CredentialsIssued"),
                (Severity::Warning, "AwsError")
            ]
        );
    }

    #[test]
    fn a_failed_refresh_says_when_the_held_credentials_expire() {
        let held = match ready(false) {
            CredentialsOutcome::Ready { held, .. } => held,
            _ => unreachable!(),
        };
        let failed = CredentialsOutcome::Failed {
            reason: Reason::AwsError,
            message: "could not issue credentials: AWS sts AssumeRole failed: unavailable".into(),
            held: Some(held),
        };
        let (status, notes) = derive(&CrossAccountRoleStatus::default(), &synced(Some(failed)), 0);
        let credentials = condition(&status.conditions, cond::CREDENTIALS_READY).unwrap();
        assert_eq!(credentials.status, "False");
        assert!(
            credentials.message.contains(&at(3600).to_string()),
            "{}",
            credentials.message
        );
        assert_eq!(
            condition(&status.conditions, cond::READY).unwrap().reason,
            "AwsError"
        );
        assert_eq!(reasons(&notes), [(Severity::Warning, "AwsError")]);
    }

    #[test]
    fn waiting_for_an_accounts_first_verification_is_no_warning() {
        let waiting = |first| RoleEnding::AccountNotReady {
            message: "AwsAccount target has not been verified yet".into(),
            first,
        };
        let (_, notes) = derive(
            &CrossAccountRoleStatus::default(),
            &outcome(waiting(true), None),
            0,
        );
        assert_eq!(reasons(&notes), [(Severity::Normal, "AccountNotReady")]);
        let (_, notes) = derive(
            &CrossAccountRoleStatus::default(),
            &outcome(waiting(false), None),
            0,
        );
        assert_eq!(reasons(&notes), [(Severity::Warning, "AccountNotReady")]);
    }

    #[test]
    fn a_refused_role_withholds_credentials_with_one_warning() {
        let refusal = Refusal::new(Reason::NotPermitted, "namespace a is not allowed");
        let withheld = CredentialsOutcome::Withheld {
            reason: refusal.reason,
            message: format!("no credentials are issued: {}", refusal.message),
        };
        let (status, notes) = derive(
            &CrossAccountRoleStatus::default(),
            &outcome(RoleEnding::Refused(refusal), Some(withheld)),
            0,
        );
        let credentials = condition(&status.conditions, cond::CREDENTIALS_READY).unwrap();
        assert_eq!(
            (credentials.status.as_str(), credentials.reason.as_str()),
            ("False", "NotPermitted")
        );
        assert_eq!(reasons(&notes), [(Severity::Warning, "NotPermitted")]);
    }
}
