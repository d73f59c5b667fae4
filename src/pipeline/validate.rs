//! Step 1 (pure): a CrossAccountRole's spec checked against its AwsAccount's guardrails. The result
//! is everything later steps need, already defaulted; a refusal says which field and why.

use std::collections::{BTreeMap, BTreeSet};

use kube::{ResourceExt, core::SelectorExt};
use serde_json::Value;

use crate::{
    api::{
        AwsAccount, CrossAccountRole,
        names::{self, Reason, condition as cond},
    },
    aws::{
        Principal,
        policy::{self, PolicyKind},
    },
    naming::{OperatorIdentity, Owner},
};

/// Why a spec is not acted upon. Terminal until the CR or its AwsAccount changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `InvalidSpec`, `NotPermitted`, `AccountNotReady` or `RoleNotOwned`.
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(Reason::InvalidSpec, message)
    }
    fn not_permitted(message: impl Into<String>) -> Self {
        Self::new(Reason::NotPermitted, message)
    }
}

/// A spec that passed every check, with defaults filled in.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ValidatedSpec {
    pub role_name: String,
    pub role_path: String,
    pub description: Option<String>,
    pub max_session_duration: Option<i32>,
    pub managed_policies: BTreeSet<String>,
    pub inline_policies: BTreeMap<String, Value>,
    pub trust_principals: BTreeSet<String>,
    pub grants: BTreeSet<Principal>,
    /// The real ARNs of granted principals (with their paths), as the source account knows
    /// them; a principal not in it is named by its ARN at `/`.
    pub grant_arns: BTreeMap<Principal, String>,
    pub tags: BTreeMap<String, String>,
    pub permissions_boundary: Option<String>,
    /// The external ID the extra principals must present (`spec.trust.externalId`).
    pub trust_external_id: Option<String>,
    /// The CR may take over an untagged role of the same name.
    pub adopt: bool,
    /// Plan only (`crossaccount.io/plan-only: "true"`): nothing is written in IAM.
    pub plan_only: bool,
    /// What of the role others own.
    pub coexistence: Coexistence,
    /// The sessions the CR asks to revoke (`crossaccount.io/revoke-sessions`).
    pub revoke_sessions: Option<RevokeSessions>,
}

/// A request to revoke the role's sessions issued before `before`, and who asked (the field
/// manager that set the annotation, from managedFields: Kubernetes records no user there).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RevokeSessions {
    pub before: jiff::Timestamp,
    pub requested_by: Option<String>,
}

/// What of a role others own, so that the operator leaves it alone: tags others manage (the
/// AwsAccount's `ignoredTagKeys`; `aws:` keys always) and inline policies it never deletes or
/// rewrites (`protectedInlinePolicies`; [`REVOKE_SESSIONS_POLICY`] always).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Coexistence {
    pub ignored_tag_keys: Vec<String>,
    pub protected_inline_policies: Vec<String>,
}

pub(crate) use crate::aws::REVOKE_SESSIONS_POLICY;

impl ValidatedSpec {
    /// The ARN to trust for granted principal `p`.
    pub(crate) fn grant_arn(&self, p: &Principal, operator: &OperatorIdentity) -> String {
        self.grant_arns.get(p).cloned().unwrap_or_else(|| {
            p.arn(&operator.partition, &operator.source_account_id)
                .to_string()
        })
    }
}

impl Coexistence {
    /// Whether the operator leaves role tag `key` alone.
    pub(crate) fn tag_ignored(&self, key: &str) -> bool {
        key.to_ascii_lowercase().starts_with("aws:")
            || self.ignored_tag_keys.iter().any(|p| glob_match(p, key))
    }

    /// Whether the operator leaves inline policy `name` of the role alone.
    pub(crate) fn inline_protected(&self, name: &str) -> bool {
        inline_protected(&self.protected_inline_policies, name)
    }
}

fn inline_protected(patterns: &[String], name: &str) -> bool {
    name == REVOKE_SESSIONS_POLICY || patterns.iter().any(|p| glob_match(p, name))
}

/// IAM's limit on the total size of a role's inline policies (characters without whitespace).
const INLINE_AGGREGATE_LIMIT: usize = 10240;
const DEFAULT_ROLE_PATH: &str = "/";
/// IAM's quota of tags per role
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html>).
const ROLE_TAG_QUOTA: usize = 50;
/// The operator's ownership tags on every role (cluster, namespace, name).
const OWNERSHIP_TAGS: usize = 3;

/// What looking up the AwsAccount `spec.accountRef` names found.
#[derive(Clone, Debug)]
pub(crate) enum AccountLookup {
    Found(std::sync::Arc<AwsAccount>),
    Missing,
    /// Stored in a shape this version cannot read (the account controller says so on it).
    Unreadable(String),
}

/// The AwsAccount `spec.accountRef` names, or the refusal when it does not exist or cannot be
/// read.
pub(crate) fn named_account<'a>(
    cr: &CrossAccountRole,
    account: &'a AccountLookup,
) -> Result<&'a AwsAccount, Refusal> {
    let name = &cr.spec.account_ref;
    match account {
        AccountLookup::Found(account) => Ok(account),
        AccountLookup::Missing => Err(Refusal::new(
            Reason::AccountNotReady,
            format!("AwsAccount {name} (spec.accountRef) does not exist"),
        )),
        AccountLookup::Unreadable(error) => Err(Refusal::new(
            Reason::AccountNotReady,
            format!("AwsAccount {name} (spec.accountRef) cannot be read by the operator: {error}"),
        )),
    }
}

/// Whether the AwsAccount's management identity has been verified (its `Ready` condition). When
/// not: why, and whether it has never been verified yet.
pub(crate) fn verified(account: &AwsAccount) -> Result<(), (String, bool)> {
    let conditions = account
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    match conditions.iter().find(|c| c.type_ == cond::READY) {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err((
            format!(
                "AwsAccount {} is not Ready: {}",
                account.name_any(),
                c.message
            ),
            false,
        )),
        None => Err((
            format!(
                "AwsAccount {} has not been verified yet",
                account.name_any()
            ),
            true,
        )),
    }
}

/// A spec checked against its AwsAccount: what of it the guardrails permit (everything, when
/// nothing is violated) and what they do not. Guardrails hold for roles that exist: a spec with
/// violations is refused, and its role, if it exists, is brought back to the permitted part.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Checked {
    pub spec: ValidatedSpec,
    /// `NotPermitted` problems, each naming the field and the guardrail.
    pub violations: Vec<String>,
}

impl Checked {
    /// The refusal the violations make, if any.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        (!self.violations.is_empty()).then(|| Refusal::not_permitted(self.violations.join("; ")))
    }
}

/// Checks `cr` against `account` (which must be the AwsAccount named by `spec.accountRef`) for a
/// namespace with `namespace_labels`. A malformed spec is refused (`InvalidSpec`); what the
/// guardrails forbid is left out of the permitted spec and listed as a violation.
pub(crate) fn validate(
    cr: &CrossAccountRole,
    account: &AwsAccount,
    namespace_labels: &BTreeMap<String, String>,
    operator: &OperatorIdentity,
    owner: &Owner,
) -> Result<Checked, Refusal> {
    let namespace = cr.namespace().unwrap_or_default();
    let spec = &cr.spec;
    let guard = &account.spec;
    let account_name = account.name_any();
    let mut violations = Vec::new();

    let namespace_allowed =
        namespace_matches(&guard.allowed_namespaces, &namespace, namespace_labels).map_err(
            |e| {
                Refusal::not_permitted(format!(
                    "AwsAccount {account_name} has an invalid spec.allowedNamespaces.selector: {e}"
                ))
            },
        )?;
    if !namespace_allowed {
        violations.push(format!(
            "namespace {namespace} is not allowed to use AwsAccount {account_name} (see its spec.allowedNamespaces)"
        ));
    }

    let prefix = guard.role_name_prefix.clone().unwrap_or_default();
    let role_name = match &spec.role_name {
        Some(name) if !name.starts_with(&prefix) => {
            return Err(Refusal::not_permitted(format!(
                "spec.roleName {name:?} must start with {prefix:?}, the roleNamePrefix of AwsAccount {account_name}"
            )));
        }
        Some(name) => name.clone(),
        None => default_name(cr, owner, &prefix),
    };

    let cap = guard.max_session_duration_seconds;
    let mut max_session_duration = spec.max_session_duration_seconds;
    if let (Some(max), Some(cap)) = (max_session_duration, cap)
        && max > cap
    {
        violations.push(format!(
            "spec.maxSessionDurationSeconds {max} exceeds {cap}, the maxSessionDurationSeconds of AwsAccount {account_name}"
        ));
        max_session_duration = Some(cap);
    }
    if let Some(credentials) = &spec.credentials {
        if let Some(cap) = cap
            && credentials.duration_seconds > cap
        {
            violations.push(format!(
                "spec.credentials.durationSeconds {} exceeds {cap}, the maxSessionDurationSeconds of AwsAccount {account_name}",
                credentials.duration_seconds
            ));
        }
        if let Some((key, value)) = credentials.session_tags.iter().find(|(_, v)| {
            !v.chars()
                .all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c))
        }) {
            return Err(Refusal::invalid(format!(
                "spec.credentials.sessionTags[{key}]: the value {value:?} holds characters a session tag cannot (letters, digits, spaces and _.:/=+-@)"
            )));
        }
        for key in credentials.session_tags.keys() {
            let lower = key.to_ascii_lowercase();
            if lower.starts_with(names::tags::RESERVED_PREFIX) || lower.starts_with("aws:") {
                return Err(Refusal::invalid(format!(
                    "spec.credentials.sessionTags: the key {key:?} is reserved (crossaccount.io/ and aws: prefixes)"
                )));
            }
            if !key
                .chars()
                .all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c))
                || key.is_empty()
                || key.len() > 128
            {
                return Err(Refusal::invalid(format!(
                    "spec.credentials.sessionTags: the key {key:?} is not a valid session tag key (1-128 letters, digits, spaces and _.:/=+-@)"
                )));
            }
            if !guard
                .allowed_session_tag_keys
                .iter()
                .any(|p| glob_match(p, key))
            {
                violations.push(format!(
                    "spec.credentials.sessionTags[{key}]: AwsAccount {account_name} does not allow this session tag (allowedSessionTagKeys: {})",
                    list_or_none(&guard.allowed_session_tag_keys)
                ));
            }
        }
        if let Some(session_policy) = &credentials.session_policy {
            policy::validate_document(session_policy, PolicyKind::Session)
                .map_err(|e| Refusal::invalid(format!("spec.credentials.sessionPolicy: {e}")))?;
        }
    }

    let mut managed_policies = BTreeSet::new();
    for (i, arn) in spec.policies.managed.iter().enumerate() {
        if guard.allowed_policy_arns.iter().any(|p| glob_match(p, arn)) {
            managed_policies.insert(arn.clone());
        } else {
            violations.push(format!(
                "spec.policies.managed[{i}]: {arn} is not allowed by AwsAccount {account_name} (allowedPolicyArns: {})",
                list_or_none(&guard.allowed_policy_arns)
            ));
        }
    }

    if !spec.policies.inline.is_empty() && !guard.allow_inline_policies {
        violations.push(format!(
            "spec.policies.inline: AwsAccount {account_name} does not allow inline policies (allowInlinePolicies is false)"
        ));
    }
    let mut inline_policies = BTreeMap::new();
    let mut inline_size = 0;
    let mut names = BTreeSet::new();
    for inline in &spec.policies.inline {
        let document =
            policy::validate_document(&inline.document, PolicyKind::Identity).map_err(|e| {
                Refusal::invalid(format!(
                    "spec.policies.inline[{}].document: {e}",
                    inline.name
                ))
            })?;
        if inline_protected(&guard.protected_inline_policies, &inline.name) {
            return Err(Refusal::invalid(format!(
                "spec.policies.inline[{}]: the name is protected (AwsAccount {account_name}: {REVOKE_SESSIONS_POLICY} and protectedInlinePolicies are left to their owners); choose another name",
                inline.name
            )));
        }
        inline_size += policy::size_without_whitespace(&policy::to_text(&document));
        if !names.insert(inline.name.clone()) {
            return Err(Refusal::invalid(format!(
                "spec.policies.inline: the name {:?} is used twice",
                inline.name
            )));
        }
        let field = format!("spec.policies.inline[{}].document", inline.name);
        match content_violation(&document, guard, &account_name) {
            Some(problem) => violations.push(format!("{field}: {problem}")),
            None if guard.allow_inline_policies => {
                inline_policies.insert(inline.name.clone(), document);
            }
            None => {}
        }
    }
    if inline_size > INLINE_AGGREGATE_LIMIT {
        return Err(Refusal::invalid(format!(
            "spec.policies.inline: the documents total {inline_size} characters (without whitespace); IAM allows {INLINE_AGGREGATE_LIMIT} per role"
        )));
    }

    let mut trust_principals = BTreeSet::new();
    for (i, arn) in spec.trust.principals.iter().enumerate() {
        if is_operator(arn, operator) {
            violations.push(format!(
                "spec.trust.principals[{i}]: {arn} is the operator's own principal, which the role trusts already, with this object's external ID only; trusting it otherwise would let requests for other objects reach this role"
            ));
        } else if principal_allowed(
            &guard.allowed_trust_principals,
            guard.allow_wildcard_accounts,
            arn,
        ) {
            trust_principals.insert(arn.clone());
        } else {
            violations.push(format!(
                "spec.trust.principals[{i}]: {arn} is not allowed by AwsAccount {account_name} (allowedTrustPrincipals: {})",
                list_or_none(&guard.allowed_trust_principals)
            ));
        }
    }

    let grantable = grantable_patterns(account, &namespace, namespace_labels);
    let mut grants = BTreeSet::new();
    for (i, grant) in spec.grants.iter().enumerate() {
        let Some(principal) = grant_principal(grant) else {
            return Err(Refusal::invalid(format!(
                "spec.grants[{i}]: set exactly one of user, role or group"
            )));
        };
        let arn = principal
            .arn(&operator.partition, &operator.source_account_id)
            .to_string();
        if principal.kind_and_name().1.contains(',') {
            return Err(Refusal::invalid(format!(
                "spec.grants[{i}]: {arn} cannot be granted: a grant is a tag on the role, and IAM tag keys cannot hold ','"
            )));
        }
        if is_operator(&arn, operator) {
            violations.push(format!(
                "spec.grants[{i}]: {arn} is the operator's own principal, which can never be granted"
            ));
        } else if principal_allowed(&grantable.patterns, true, &arn) {
            grants.insert(principal);
        } else {
            violations.push(format!(
                "spec.grants[{i}]: {arn} is not allowed by AwsAccount {account_name} for namespace {namespace} ({}: {})",
                grantable.field,
                list_or_none(&grantable.patterns)
            ));
        }
    }

    // IAM allows 50 tags per role: the ownership tags, one per grant, and the spec's own.
    let tag_count = spec.tags.len() + spec.grants.len() + OWNERSHIP_TAGS;
    if tag_count > ROLE_TAG_QUOTA {
        return Err(Refusal::invalid(format!(
            "spec.tags and spec.grants: the role would carry {tag_count} tags ({} of spec.tags, one per grant, {OWNERSHIP_TAGS} ownership tags); IAM allows {ROLE_TAG_QUOTA} per role: drop tags or grants",
            spec.tags.len()
        )));
    }

    let mut adopt = cr
        .annotations()
        .get(names::ADOPT_ANNOTATION)
        .is_some_and(|v| v == "true");
    if adopt && !guard.allow_adoption {
        violations.push(format!(
            "metadata.annotations[{}]: AwsAccount {account_name} does not allow taking over existing roles (allowAdoption is false); remove the annotation or ask the account's admin",
            names::ADOPT_ANNOTATION
        ));
        adopt = false;
    }

    if let Some(key) = spec.tags.keys().find(|k| {
        let k = k.to_ascii_lowercase();
        k.starts_with(names::tags::RESERVED_PREFIX) || k.starts_with("aws:")
    }) {
        return Err(Refusal::invalid(format!(
            "spec.tags: the key {key:?} is reserved (crossaccount.io/ and aws: prefixes, in any case)"
        )));
    }
    if let Some(key) = spec
        .tags
        .keys()
        .find(|k| guard.ignored_tag_keys.iter().any(|p| glob_match(p, k)))
    {
        return Err(Refusal::invalid(format!(
            "spec.tags: the key {key:?} is managed by others (AwsAccount {account_name} ignoredTagKeys); remove it from the spec"
        )));
    }

    let mut permitted = ValidatedSpec {
        role_name,
        role_path: guard
            .role_path
            .clone()
            .unwrap_or_else(|| DEFAULT_ROLE_PATH.to_owned()),
        description: spec.description.clone().filter(|d| !d.is_empty()),
        max_session_duration,
        managed_policies,
        inline_policies,
        trust_principals,
        trust_external_id: spec.trust.external_id.clone(),
        grants,
        grant_arns: BTreeMap::new(),
        tags: spec.tags.clone(),
        permissions_boundary: guard.permissions_boundary_arn.clone(),
        adopt,
        plan_only: plan_only(cr)?,
        coexistence: Coexistence {
            ignored_tag_keys: guard.ignored_tag_keys.clone(),
            protected_inline_policies: guard.protected_inline_policies.clone(),
        },
        revoke_sessions: revoke_sessions(cr)?,
    };
    if !namespace_allowed {
        // A namespace that may not use the account may have nothing of it.
        permitted.managed_policies.clear();
        permitted.inline_policies.clear();
        permitted.trust_principals.clear();
        permitted.grants.clear();
        permitted.adopt = false;
    }
    Ok(Checked {
        spec: permitted,
        violations,
    })
}

/// The `crossaccount.io/revoke-sessions` annotation: an RFC 3339 time, or `now`, which means when
/// the annotation was set (the time of the managedFields entry that holds it, so that every
/// reconcile reads the same time). That time is cut to the second, and so is a session's
/// `aws:TokenIssueTime`, so `now` revokes up to the end of that second: a session issued in the
/// same second before the annotation is revoked too (one issued in it just after is, harmlessly).
/// Whether the object asks for a plan only; a value other than `"true"` or `"false"` is refused.
fn plan_only(cr: &CrossAccountRole) -> Result<bool, Refusal> {
    match cr
        .annotations()
        .get(names::PLAN_ONLY_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Refusal::invalid(format!(
            "metadata.annotations[{}]: {other:?} is neither \"true\" (plan, apply nothing) nor \"false\"",
            names::PLAN_ONLY_ANNOTATION
        ))),
    }
}

fn revoke_sessions(cr: &CrossAccountRole) -> Result<Option<RevokeSessions>, Refusal> {
    let Some(value) = cr.annotations().get(names::REVOKE_SESSIONS_ANNOTATION) else {
        return Ok(None);
    };
    let key = format!("f:{}", names::REVOKE_SESSIONS_ANNOTATION);
    let entry = cr.metadata.managed_fields.iter().flatten().find(|m| {
        m.fields_v1
            .as_ref()
            .is_some_and(|f| f.0["f:metadata"]["f:annotations"].get(&key).is_some())
    });
    let requested_by = entry.and_then(|m| m.manager.clone());
    let before = match value.trim() {
        "now" => entry.and_then(|m| m.time.as_ref()).map(|t| t.0 + jiff::SignedDuration::from_secs(1)).ok_or_else(|| {
            Refusal::invalid(format!(
                "metadata.annotations[{}]: \"now\" needs the time the annotation was set, which managedFields does not record here; give an RFC 3339 time instead",
                names::REVOKE_SESSIONS_ANNOTATION
            ))
        })?,
        text => text.parse::<jiff::Timestamp>().map_err(|e| {
            Refusal::invalid(format!(
                "metadata.annotations[{}]: {text:?} is neither \"now\" nor an RFC 3339 time such as 2026-12-01T12:00:00Z ({e})",
                names::REVOKE_SESSIONS_ANNOTATION
            ))
        })?,
    };
    Ok(Some(RevokeSessions {
        before,
        requested_by,
    }))
}

/// The default role name: an object that already has its role keeps its name (status records
/// it; only the name the old scheme would give is accepted from there), a new one gets the
/// unambiguous name.
fn default_name(cr: &CrossAccountRole, owner: &Owner, prefix: &str) -> String {
    let legacy = owner.legacy_role_name(prefix);
    let recorded = cr
        .status
        .as_ref()
        .and_then(|s| s.role_arn.as_deref())
        .and_then(crate::aws::Arn::parse)
        .map(|arn| arn.name().to_owned());
    match recorded {
        Some(name) if name == legacy => legacy,
        _ => owner.default_role_name(prefix),
    }
}

/// What makes an inline policy overstep the account's content guardrails: an Allow of an action
/// `deniedActions` names (a wildcard that covers one counts), or `NotAction`/`NotResource`
/// without `allowNotActions`.
fn content_violation(
    document: &Value,
    guard: &crate::api::AwsAccountSpec,
    account_name: &str,
) -> Option<String> {
    let statements: Vec<&Value> = match &document["Statement"] {
        Value::Array(list) => list.iter().collect(),
        single => vec![single],
    };
    for statement in statements {
        if !guard.allow_not_actions
            && (statement.get("NotAction").is_some() || statement.get("NotResource").is_some())
        {
            return Some(format!(
                "NotAction and NotResource are not allowed by AwsAccount {account_name} (allowNotActions is false)"
            ));
        }
        if statement["Effect"] != "Allow" {
            continue;
        }
        let actions: Vec<&str> = match (&statement["Action"], &statement["NotAction"]) {
            (Value::String(a), _) => vec![a.as_str()],
            (Value::Array(list), _) => list.iter().filter_map(Value::as_str).collect(),
            // Allow with NotAction allows everything but what it names.
            (_, Value::String(_) | Value::Array(_)) => vec!["*"],
            _ => Vec::new(),
        };
        for action in actions {
            if let Some(denied) = guard
                .denied_actions
                .iter()
                .find(|d| globs_overlap(&action.to_ascii_lowercase(), &d.to_ascii_lowercase()))
            {
                return Some(format!(
                    "it allows {action:?}, which covers {denied:?}, an action AwsAccount {account_name} denies (deniedActions)"
                ));
            }
        }
    }
    None
}

/// The principal a grant names, when it names exactly one.
pub(crate) fn grant_principal(grant: &crate::api::Grant) -> Option<Principal> {
    match (&grant.user, &grant.role, &grant.group) {
        (Some(user), None, None) => Some(Principal::User(user.clone())),
        (None, Some(role), None) => Some(Principal::Role(role.clone())),
        (None, None, Some(group)) => Some(Principal::Group(group.clone())),
        _ => None,
    }
}

/// Whether a CrossAccountRole of `namespace` may grant the principal `arn` in `account`.
pub(crate) fn grant_permitted(
    account: &AwsAccount,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    arn: &str,
    operator: &OperatorIdentity,
) -> bool {
    !is_operator(arn, operator)
        && principal_allowed(
            &grantable_patterns(account, namespace, labels).patterns,
            true,
            arn,
        )
}

/// The patterns `spec.grants` must match for `namespace`, and the field they come from.
struct Grantable {
    patterns: Vec<String>,
    field: &'static str,
}

fn grantable_patterns(
    account: &AwsAccount,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Grantable {
    match &account.spec.allowed_grants {
        Some(rules) => Grantable {
            patterns: rules
                .iter()
                .filter(|rule| {
                    namespace_matches(&rule.namespaces, namespace, labels).unwrap_or(false)
                })
                .flat_map(|rule| rule.principals.iter().cloned())
                .collect(),
            field: "allowedGrants",
        },
        None => Grantable {
            patterns: account.spec.allowed_trust_principals.clone(),
            field: "allowedTrustPrincipals",
        },
    }
}

/// Whether `arn` names the operator's own principal (as a user or a role, at any path).
fn is_operator(arn: &str, operator: &OperatorIdentity) -> bool {
    let name = |a: &str| {
        let parsed = crate::aws::Arn::parse(a)?;
        let kind = parsed.resource().split('/').next()?.to_owned();
        Some((
            parsed.account().to_owned(),
            kind,
            parsed.name().to_ascii_lowercase(),
        ))
    };
    matches!((name(arn), name(&operator.principal_arn)), (Some(a), Some(b)) if a == b)
}

/// Whether a principal ARN matches one of `patterns`: the account field of a pattern must be
/// literal unless `wildcard_accounts`, and an account root (`:root`) is matched only by a
/// pattern that writes `:root` out.
fn principal_allowed(patterns: &[String], wildcard_accounts: bool, arn: &str) -> bool {
    let account_field = |p: &str| p.split(':').nth(4).map(str::to_owned);
    patterns.iter().any(|pattern| {
        if !wildcard_accounts && account_field(pattern).is_some_and(|a| a.contains('*')) {
            return false;
        }
        if arn.ends_with(":root") && !pattern.ends_with(":root") {
            return false;
        }
        glob_match(pattern, arn)
    })
}

/// Whether two glob patterns (`*` any run, `?` one character) can match one same text.
fn globs_overlap(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut memo = vec![vec![None; b.len() + 1]; a.len() + 1];
    fn go(a: &[char], b: &[char], i: usize, j: usize, memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(known) = memo[i][j] {
            return known;
        }
        let result = match (a.get(i), b.get(j)) {
            (None, None) => true,
            (Some('*'), _) => go(a, b, i + 1, j, memo) || (j < b.len() && go(a, b, i, j + 1, memo)),
            (_, Some('*')) => go(a, b, i, j + 1, memo) || (i < a.len() && go(a, b, i + 1, j, memo)),
            (Some(x), Some(y)) => {
                (x == y || *x == '?' || *y == '?') && go(a, b, i + 1, j + 1, memo)
            }
            _ => false,
        };
        memo[i][j] = Some(result);
        result
    }
    go(&a, &b, 0, 0, &mut memo)
}

/// Whether `namespace` (with `labels`) is one `allowed` names or selects. An empty selector
/// would match everything; like "no selector", it allows nothing here, so that an admin must opt
/// namespaces in explicitly.
fn namespace_matches(
    allowed: &crate::api::AllowedNamespaces,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    if allowed.names.iter().any(|n| n == namespace) {
        return Ok(true);
    }
    let Some(selector) = &allowed.selector else {
        return Ok(false);
    };
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    let selector = kube::core::Selector::try_from(selector.clone()).map_err(|e| e.to_string())?;
    Ok(!empty && selector.matches(labels))
}

/// Matches `*` against any run of characters (including `/` and none); every other character
/// matches itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn list_or_none(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "none".to_owned()
    } else {
        patterns.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AwsAccountSpec, CrossAccountRoleSpec, Grant, InlinePolicy};
    use serde_json::json;

    pub(crate) fn operator() -> OperatorIdentity {
        OperatorIdentity {
            cluster_name: "dev".into(),
            source_account_id: "123456789012".into(),
            partition: "aws".into(),
            principal_arn: "arn:aws:iam::123456789012:user/cross-account-operator".into(),
            chained: false,
        }
    }

    fn owner_of(cr: &CrossAccountRole) -> Owner {
        Owner::of(cr, &operator())
    }

    fn account(spec: serde_json::Value) -> AwsAccount {
        let spec: AwsAccountSpec = serde_json::from_value(spec).unwrap();
        AwsAccount::new("target", spec)
    }

    fn permissive() -> AwsAccount {
        account(json!({
            "accountId": "111111111111",
            "allowedNamespaces": {"names": ["team-a"]},
            "allowedPolicyArns": ["arn:aws:iam::aws:policy/*"],
            "allowInlinePolicies": true,
            "allowedTrustPrincipals": ["arn:aws:iam::123456789012:user/*"],
        }))
    }

    fn role(spec: serde_json::Value) -> CrossAccountRole {
        let spec: CrossAccountRoleSpec = serde_json::from_value(spec).unwrap();
        let mut cr = CrossAccountRole::new("reader", spec);
        cr.metadata.namespace = Some("team-a".into());
        cr
    }

    /// The spec, or the refusal its violations make.
    fn decide(
        cr: &CrossAccountRole,
        account: &AwsAccount,
        labels: &BTreeMap<String, String>,
    ) -> Result<ValidatedSpec, Refusal> {
        let checked = validate(cr, account, labels, &operator(), &owner_of(cr))?;
        match checked.refusal() {
            Some(refusal) => Err(refusal),
            None => Ok(checked.spec),
        }
    }

    fn check(cr: &CrossAccountRole, account: &AwsAccount) -> Result<ValidatedSpec, Refusal> {
        decide(cr, account, &BTreeMap::new())
    }

    fn refusal(result: Result<ValidatedSpec, Refusal>) -> Refusal {
        result.expect_err("should be refused")
    }

    const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";

    #[test]
    fn the_seed_scenario_validates_with_defaults() {
        let cr = role(
            json!({"accountRef": "target", "policies": {"managed": [S3_READ]}, "grants": [{"user": "devTest"}]}),
        );
        let spec = check(&cr, &permissive()).unwrap();
        assert_eq!(spec.role_name, "team-a_reader");
        assert_eq!(spec.role_path, "/");
        assert_eq!(spec.managed_policies, BTreeSet::from([S3_READ.to_owned()]));
        assert_eq!(
            spec.grants,
            BTreeSet::from([Principal::User("devTest".into())])
        );
        assert!(!spec.adopt);
    }

    #[test]
    fn namespace_must_be_listed_or_selected() {
        let mut acct = permissive();
        acct.spec.allowed_namespaces.names.clear();
        let cr = role(json!({"accountRef": "target"}));
        let r = refusal(check(&cr, &acct));
        assert_eq!(r.reason, Reason::NotPermitted);
        assert!(r.message.contains("namespace team-a"), "{}", r.message);

        acct.spec.allowed_namespaces.selector =
            Some(serde_json::from_value(json!({"matchLabels": {"tenant": "yes"}})).unwrap());
        let labels = BTreeMap::from([("tenant".to_owned(), "yes".to_owned())]);
        assert!(decide(&cr, &acct, &labels).is_ok());
        assert!(decide(&cr, &acct, &BTreeMap::new()).is_err());

        // An empty selector does not open the account to every namespace.
        acct.spec.allowed_namespaces.selector = Some(Default::default());
        assert!(decide(&cr, &acct, &labels).is_err());
    }

    #[test]
    fn managed_policies_must_match_the_allow_list() {
        let cr = role(
            json!({"accountRef": "target", "policies": {"managed": ["arn:aws:iam::111111111111:policy/Admin"]}}),
        );
        let r = refusal(check(&cr, &permissive()));
        assert_eq!(r.reason, Reason::NotPermitted);
        assert!(
            r.message.starts_with("spec.policies.managed[0]"),
            "{}",
            r.message
        );
        let mut acct = permissive();
        acct.spec.allowed_policy_arns.clear();
        let r = refusal(check(
            &role(json!({"accountRef": "target", "policies": {"managed": [S3_READ]}})),
            &acct,
        ));
        assert!(
            r.message.contains("allowedPolicyArns: none"),
            "{}",
            r.message
        );
    }

    #[test]
    fn inline_policies_need_permission_and_valid_json() {
        let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
        let cr = role(
            json!({"accountRef": "target", "policies": {"inline": [{"name": "read", "document": doc}]}}),
        );
        assert!(check(&cr, &permissive()).is_ok());
        let mut strict = permissive();
        strict.spec.allow_inline_policies = false;
        let r = refusal(check(&cr, &strict));
        assert_eq!(r.reason, Reason::NotPermitted);
        assert!(r.message.contains("allowInlinePolicies"), "{}", r.message);

        let bad = role(
            json!({"accountRef": "target", "policies": {"inline": [{"name": "read", "document": "{not json"}]}}),
        );
        let r = refusal(check(&bad, &permissive()));
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(
            r.message.starts_with("spec.policies.inline[read].document"),
            "{}",
            r.message
        );
    }

    #[test]
    fn inline_policies_are_limited_in_total_size() {
        let big = |n: usize| {
            let actions: Vec<String> = (0..n).map(|i| format!("s3:GetObject{i:04}")).collect();
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}).to_string()
        };
        let inline: Vec<InlinePolicy> = (0..3)
            .map(|i| InlinePolicy {
                name: format!("p{i}"),
                document: big(200),
            })
            .collect();
        let mut cr = role(json!({"accountRef": "target"}));
        cr.spec.policies.inline = inline;
        let r = refusal(check(&cr, &permissive()));
        assert!(r.message.contains("IAM allows 10240"), "{}", r.message);
    }

    #[test]
    fn principals_and_grants_must_match_the_allow_list() {
        let cr = role(
            json!({"accountRef": "target", "trust": {"principals": ["arn:aws:iam::999999999999:root"]}}),
        );
        let r = refusal(check(&cr, &permissive()));
        assert!(
            r.message.starts_with("spec.trust.principals[0]"),
            "{}",
            r.message
        );
        let cr = role(json!({"accountRef": "target", "grants": [{"role": "admin"}]}));
        let r = refusal(check(&cr, &permissive()));
        assert!(
            r.message
                .starts_with("spec.grants[0]: arn:aws:iam::123456789012:role/admin"),
            "{}",
            r.message
        );
        let mut both = role(json!({"accountRef": "target"}));
        both.spec.grants = vec![Grant {
            user: Some("a".into()),
            role: None,
            group: Some("b".into()),
        }];
        let r = refusal(check(&both, &permissive()));
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert_eq!(
            r.message,
            "spec.grants[0]: set exactly one of user, role or group"
        );
    }

    #[test]
    fn groups_are_granted_by_their_arn_as_users_and_roles_are() {
        let grant = |group: &str| {
            role(
                json!({"accountRef": "target", "grants": [{"group": group}, {"user": "team-a-dev"}]}),
            )
        };
        let mut acct = permissive();
        acct.spec.allowed_grants = Some(vec![
            serde_json::from_value(json!({"namespaces": {"names": ["team-a"]}, "principals": [
                "arn:aws:iam::123456789012:group/team-a-*",
                "arn:aws:iam::123456789012:user/team-a-*",
            ]}))
            .unwrap(),
        ]);
        let checked = check(&grant("team-a-devs"), &acct).unwrap();
        assert_eq!(
            checked.grants,
            BTreeSet::from([
                Principal::Group("team-a-devs".into()),
                Principal::User("team-a-dev".into())
            ])
        );
        // A user pattern does not let a group of that name through, nor the reverse.
        let r = refusal(check(&grant("team-b-devs"), &acct));
        assert_eq!(
            r.message,
            "spec.grants[0]: arn:aws:iam::123456789012:group/team-b-devs is not allowed by AwsAccount target for namespace team-a (allowedGrants: arn:aws:iam::123456789012:group/team-a-*, arn:aws:iam::123456789012:user/team-a-*)"
        );
        acct.spec.allowed_grants = None;
        acct.spec.allowed_trust_principals = vec!["arn:aws:iam::123456789012:user/*".into()];
        let r = refusal(check(&grant("team-a-devs"), &acct));
        assert!(
            r.message.contains("(allowedTrustPrincipals: "),
            "{}",
            r.message
        );
        acct.spec
            .allowed_trust_principals
            .push("arn:aws:iam::123456789012:group/*".into());
        assert!(check(&grant("team-a-devs"), &acct).is_ok());
    }

    #[test]
    fn role_name_respects_the_prefix_and_durations_the_cap() {
        let mut acct = permissive();
        acct.spec.role_name_prefix = Some("k8s-".into());
        acct.spec.max_session_duration_seconds = Some(7200);
        let cr = role(json!({"accountRef": "target", "roleName": "Other"}));
        assert!(
            refusal(check(&cr, &acct))
                .message
                .contains("must start with \"k8s-\"")
        );
        let cr = role(json!({"accountRef": "target"}));
        assert_eq!(check(&cr, &acct).unwrap().role_name, "k8s-team-a_reader");
        let cr = role(json!({"accountRef": "target", "maxSessionDurationSeconds": 10800}));
        assert!(
            refusal(check(&cr, &acct))
                .message
                .starts_with("spec.maxSessionDurationSeconds")
        );
        let cr = role(json!({"accountRef": "target", "credentials": {"durationSeconds": 9000}}));
        assert!(
            refusal(check(&cr, &acct))
                .message
                .starts_with("spec.credentials.durationSeconds")
        );
    }

    #[test]
    fn reserved_tags_and_bad_session_policies_are_refused() {
        let cr = role(json!({"accountRef": "target", "tags": {"crossaccount.io/name": "x"}}));
        assert_eq!(
            refusal(check(&cr, &permissive())).reason,
            Reason::InvalidSpec
        );
        let cr = role(json!({"accountRef": "target", "credentials": {"sessionPolicy": "[]"}}));
        assert!(
            refusal(check(&cr, &permissive()))
                .message
                .starts_with("spec.credentials.sessionPolicy")
        );
    }

    #[test]
    fn plan_only_is_true_false_or_refused() {
        let acct = permissive();
        let mut cr = role(json!({"accountRef": "target"}));
        assert!(!check(&cr, &acct).unwrap().plan_only);
        let annotate = |cr: &mut CrossAccountRole, value: &str| {
            cr.metadata.annotations = Some(BTreeMap::from([(
                names::PLAN_ONLY_ANNOTATION.to_owned(),
                value.to_owned(),
            )]));
        };
        annotate(&mut cr, "true");
        assert!(check(&cr, &acct).unwrap().plan_only);
        annotate(&mut cr, "false");
        assert!(!check(&cr, &acct).unwrap().plan_only);
        annotate(&mut cr, "yes");
        let refused = refusal(check(&cr, &acct));
        assert_eq!(refused.reason, Reason::InvalidSpec);
        assert!(
            refused.message.contains("crossaccount.io/plan-only")
                && refused.message.contains("\"yes\""),
            "{}",
            refused.message
        );
    }

    #[test]
    fn adoption_needs_the_annotation_set_to_true() {
        let mut acct = permissive();
        acct.spec.allow_adoption = true;
        let mut cr = role(json!({"accountRef": "target"}));
        cr.metadata.annotations = Some(BTreeMap::from([(
            names::ADOPT_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
        assert!(check(&cr, &acct).unwrap().adopt);
        cr.metadata.annotations = Some(BTreeMap::from([(
            names::ADOPT_ANNOTATION.to_owned(),
            "yes".to_owned(),
        )]));
        assert!(!check(&cr, &acct).unwrap().adopt);
    }

    #[test]
    fn adoption_is_refused_unless_the_account_allows_it() {
        let mut cr = role(json!({"accountRef": "target"}));
        cr.metadata.annotations = Some(BTreeMap::from([(
            names::ADOPT_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
        let r = refusal(check(&cr, &permissive()));
        assert_eq!(r.reason, Reason::NotPermitted);
        assert!(
            r.message
                .starts_with("metadata.annotations[crossaccount.io/adopt]")
                && r.message.contains("allowAdoption is false"),
            "{}",
            r.message
        );
        // Without the annotation the account's setting does not matter.
        assert!(check(&role(json!({"accountRef": "target"})), &permissive()).is_ok());
    }

    #[test]
    fn globs_match_runs_of_any_characters() {
        assert!(glob_match("*", "anything/at:all"));
        assert!(glob_match("arn:aws:iam::aws:policy/*", S3_READ));
        assert!(glob_match(
            "arn:aws:iam::*:user/dev*",
            "arn:aws:iam::123:user/devTest"
        ));
        assert!(!glob_match(
            "arn:aws:iam::aws:policy/Amazon*ReadOnly",
            S3_READ
        ));
        assert!(
            glob_match("a*b*c", "abc")
                && glob_match("a*b*c", "aXbYc")
                && !glob_match("a*b*c", "acb")
        );
        assert!(!glob_match("", "x") && glob_match("", ""));
    }

    fn inline(document: serde_json::Value) -> CrossAccountRole {
        role(
            json!({"accountRef": "target", "policies": {"inline": [{"name": "p", "document": document.to_string()}]}}),
        )
    }

    #[test]
    fn inline_policies_may_not_allow_what_the_account_denies() {
        let allow = |action: serde_json::Value| {
            inline(
                json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]}),
            )
        };
        for denied in [
            json!("iam:PassRole"),
            json!("IAM:passrole"),
            json!("*"),
            json!("iam:*"),
            json!(["s3:GetObject", "sts:AssumeRole"]),
            json!("i?m:Update*"),
        ] {
            let r = refusal(check(&allow(denied.clone()), &permissive()));
            assert_eq!(r.reason, Reason::NotPermitted, "{denied}");
            assert!(
                r.message.contains("spec.policies.inline[p].document")
                    && r.message.contains("deniedActions"),
                "{}",
                r.message
            );
        }
        assert!(check(&allow(json!(["s3:*", "ec2:Describe*"])), &permissive()).is_ok());
        // A Deny of anything is fine.
        let deny =
            inline(json!({"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}));
        assert!(check(&deny, &permissive()).is_ok());
        // NotAction/NotResource only by opt-in; then the denied actions still apply to NotAction.
        let not_action = inline(
            json!({"Statement": [{"Effect": "Allow", "NotAction": "s3:*", "Resource": "*"}]}),
        );
        assert!(
            refusal(check(&not_action, &permissive()))
                .message
                .contains("allowNotActions")
        );
        let mut open = permissive();
        open.spec.allow_not_actions = true;
        assert!(
            refusal(check(&not_action, &open))
                .message
                .contains("deniedActions")
        );
        open.spec.denied_actions.clear();
        assert!(check(&not_action, &open).is_ok());
    }

    #[test]
    fn a_refused_spec_keeps_what_is_permitted_and_lists_what_is_not() {
        let cr = role(
            json!({"accountRef": "target", "policies": {"managed": [S3_READ, "arn:aws:iam::999999999999:policy/Other"]},
            "grants": [{"user": "devTest"}, {"role": "ops"}]}),
        );
        let checked = validate(
            &cr,
            &permissive(),
            &BTreeMap::new(),
            &operator(),
            &owner_of(&cr),
        )
        .unwrap();
        assert_eq!(checked.violations.len(), 2, "{:?}", checked.violations);
        assert_eq!(
            checked.spec.managed_policies,
            BTreeSet::from([S3_READ.to_owned()])
        );
        assert_eq!(
            checked.spec.grants,
            BTreeSet::from([Principal::User("devTest".into())])
        );
        // A namespace that may not use the account keeps nothing.
        let mut closed = permissive();
        closed.spec.allowed_namespaces.names.clear();
        let checked =
            validate(&cr, &closed, &BTreeMap::new(), &operator(), &owner_of(&cr)).unwrap();
        assert!(checked.violations[0].contains("namespace team-a"));
        assert!(checked.spec.managed_policies.is_empty() && checked.spec.grants.is_empty());
    }

    #[test]
    fn principal_patterns_never_match_roots_by_wildcard_nor_any_account_without_opt_in() {
        let trust =
            |arn: &str| role(json!({"accountRef": "target", "trust": {"principals": [arn]}}));
        let mut acct = permissive();
        acct.spec.allowed_trust_principals = vec!["arn:aws:iam::123456789012:*".into()];
        assert!(check(&trust("arn:aws:iam::123456789012:role/ci"), &acct).is_ok());
        assert!(
            check(&trust("arn:aws:iam::123456789012:root"), &acct).is_err(),
            "root needs :root written out"
        );
        acct.spec
            .allowed_trust_principals
            .push("arn:aws:iam::123456789012:root".into());
        assert!(check(&trust("arn:aws:iam::123456789012:root"), &acct).is_ok());
        acct.spec.allowed_trust_principals = vec!["arn:aws:iam::*:role/ci".into()];
        assert!(
            check(&trust("arn:aws:iam::222222222222:role/ci"), &acct).is_err(),
            "any account only by opt-in"
        );
        acct.spec.allow_wildcard_accounts = true;
        assert!(check(&trust("arn:aws:iam::222222222222:role/ci"), &acct).is_ok());
    }

    #[test]
    fn grants_follow_the_rules_for_the_namespace_and_never_name_the_operator() {
        let grant = |user: &str| role(json!({"accountRef": "target", "grants": [{"user": user}]}));
        let mut acct = permissive();
        acct.spec.allowed_grants = Some(vec![
            serde_json::from_value(json!({"namespaces": {"names": ["team-a"]}, "principals": ["arn:aws:iam::123456789012:user/team-a-*"]})).unwrap(),
            serde_json::from_value(json!({"namespaces": {"names": ["team-b"]}, "principals": ["arn:aws:iam::123456789012:user/*"]})).unwrap(),
        ]);
        assert!(check(&grant("team-a-dev"), &acct).is_ok());
        let r = refusal(check(&grant("team-b-dev"), &acct));
        assert!(
            r.message.contains("allowedGrants") && r.message.contains("namespace team-a"),
            "{}",
            r.message
        );
        // Even where every user may be granted, not the operator's own.
        acct.spec.allowed_grants = None;
        let r = refusal(check(&grant("cross-account-operator"), &acct));
        assert!(
            r.message.contains("operator's own principal"),
            "{}",
            r.message
        );
    }

    #[test]
    fn reserved_tag_keys_are_reserved_in_any_case() {
        let cr = role(json!({"accountRef": "target", "tags": {"Crossaccount.IO/name": "x"}}));
        assert_eq!(
            refusal(check(&cr, &permissive())).reason,
            Reason::InvalidSpec
        );
    }

    #[test]
    fn overlapping_globs_are_found() {
        for (a, b) in [
            ("iam:*", "*"),
            ("*", "iam:passrole"),
            ("iam:pass*", "iam:*role"),
            ("i?m:*", "iam:x"),
            ("a*b", "*b"),
        ] {
            assert!(globs_overlap(a, b) && globs_overlap(b, a), "{a} {b}");
        }
        for (a, b) in [("s3:*", "iam:*"), ("iam:get*", "iam:pass*"), ("ab", "a?c")] {
            assert!(!globs_overlap(a, b) && !globs_overlap(b, a), "{a} {b}");
        }
    }

    #[test]
    fn a_revocation_annotation_is_a_time_or_now_and_says_who_asked() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
        let spec = json!({"accountRef": "target", "policies": {"managed": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]}});
        let mut cr = role(spec.clone());
        cr.annotations_mut().insert(
            names::REVOKE_SESSIONS_ANNOTATION.into(),
            "2026-12-01T10:00:00Z".into(),
        );
        let revoke = check(&cr, &permissive()).unwrap().revoke_sessions.unwrap();
        assert_eq!(revoke.before, "2026-12-01T10:00:00Z".parse().unwrap());
        // "now" is when the annotation was set, by whom managedFields says.
        let set_at: jiff::Timestamp = "2026-12-01T11:30:00Z".parse().unwrap();
        cr.annotations_mut()
            .insert(names::REVOKE_SESSIONS_ANNOTATION.into(), "now".into());
        cr.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl-annotate".into()),
            time: Some(Time(set_at)),
            fields_v1: Some(FieldsV1(json!({"f:metadata": {"f:annotations": {
                format!("f:{}", names::REVOKE_SESSIONS_ANNOTATION): {}
            }}}))),
            ..ManagedFieldsEntry::default()
        }]);
        let revoke = check(&cr, &permissive()).unwrap().revoke_sessions.unwrap();
        // managedFields keeps whole seconds: the whole second is revoked.
        assert_eq!(revoke.before, "2026-12-01T11:30:01Z".parse().unwrap());
        assert_eq!(revoke.requested_by.as_deref(), Some("kubectl-annotate"));
        // Anything else is refused, naming the annotation.
        cr.annotations_mut()
            .insert(names::REVOKE_SESSIONS_ANNOTATION.into(), "yesterday".into());
        let r = refusal(check(&cr, &permissive()));
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(
            r.message.contains(names::REVOKE_SESSIONS_ANNOTATION),
            "{}",
            r.message
        );
    }

    #[test]
    fn protected_inline_policies_and_ignored_tags_cannot_be_set_by_the_spec() {
        let guarded = account(json!({
            "accountId": "111111111111",
            "allowedNamespaces": {"names": ["team-a"]},
            "allowInlinePolicies": true,
            "allowInlinePoliciesWithoutBoundary": true,
            "ignoredTagKeys": ["cost-*"],
        }));
        let doc = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}"#;
        let cr = role(
            json!({"accountRef": "target", "policies": {"inline": [{"name": "AWSRevokeOlderSessions", "document": doc}]}}),
        );
        let r = refusal(check(&cr, &guarded));
        assert!(
            r.message
                .contains("spec.policies.inline[AWSRevokeOlderSessions]"),
            "{}",
            r.message
        );
        let cr = role(json!({"accountRef": "target", "tags": {"cost-center": "1"}}));
        let r = refusal(check(&cr, &guarded));
        assert!(r.message.contains("ignoredTagKeys"), "{}", r.message);
    }

    #[test]
    fn the_operator_is_never_an_extra_trusted_principal() {
        let cr = role(
            json!({"accountRef": "target", "trust": {"principals": ["arn:aws:iam::123456789012:user/cross-account-operator"]}}),
        );
        let r = refusal(check(&cr, &permissive()));
        assert_eq!(r.reason, Reason::NotPermitted);
        assert!(
            r.message.contains("spec.trust.principals[0]"),
            "{}",
            r.message
        );
    }

    #[test]
    fn grants_and_tags_fit_iams_fifty_tags_and_tag_key_characters() {
        let tags: BTreeMap<String, String> =
            (0..40).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let grants: Vec<_> = (0..10).map(|i| json!({"user": format!("u{i}")})).collect();
        let cr = role(json!({"accountRef": "target", "tags": tags, "grants": grants}));
        let r = refusal(check(&cr, &permissive()));
        assert!(
            r.message.contains("IAM allows 50 per role"),
            "{}",
            r.message
        );
        let cr = role(json!({"accountRef": "target", "grants": [{"user": "a,b"}]}));
        let r = refusal(check(&cr, &permissive()));
        assert!(r.message.contains("cannot hold ','"), "{}", r.message);
    }
}
