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
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ValidatedSpec {
    pub role_name: String,
    pub role_path: String,
    pub description: Option<String>,
    pub max_session_duration: Option<i32>,
    pub managed_policies: BTreeSet<String>,
    pub inline_policies: BTreeMap<String, Value>,
    pub trust_principals: BTreeSet<String>,
    pub grants: BTreeSet<Principal>,
    pub tags: BTreeMap<String, String>,
    pub permissions_boundary: Option<String>,
    /// The CR may take over an untagged role of the same name.
    pub adopt: bool,
}

/// IAM's limit on the total size of a role's inline policies (characters without whitespace).
const INLINE_AGGREGATE_LIMIT: usize = 10240;
const DEFAULT_ROLE_PATH: &str = "/";

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

/// Checks `cr` against `account` (which must be the AwsAccount named by `spec.accountRef`) for a
/// namespace with `namespace_labels`.
pub(crate) fn validate(
    cr: &CrossAccountRole,
    account: &AwsAccount,
    namespace_labels: &BTreeMap<String, String>,
    operator: &OperatorIdentity,
    owner: &Owner,
) -> Result<ValidatedSpec, Refusal> {
    let namespace = cr.namespace().unwrap_or_default();
    let spec = &cr.spec;
    let guard = &account.spec;
    let account_name = account.name_any();

    check_namespace_allowed(account, &namespace, namespace_labels)?;

    let prefix = guard.role_name_prefix.clone().unwrap_or_default();
    let role_name = match &spec.role_name {
        Some(name) if !name.starts_with(&prefix) => {
            return Err(Refusal::not_permitted(format!(
                "spec.roleName {name:?} must start with {prefix:?}, the roleNamePrefix of AwsAccount {account_name}"
            )));
        }
        Some(name) => name.clone(),
        None => owner.default_role_name(&prefix),
    };

    let cap = guard.max_session_duration_seconds;
    if let (Some(max), Some(cap)) = (spec.max_session_duration_seconds, cap)
        && max > cap
    {
        return Err(Refusal::not_permitted(format!(
            "spec.maxSessionDurationSeconds {max} exceeds {cap}, the maxSessionDurationSeconds of AwsAccount {account_name}"
        )));
    }
    if let Some(credentials) = &spec.credentials {
        if let Some(cap) = cap
            && credentials.duration_seconds > cap
        {
            return Err(Refusal::not_permitted(format!(
                "spec.credentials.durationSeconds {} exceeds {cap}, the maxSessionDurationSeconds of AwsAccount {account_name}",
                credentials.duration_seconds
            )));
        }
        if let Some(session_policy) = &credentials.session_policy {
            policy::validate_document(session_policy, PolicyKind::Session)
                .map_err(|e| Refusal::invalid(format!("spec.credentials.sessionPolicy: {e}")))?;
        }
    }

    let mut managed_policies = BTreeSet::new();
    for (i, arn) in spec.policies.managed.iter().enumerate() {
        if !guard.allowed_policy_arns.iter().any(|p| glob_match(p, arn)) {
            return Err(Refusal::not_permitted(format!(
                "spec.policies.managed[{i}]: {arn} is not allowed by AwsAccount {account_name} (allowedPolicyArns: {})",
                list_or_none(&guard.allowed_policy_arns)
            )));
        }
        managed_policies.insert(arn.clone());
    }

    if !spec.policies.inline.is_empty() && !guard.allow_inline_policies {
        return Err(Refusal::not_permitted(format!(
            "spec.policies.inline: AwsAccount {account_name} does not allow inline policies (allowInlinePolicies is false)"
        )));
    }
    let mut inline_policies = BTreeMap::new();
    let mut inline_size = 0;
    for inline in &spec.policies.inline {
        let document =
            policy::validate_document(&inline.document, PolicyKind::Identity).map_err(|e| {
                Refusal::invalid(format!(
                    "spec.policies.inline[{}].document: {e}",
                    inline.name
                ))
            })?;
        inline_size += policy::size_without_whitespace(&policy::to_text(&document));
        if inline_policies
            .insert(inline.name.clone(), document)
            .is_some()
        {
            return Err(Refusal::invalid(format!(
                "spec.policies.inline: the name {:?} is used twice",
                inline.name
            )));
        }
    }
    if inline_size > INLINE_AGGREGATE_LIMIT {
        return Err(Refusal::invalid(format!(
            "spec.policies.inline: the documents total {inline_size} characters (without whitespace); IAM allows {INLINE_AGGREGATE_LIMIT} per role"
        )));
    }

    let principal_allowed = |arn: &str| {
        guard
            .allowed_trust_principals
            .iter()
            .any(|p| glob_match(p, arn))
    };
    let mut trust_principals = BTreeSet::new();
    for (i, arn) in spec.trust.principals.iter().enumerate() {
        if !principal_allowed(arn) {
            return Err(Refusal::not_permitted(format!(
                "spec.trust.principals[{i}]: {arn} is not allowed by AwsAccount {account_name} (allowedTrustPrincipals: {})",
                list_or_none(&guard.allowed_trust_principals)
            )));
        }
        trust_principals.insert(arn.clone());
    }
    let mut grants = BTreeSet::new();
    for (i, grant) in spec.grants.iter().enumerate() {
        let principal = match (&grant.user, &grant.role) {
            (Some(user), None) => Principal::User(user.clone()),
            (None, Some(role)) => Principal::Role(role.clone()),
            _ => {
                return Err(Refusal::invalid(format!(
                    "spec.grants[{i}]: set exactly one of user or role"
                )));
            }
        };
        let arn = principal
            .arn(&operator.partition, &operator.source_account_id)
            .to_string();
        if !principal_allowed(&arn) {
            return Err(Refusal::not_permitted(format!(
                "spec.grants[{i}]: {arn} is not allowed by AwsAccount {account_name} (allowedTrustPrincipals: {})",
                list_or_none(&guard.allowed_trust_principals)
            )));
        }
        grants.insert(principal);
    }

    let adopt = cr
        .annotations()
        .get(names::ADOPT_ANNOTATION)
        .is_some_and(|v| v == "true");
    if adopt && !guard.allow_adoption {
        return Err(Refusal::not_permitted(format!(
            "metadata.annotations[{}]: AwsAccount {account_name} does not allow taking over existing roles (allowAdoption is false); remove the annotation or ask the account's admin",
            names::ADOPT_ANNOTATION
        )));
    }

    if let Some(key) = spec
        .tags
        .keys()
        .find(|k| k.starts_with(names::tags::RESERVED_PREFIX) || k.starts_with("aws:"))
    {
        return Err(Refusal::invalid(format!(
            "spec.tags: the key {key:?} is reserved (crossaccount.io/ and aws: prefixes)"
        )));
    }

    Ok(ValidatedSpec {
        role_name,
        role_path: guard
            .role_path
            .clone()
            .unwrap_or_else(|| DEFAULT_ROLE_PATH.to_owned()),
        description: spec.description.clone().filter(|d| !d.is_empty()),
        max_session_duration: spec.max_session_duration_seconds,
        managed_policies,
        inline_policies,
        trust_principals,
        grants,
        tags: spec.tags.clone(),
        permissions_boundary: guard.permissions_boundary_arn.clone(),
        adopt,
    })
}

fn check_namespace_allowed(
    account: &AwsAccount,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), Refusal> {
    let allowed = &account.spec.allowed_namespaces;
    if allowed.names.iter().any(|n| n == namespace) {
        return Ok(());
    }
    if let Some(selector) = &allowed.selector {
        // An empty selector would match everything; like "no selector", it allows nothing here,
        // so that an admin must opt namespaces in explicitly.
        let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(|e| e.is_empty());
        match kube::core::Selector::try_from(selector.clone()) {
            Ok(selector) if !empty && selector.matches(labels) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(Refusal::not_permitted(format!(
                    "AwsAccount {} has an invalid spec.allowedNamespaces.selector: {e}",
                    account.name_any()
                )));
            }
        }
    }
    Err(Refusal::not_permitted(format!(
        "namespace {namespace} is not allowed to use AwsAccount {} (see its spec.allowedNamespaces)",
        account.name_any()
    )))
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

    fn check(cr: &CrossAccountRole, account: &AwsAccount) -> Result<ValidatedSpec, Refusal> {
        validate(cr, account, &BTreeMap::new(), &operator(), &owner_of(cr))
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
        assert_eq!(spec.role_name, "team-a-reader");
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
        assert!(validate(&cr, &acct, &labels, &operator(), &owner_of(&cr)).is_ok());
        assert!(validate(&cr, &acct, &BTreeMap::new(), &operator(), &owner_of(&cr)).is_err());

        // An empty selector does not open the account to every namespace.
        acct.spec.allowed_namespaces.selector = Some(Default::default());
        assert!(validate(&cr, &acct, &labels, &operator(), &owner_of(&cr)).is_err());
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
            role: Some("b".into()),
        }];
        assert_eq!(
            refusal(check(&both, &permissive())).reason,
            Reason::InvalidSpec
        );
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
        assert_eq!(check(&cr, &acct).unwrap().role_name, "k8s-team-a-reader");
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
}
