//! In-memory IAM and STS behind [`Aws`] and [`AccountApi`], for unit tests of the pipeline and the
//! controllers. It answers as IAM does where the reconciler depends on it: documents are stored
//! as the text IAM received, with account principals rewritten to root ARNs, and handed back
//! URL-encoded; removing what is not there is `NoSuchEntity`; a role with policies cannot be
//! deleted (`DeleteConflict`). Every write is recorded, so tests can count them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use super::{
    AccountAccess, AccountApi, Arn, AssumeRoleRequest, AttachedPolicy, Aws, AwsError, AwsErrorKind,
    Change, IAM_DEFAULT_MAX_SESSION, IssuedCredentials, ObservedRole, Principal, policy,
};

/// What RFC 3986 leaves unencoded, as IAM does in the documents it returns.
const URL_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A document as IAM hands it back.
fn as_returned(document: &Value) -> String {
    utf8_percent_encode(&policy::to_text(document), URL_ENCODED).to_string()
}

/// IAM stores an account principal `123456789012` as `arn:<partition>:iam::123456789012:root`.
fn rewrite_principals(trust: &Value, partition: &str) -> Value {
    let mut trust = trust.clone();
    let rewrite = |id: &mut Value| {
        if let Some(text) = id.as_str()
            && text.len() == 12
            && text.bytes().all(|b| b.is_ascii_digit())
        {
            *id = Value::String(Arn::root(partition, text).to_string());
        }
    };
    let statements: Vec<&mut Value> = match &mut trust["Statement"] {
        Value::Array(list) => list.iter_mut().collect(),
        single @ Value::Object(_) => vec![single],
        _ => Vec::new(),
    };
    for statement in statements {
        match &mut statement["Principal"]["AWS"] {
            Value::Array(ids) => ids.iter_mut().for_each(rewrite),
            id @ Value::String(_) => rewrite(id),
            _ => {}
        }
    }
    trust
}

/// IAM refuses a trust policy that names a group (a group is not a principal):
/// `MalformedPolicyDocument`, "Invalid principal in policy".
fn refuse_group_principals(trust: &Value, operation: &'static str) -> Result<(), AwsError> {
    let statements: Vec<&Value> = match &trust["Statement"] {
        Value::Array(list) => list.iter().collect(),
        single @ Value::Object(_) => vec![single],
        _ => Vec::new(),
    };
    let named = statements
        .into_iter()
        .flat_map(|s| match &s["Principal"]["AWS"] {
            Value::Array(ids) => ids.iter().filter_map(Value::as_str).collect(),
            Value::String(id) => vec![id.as_str()],
            _ => Vec::new(),
        });
    for id in named {
        if Arn::parse(id).is_some_and(|a| a.resource().starts_with("group/")) {
            return Err(iam_error(
                operation,
                AwsErrorKind::Invalid,
                "MalformedPolicyDocument",
                format!("Invalid principal in policy: \"AWS\":\"{id}\""),
            ));
        }
    }
    Ok(())
}

/// A role as IAM keeps it: documents as the text it returns.
#[derive(Clone, Debug, Default)]
struct StoredRole {
    role: ObservedRole,
    trust_policy: String,
    inline_policies: BTreeMap<String, String>,
}

impl StoredRole {
    fn observed(&self) -> ObservedRole {
        ObservedRole {
            trust_policy: policy::parse_observed(&self.trust_policy),
            inline_policies: self
                .inline_policies
                .iter()
                .map(|(name, text)| (name.clone(), policy::parse_observed(text)))
                .collect(),
            ..self.role.clone()
        }
    }
}

/// A customer managed policy (the operator's never change, so one version).
#[derive(Clone, Debug, Default)]
struct ManagedPolicy {
    name: String,
    path: String,
    /// The document as IAM returns it.
    document: String,
}

/// IAM's default quotas (GetAccountSummary), which the fake enforces.
const POLICY_SIZE_QUOTA: usize = 6144;
const ATTACHED_PER_PRINCIPAL_QUOTA: usize = 10;

#[derive(Default)]
struct State {
    roles: BTreeMap<String, StoredRole>,
    /// Users (and roles used only as principals) that exist besides the roles above.
    principals: std::collections::BTreeSet<Principal>,
    /// Customer managed policies by ARN.
    policies: BTreeMap<String, ManagedPolicy>,
    /// Managed policies attached to users and roles of this account.
    attachments: BTreeMap<Principal, std::collections::BTreeSet<String>>,
    /// Inline policies of users and roles, as (principal, policy name) -> document text.
    principal_policies: BTreeMap<(Principal, String), String>,
    /// Operations whose next write fails (throttled).
    failing: std::collections::BTreeSet<&'static str>,
    /// Paths of principals added with one.
    principal_paths: BTreeMap<Principal, String>,
    /// Instance profiles by role name.
    instance_profiles: BTreeMap<String, Vec<String>>,
    writes: Vec<Change>,
    assumed: Vec<AssumeRoleRequest>,
}

/// One account's IAM and STS.
#[derive(Clone)]
pub(crate) struct FakeAccount {
    account_id: String,
    partition: String,
    state: Arc<Mutex<State>>,
}

impl FakeAccount {
    pub(crate) fn new(account_id: &str) -> Self {
        Self {
            account_id: account_id.to_owned(),
            partition: "aws".to_owned(),
            state: Arc::default(),
        }
    }

    /// An account of another partition (`aws-cn`, `aws-us-gov`).
    pub(crate) fn in_partition(account_id: &str, partition: &str) -> Self {
        Self {
            partition: partition.to_owned(),
            ..Self::new(account_id)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writes made so far (and forgets them).
    pub(crate) fn take_writes(&self) -> Vec<Change> {
        std::mem::take(&mut self.lock().writes)
    }

    /// The AssumeRole requests made so far with this account's identity.
    pub(crate) fn assumed(&self) -> Vec<AssumeRoleRequest> {
        self.lock().assumed.clone()
    }

    /// The role as GetRole would describe it.
    pub(crate) fn role(&self, name: &str) -> Option<ObservedRole> {
        self.lock().roles.get(name).map(StoredRole::observed)
    }

    /// Changes a role behind the operator's back (drift), as someone with IAM access would: the
    /// documents go through IAM's storage again.
    pub(crate) fn edit_role(&self, name: &str, edit: impl FnOnce(&mut ObservedRole)) {
        let mut state = self.lock();
        let partition = self.partition.clone();
        let stored = state.roles.get_mut(name).expect("role exists");
        let mut role = stored.observed();
        edit(&mut role);
        stored.trust_policy = as_returned(&rewrite_principals(&role.trust_policy, &partition));
        stored.inline_policies = role
            .inline_policies
            .iter()
            .map(|(n, doc)| (n.clone(), as_returned(doc)))
            .collect();
        stored.role = role;
    }

    /// Changes inline policies of users and roles behind the operator's back (drift).
    pub(crate) fn edit_principal_policies(
        &self,
        edit: impl FnOnce(&mut BTreeMap<(Principal, String), Value>),
    ) {
        let mut state = self.lock();
        let mut policies: BTreeMap<(Principal, String), Value> = state
            .principal_policies
            .iter()
            .map(|(k, text)| (k.clone(), policy::parse_observed(text)))
            .collect();
        edit(&mut policies);
        state.principal_policies = policies
            .iter()
            .map(|(k, doc)| (k.clone(), as_returned(doc)))
            .collect();
    }

    /// A user's or role's inline policy as GetUserPolicy/GetRolePolicy would return it, decoded.
    pub(crate) fn principal_policy(&self, principal: &Principal, name: &str) -> Option<Value> {
        self.lock()
            .principal_policies
            .get(&(principal.clone(), name.to_owned()))
            .map(|text| policy::parse_observed(text))
    }

    /// A user of this account.
    pub(crate) fn add_user(&self, name: &str) {
        self.lock()
            .principals
            .insert(Principal::User(name.to_owned()));
    }

    /// A user of this account at `path` (`/team/`).
    pub(crate) fn add_user_at(&self, name: &str, path: &str) {
        let user = Principal::User(name.to_owned());
        let mut state = self.lock();
        state.principals.insert(user.clone());
        state.principal_paths.insert(user, path.to_owned());
    }

    /// Deletes a user or role used as a principal, behind the operator's back.
    pub(crate) fn remove_principal(&self, principal: &Principal) {
        let mut state = self.lock();
        state.principals.remove(principal);
        state.attachments.remove(principal);
    }

    /// A group of this account.
    pub(crate) fn add_group(&self, name: &str) {
        self.lock()
            .principals
            .insert(Principal::Group(name.to_owned()));
    }

    /// A role of this account used as a principal (granted, trusted).
    pub(crate) fn add_role_principal(&self, name: &str) {
        self.lock()
            .principals
            .insert(Principal::Role(name.to_owned()));
    }

    /// Makes the next write of IAM operation `operation` fail (throttled).
    pub(crate) fn fail_next(&self, operation: &'static str) {
        self.lock().failing.insert(operation);
    }

    /// Puts role `role` into instance profile `profile`, as someone using it for EC2 would.
    pub(crate) fn add_to_instance_profile(&self, role: &str, profile: &str) {
        self.lock()
            .instance_profiles
            .entry(role.to_owned())
            .or_default()
            .push(profile.to_owned());
    }

    /// Detaches every managed policy from `principal`, behind the operator's back.
    pub(crate) fn detach_all(&self, principal: &Principal) {
        self.lock().attachments.remove(principal);
    }

    /// The document of managed policy `arn`, decoded.
    pub(crate) fn managed_policy(&self, arn: &str) -> Option<Value> {
        self.lock()
            .policies
            .get(arn)
            .map(|p| policy::parse_observed(&p.document))
    }

    /// Attaches a policy the operator did not make (counts against the attachment quota).
    pub(crate) fn attach_other_policy(&self, principal: &Principal, arn: &str) {
        self.lock()
            .attachments
            .entry(principal.clone())
            .or_default()
            .insert(arn.to_owned());
    }

    /// The raw text IAM would return for a role's trust policy (URL-encoded).
    pub(crate) fn trust_policy_text(&self, role: &str) -> Option<String> {
        self.lock().roles.get(role).map(|r| r.trust_policy.clone())
    }
}

fn iam_error(operation: &'static str, kind: AwsErrorKind, code: &str, message: String) -> AwsError {
    AwsError {
        service: "iam",
        operation,
        kind,
        code: Some(code.into()),
        message: message.into(),
        request_id: None,
        source: None,
    }
}

fn not_found(operation: &'static str, what: &str) -> AwsError {
    iam_error(
        operation,
        AwsErrorKind::NotFound,
        "NoSuchEntity",
        format!("{what} cannot be found."),
    )
}

impl State {
    /// A principal's path (`/` unless it was added with one).
    fn principal_path(&self, principal: &Principal) -> String {
        self.principal_paths
            .get(principal)
            .cloned()
            .unwrap_or_else(|| "/".to_owned())
    }

    fn principal_exists(&self, principal: &Principal) -> bool {
        self.principals.contains(principal)
            || matches!(principal, Principal::Role(name) if self.roles.contains_key(name))
    }
}

fn limit_exceeded(operation: &'static str, message: String) -> AwsError {
    iam_error(
        operation,
        AwsErrorKind::LimitExceeded,
        "LimitExceeded",
        message,
    )
}

fn role_entry<'a>(
    state: &'a mut State,
    role: &str,
    op: &'static str,
) -> Result<&'a mut StoredRole, AwsError> {
    state
        .roles
        .get_mut(role)
        .ok_or_else(|| not_found(op, &format!("The role with name {role}")))
}

impl AccountApi for FakeAccount {
    async fn caller_arn(&self) -> Result<String, AwsError> {
        Ok(format!(
            "arn:{}:sts::{}:assumed-role/management/test",
            self.partition, self.account_id
        ))
    }

    async fn assume_role(
        &self,
        request: &AssumeRoleRequest,
    ) -> Result<IssuedCredentials, AwsError> {
        let mut state = self.lock();
        state.assumed.push(request.clone());
        let n = state.assumed.len();
        Ok(IssuedCredentials {
            access_key_id: format!("ASIAFAKE{n}"),
            secret_access_key: format!("secret-{n}"),
            session_token: format!("token-{n}-{}", request.session_name),
            expiration: jiff::Timestamp::now()
                + jiff::SignedDuration::from_secs(i64::from(request.duration_seconds)),
        })
    }

    async fn get_role(&self, name: &str) -> Result<Option<ObservedRole>, AwsError> {
        Ok(self.role(name))
    }

    async fn principal_arn(&self, principal: &Principal) -> Result<Option<String>, AwsError> {
        let state = self.lock();
        Ok(state.principal_exists(principal).then(|| {
            let path = state.principal_path(principal);
            match principal {
                Principal::User(name) => {
                    Arn::user(&self.partition, &self.account_id, &path, name).to_string()
                }
                Principal::Role(name) => {
                    Arn::role(&self.partition, &self.account_id, &path, name).to_string()
                }
                Principal::Group(name) => {
                    Arn::group(&self.partition, &self.account_id, &path, name).to_string()
                }
            }
        }))
    }

    async fn get_principal_policy(
        &self,
        principal: &Principal,
        policy_name: &str,
    ) -> Result<Option<Value>, AwsError> {
        Ok(self.principal_policy(principal, policy_name))
    }

    async fn attached_policies(
        &self,
        principal: &Principal,
        path_prefix: &str,
    ) -> Result<Option<Vec<AttachedPolicy>>, AwsError> {
        let state = self.lock();
        if !state.principal_exists(principal) {
            return Ok(None);
        }
        let attached = state
            .attachments
            .get(principal)
            .cloned()
            .unwrap_or_default();
        Ok(Some(
            attached
                .into_iter()
                .filter_map(|arn| {
                    let (name, path) = match state.policies.get(&arn) {
                        Some(p) => (p.name.clone(), p.path.clone()),
                        None => (
                            arn.rsplit('/').next().unwrap_or_default().to_owned(),
                            "/".to_owned(),
                        ),
                    };
                    path.starts_with(path_prefix)
                        .then_some(AttachedPolicy { name, arn })
                })
                .collect(),
        ))
    }

    async fn instance_profiles(&self, role: &str) -> Result<Vec<String>, AwsError> {
        Ok(self
            .lock()
            .instance_profiles
            .get(role)
            .cloned()
            .unwrap_or_default())
    }

    async fn create_policy(
        &self,
        name: &str,
        path: &str,
        document: &Value,
    ) -> Result<String, AwsError> {
        let mut state = self.lock();
        if policy::size_without_whitespace(&policy::to_text(document)) > POLICY_SIZE_QUOTA {
            return Err(limit_exceeded(
                "CreatePolicy",
                format!("Cannot exceed quota for PolicySize: {POLICY_SIZE_QUOTA}"),
            ));
        }
        if state.policies.values().any(|p| p.name == name) {
            return Err(iam_error(
                "CreatePolicy",
                AwsErrorKind::AlreadyExists,
                "EntityAlreadyExists",
                format!("A policy called {name} already exists."),
            ));
        }
        let arn = format!(
            "arn:{}:iam::{}:policy{path}{name}",
            self.partition, self.account_id
        );
        state.policies.insert(
            arn.clone(),
            ManagedPolicy {
                name: name.to_owned(),
                path: path.to_owned(),
                document: as_returned(document),
            },
        );
        state.writes.push(Change::CreatePolicy {
            name: name.to_owned(),
            path: path.to_owned(),
            document: document.clone(),
        });
        Ok(arn)
    }

    async fn account_quota(&self, name: &'static str) -> Result<Option<i64>, AwsError> {
        Ok(match name {
            "PolicySizeQuota" => Some(POLICY_SIZE_QUOTA as i64),
            "AttachedPoliciesPerUserQuota"
            | "AttachedPoliciesPerRoleQuota"
            | "AttachedPoliciesPerGroupQuota" => Some(ATTACHED_PER_PRINCIPAL_QUOTA as i64),
            _ => None,
        })
    }

    async fn apply(&self, change: &Change) -> Result<(), AwsError> {
        let mut state = self.lock();
        let op = change.operation();
        if state.failing.remove(op) {
            return Err(AwsError {
                service: "iam",
                operation: op,
                kind: AwsErrorKind::Throttled,
                code: Some("Throttling".into()),
                message: "Rate exceeded".into(),
                request_id: None,
                source: None,
            });
        }
        match change {
            Change::CreateRole {
                role,
                path,
                trust_policy,
                description,
                max_session_duration,
                permissions_boundary,
                tags,
            } => {
                refuse_group_principals(trust_policy, op)?;
                if state.roles.contains_key(role) {
                    return Err(iam_error(
                        op,
                        AwsErrorKind::AlreadyExists,
                        "EntityAlreadyExists",
                        format!("Role with name {role} already exists."),
                    ));
                }
                let arn = Arn::role(&self.partition, &self.account_id, path, role);
                state.roles.insert(
                    role.clone(),
                    StoredRole {
                        role: ObservedRole {
                            arn: arn.to_string(),
                            path: path.clone(),
                            description: description.clone(),
                            max_session_duration: max_session_duration
                                .unwrap_or(IAM_DEFAULT_MAX_SESSION),
                            permissions_boundary: permissions_boundary.clone(),
                            tags: tags.clone(),
                            created: Some(jiff::Timestamp::now()),
                            ..ObservedRole::default()
                        },
                        trust_policy: as_returned(&rewrite_principals(
                            trust_policy,
                            &self.partition,
                        )),
                        inline_policies: BTreeMap::new(),
                    },
                );
            }
            Change::UpdateTrustPolicy { role, trust_policy } => {
                refuse_group_principals(trust_policy, op)?;
                let text = as_returned(&rewrite_principals(trust_policy, &self.partition));
                role_entry(&mut state, role, op)?.trust_policy = text;
            }
            Change::UpdateRole {
                role,
                description,
                max_session_duration,
            } => {
                let r = &mut role_entry(&mut state, role, op)?.role;
                r.description = Some(description.clone()).filter(|d| !d.is_empty());
                r.max_session_duration = *max_session_duration;
            }
            Change::PutPermissionsBoundary { role, arn } => {
                role_entry(&mut state, role, op)?.role.permissions_boundary = Some(arn.clone())
            }
            Change::DeletePermissionsBoundary { role } => {
                let r = &mut role_entry(&mut state, role, op)?.role;
                if r.permissions_boundary.take().is_none() {
                    return Err(not_found(op, &format!("The boundary of role {role}")));
                }
            }
            Change::TagRole { role, tags } => role_entry(&mut state, role, op)?
                .role
                .tags
                .extend(tags.clone()),
            Change::UntagRole { role, keys } => {
                let r = &mut role_entry(&mut state, role, op)?.role;
                for k in keys {
                    r.tags.remove(k);
                }
            }
            Change::AttachPolicy { role, arn } => {
                role_entry(&mut state, role, op)?
                    .role
                    .managed_policies
                    .insert(arn.clone());
            }
            Change::DetachPolicy { role, arn } => {
                if !role_entry(&mut state, role, op)?
                    .role
                    .managed_policies
                    .remove(arn)
                {
                    return Err(not_found(op, &format!("Policy {arn}")));
                }
            }
            Change::PutInlinePolicy {
                role,
                name,
                document,
            } => {
                role_entry(&mut state, role, op)?
                    .inline_policies
                    .insert(name.clone(), as_returned(document));
            }
            Change::DeleteInlinePolicy { role, name } => {
                if role_entry(&mut state, role, op)?
                    .inline_policies
                    .remove(name)
                    .is_none()
                {
                    return Err(not_found(op, &format!("The role policy with name {name}")));
                }
            }
            Change::DeleteRole { role } => {
                let r = role_entry(&mut state, role, op)?;
                if !r.role.managed_policies.is_empty() || !r.inline_policies.is_empty() {
                    return Err(iam_error(
                        op,
                        AwsErrorKind::Conflict,
                        "DeleteConflict",
                        "Cannot delete entity, must detach all policies first.".to_owned(),
                    ));
                }
                if state
                    .instance_profiles
                    .get(role)
                    .is_some_and(|p| !p.is_empty())
                {
                    return Err(iam_error(
                        op,
                        AwsErrorKind::Conflict,
                        "DeleteConflict",
                        "Cannot delete entity, must remove roles from instance profile first."
                            .to_owned(),
                    ));
                }
                state.roles.remove(role);
            }
            Change::DeleteGrant {
                principal,
                policy_name,
            } => {
                if state
                    .principal_policies
                    .remove(&(principal.clone(), policy_name.clone()))
                    .is_none()
                {
                    return Err(not_found(
                        op,
                        &format!("The policy with name {policy_name}"),
                    ));
                }
            }
            Change::AttachGrantPolicy { .. } => {
                unreachable!("a grant policy is attached by aws::grants")
            }
            Change::CreatePolicy { .. } => unreachable!("policies are created by create_policy"),
            Change::AttachPrincipalPolicy { principal, arn } => {
                if !state.principal_exists(principal) {
                    return Err(not_found(op, &principal.describe()));
                }
                if !state.policies.contains_key(arn) && !arn.contains(":iam::aws:") {
                    return Err(not_found(op, &format!("Policy {arn}")));
                }
                let attached = state.attachments.entry(principal.clone()).or_default();
                if !attached.contains(arn) && attached.len() >= ATTACHED_PER_PRINCIPAL_QUOTA {
                    return Err(limit_exceeded(
                        op,
                        format!(
                            "Cannot exceed quota for PoliciesPer{}: {ATTACHED_PER_PRINCIPAL_QUOTA}",
                            match principal {
                                Principal::User(_) => "User",
                                Principal::Role(_) => "Role",
                                Principal::Group(_) => "Group",
                            }
                        ),
                    ));
                }
                attached.insert(arn.clone());
            }
        }
        state.writes.push(change.clone());
        Ok(())
    }
}

/// The source account and the target accounts, reached by account ID (management roles are
/// not checked: the fake trusts them).
#[derive(Clone)]
pub(crate) struct FakeAws {
    source: FakeAccount,
    targets: Arc<Mutex<HashMap<String, FakeAccount>>>,
}

impl FakeAws {
    pub(crate) fn new(source: FakeAccount) -> Self {
        Self {
            source,
            targets: Arc::default(),
        }
    }

    /// The target account `account_id` (created on first use).
    pub(crate) fn account(&self, account_id: &str) -> FakeAccount {
        if account_id == self.source.account_id {
            return self.source.clone();
        }
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(account_id.to_owned())
            .or_insert_with(|| FakeAccount::in_partition(account_id, &self.source.partition))
            .clone()
    }
}

impl Aws for FakeAws {
    type Account = FakeAccount;

    fn source(&self) -> FakeAccount {
        self.source.clone()
    }

    async fn target(&self, access: &AccountAccess) -> FakeAccount {
        self.account(&access.account_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn documents_come_back_url_encoded_with_account_principals_as_root_arns() {
        let account = FakeAccount::in_partition("111111111111", "aws-cn");
        let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"AWS": ["123456789012", "arn:aws-cn:iam::123456789012:user/a b"]},
            "Action": "sts:AssumeRole"}]});
        account
            .apply(&Change::CreateRole {
                role: "r".into(),
                path: "/".into(),
                trust_policy: trust,
                description: None,
                max_session_duration: None,
                permissions_boundary: None,
                tags: BTreeMap::new(),
            })
            .await
            .unwrap();
        let text = account.trust_policy_text("r").unwrap();
        assert!(
            text.starts_with("%7B%22") && text.contains("%22Version%22"),
            "{text}"
        );
        assert!(!text.contains('"') && !text.contains(' '), "{text}");
        let role = account.get_role("r").await.unwrap().unwrap();
        assert_eq!(role.arn, "arn:aws-cn:iam::111111111111:role/r");
        assert_eq!(
            role.trust_policy["Statement"][0]["Principal"]["AWS"],
            json!([
                "arn:aws-cn:iam::123456789012:root",
                "arn:aws-cn:iam::123456789012:user/a b"
            ])
        );
    }

    #[tokio::test]
    async fn removing_what_is_not_there_is_no_such_entity() {
        let account = FakeAccount::new("111111111111");
        let err = account
            .apply(&Change::DeleteRole { role: "x".into() })
            .await
            .unwrap_err();
        assert_eq!(err.kind, AwsErrorKind::NotFound);
        assert!(account.take_writes().is_empty());
    }
}
