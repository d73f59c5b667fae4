//! In-memory IAM of one account, behind [`AccountApi`], for unit tests of the pipeline. It keeps
//! documents as given and records every write, so tests can count them.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde_json::Value;

use super::{AccountApi, Change, ObservedRole, Principal};
use crate::{
    error::{AwsError, AwsErrorKind},
    reconcile::credentials::{AssumeRoleRequest, IssuedCredentials},
};

#[derive(Default)]
struct State {
    roles: BTreeMap<String, ObservedRole>,
    /// Inline policies of users and roles, as (principal, policy name) -> document.
    principal_policies: BTreeMap<(Principal, String), Value>,
    writes: Vec<Change>,
    assumed: u32,
}

#[derive(Clone)]
pub struct FakeAccount {
    account_id: String,
    state: Arc<Mutex<State>>,
}

impl FakeAccount {
    pub fn new(account_id: &str) -> Self {
        Self {
            account_id: account_id.to_owned(),
            state: Arc::default(),
        }
    }

    /// The writes made so far (and forgets them).
    pub fn take_writes(&self) -> Vec<Change> {
        std::mem::take(&mut self.state.lock().unwrap().writes)
    }

    pub fn role(&self, name: &str) -> Option<ObservedRole> {
        self.state.lock().unwrap().roles.get(name).cloned()
    }

    /// Changes a role behind the operator's back (drift).
    pub fn edit_role(&self, name: &str, edit: impl FnOnce(&mut ObservedRole)) {
        edit(
            self.state
                .lock()
                .unwrap()
                .roles
                .get_mut(name)
                .expect("role exists"),
        );
    }

    /// Changes inline policies of users and roles behind the operator's back (drift).
    pub fn edit_principal_policies(
        &self,
        edit: impl FnOnce(&mut BTreeMap<(Principal, String), Value>),
    ) {
        edit(&mut self.state.lock().unwrap().principal_policies);
    }

    pub fn principal_policy(&self, principal: &Principal, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state
            .principal_policies
            .get(&(principal.clone(), name.to_owned()))
            .cloned()
    }
}

fn role_entry<'a>(
    state: &'a mut State,
    role: &str,
    op: &'static str,
) -> Result<&'a mut ObservedRole, AwsError> {
    state.roles.get_mut(role).ok_or_else(|| not_found(op, role))
}

fn not_found(operation: &'static str, what: &str) -> AwsError {
    AwsError {
        service: "iam",
        operation,
        kind: AwsErrorKind::NotFound,
        code: Some("NoSuchEntity".into()),
        message: format!("{what} not found").into(),
        request_id: None,
        source: None,
    }
}

impl AccountApi for FakeAccount {
    async fn caller_arn(&self) -> Result<String, AwsError> {
        Ok(format!(
            "arn:aws:sts::{}:assumed-role/management/test",
            self.account_id
        ))
    }

    async fn assume_role(
        &self,
        request: &AssumeRoleRequest,
    ) -> Result<IssuedCredentials, AwsError> {
        let mut state = self.state.lock().unwrap();
        state.assumed += 1;
        let n = state.assumed;
        Ok(IssuedCredentials {
            access_key_id: format!("ASIAFAKE{n}"),
            secret_access_key: format!("secret-{n}"),
            session_token: format!("token-{n}-{}", request.session_name),
            expiration: k8s_openapi::jiff::Timestamp::now()
                + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(request.duration_seconds)),
        })
    }

    async fn get_role(&self, name: &str) -> Result<Option<ObservedRole>, AwsError> {
        Ok(self.role(name))
    }

    async fn get_principal_policy(
        &self,
        principal: &Principal,
        policy_name: &str,
    ) -> Result<Option<Value>, AwsError> {
        Ok(self.principal_policy(principal, policy_name))
    }

    async fn apply(&self, change: &Change) -> Result<(), AwsError> {
        let mut state = self.state.lock().unwrap();
        let op = change.operation();
        let account_id = self.account_id.clone();
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
                if state.roles.contains_key(role) {
                    return Err(AwsError {
                        kind: AwsErrorKind::AlreadyExists,
                        ..not_found(op, role)
                    });
                }
                state.roles.insert(
                    role.clone(),
                    ObservedRole {
                        arn: format!("arn:aws:iam::{account_id}:role{path}{role}"),
                        path: path.clone(),
                        description: description.clone(),
                        max_session_duration: max_session_duration.unwrap_or(3600),
                        trust_policy: trust_policy.clone(),
                        permissions_boundary: permissions_boundary.clone(),
                        tags: tags.clone(),
                        ..ObservedRole::default()
                    },
                );
            }
            Change::UpdateTrustPolicy { role, trust_policy } => {
                role_entry(&mut state, role, op)?.trust_policy = trust_policy.clone()
            }
            Change::UpdateRole {
                role,
                description,
                max_session_duration,
            } => {
                let r = role_entry(&mut state, role, op)?;
                r.description = Some(description.clone()).filter(|d| !d.is_empty());
                r.max_session_duration = *max_session_duration;
            }
            Change::PutPermissionsBoundary { role, arn } => {
                role_entry(&mut state, role, op)?.permissions_boundary = Some(arn.clone())
            }
            Change::DeletePermissionsBoundary { role } => {
                role_entry(&mut state, role, op)?.permissions_boundary = None
            }
            Change::TagRole { role, tags } => {
                role_entry(&mut state, role, op)?.tags.extend(tags.clone())
            }
            Change::UntagRole { role, keys } => {
                let r = role_entry(&mut state, role, op)?;
                for k in keys {
                    r.tags.remove(k);
                }
            }
            Change::AttachPolicy { role, arn } => {
                role_entry(&mut state, role, op)?
                    .managed_policies
                    .insert(arn.clone());
            }
            Change::DetachPolicy { role, arn } => {
                if !role_entry(&mut state, role, op)?
                    .managed_policies
                    .remove(arn)
                {
                    return Err(not_found(op, arn));
                }
            }
            Change::PutInlinePolicy {
                role,
                name,
                document,
            } => {
                role_entry(&mut state, role, op)?
                    .inline_policies
                    .insert(name.clone(), document.clone());
            }
            Change::DeleteInlinePolicy { role, name } => {
                if role_entry(&mut state, role, op)?
                    .inline_policies
                    .remove(name)
                    .is_none()
                {
                    return Err(not_found(op, name));
                }
            }
            Change::DeleteRole { role } => {
                let r = state.roles.get(role).ok_or_else(|| not_found(op, role))?;
                if !r.managed_policies.is_empty() || !r.inline_policies.is_empty() {
                    return Err(AwsError {
                        kind: AwsErrorKind::Other,
                        code: Some("DeleteConflict".into()),
                        ..not_found(op, role)
                    });
                }
                state.roles.remove(role);
            }
            Change::PutGrant {
                principal,
                policy_name,
                document,
            } => {
                state
                    .principal_policies
                    .insert((principal.clone(), policy_name.clone()), document.clone());
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
                    return Err(not_found(op, policy_name));
                }
            }
        }
        state.writes.push(change.clone());
        Ok(())
    }
}
