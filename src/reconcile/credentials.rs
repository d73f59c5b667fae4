//! Step 6: temporary credentials. When to assume the role again is decided here, purely; the
//! AssumeRole call itself goes through [`AccountApi::assume_role`] of the source account.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Secret,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, ResourceExt};
use rand::Rng;

use super::{
    ReconcileError,
    secret::{SecretContent, apply_secret, owned_by, read_content, render_secret},
    validate::{OperatorIdentity, short_hash},
};
use crate::{
    api::{CredentialsSpec, CrossAccountRole, names::reason},
    aws::AccountApi,
    error::AwsErrorKind,
};

/// Credentials are never refreshed later than this before they expire.
pub const REFRESH_FLOOR: Duration = Duration::from_secs(600);
/// IAM's cap on sessions of a role assumed with role-chained credentials.
pub const CHAINED_SESSION_LIMIT: i32 = 3600;
/// At most this share of the time until the planned refresh is taken off it as jitter, so that
/// credentials issued together spread out without ever refreshing right after being issued.
const JITTER_SHARE: f64 = 0.1;

/// A set of temporary credentials. Debug output never shows the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: Timestamp,
}

impl std::fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredentials")
            .field("access_key_id", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// What to ask STS for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumeRoleRequest {
    pub role_arn: String,
    pub external_id: String,
    pub session_name: String,
    pub source_identity: String,
    pub duration_seconds: i32,
    pub session_policy: Option<String>,
}

/// A name for STS (session name, source identity): `<namespace>.<name>`, limited to what STS
/// accepts (`[\w+=,.@-]`, 2 to 64 characters), with a hash when it had to be cut.
pub fn session_name(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    let clean: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= 64 {
        return clean;
    }
    let hash = short_hash(&full);
    format!("{}-{hash}", &clean[..64 - hash.len() - 1])
}

/// The session length to request: the spec's, capped by the role's maximum, the account's cap, and
/// IAM's one-hour limit for role chaining when the operator itself runs on an assumed role.
pub fn session_duration(
    requested: i32,
    role_max: i32,
    account_cap: Option<i32>,
    operator_chained: bool,
) -> i32 {
    let mut duration = requested.min(role_max);
    if let Some(cap) = account_cap {
        duration = duration.min(cap);
    }
    if operator_chained {
        duration = duration.min(CHAINED_SESSION_LIMIT);
    }
    duration.max(900)
}

/// When credentials issued at `issued` and expiring at `expiration` should be replaced:
/// `refresh_percent` of the lifetime, but never later than [`REFRESH_FLOOR`] before expiry, then
/// brought forward by up to [`JITTER_SHARE`] of that delay (`jitter` in [0, 1) picks how much).
/// The result is in whole seconds (as stored in the Secret) and at least a second after `issued`.
pub fn refresh_due_at(
    issued: Timestamp,
    expiration: Timestamp,
    refresh_percent: i32,
    jitter: f64,
) -> Timestamp {
    let lifetime = expiration.duration_since(issued).as_secs_f64();
    let floor = REFRESH_FLOOR.as_secs_f64();
    let share = f64::from(refresh_percent.clamp(1, 100)) / 100.0;
    let planned = (lifetime * share).min(lifetime - floor);
    if planned <= 0.0 {
        return issued;
    }
    let delay = (planned * (1.0 - JITTER_SHARE * jitter.clamp(0.0, 1.0))).max(1.0);
    let due = Timestamp::from_second(
        (issued.as_second() as f64 + issued.subsec_nanosecond() as f64 / 1e9 + delay).ceil() as i64,
    )
    .unwrap_or(issued);
    let latest = expiration - SignedDuration::try_from(REFRESH_FLOOR).expect("small duration");
    due.min(latest.max(issued))
}

/// After a role is created, IAM may deny assuming it for a while; denials within this window are
/// waited out rather than reported as failures.
const PROPAGATION_WINDOW: SignedDuration = SignedDuration::from_secs(180);

/// Whether a failed AssumeRole is IAM still propagating a new role (wait and retry) rather than a
/// real denial: access denied within [`PROPAGATION_WINDOW`] of the role's creation.
pub fn waiting_for_propagation(
    kind: AwsErrorKind,
    role_created: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    kind == AwsErrorKind::AccessDenied
        && role_created.is_none_or(|created| now.duration_since(created) < PROPAGATION_WINDOW)
}

/// The Secret name of a CrossAccountRole: `spec.credentials.secretName`, default `<name>-aws`.
pub fn secret_name(cr: &CrossAccountRole, spec: &CredentialsSpec) -> String {
    spec.secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-aws", cr.name_any()))
}

/// How the credentials step ended, short of an error.
#[derive(Debug)]
pub enum CredentialsOutcome {
    /// The Secret holds valid credentials; `issued` when they were minted by this reconcile.
    Ready {
        secret_name: String,
        content: SecretContent,
        issued: bool,
    },
    /// A known delay (IAM propagation): try again soon.
    Waiting { message: String },
    /// The Secret name belongs to someone else: terminal until the spec changes.
    SecretNotOwned { message: String },
}

/// The role the credentials are for.
pub struct RoleForCredentials<'a> {
    pub arn: &'a str,
    pub max_session_duration: i32,
    pub account_cap: Option<i32>,
    pub created: Option<Timestamp>,
    pub external_id: String,
}

/// Keeps valid credentials for `role` in the CR's Secret: reuses what the Secret holds until its
/// refresh time (so an operator restart mints nothing), otherwise assumes the role and writes the
/// Secret. A Secret that was edited or deleted is replaced with fresh credentials.
pub async fn ensure_credentials<A: AccountApi>(
    client: &Client,
    source: &A,
    operator: &OperatorIdentity,
    cr: &CrossAccountRole,
    spec: &CredentialsSpec,
    role: &RoleForCredentials<'_>,
) -> Result<CredentialsOutcome, ReconcileError> {
    let namespace = cr.namespace().unwrap_or_default();
    let name = secret_name(cr, spec);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let existing = secrets
        .get_opt(&name)
        .await
        .map_err(ReconcileError::kube("reading the credentials Secret"))?;
    if let Some(secret) = &existing
        && !owned_by(secret, cr)
    {
        return Ok(CredentialsOutcome::SecretNotOwned {
            message: format!(
                "Secret {name} exists and is not owned by this CrossAccountRole; choose another spec.credentials.secretName"
            ),
        });
    }
    let now = Timestamp::now();
    let current = existing.as_ref().and_then(read_content);
    if let Some(content) =
        current.filter(|c| c.role_arn == role.arn && now < c.refresh_at && c.region == spec.region)
    {
        return Ok(CredentialsOutcome::Ready {
            secret_name: name,
            content,
            issued: false,
        });
    }

    let request = AssumeRoleRequest {
        role_arn: role.arn.to_owned(),
        external_id: role.external_id.clone(),
        session_name: session_name(&namespace, &cr.name_any()),
        source_identity: session_name(&namespace, &cr.name_any()),
        duration_seconds: session_duration(
            spec.duration_seconds,
            role.max_session_duration,
            role.account_cap,
            operator.chained,
        ),
        session_policy: spec.session_policy.clone(),
    };
    let credentials = match source.assume_role(&request).await {
        Ok(credentials) => credentials,
        Err(e) if waiting_for_propagation(e.kind, role.created, now) => {
            return Ok(CredentialsOutcome::Waiting {
                message: format!(
                    "waiting for IAM to propagate the new role before assuming it ({e})"
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let refresh_at = refresh_due_at(
        now,
        credentials.expiration,
        spec.refresh_percent,
        rand::rng().random(),
    );
    let content = SecretContent {
        credentials,
        role_arn: role.arn.to_owned(),
        region: spec.region.clone(),
        refresh_at,
    };
    apply_secret(&secrets, &render_secret(cr, &name, &content))
        .await
        .map_err(ReconcileError::kube("writing the credentials Secret"))?;
    Ok(CredentialsOutcome::Ready {
        secret_name: name,
        content,
        issued: true,
    })
}

/// Deletes the Secret `name` if this CR owns it (credentials switched off, renamed, or the CR is
/// being deleted). Someone else's Secret of that name is left alone.
pub async fn remove_secret(
    client: &Client,
    cr: &CrossAccountRole,
    name: &str,
) -> Result<(), ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cr.namespace().unwrap_or_default());
    let existing = secrets
        .get_opt(name)
        .await
        .map_err(ReconcileError::kube("reading the credentials Secret"))?;
    if existing.is_some_and(|s| owned_by(&s, cr)) {
        match secrets.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(ReconcileError::kube("deleting the credentials Secret")(e)),
        }
    }
    Ok(())
}

/// Reason for the `CredentialsReady` condition of an outcome.
pub fn outcome_reason(outcome: &CredentialsOutcome) -> &'static str {
    match outcome {
        CredentialsOutcome::Ready { .. } => reason::CREDENTIALS_ISSUED,
        CredentialsOutcome::Waiting { .. } => reason::PROPAGATING,
        CredentialsOutcome::SecretNotOwned { .. } => reason::SECRET_NOT_OWNED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn refresh_happens_at_the_share_of_the_lifetime() {
        assert_eq!(refresh_due_at(at(0), at(3600), 50, 0.0), at(1800));
        assert_eq!(refresh_due_at(at(0), at(36000), 67, 0.0), at(24120));
    }

    #[test]
    fn refresh_is_never_later_than_ten_minutes_before_expiry() {
        // 90 % of 15 minutes would be 13.5 minutes: too close to the end.
        assert_eq!(refresh_due_at(at(0), at(900), 90, 0.0), at(300));
        assert_eq!(refresh_due_at(at(0), at(3600), 90, 0.0), at(3000));
    }

    #[test]
    fn expired_or_odd_inputs_give_a_time_not_before_issue() {
        assert_eq!(refresh_due_at(at(100), at(50), 67, 0.5), at(100));
        assert_eq!(refresh_due_at(at(0), at(500), 67, 0.5), at(0));
    }

    #[test]
    fn a_small_share_still_refreshes_after_its_delay_not_at_once() {
        // 1 % of 900 s is 9 s; jitter takes off at most 10 % of that.
        let due = refresh_due_at(at(0), at(900), 1, 0.999);
        assert!(due >= at(8) && due <= at(9), "{due}");
    }

    #[test]
    fn jitter_applies_below_the_floor_too() {
        let plain = refresh_due_at(at(0), at(900), 67, 0.0);
        let jittered = refresh_due_at(at(0), at(900), 67, 0.9);
        assert_eq!(plain, at(300));
        assert!(jittered < plain && jittered >= at(270), "{jittered}");
    }

    #[test]
    fn due_times_are_whole_seconds() {
        let issued =
            Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_millis(400);
        let due = refresh_due_at(issued, at(3600), 50, 0.3);
        assert_eq!(due.subsec_nanosecond(), 0);
        assert!(due > issued);
    }

    proptest! {
        #[test]
        fn jitter_only_moves_refresh_earlier_and_within_bounds(
            lifetime in 900i64..43200, percent in 1i32..=90, jitter in 0.0f64..1.0
        ) {
            let (issued, expiration) = (at(0), at(lifetime));
            let plain = refresh_due_at(issued, expiration, percent, 0.0);
            let jittered = refresh_due_at(issued, expiration, percent, jitter);
            prop_assert!(jittered <= plain);
            prop_assert!(jittered > issued, "never right after being issued");
            prop_assert!(jittered <= expiration - SignedDuration::from_secs(600));
            let window = (plain.duration_since(issued).as_secs_f64() * JITTER_SHARE).ceil() as i64 + 1;
            prop_assert!(plain.duration_since(jittered).as_secs() <= window);
        }
    }

    #[test]
    fn access_denied_right_after_creation_is_propagation() {
        let now = at(1000);
        assert!(waiting_for_propagation(
            AwsErrorKind::AccessDenied,
            Some(at(950)),
            now
        ));
        assert!(
            !waiting_for_propagation(AwsErrorKind::AccessDenied, Some(at(0)), now),
            "an old role is really denied"
        );
        assert!(
            !waiting_for_propagation(AwsErrorKind::Throttled, Some(at(999)), now),
            "other errors back off"
        );
        assert!(
            waiting_for_propagation(AwsErrorKind::AccessDenied, None, now),
            "creation time unknown: give it the benefit"
        );
    }

    #[test]
    fn session_durations_are_clamped() {
        assert_eq!(session_duration(43200, 3600, None, false), 3600);
        assert_eq!(session_duration(7200, 43200, Some(5400), false), 5400);
        assert_eq!(session_duration(7200, 43200, None, true), 3600);
        assert_eq!(session_duration(900, 3600, None, false), 900);
    }

    #[test]
    fn session_names_are_valid_for_sts() {
        assert_eq!(session_name("team-a", "reader"), "team-a.reader");
        let long = session_name(&"n".repeat(63), &"x".repeat(253));
        assert_eq!(long.len(), 64);
        assert_ne!(long, session_name(&"n".repeat(63), &"y".repeat(253)));
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let creds = IssuedCredentials {
            access_key_id: "ASIAEXAMPLEKEY".into(),
            secret_access_key: "very-secret".into(),
            session_token: "token-value".into(),
            expiration: at(0),
        };
        let text = format!("{creds:?}");
        assert!(
            !text.contains("ASIAEXAMPLEKEY")
                && !text.contains("very-secret")
                && !text.contains("token-value"),
            "{text}"
        );
    }
}
