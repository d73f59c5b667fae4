//! Step 7: temporary credentials. Whether the held ones are reused or new ones are minted, and when
//! to refresh them, is decided here purely (the clock and the jitter are passed in); the
//! AssumeRole call itself goes through [`AccountApi::assume_role`] of the source account.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use jiff::{SignedDuration, Timestamp};

use crate::{
    api::{CredentialsSpec, names::Reason},
    aws::{
        AccountApi, AssumeRoleRequest, AwsError, AwsErrorKind, CHAINED_SESSION_LIMIT,
        IssuedCredentials, MIN_SESSION,
    },
    naming::{OperatorIdentity, Owner},
};

/// The widest window before expiry in which an AWS SDK refreshes cached credentials: botocore's
/// advisory refresh, 15 minutes (`_DEFAULT_ADVISORY_REFRESH_TIMEOUT` in botocore/credentials.py;
/// it insists from 10 minutes, `_DEFAULT_MANDATORY_REFRESH_TIMEOUT`). The AWS SDKs for Go v2,
/// JavaScript v3, Java v2 and Rust refresh within a few minutes of expiry or later.
const SDK_REFRESH_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The window from which botocore refreshes on every call, blocking.
const SDK_MANDATORY_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long kubelet may take to show an updated Secret in a mounted volume: its sync period (1
/// minute by default) plus its Secret cache's propagation.
const PROPAGATION_ALLOWANCE: Duration = Duration::from_secs(2 * 60);
/// Credentials are refreshed at the latest this long before they expire: the new ones are in
/// every mounted volume before any SDK begins to refresh the old ones, with a few minutes to
/// spare (15 + 2 + 3 minutes).
pub(crate) const REFRESH_FLOOR: Duration =
    Duration::from_secs(SDK_REFRESH_WINDOW.as_secs() + PROPAGATION_ALLOWANCE.as_secs() + 3 * 60);
/// For sessions too short for [`REFRESH_FLOOR`] (under 21 minutes): at the latest this long
/// before expiry, so that SDKs never read credentials inside their mandatory window (10 + 2
/// minutes). botocore then refreshes in its advisory window, i.e. re-reads on many calls.
const SHORT_SESSION_FLOOR: Duration =
    Duration::from_secs(SDK_MANDATORY_WINDOW.as_secs() + PROPAGATION_ALLOWANCE.as_secs());
/// Credentials are never refreshed sooner than this after they were issued (unless that would
/// pass the floor): `refreshPercent: 1` on a short session must not mint every few seconds.
pub(crate) const MIN_REFRESH_DELAY: Duration = Duration::from_secs(60);
/// At most this share of the time until the planned refresh is taken off it as jitter, so that
/// credentials issued together spread out without ever refreshing right after being issued.
const JITTER_SHARE: f64 = 0.1;

/// How many mints of one namespace may be under way (waiting for the source account's AssumeRole
/// rate limit, or in flight) at once. The rate limit serves callers in order, so with this cap a
/// namespace that floods cannot queue ahead of the others: another namespace's mint waits at most
/// for this many per active namespace.
const MINTS_UNDER_WAY_PER_NAMESPACE: usize = 2;
/// The shortest time between two mints of one object, whatever asks for them (a refresh at 1 %
/// of a short session, a Secret edited over and over).
pub(crate) const MIN_MINT_INTERVAL: Duration = Duration::from_secs(30);

/// How long a mint is assumed to hold its slot before one has been measured.
const INITIAL_MINT_TIME: Duration = Duration::from_millis(500);
/// Bounds of the wait given to an object whose namespace has no free slot.
const MIN_SLOT_WAIT: Duration = Duration::from_millis(200);
const MAX_SLOT_WAIT: Duration = Duration::from_secs(30);
/// An object that has not asked again for this long has left the line (deleted, refused, or
/// failing before its mint).
const LEFT_THE_LINE: Duration = Duration::from_secs(2 * 30);

/// Fairness of minting between namespaces and objects.
#[derive(Debug)]
pub(crate) struct MintBudget {
    namespaces: std::sync::Mutex<HashMap<String, NamespaceMints>>,
    last_mint: std::sync::Mutex<HashMap<String, Instant>>,
    /// How long a mint holds its slot, on average (a moving average of the last ones).
    mint_time: std::sync::Mutex<Duration>,
}

impl Default for MintBudget {
    fn default() -> Self {
        Self {
            namespaces: Default::default(),
            last_mint: Default::default(),
            mint_time: std::sync::Mutex::new(INITIAL_MINT_TIME),
        }
    }
}

/// The mints of one namespace: those under way, and the objects that found no free slot, in the
/// order they first asked (with when they last asked).
#[derive(Debug, Default)]
struct NamespaceMints {
    under_way: usize,
    waiting: VecDeque<(String, Instant)>,
}

/// A mint of `namespace` under way; ends when dropped.
#[derive(Debug)]
pub(crate) struct MintSlot<'a> {
    budget: &'a MintBudget,
    namespace: String,
    since: Instant,
}

impl Drop for MintSlot<'_> {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        let mut average = lock(&self.budget.mint_time);
        *average = (*average * 4 + held) / 5;
        drop(average);
        let mut namespaces = lock(&self.budget.namespaces);
        if let Some(mints) = namespaces.get_mut(&self.namespace) {
            mints.under_way = mints.under_way.saturating_sub(1);
            if mints.under_way == 0 && mints.waiting.is_empty() {
                namespaces.remove(&self.namespace);
            }
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl MintBudget {
    /// A slot for a mint of object `key` in `namespace` now, or how long to wait: the object
    /// minted less than [`MIN_MINT_INTERVAL`] ago, or its namespace has
    /// [`MINTS_UNDER_WAY_PER_NAMESPACE`] mints under way. Objects that find no free slot join
    /// their namespace's line and are told to come back when their turn is likely, so that a
    /// hundred objects applied at once ask again spread out, in the order they came, instead of
    /// all of them every second. A free slot goes to whoever asks first (none is left idle).
    pub(crate) fn enter(
        &self,
        namespace: &str,
        key: &str,
        now: Instant,
    ) -> Result<MintSlot<'_>, Duration> {
        if let Some(last) = lock(&self.last_mint).get(key) {
            let since = now.saturating_duration_since(*last);
            if since < MIN_MINT_INTERVAL {
                return Err(MIN_MINT_INTERVAL - since);
            }
        }
        let mint_time = *lock(&self.mint_time);
        let mut namespaces = lock(&self.namespaces);
        let mints = namespaces.entry(namespace.to_owned()).or_default();
        mints
            .waiting
            .retain(|(_, asked)| now.saturating_duration_since(*asked) < LEFT_THE_LINE);
        let place = mints.waiting.iter().position(|(k, _)| k == key);
        if mints.under_way < MINTS_UNDER_WAY_PER_NAMESPACE {
            mints.under_way += 1;
            if let Some(place) = place {
                mints.waiting.remove(place);
            }
            return Ok(MintSlot {
                budget: self,
                namespace: namespace.to_owned(),
                since: now,
            });
        }
        let place = match place {
            Some(place) => {
                mints.waiting[place].1 = now;
                place
            }
            None => {
                mints.waiting.push_back((key.to_owned(), now));
                mints.waiting.len() - 1
            }
        };
        let turns = u32::try_from(place / MINTS_UNDER_WAY_PER_NAMESPACE + 1).unwrap_or(u32::MAX);
        Err(mint_time
            .saturating_mul(turns)
            .clamp(MIN_SLOT_WAIT, MAX_SLOT_WAIT))
    }

    /// Object `key` is gone: its last mint need not be remembered, nor its place in line.
    pub(crate) fn forget(&self, key: &str) {
        lock(&self.last_mint).remove(key);
        let mut namespaces = lock(&self.namespaces);
        namespaces.retain(|_, mints| {
            mints.waiting.retain(|(k, _)| k != key);
            mints.under_way > 0 || !mints.waiting.is_empty()
        });
    }

    /// Object `key` minted at `now`; entries older than the interval are dropped on the way.
    pub(crate) fn minted(&self, key: &str, now: Instant) {
        let mut last = lock(&self.last_mint);
        last.retain(|_, at| now.saturating_duration_since(*at) < MIN_MINT_INTERVAL);
        last.insert(key.to_owned(), now);
    }
}

/// Credentials as the Secret holds them, with what they were issued for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HeldCredentials {
    pub credentials: IssuedCredentials,
    pub role_arn: String,
    pub region: Option<String>,
    pub refresh_at: Timestamp,
    /// [`request_fingerprint`] of the request they were issued for; `None` in Secrets written
    /// before the operator recorded it (kept until due, so an upgrade mints nothing).
    pub request: Option<String>,
    /// When they were issued (what rollout restarts catch up with); `None` in older Secrets.
    pub issued_at: Option<Timestamp>,
}

/// The role the credentials are for.
pub(crate) struct RoleForCredentials<'a> {
    pub arn: &'a str,
    pub max_session_duration: i32,
    pub account_cap: Option<i32>,
}

/// The held credentials, if they may be kept at `now`: issued for this request (role, session
/// length and policy; a change of any mints at once) and region, and not yet due for refresh (so
/// an operator restart mints nothing).
pub(crate) fn reusable(
    held: Option<HeldCredentials>,
    request: &AssumeRoleRequest,
    spec: &CredentialsSpec,
    now: Timestamp,
) -> Option<HeldCredentials> {
    let fingerprint = request_fingerprint(request);
    held.filter(|h| {
        h.role_arn == request.role_arn
            && now < h.refresh_at
            && h.region == spec.region
            && h.request.as_ref().is_none_or(|f| *f == fingerprint)
    })
}

/// Whether `held` was issued at or after `revoked_before` (sessions of the role issued before it
/// are revoked, so credentials from then are useless: replaced at once). The recorded issue time
/// is at most the real one (whole seconds, cut), so at or after means valid. Credentials whose
/// issue time was not recorded count as revoked.
pub(crate) fn issued_after(held: &HeldCredentials, revoked_before: Option<Timestamp>) -> bool {
    revoked_before.is_none_or(|before| held.issued_at.is_some_and(|at| at >= before))
}

/// What identifies a request's outcome: the role, the session's length, policy, name and external
/// ID. Hashed, so that the session policy is not copied into the Secret's metadata.
pub(crate) fn request_fingerprint(request: &AssumeRoleRequest) -> String {
    let mut parts = serde_json::json!([
        request.role_arn,
        request.duration_seconds,
        request.session_policy,
        request.session_name,
        request.external_id,
    ]);
    // The tags beyond the object's own (which never change): only when there are any, so that
    // credentials issued before session tags existed are kept until due.
    let extra: Vec<&(String, String)> = request
        .tags
        .iter()
        .filter(|(k, _)| !request.transitive_tag_keys.contains(k))
        .collect();
    if !extra.is_empty()
        && let Some(list) = parts.as_array_mut()
    {
        list.push(serde_json::json!(extra));
    }
    let text = parts.to_string();
    crate::naming::short_hash(&text)
}

/// What to ask STS for.
pub(crate) fn assume_request(
    owner: &Owner,
    spec: &CredentialsSpec,
    role: &RoleForCredentials<'_>,
    operator: &OperatorIdentity,
) -> AssumeRoleRequest {
    AssumeRoleRequest {
        role_arn: role.arn.to_owned(),
        external_id: owner.external_id(),
        session_name: owner.session_name(),
        source_identity: owner.session_name(),
        duration_seconds: session_duration(
            spec.duration_seconds,
            role.max_session_duration,
            role.account_cap,
            operator.chained,
        ),
        session_policy: spec.session_policy.clone(),
        tags: owner
            .tags()
            .into_iter()
            .chain(spec.session_tags.clone())
            .collect(),
        transitive_tag_keys: owner.tags().into_keys().collect(),
    }
}

/// How a mint ended, short of an error.
#[derive(Debug)]
pub(crate) enum Minted {
    Issued(IssuedCredentials),
    /// IAM has not propagated the new role yet.
    Propagating(String),
}

/// Assumes the role with the operator's source identity.
pub(crate) async fn mint<A: AccountApi>(
    source: &A,
    request: &AssumeRoleRequest,
    role_created: Option<Timestamp>,
    now: Timestamp,
) -> Result<Minted, AwsError> {
    match source.assume_role(request).await {
        Ok(credentials) => Ok(Minted::Issued(credentials)),
        Err(e) if waiting_for_propagation(e.kind, role_created, now) => {
            Ok(Minted::Propagating(format!(
                "waiting for IAM to propagate the new role before assuming it ({})",
                e.summary()
            )))
        }
        Err(e) => Err(e),
    }
}

/// Newly issued credentials as they are kept, with their refresh time.
pub(crate) fn hold(
    credentials: IssuedCredentials,
    request: &AssumeRoleRequest,
    spec: &CredentialsSpec,
    now: Timestamp,
    jitter: f64,
) -> HeldCredentials {
    let refresh_at = refresh_due_at(now, credentials.expiration, spec.refresh_percent, jitter);
    HeldCredentials {
        credentials,
        role_arn: request.role_arn.clone(),
        region: spec.region.clone(),
        refresh_at,
        request: Some(request_fingerprint(request)),
        issued_at: Some(now),
    }
}

/// How the credentials step ended, short of an error.
#[derive(Debug)]
pub(crate) enum CredentialsOutcome {
    /// The Secret holds valid credentials; `issued` when they were minted by this reconcile.
    Ready {
        secret_name: String,
        held: HeldCredentials,
        issued: bool,
        /// What the session's length implies for SDKs, when it is short.
        note: Option<String>,
    },
    /// A known delay (IAM propagation): try again soon.
    Waiting { message: String },
    /// The mint waits its turn (fairness between objects and namespaces): try again after;
    /// `held` is what the Secret still holds.
    Deferred {
        after: Duration,
        secret_name: String,
        held: Option<HeldCredentials>,
    },
    /// The Secret name belongs to someone else: terminal until the spec changes.
    SecretNotOwned { message: String },
    /// Issuing or refreshing failed (retried with backoff); `held` is what the Secret still
    /// holds, whose expiration the condition states.
    Failed {
        reason: Reason,
        message: String,
        held: Option<HeldCredentials>,
    },
    /// Not issued because the role is refused (its reason) or was never created.
    Withheld { reason: Reason, message: String },
}

impl CredentialsOutcome {
    /// Reason of the `CredentialsReady` condition.
    pub(crate) fn reason(&self) -> Reason {
        match self {
            CredentialsOutcome::Ready { .. } => Reason::CredentialsIssued,
            CredentialsOutcome::Waiting { .. } => Reason::Propagating,
            CredentialsOutcome::Deferred { held: Some(_), .. } => Reason::CredentialsIssued,
            CredentialsOutcome::Deferred { held: None, .. } => Reason::RateLimited,
            CredentialsOutcome::SecretNotOwned { .. } => Reason::SecretNotOwned,
            CredentialsOutcome::Failed { reason, .. }
            | CredentialsOutcome::Withheld { reason, .. } => *reason,
        }
    }
}

/// The session length to request: the spec's, capped by the role's maximum, the account's cap, and
/// IAM's one-hour limit for role chaining when the operator itself runs on an assumed role.
pub(crate) fn session_duration(
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
    duration.max(MIN_SESSION)
}

/// How long before expiry credentials of `lifetime` are refreshed at the latest.
fn floor_for(lifetime: f64) -> Duration {
    if lifetime >= (REFRESH_FLOOR + MIN_REFRESH_DELAY).as_secs_f64() {
        REFRESH_FLOOR
    } else {
        SHORT_SESSION_FLOOR
    }
}

/// What a session of `duration_seconds` implies for SDKs, when it is too short to stay outside
/// their refresh windows; said in the `CredentialsReady` condition.
pub(crate) fn short_session_note(duration_seconds: i32) -> Option<String> {
    let lifetime = f64::from(duration_seconds);
    if floor_for(lifetime) == REFRESH_FLOOR {
        return None;
    }
    let every = (lifetime - SHORT_SESSION_FLOOR.as_secs_f64()).max(MIN_REFRESH_DELAY.as_secs_f64());
    Some(format!(
        "sessions of {duration_seconds} s are refreshed every {every:.0} s, and SDKs that refresh {} min before expiry (botocore) re-run credential_process on many calls; use durationSeconds of at least {} for refreshes outside every SDK's window",
        SDK_REFRESH_WINDOW.as_secs() / 60,
        (REFRESH_FLOOR + MIN_REFRESH_DELAY).as_secs()
    ))
}

/// When credentials issued at `issued` and expiring at `expiration` should be replaced:
/// `refresh_percent` of the lifetime, but never later than [`REFRESH_FLOOR`] before expiry (the
/// SDKs' refresh windows and kubelet's propagation stay clear; [`SHORT_SESSION_FLOOR`] for short
/// sessions) and never sooner than [`MIN_REFRESH_DELAY`] after issue, then brought forward by up
/// to [`JITTER_SHARE`] of that delay (`jitter` in [0, 1) picks how much). The result is in whole
/// seconds (as stored in the Secret) and at least a second after `issued`.
pub(crate) fn refresh_due_at(
    issued: Timestamp,
    expiration: Timestamp,
    refresh_percent: i32,
    jitter: f64,
) -> Timestamp {
    let lifetime = expiration.duration_since(issued).as_secs_f64();
    let floor_duration = floor_for(lifetime);
    let floor = floor_duration.as_secs_f64();
    let share = f64::from(refresh_percent.clamp(1, 100)) / 100.0;
    let planned = (lifetime * share).min(lifetime - floor);
    if planned <= 0.0 {
        return issued;
    }
    let delay = (planned * (1.0 - JITTER_SHARE * jitter.clamp(0.0, 1.0)))
        .max(MIN_REFRESH_DELAY.as_secs_f64().min(lifetime - floor))
        .max(1.0);
    let due = Timestamp::from_second(
        (issued.as_second() as f64 + issued.subsec_nanosecond() as f64 / 1e9 + delay).ceil() as i64,
    )
    .unwrap_or(issued);
    let latest = expiration - SignedDuration::try_from(floor_duration).expect("small duration");
    due.min(latest.max(issued))
}

/// After a role is created, IAM may deny assuming it for a while; denials within this window are
/// waited out rather than reported as failures.
const PROPAGATION_WINDOW: SignedDuration = SignedDuration::from_secs(180);

/// Whether a failed AssumeRole is IAM still propagating a new role (wait and retry) rather than a
/// real denial: access denied within [`PROPAGATION_WINDOW`] of the role's creation.
pub(crate) fn waiting_for_propagation(
    kind: AwsErrorKind,
    role_created: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    kind == AwsErrorKind::AccessDenied
        && role_created.is_none_or(|created| now.duration_since(created) < PROPAGATION_WINDOW)
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
    fn refresh_leaves_the_sdks_windows_and_kubelets_propagation_clear() {
        // 67 % (the default) of an hour would be 40.2 minutes: the new credentials must be in
        // the volume 17 minutes before expiry (botocore's 15 plus kubelet's 2), with room.
        assert_eq!(refresh_due_at(at(0), at(3600), 67, 0.0), at(2400));
        assert_eq!(refresh_due_at(at(0), at(3600), 90, 0.0), at(2400));
        // A 15-minute session cannot stay outside botocore's advisory window: it is refreshed
        // so that no SDK ever reads it inside the mandatory 10 minutes (plus propagation).
        assert_eq!(refresh_due_at(at(0), at(900), 90, 0.0), at(180));
        for lifetime in [900, 1260, 1800, 3600, 43200] {
            let due = refresh_due_at(at(0), at(lifetime), 90, 0.0);
            let left = at(lifetime).duration_since(due).as_secs();
            assert!(
                left >= (SDK_MANDATORY_WINDOW + PROPAGATION_ALLOWANCE).as_secs() as i64,
                "{lifetime}: {left} s left at the refresh"
            );
            if lifetime >= 1260 {
                assert!(
                    left >= (SDK_REFRESH_WINDOW + PROPAGATION_ALLOWANCE).as_secs() as i64,
                    "{lifetime}: {left}"
                );
            }
        }
        assert!(short_session_note(900).unwrap().contains("every 180 s"));
        assert_eq!(short_session_note(3600), None);
    }

    #[test]
    fn expired_or_odd_inputs_give_a_time_not_before_issue() {
        assert_eq!(refresh_due_at(at(100), at(50), 67, 0.5), at(100));
        assert_eq!(
            refresh_due_at(at(0), at(500), 67, 0.5),
            at(0),
            "already inside the floor"
        );
    }

    #[test]
    fn a_small_share_waits_at_least_the_minimum_delay() {
        // 1 % of 900 s would be 9 s: a mint every few seconds. It waits a minute instead.
        let due = refresh_due_at(at(0), at(900), 1, 0.999);
        assert_eq!(due, at(60), "{due}");
        // 5 % of 12 h is 36 min, well past the minimum.
        assert_eq!(refresh_due_at(at(0), at(43200), 5, 0.0), at(2160));
    }

    #[test]
    fn jitter_applies_below_the_floor_too() {
        let plain = refresh_due_at(at(0), at(3600), 67, 0.0);
        let jittered = refresh_due_at(at(0), at(3600), 67, 0.9);
        assert_eq!(plain, at(2400));
        assert!(jittered < plain && jittered >= at(2160), "{jittered}");
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
            prop_assert!(jittered <= expiration - SignedDuration::try_from(SHORT_SESSION_FLOOR).unwrap());
            if lifetime >= 1260 {
                prop_assert!(jittered <= expiration - SignedDuration::try_from(REFRESH_FLOOR).unwrap());
            }
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
    fn a_changed_request_mints_at_once_and_an_unrecorded_one_is_kept_until_due() {
        let spec: CredentialsSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let request = AssumeRoleRequest {
            role_arn: "arn:aws:iam::111111111111:role/r".into(),
            external_id: "x".into(),
            session_name: "a.r".into(),
            source_identity: "a.r".into(),
            duration_seconds: 3600,
            session_policy: None,
            tags: vec![("crossaccount.io/name".into(), "r".into())],
            transitive_tag_keys: vec!["crossaccount.io/name".into()],
        };
        let issued = IssuedCredentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: "c".into(),
            expiration: at(3600),
        };
        let held = hold(issued, &request, &spec, at(0), 0.0);
        assert!(reusable(Some(held.clone()), &request, &spec, at(10)).is_some());
        assert!(
            reusable(Some(held.clone()), &request, &spec, held.refresh_at).is_none(),
            "due"
        );
        for changed in [
            AssumeRoleRequest {
                duration_seconds: 900,
                ..request.clone()
            },
            AssumeRoleRequest {
                session_policy: Some("{}".into()),
                ..request.clone()
            },
            AssumeRoleRequest {
                role_arn: "arn:aws:iam::111111111111:role/other".into(),
                ..request.clone()
            },
            AssumeRoleRequest {
                tags: vec![
                    ("crossaccount.io/name".into(), "r".into()),
                    ("team".into(), "a".into()),
                ],
                ..request.clone()
            },
        ] {
            assert!(
                reusable(Some(held.clone()), &changed, &spec, at(10)).is_none(),
                "{changed:?}"
            );
        }
        let legacy = HeldCredentials {
            request: None,
            ..held
        };
        assert!(reusable(Some(legacy), &request, &spec, at(10)).is_some());
    }

    #[test]
    fn a_flooding_namespace_cannot_take_every_mint_and_an_object_mints_at_most_every_30_s() {
        let budget = MintBudget::default();
        let now = std::time::Instant::now();
        let a1 = budget.enter("flood", "flood/1", now).unwrap();
        let _a2 = budget.enter("flood", "flood/2", now).unwrap();
        assert!(
            budget.enter("flood", "flood/3", now).is_err(),
            "two under way per namespace"
        );
        assert!(
            budget.enter("quiet", "quiet/1", now).is_ok(),
            "another namespace is not held up"
        );
        drop(a1);
        budget.minted("flood/1", now);
        assert!(
            budget.enter("flood", "flood/3", now).is_ok(),
            "a slot came free"
        );
        let wait = budget
            .enter("flood", "flood/1", now + Duration::from_secs(10))
            .err();
        assert_eq!(
            wait,
            Some(Duration::from_secs(20)),
            "flood/1 minted 10 s ago"
        );
        assert!(
            budget
                .enter("other", "flood/1", now + MIN_MINT_INTERVAL)
                .is_ok()
        );
        budget.minted("flood/4", now);
        budget.forget("flood/4");
        assert!(
            !budget.last_mint.lock().unwrap().contains_key("flood/4"),
            "a deleted object's last mint is forgotten"
        );
    }

    #[test]
    fn a_namespace_that_floods_is_told_to_come_back_in_turn_and_in_order() {
        let budget = MintBudget::default();
        let now = std::time::Instant::now();
        let a = budget.enter("flood", "flood/a", now).unwrap();
        let _b = budget.enter("flood", "flood/b", now).unwrap();
        let waits: Vec<Duration> = (0..6)
            .map(|i| {
                budget
                    .enter("flood", &format!("flood/{i}"), now)
                    .unwrap_err()
            })
            .collect();
        // Two slots: each pair of those in line waits one mint more than the pair before it.
        assert_eq!(waits[0], INITIAL_MINT_TIME);
        assert_eq!(waits[1], INITIAL_MINT_TIME);
        assert_eq!(waits[2], INITIAL_MINT_TIME * 2);
        assert_eq!(waits[5], INITIAL_MINT_TIME * 3);
        assert_eq!(
            budget.enter("flood", "flood/5", now).unwrap_err(),
            INITIAL_MINT_TIME * 3,
            "asking again keeps one's place"
        );
        drop(a);
        let mint_time = *budget.mint_time.lock().unwrap();
        assert!(
            mint_time < INITIAL_MINT_TIME,
            "the mint just measured counts"
        );
        let first = budget
            .enter("flood", "flood/0", now)
            .expect("a slot came free");
        assert_eq!(
            budget.enter("flood", "flood/5", now).unwrap_err(),
            mint_time * 3,
            "flood/0 left the line: flood/5 is fifth of five"
        );
        drop(first);
        // Those that stop asking leave the line; a deleted object leaves it at once.
        budget.forget("flood/1");
        let later = now + LEFT_THE_LINE;
        let _c = budget.enter("flood", "flood/c", later).unwrap();
        assert_eq!(
            budget.enter("flood", "flood/5", later).unwrap_err(),
            MIN_SLOT_WAIT.max(*budget.mint_time.lock().unwrap()),
            "the others left the line"
        );
        let namespaces = budget.namespaces.lock().unwrap();
        assert_eq!(namespaces["flood"].waiting.len(), 1);
    }

    #[test]
    fn the_wait_follows_how_long_mints_take_within_bounds() {
        let budget = MintBudget::default();
        let now = std::time::Instant::now();
        *budget.mint_time.lock().unwrap() = Duration::from_millis(10);
        let _a = budget.enter("ns", "ns/a", now).unwrap();
        let _b = budget.enter("ns", "ns/b", now).unwrap();
        assert_eq!(budget.enter("ns", "ns/c", now).unwrap_err(), MIN_SLOT_WAIT);
        *budget.mint_time.lock().unwrap() = Duration::from_secs(5);
        for i in 0..20 {
            let _ = budget.enter("ns", &format!("ns/{i}"), now);
        }
        assert_eq!(budget.enter("ns", "ns/19", now).unwrap_err(), MAX_SLOT_WAIT);
    }

    #[test]
    fn a_namespace_with_nothing_under_way_or_waiting_is_not_kept() {
        let budget = MintBudget::default();
        let now = std::time::Instant::now();
        let a = budget.enter("ns", "ns/a", now).unwrap();
        let b = budget.enter("ns", "ns/b", now).unwrap();
        let _ = budget.enter("ns", "ns/c", now).unwrap_err();
        drop((a, b));
        assert!(
            budget.namespaces.lock().unwrap().contains_key("ns"),
            "ns/c waits"
        );
        let c = budget.enter("ns", "ns/c", now).unwrap();
        drop(c);
        assert!(budget.namespaces.lock().unwrap().is_empty());
    }

    #[test]
    fn credentials_issued_before_a_revocation_are_not_kept() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let held = |issued: Option<Timestamp>| HeldCredentials {
            credentials: IssuedCredentials {
                access_key_id: "ASIA".into(),
                secret_access_key: "s".into(),
                session_token: "t".into(),
                expiration: at(3600),
            },
            role_arn: "arn:aws:iam::111111111111:role/r".into(),
            region: None,
            refresh_at: at(3000),
            request: None,
            issued_at: issued,
        };
        assert!(issued_after(&held(Some(at(10))), None));
        assert!(issued_after(&held(Some(at(10))), Some(at(5))));
        assert!(issued_after(&held(Some(at(10))), Some(at(10))));
        assert!(!issued_after(&held(Some(at(9))), Some(at(10))));
        assert!(
            !issued_after(&held(None), Some(at(5))),
            "unknown issue time counts as revoked"
        );
    }
}
