//! Step 2 (pure): the IAM state a validated spec asks for: the generated trust policy, ownership
//! tags, the grant policy, and the documents' fit within IAM's size quotas.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::validate::{Coexistence, REVOKE_SESSIONS_POLICY, Refusal, ValidatedSpec};
use crate::{
    api::names::Reason,
    aws::{
        Arn, GrantScope, IAM_DEFAULT_MAX_SESSION, ObservedRole, Principal,
        policy::{self, PolicyKind},
    },
    naming::{OperatorIdentity, Owner},
};

/// Statement IDs of the generated trust policy. The `Grants` statement also records which
/// source-account principals were granted, so removed grants can be found again later.
pub(crate) mod sid {
    pub const OPERATOR: &str = "CrossAccountOperator";
    pub const TRUSTED: &str = "TrustedPrincipals";
    pub const GRANTS: &str = "Grants";
    /// The source account's IAM users, for grants to groups (which a trust policy cannot name).
    pub const GROUP_GRANTS: &str = "GroupGrants";
}

/// The trust side of the grants: the users and roles granted, by ARN, and whether a group is
/// granted (then the source account's IAM users are trusted, see [`trust_policy`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct GrantTrust {
    pub principals: BTreeSet<String>,
    /// The source account's root ARN, when a group is granted.
    pub group_account: Option<Arn>,
}

/// The trust side of granting `grants` (the spec says which ARNs its principals have).
pub(crate) fn grant_trust(
    spec: &ValidatedSpec,
    grants: &BTreeSet<Principal>,
    operator: &OperatorIdentity,
) -> GrantTrust {
    let (trustable, groups): (Vec<&Principal>, Vec<&Principal>) =
        grants.iter().partition(|p| p.is_trustable());
    GrantTrust {
        principals: trustable
            .into_iter()
            .map(|p| spec.grant_arn(p, operator))
            .collect(),
        group_account: (!groups.is_empty())
            .then(|| Arn::root(&operator.partition, &operator.source_account_id)),
    }
}

/// Everything the plan compares against AWS.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DesiredRole {
    pub name: String,
    pub path: String,
    pub arn: String,
    pub description: Option<String>,
    pub max_session_duration: i32,
    pub trust_policy: Value,
    pub permissions_boundary: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub managed_policies: BTreeSet<String>,
    pub inline_policies: BTreeMap<String, Value>,
    pub grants: BTreeSet<Principal>,
    /// Where the grants live on the granted principals.
    pub grant_scope: GrantScope,
    /// The inline grant policy an earlier version put on granted principals (one per object):
    /// removed once the grant is in place.
    pub legacy_grant_policy_name: String,
    /// What of the role others own.
    pub coexistence: Coexistence,
    /// Sessions issued before this time are to be revoked (the CR's annotation).
    pub revoke_sessions_before: Option<jiff::Timestamp>,
}

/// The desired role for a validated spec in `target_account`, or the refusal when its generated
/// trust policy would not fit IAM's quota.
pub(crate) fn desired_role(
    spec: &ValidatedSpec,
    owner: &Owner,
    operator: &OperatorIdentity,
    target_account: &str,
) -> Result<DesiredRole, Refusal> {
    let arn = Arn::role(
        &operator.partition,
        target_account,
        &spec.role_path,
        &spec.role_name,
    )
    .to_string();
    let trust_policy = trust_policy(
        &operator.principal_arn,
        &owner.external_id(),
        &spec.trust_principals,
        spec.trust_external_id.as_deref(),
        &grant_trust(spec, &spec.grants, operator),
    );
    let grant_scope = operator.grant_scope();
    let mut tags = spec.tags.clone();
    tags.extend(owner.tags());
    tags.extend(grant_tags(&spec.grants, &grant_scope));
    Ok(DesiredRole {
        name: spec.role_name.clone(),
        path: spec.role_path.clone(),
        description: spec.description.clone(),
        max_session_duration: spec.max_session_duration.unwrap_or(IAM_DEFAULT_MAX_SESSION),
        trust_policy,
        permissions_boundary: spec.permissions_boundary.clone(),
        tags,
        managed_policies: spec.managed_policies.clone(),
        inline_policies: spec.inline_policies.clone(),
        grants: spec.grants.clone(),
        grant_scope,
        legacy_grant_policy_name: owner.grant_policy_name(),
        coexistence: spec.coexistence.clone(),
        revoke_sessions_before: spec.revoke_sessions.as_ref().map(|r| r.before),
        arn,
    })
}

/// The generated trust policy must fit the target account's trust policy quota
/// (`AssumeRolePolicySizeQuota`: 2,048 characters without whitespace unless the account had it
/// raised, `None` when GetAccountSummary does not say): otherwise CreateRole and
/// UpdateAssumeRolePolicy fail with LimitExceeded on every retry. Twenty long principals and twenty
/// grants pass the schema but not IAM.
pub(crate) fn check_trust_policy_size(
    desired: &DesiredRole,
    quota: Option<i64>,
) -> Result<(), Refusal> {
    let size = policy::size_without_whitespace(&policy::to_text(&desired.trust_policy));
    let limit = quota.map_or(PolicyKind::Trust.size_limit(), |q| q.max(0) as usize);
    if size > limit {
        return Err(Refusal::new(
            Reason::InvalidSpec,
            format!(
                "spec.trust.principals and spec.grants: the generated trust policy would be {size} characters (without whitespace); IAM allows {limit}: trust fewer principals"
            ),
        ));
    }
    Ok(())
}

/// The trust policy: the operator may assume the role (and tag the session and set a source
/// identity) only with the CR's external ID; extra principals (`spec.trust.principals`) with the
/// tenant's external ID when it set one; granted users and roles without one (the console cannot
/// send one).
///
/// A group cannot be named in a trust policy (IAM refuses it), nor tested by a condition (no
/// condition key carries a caller's groups, and `aws:PrincipalTag` holds the user's own tags,
/// not its groups'). So when a group is granted, the role trusts the source account (its root
/// ARN: the account delegates to its identity policies, which is how the group's grant policy
/// takes effect), narrowed as far as IAM allows: only IAM users (`aws:PrincipalArn` like
/// `...:user/*`: group members are users), and not the operator's own principal (which assumes
/// only with the external ID). Any such user whose identity policies allow `sts:AssumeRole` on
/// the role may assume it.
/// See <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_principal.html#principal-accounts>
/// and <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-principalarn>.
pub(crate) fn trust_policy(
    operator_arn: &str,
    external_id: &str,
    trusted: &BTreeSet<String>,
    trusted_external_id: Option<&str>,
    granted: &GrantTrust,
) -> Value {
    let mut statements = vec![json!({
        "Sid": sid::OPERATOR,
        "Effect": "Allow",
        "Principal": {"AWS": operator_arn},
        "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
        "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
    })];
    for (sid, principals, id) in [
        (sid::TRUSTED, trusted, trusted_external_id),
        (sid::GRANTS, &granted.principals, None),
    ] {
        if !principals.is_empty() {
            let mut statement = json!({
                "Sid": sid,
                "Effect": "Allow",
                "Principal": {"AWS": principals.iter().collect::<Vec<_>>()},
                "Action": "sts:AssumeRole",
            });
            if let Some(id) = id {
                statement["Condition"] = json!({"StringEquals": {"sts:ExternalId": id}});
            }
            statements.push(statement);
        }
    }
    if let Some(root) = &granted.group_account {
        let users = Arn::iam(root.partition(), root.account(), "user/*").to_string();
        statements.push(json!({
            "Sid": sid::GROUP_GRANTS,
            "Effect": "Allow",
            "Principal": {"AWS": root.to_string()},
            "Action": "sts:AssumeRole",
            "Condition": {
                "ArnLike": {"aws:PrincipalArn": users},
                "ArnNotEquals": {"aws:PrincipalArn": operator_arn},
            },
        }));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// The statements of a policy document (one or a list).
pub(crate) fn statements(document: &Value) -> Vec<&Value> {
    match &document["Statement"] {
        Value::Array(list) => list.iter().collect(),
        single @ Value::Object(_) => vec![single],
        _ => Vec::new(),
    }
}

/// The AWS principals (as written) of the trust statements with `sid`.
fn statement_principals(trust_policy: &Value, sid: &str) -> BTreeSet<String> {
    statements(trust_policy)
        .into_iter()
        .filter(|s| s["Sid"] == sid)
        .flat_map(|s| match &s["Principal"]["AWS"] {
            Value::String(arn) => vec![arn.clone()],
            Value::Array(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The source-account principals an existing role records as granted: its grant tags, and its
/// trust policy's `Grants` statement (each record survives the other being edited by hand), so
/// that grants removed from the spec can be revoked.
pub(crate) fn granted_principals(role: &ObservedRole, source_account: &str) -> BTreeSet<Principal> {
    let mut granted: BTreeSet<Principal> = statement_principals(&role.trust_policy, sid::GRANTS)
        .iter()
        .filter_map(|arn| Principal::from_arn(&Arn::parse(arn)?, source_account))
        .collect();
    granted.extend(
        role.tags
            .keys()
            .filter_map(|k| GrantScope::principal_of_tag(k)),
    );
    granted
}

/// The inline policy the AWS console writes to revoke a role's sessions issued before `before`
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_revoke-sessions.html>).
pub(crate) fn revoke_sessions_policy(before: jiff::Timestamp) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Deny",
            "Action": ["*"],
            "Resource": ["*"],
            "Condition": {"DateLessThan": {
                "aws:TokenIssueTime": before.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }},
        }],
    })
}

/// The time before which `role`'s sessions are revoked: the latest `aws:TokenIssueTime` of the
/// Deny statements of its `AWSRevokeOlderSessions` inline policy, if it has one.
pub(crate) fn sessions_revoked_before(role: &ObservedRole) -> Option<jiff::Timestamp> {
    let document = role.inline_policies.get(REVOKE_SESSIONS_POLICY)?;
    statements(document)
        .into_iter()
        .filter(|s| s["Effect"] == "Deny")
        .flat_map(|s| {
            s["Condition"]
                .as_object()
                .into_iter()
                .flat_map(|c| c.iter())
                .filter(|(op, _)| op.eq_ignore_ascii_case("DateLessThan"))
                .filter_map(|(_, keys)| keys.as_object())
                .flat_map(|keys| keys.iter())
                .filter(|(key, _)| key.eq_ignore_ascii_case("aws:TokenIssueTime"))
                .flat_map(|(_, value)| match value {
                    Value::Array(list) => list.clone(),
                    one => vec![one.clone()],
                })
                .collect::<Vec<_>>()
        })
        .filter_map(|v| v.as_str()?.parse::<jiff::Timestamp>().ok())
        .max()
}

/// The grant tags of `grants` in `scope`: what the role carries for them.
pub(crate) fn grant_tags(
    grants: &BTreeSet<Principal>,
    scope: &GrantScope,
) -> BTreeMap<String, String> {
    grants
        .iter()
        .map(|p| (GrantScope::tag_key(p), scope.cluster.clone()))
        .collect()
}

/// The extra principals an existing trust policy trusts (its `TrustedPrincipals` statement).
pub(crate) fn trusted_principals(trust_policy: &Value) -> BTreeSet<String> {
    statement_principals(trust_policy, sid::TRUSTED)
}

/// The external IDs the operator's statement of an existing trust policy requires: the mark of
/// the object the role was made for. Empty when the statement is gone.
pub(crate) fn operator_external_ids(trust_policy: &Value) -> Vec<String> {
    statements(trust_policy)
        .into_iter()
        .filter(|s| s["Sid"] == sid::OPERATOR)
        .flat_map(
            |s| match &s["Condition"]["StringEquals"]["sts:ExternalId"] {
                Value::String(id) => vec![id.clone()],
                Value::Array(ids) => ids
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            },
        )
        .collect()
}

/// An existing trust policy without the operator's statement (a retained role: the operator
/// lets go of it). When nothing else is left, nobody may assume it.
pub(crate) fn without_operator(trust_policy: &Value) -> Value {
    let rest: Vec<Value> = statements(trust_policy)
        .into_iter()
        .filter(|s| s["Sid"] != sid::OPERATOR)
        .cloned()
        .collect();
    let rest = if rest.is_empty() {
        vec![json!({
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "sts:AssumeRole",
        })]
    } else {
        rest
    };
    json!({"Version": "2012-10-17", "Statement": rest})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(partition: &str) -> OperatorIdentity {
        OperatorIdentity {
            cluster_name: "dev".into(),
            source_account_id: "123456789012".into(),
            partition: partition.into(),
            principal_arn: format!("arn:{partition}:iam::123456789012:user/cross-account-operator"),
            chained: false,
        }
    }

    fn owner() -> Owner {
        Owner {
            cluster: "dev".into(),
            namespace: "team-a".into(),
            name: "reader".into(),
            uid: "uid-reader".into(),
        }
    }

    fn spec() -> ValidatedSpec {
        ValidatedSpec {
            role_name: "team-a-reader".into(),
            role_path: "/tenants/".into(),
            description: None,
            max_session_duration: None,
            managed_policies: BTreeSet::new(),
            inline_policies: BTreeMap::new(),
            trust_principals: BTreeSet::new(),
            grants: BTreeSet::from([Principal::User("devTest".into())]),
            tags: BTreeMap::new(),
            permissions_boundary: None,
            trust_external_id: None,
            adopt: false,
            ..ValidatedSpec::default()
        }
    }

    #[test]
    fn arns_carry_the_operators_partition_and_the_accounts_path() {
        for partition in ["aws", "aws-cn", "aws-us-gov"] {
            let desired =
                desired_role(&spec(), &owner(), &operator(partition), "111111111111").unwrap();
            assert_eq!(
                desired.arn,
                format!("arn:{partition}:iam::111111111111:role/tenants/team-a-reader")
            );
            assert_eq!(desired.grant_scope.path(), "/crossaccount/dev/");
            let role = ObservedRole {
                trust_policy: desired.trust_policy.clone(),
                ..ObservedRole::default()
            };
            assert_eq!(
                granted_principals(&role, "123456789012"),
                BTreeSet::from([Principal::User("devTest".into())])
            );
            assert_eq!(
                desired.tags.get("crossaccount.io/grant/user/devTest"),
                Some(&"dev".to_owned())
            );
            assert_eq!(desired.max_session_duration, IAM_DEFAULT_MAX_SESSION);
        }
    }

    #[test]
    fn a_trust_policy_larger_than_iam_allows_is_refused() {
        let principal = |i: usize| {
            format!(
                "arn:aws:iam::123456789012:user/{}{i:02}",
                "a-long-path/".repeat(8)
            )
        };
        let mut big = spec();
        big.trust_principals = (0..20).map(principal).collect();
        let desired = desired_role(&big, &owner(), &operator("aws"), "111111111111").unwrap();
        let r = check_trust_policy_size(&desired, None).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(
            r.message
                .starts_with("spec.trust.principals and spec.grants: the generated trust policy")
                && r.message.contains("IAM allows 2048"),
            "{}",
            r.message
        );
        // An account with a raised quota takes them.
        assert!(check_trust_policy_size(&desired, Some(4096)).is_ok());
        // A few principals fit the default.
        big.trust_principals = (0..3).map(principal).collect();
        let desired = desired_role(&big, &owner(), &operator("aws"), "111111111111").unwrap();
        assert!(check_trust_policy_size(&desired, None).is_ok());
    }

    #[test]
    fn the_consoles_revocation_is_read_back() {
        // As the console writes it (the IAM user guide's example), and as it reads back.
        let console = json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Action": ["*"], "Resource": ["*"],
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2026-12-01T09:15:00Z"}},
        }]});
        let mut role = ObservedRole::default();
        assert_eq!(sessions_revoked_before(&role), None);
        role.inline_policies
            .insert(REVOKE_SESSIONS_POLICY.into(), console);
        let at: jiff::Timestamp = "2026-12-01T09:15:00Z".parse().unwrap();
        assert_eq!(sessions_revoked_before(&role), Some(at));
        role.inline_policies
            .insert(REVOKE_SESSIONS_POLICY.into(), revoke_sessions_policy(at));
        assert_eq!(sessions_revoked_before(&role), Some(at));
    }
}
