//! Step 2 (pure): the IAM state a validated spec asks for — the generated trust policy, ownership
//! tags, grant policies — and the names derived from the CR's identity.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::validate::{OperatorIdentity, ValidatedSpec, short_hash};
use crate::{api::names::tags, aws::Principal};

/// Statement IDs of the generated trust policy. The `Grants` statement also records which
/// source-account principals were granted, so removed grants can be found again later.
pub mod sid {
    pub const OPERATOR: &str = "CrossAccountOperator";
    pub const TRUSTED: &str = "TrustedPrincipals";
    pub const GRANTS: &str = "Grants";
}

/// IAM's default (and minimum) maximum session duration.
pub const DEFAULT_MAX_SESSION: i32 = 3600;

/// Which object a role belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl Owner {
    /// The ownership tags every managed role carries.
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (tags::CLUSTER.to_owned(), self.cluster.clone()),
            (tags::NAMESPACE.to_owned(), self.namespace.clone()),
            (tags::NAME.to_owned(), self.name.clone()),
        ])
    }

    /// The external ID the operator's trust statement requires: derived, never set by tenants.
    pub fn external_id(&self) -> String {
        format!(
            "crossaccount:{}:{}:{}",
            self.cluster, self.namespace, self.name
        )
    }

    /// Name of the inline policy put on granted principals (unique per CR, at most 128 chars).
    pub fn grant_policy_name(&self) -> String {
        let full = format!(
            "crossaccount.{}.{}.{}",
            self.cluster, self.namespace, self.name
        );
        if full.len() <= 128 {
            full
        } else {
            format!("crossaccount.{}", short_hash(&full))
        }
    }
}

/// Everything the plan compares against AWS.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredRole {
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
    pub grant_policy_name: String,
    pub grant_policy: Value,
}

/// The desired role for a validated spec in `target_account`.
pub fn desired_role(
    spec: &ValidatedSpec,
    owner: &Owner,
    operator: &OperatorIdentity,
    target_account: &str,
) -> DesiredRole {
    let arn = role_arn(target_account, &spec.role_path, &spec.role_name);
    let grant_arns: BTreeSet<String> = spec
        .grants
        .iter()
        .map(|p| p.arn(&operator.source_account_id))
        .collect();
    let mut tags = spec.tags.clone();
    tags.extend(owner.tags());
    DesiredRole {
        name: spec.role_name.clone(),
        path: spec.role_path.clone(),
        description: spec.description.clone(),
        max_session_duration: spec.max_session_duration.unwrap_or(DEFAULT_MAX_SESSION),
        trust_policy: trust_policy(
            &operator.principal_arn,
            &owner.external_id(),
            &spec.trust_principals,
            &grant_arns,
        ),
        permissions_boundary: spec.permissions_boundary.clone(),
        tags,
        managed_policies: spec.managed_policies.clone(),
        inline_policies: spec.inline_policies.clone(),
        grants: spec.grants.clone(),
        grant_policy_name: owner.grant_policy_name(),
        grant_policy: grant_policy(&arn),
        arn,
    }
}

/// `arn:aws:iam::<account>:role<path><name>`.
pub fn role_arn(account: &str, path: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:role{path}{name}")
}

/// The trust policy: the operator may assume the role (and tag the session and set a source
/// identity) only with the CR's external ID; extra principals and granted principals may assume
/// it without one (the console cannot send one).
pub fn trust_policy(
    operator_arn: &str,
    external_id: &str,
    trusted: &BTreeSet<String>,
    granted: &BTreeSet<String>,
) -> Value {
    let mut statements = vec![json!({
        "Sid": sid::OPERATOR,
        "Effect": "Allow",
        "Principal": {"AWS": operator_arn},
        "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
        "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
    })];
    for (sid, principals) in [(sid::TRUSTED, trusted), (sid::GRANTS, granted)] {
        if !principals.is_empty() {
            statements.push(json!({
                "Sid": sid,
                "Effect": "Allow",
                "Principal": {"AWS": principals.iter().collect::<Vec<_>>()},
                "Action": "sts:AssumeRole",
            }));
        }
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// The inline policy on a granted principal: it may assume this role.
pub fn grant_policy(role_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}],
    })
}

/// The source-account principals an existing trust policy records as granted (its `Grants`
/// statement), so that grants removed from the spec can be revoked.
pub fn granted_principals(trust_policy: &Value, source_account: &str) -> BTreeSet<Principal> {
    let statements = match &trust_policy["Statement"] {
        Value::Array(list) => list.clone(),
        single @ Value::Object(_) => vec![single.clone()],
        _ => Vec::new(),
    };
    let arns = statements
        .iter()
        .filter(|s| s["Sid"] == sid::GRANTS)
        .flat_map(|s| match &s["Principal"]["AWS"] {
            Value::String(arn) => vec![arn.clone()],
            Value::Array(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        });
    arns.filter_map(|arn| Principal::from_arn(&arn, source_account))
        .collect()
}
