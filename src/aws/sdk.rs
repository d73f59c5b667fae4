//! The AWS SDK implementation of [`Aws`] and [`AccountApi`]. Every request is reported to the
//! [`RequestLog`] and every failure classified into an [`AwsError`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_config::SdkConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_iam::{error::ProvideErrorMetadata, types::Tag};
use aws_smithy_runtime_api::client::{orchestrator::HttpResponse, result::SdkError};
use serde_json::Value;

use super::{
    AccountAccess, AccountApi, AssumeRoleRequest, AttachedPolicy, Aws, AwsError, AwsErrorKind,
    Change, IAM_DEFAULT_MAX_SESSION, IssuedCredentials, ObservedRole, Principal, RequestLog,
    arn::Arn, policy, rate_limit::RateLimiter,
};

/// Session name the operator uses when it assumes a management role.
const MANAGEMENT_SESSION_NAME: &str = "cross-account-operator";

/// AssumeRole calls per second into a target account's management role (the operator's own
/// sessions, rare: one per client, refreshed hourly). STS allows 600 per second per account.
const MANAGEMENT_ASSUME_ROLE_RATE: f64 = 20.0;

/// IAM and STS clients of one account.
#[derive(Clone)]
pub(crate) struct SdkAccount {
    iam: aws_sdk_iam::Client,
    sts: aws_sdk_sts::Client,
    log: Arc<dyn RequestLog>,
    assume_limiter: Arc<RateLimiter>,
    /// The IAM request budget of the AWS account, shared by every client of it.
    iam_budget: Arc<RateLimiter>,
    /// One lock per principal whose grants are being changed (see `aws::grants`).
    /// The account's IAM quotas, read once (GetAccountSummary).
    quotas: Arc<tokio::sync::OnceCell<HashMap<String, i64>>>,
}

/// The SDK-backed [`Aws`]: the operator's own configuration for the source account, and one cached
/// client per target account built on an assume-role credentials provider (which refreshes its
/// credentials before they expire).
pub struct SdkAws {
    base: SdkConfig,
    source: SdkAccount,
    budgets: IamBudgets,
    /// Clients of target accounts with when they were last used: one unused for
    /// [`IDLE_CLIENT_LIFETIME`] (an AwsAccount deleted, or its management role changed) is dropped.
    targets: Mutex<HashMap<AccountAccess, (SdkAccount, Instant)>>,
    log: Arc<dyn RequestLog>,
}

/// How long a target account's client is kept without use.
const IDLE_CLIENT_LIFETIME: Duration = Duration::from_secs(3600);

/// The rates of the operator's request budgets.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    /// Credential mints (AssumeRole with the operator's own identity) per second at most, with
    /// bursts of twice as many.
    pub assume_role: f64,
    /// IAM requests (reads and writes alike) per second into one AWS account at most, with bursts
    /// of twice as many.
    pub iam: f64,
}

/// A token bucket with bursts of twice its rate.
fn bucket(per_second: f64) -> Arc<RateLimiter> {
    Arc::new(RateLimiter::new(
        per_second,
        (2.0 * per_second).ceil().max(1.0) as u32,
    ))
}

/// One IAM budget per AWS account: AwsAccounts that reach the same account through different
/// management roles share it, as IAM's throttling does. The source account's (the operator's own
/// credentials, no management role) is separate.
struct IamBudgets {
    rate: f64,
    by_account: Mutex<HashMap<String, Arc<RateLimiter>>>,
}

impl IamBudgets {
    fn of(&self, account_id: &str) -> Arc<RateLimiter> {
        self.by_account
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(account_id.to_owned())
            .or_insert_with(|| bucket(self.rate))
            .clone()
    }
}

impl SdkAws {
    pub fn new(base: SdkConfig, log: Arc<dyn RequestLog>, rates: Rates) -> Self {
        let source = SdkAccount::new(&base, log.clone(), rates.assume_role, bucket(rates.iam));
        Self {
            base,
            source,
            budgets: IamBudgets {
                rate: rates.iam,
                by_account: Mutex::default(),
            },
            targets: Mutex::default(),
            log,
        }
    }
}

impl SdkAccount {
    fn new(
        config: &SdkConfig,
        log: Arc<dyn RequestLog>,
        assume_role_rate: f64,
        iam_budget: Arc<RateLimiter>,
    ) -> Self {
        Self {
            iam: aws_sdk_iam::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
            log,
            assume_limiter: bucket(assume_role_rate),
            iam_budget,
            quotas: Arc::default(),
        }
    }

    /// Awaits one SDK call, counts it, and turns its error into an [`AwsError`].
    async fn call<T, E>(
        &self,
        service: &'static str,
        operation: &'static str,
        request: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        // One token per operation; the SDK's own retries of a throttled or failed attempt (with
        // its backoff) come on top.
        if service == "iam" {
            let waited = self.iam_budget.acquire().await;
            self.log.budget_wait(service, waited);
        }
        let result = request
            .await
            .map_err(|err| to_aws_error(service, operation, err));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.category(),
        };
        self.log.request(service, operation, outcome);
        if let Err(e) = &result {
            tracing::debug!(service, operation, code = ?e.code, request_id = ?e.request_id, "AWS request failed");
        }
        result
    }

    /// `Ok(None)` for a NotFound error.
    fn absent_if_not_found<T>(result: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn attached_policies(&self, role: &str) -> Result<BTreeSet<String>, AwsError> {
        let mut arns = BTreeSet::new();
        let mut marker = None;
        loop {
            let page = self
                .call(
                    "iam",
                    "ListAttachedRolePolicies",
                    self.iam
                        .list_attached_role_policies()
                        .role_name(role)
                        .set_marker(marker.take())
                        .send(),
                )
                .await?;
            arns.extend(
                page.attached_policies()
                    .iter()
                    .filter_map(|p| p.policy_arn().map(str::to_owned)),
            );
            match (page.is_truncated(), page.marker()) {
                (true, Some(next)) => marker = Some(next.to_owned()),
                _ => return Ok(arns),
            }
        }
    }

    async fn inline_policies(&self, role: &str) -> Result<BTreeMap<String, Value>, AwsError> {
        let mut names = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .call(
                    "iam",
                    "ListRolePolicies",
                    self.iam
                        .list_role_policies()
                        .role_name(role)
                        .set_marker(marker.take())
                        .send(),
                )
                .await?;
            names.extend(page.policy_names().iter().cloned());
            match (page.is_truncated(), page.marker()) {
                (true, Some(next)) => marker = Some(next.to_owned()),
                _ => break,
            }
        }
        let mut policies = BTreeMap::new();
        for name in names {
            let out = self
                .call(
                    "iam",
                    "GetRolePolicy",
                    self.iam
                        .get_role_policy()
                        .role_name(role)
                        .policy_name(&name)
                        .send(),
                )
                .await?;
            policies.insert(name, policy::parse_observed(out.policy_document()));
        }
        Ok(policies)
    }
}

fn to_aws_error<E>(
    service: &'static str,
    operation: &'static str,
    err: SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let request_id = err.raw_response().and_then(|r| {
        r.headers()
            .get("x-amzn-requestid")
            .or_else(|| r.headers().get("x-amz-request-id"))
            .map(str::to_owned)
    });
    let code = err.code().map(str::to_owned);
    let message = match (err.message(), &err) {
        (Some(m), _) => m.to_owned(),
        (None, SdkError::DispatchFailure(_)) => "could not reach AWS (network error)".to_owned(),
        (None, SdkError::TimeoutError(_)) => "request timed out".to_owned(),
        (None, _) => match (&code, status) {
            (Some(code), _) => code.clone(),
            (None, Some(status)) => format!("HTTP status {status}"),
            (None, None) => "no response".to_owned(),
        },
    };
    AwsError {
        service,
        operation,
        kind: AwsError::classify(code.as_deref(), status),
        code: code.map(Into::into),
        message: message.into(),
        request_id: request_id.map(Into::into),
        source: Some(Box::new(err)),
    }
}

fn iam_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .expect("key and value are set")
        })
        .collect()
}

impl AccountApi for SdkAccount {
    async fn assume_role(
        &self,
        request: &AssumeRoleRequest,
    ) -> Result<IssuedCredentials, AwsError> {
        self.assume(request).await
    }

    async fn caller_arn(&self) -> Result<String, AwsError> {
        let out = self
            .call(
                "sts",
                "GetCallerIdentity",
                self.sts.get_caller_identity().send(),
            )
            .await?;
        Ok(out.arn().unwrap_or_default().to_owned())
    }

    async fn get_role(&self, name: &str) -> Result<Option<ObservedRole>, AwsError> {
        let out = self
            .call("iam", "GetRole", self.iam.get_role().role_name(name).send())
            .await;
        let Some(out) = Self::absent_if_not_found(out)? else {
            return Ok(None);
        };
        let Some(role) = out.role() else {
            return Ok(None);
        };
        Ok(Some(ObservedRole {
            arn: role.arn().to_owned(),
            path: role.path().to_owned(),
            description: role
                .description()
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            max_session_duration: role
                .max_session_duration()
                .unwrap_or(IAM_DEFAULT_MAX_SESSION),
            trust_policy: policy::parse_observed(
                role.assume_role_policy_document().unwrap_or_default(),
            ),
            permissions_boundary: role
                .permissions_boundary()
                .and_then(|b| b.permissions_boundary_arn())
                .map(str::to_owned),
            tags: role
                .tags()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect(),
            managed_policies: self.attached_policies(name).await?,
            inline_policies: self.inline_policies(name).await?,
            created: jiff::Timestamp::from_second(role.create_date().secs()).ok(),
        }))
    }

    async fn principal_arn(&self, principal: &Principal) -> Result<Option<String>, AwsError> {
        Ok(match principal {
            Principal::User(user) => {
                let out = self
                    .call("iam", "GetUser", self.iam.get_user().user_name(user).send())
                    .await;
                Self::absent_if_not_found(out)?.and_then(|o| o.user().map(|u| u.arn().to_owned()))
            }
            Principal::Role(role) => {
                let out = self
                    .call("iam", "GetRole", self.iam.get_role().role_name(role).send())
                    .await;
                Self::absent_if_not_found(out)?.and_then(|o| o.role().map(|r| r.arn().to_owned()))
            }
            Principal::Group(group) => {
                // One member is enough: the answer is the group, not who is in it.
                let out = self
                    .call(
                        "iam",
                        "GetGroup",
                        self.iam.get_group().group_name(group).max_items(1).send(),
                    )
                    .await;
                Self::absent_if_not_found(out)?.and_then(|o| o.group().map(|g| g.arn().to_owned()))
            }
        })
    }

    async fn get_principal_policy(
        &self,
        principal: &Principal,
        policy_name: &str,
    ) -> Result<Option<Value>, AwsError> {
        let document = match principal {
            Principal::User(user) => {
                let out = self
                    .call(
                        "iam",
                        "GetUserPolicy",
                        self.iam
                            .get_user_policy()
                            .user_name(user)
                            .policy_name(policy_name)
                            .send(),
                    )
                    .await;
                Self::absent_if_not_found(out)?.map(|o| o.policy_document().to_owned())
            }
            Principal::Role(role) => {
                let out = self
                    .call(
                        "iam",
                        "GetRolePolicy",
                        self.iam
                            .get_role_policy()
                            .role_name(role)
                            .policy_name(policy_name)
                            .send(),
                    )
                    .await;
                Self::absent_if_not_found(out)?.map(|o| o.policy_document().to_owned())
            }
            Principal::Group(group) => {
                let out = self
                    .call(
                        "iam",
                        "GetGroupPolicy",
                        self.iam
                            .get_group_policy()
                            .group_name(group)
                            .policy_name(policy_name)
                            .send(),
                    )
                    .await;
                Self::absent_if_not_found(out)?.map(|o| o.policy_document().to_owned())
            }
        };
        Ok(document.map(|d| policy::parse_observed(&d)))
    }

    async fn attached_policies(
        &self,
        principal: &Principal,
        path_prefix: &str,
    ) -> Result<Option<Vec<AttachedPolicy>>, AwsError> {
        let mut found = Vec::new();
        let mut marker = None;
        // One page of ListAttached{User,Role,Group}Policies: the three differ only in names.
        macro_rules! page {
            ($operation:literal, $request:ident, $name_field:ident, $name:expr) => {{
                let out = self
                    .call(
                        "iam",
                        $operation,
                        self.iam
                            .$request()
                            .$name_field($name)
                            .path_prefix(path_prefix)
                            .set_marker(marker.take())
                            .send(),
                    )
                    .await;
                let Some(out) = Self::absent_if_not_found(out)? else {
                    return Ok(None);
                };
                (
                    out.attached_policies().to_vec(),
                    out.is_truncated(),
                    out.marker().map(str::to_owned),
                )
            }};
        }
        loop {
            let (policies, truncated, next) = match principal {
                Principal::User(user) => page!(
                    "ListAttachedUserPolicies",
                    list_attached_user_policies,
                    user_name,
                    user
                ),
                Principal::Role(role) => page!(
                    "ListAttachedRolePolicies",
                    list_attached_role_policies,
                    role_name,
                    role
                ),
                Principal::Group(group) => page!(
                    "ListAttachedGroupPolicies",
                    list_attached_group_policies,
                    group_name,
                    group
                ),
            };
            found.extend(policies.iter().filter_map(|p| {
                Some(AttachedPolicy {
                    name: p.policy_name()?.to_owned(),
                    arn: p.policy_arn()?.to_owned(),
                })
            }));
            match (truncated, next) {
                (true, Some(next)) => marker = Some(next),
                _ => return Ok(Some(found)),
            }
        }
    }

    async fn instance_profiles(&self, role: &str) -> Result<Vec<String>, AwsError> {
        let mut names = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .call(
                    "iam",
                    "ListInstanceProfilesForRole",
                    self.iam
                        .list_instance_profiles_for_role()
                        .role_name(role)
                        .set_marker(marker.take())
                        .send(),
                )
                .await?;
            names.extend(
                page.instance_profiles()
                    .iter()
                    .map(|p| p.instance_profile_name().to_owned()),
            );
            match (page.is_truncated(), page.marker()) {
                (true, Some(next)) => marker = Some(next.to_owned()),
                _ => return Ok(names),
            }
        }
    }

    async fn create_policy(
        &self,
        name: &str,
        path: &str,
        document: &Value,
    ) -> Result<String, AwsError> {
        let out = self
            .call(
                "iam",
                "CreatePolicy",
                self.iam
                    .create_policy()
                    .policy_name(name)
                    .path(path)
                    .policy_document(policy::to_text(document))
                    .send(),
            )
            .await?;
        Ok(out
            .policy()
            .and_then(|p| p.arn())
            .unwrap_or_default()
            .to_owned())
    }

    async fn account_quota(&self, name: &'static str) -> Result<Option<i64>, AwsError> {
        let quotas = self
            .quotas
            .get_or_try_init(|| async {
                let out = self
                    .call(
                        "iam",
                        "GetAccountSummary",
                        self.iam.get_account_summary().send(),
                    )
                    .await?;
                Ok::<_, AwsError>(
                    out.summary_map()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.as_str().to_owned(), i64::from(*v)))
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            })
            .await?;
        Ok(quotas.get(name).copied())
    }

    async fn apply(&self, change: &Change) -> Result<(), AwsError> {
        let op = change.operation();
        let iam = &self.iam;
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
                let request = iam
                    .create_role()
                    .role_name(role)
                    .path(path)
                    .assume_role_policy_document(policy::to_text(trust_policy))
                    .set_description(description.clone())
                    .set_max_session_duration(*max_session_duration)
                    .set_permissions_boundary(permissions_boundary.clone())
                    .set_tags(Some(iam_tags(tags)));
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::UpdateTrustPolicy { role, trust_policy } => {
                let request = iam
                    .update_assume_role_policy()
                    .role_name(role)
                    .policy_document(policy::to_text(trust_policy));
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::UpdateRole {
                role,
                description,
                max_session_duration,
            } => {
                let request = iam
                    .update_role()
                    .role_name(role)
                    .description(description)
                    .max_session_duration(*max_session_duration);
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::PutPermissionsBoundary { role, arn } => {
                let request = iam
                    .put_role_permissions_boundary()
                    .role_name(role)
                    .permissions_boundary(arn);
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::DeletePermissionsBoundary { role } => {
                let request = iam.delete_role_permissions_boundary().role_name(role);
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::TagRole { role, tags } => {
                let request = iam
                    .tag_role()
                    .role_name(role)
                    .set_tags(Some(iam_tags(tags)));
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::UntagRole { role, keys } => {
                let request = iam
                    .untag_role()
                    .role_name(role)
                    .set_tag_keys(Some(keys.clone()));
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::AttachPolicy { role, arn } => {
                let request = iam.attach_role_policy().role_name(role).policy_arn(arn);
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::DetachPolicy { role, arn } => {
                let request = iam.detach_role_policy().role_name(role).policy_arn(arn);
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::PutInlinePolicy {
                role,
                name,
                document,
            } => {
                let request = iam
                    .put_role_policy()
                    .role_name(role)
                    .policy_name(name)
                    .policy_document(policy::to_text(document));
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::DeleteInlinePolicy { role, name } => {
                let request = iam.delete_role_policy().role_name(role).policy_name(name);
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::DeleteRole { role } => {
                let request = iam.delete_role().role_name(role);
                self.call("iam", op, request.send()).await.map(drop)
            }
            Change::AttachGrantPolicy { .. } => {
                unreachable!("a grant policy is attached by aws::grants")
            }
            Change::CreatePolicy { .. } => unreachable!("policies are created by create_policy"),
            Change::AttachPrincipalPolicy { principal, arn } => match principal {
                Principal::User(user) => {
                    let request = iam.attach_user_policy().user_name(user).policy_arn(arn);
                    self.call("iam", op, request.send()).await.map(drop)
                }
                Principal::Role(role) => {
                    let request = iam.attach_role_policy().role_name(role).policy_arn(arn);
                    self.call("iam", op, request.send()).await.map(drop)
                }
                Principal::Group(group) => {
                    let request = iam.attach_group_policy().group_name(group).policy_arn(arn);
                    self.call("iam", op, request.send()).await.map(drop)
                }
            },
            Change::DeleteGrant {
                principal,
                policy_name,
            } => match principal {
                Principal::User(user) => {
                    let request = iam
                        .delete_user_policy()
                        .user_name(user)
                        .policy_name(policy_name);
                    self.call("iam", op, request.send()).await.map(drop)
                }
                Principal::Role(role) => {
                    let request = iam
                        .delete_role_policy()
                        .role_name(role)
                        .policy_name(policy_name);
                    self.call("iam", op, request.send()).await.map(drop)
                }
                Principal::Group(group) => {
                    let request = iam
                        .delete_group_policy()
                        .group_name(group)
                        .policy_name(policy_name);
                    self.call("iam", op, request.send()).await.map(drop)
                }
            },
        }
    }
}

impl SdkAccount {
    async fn assume(&self, request: &AssumeRoleRequest) -> Result<IssuedCredentials, AwsError> {
        self.assume_limiter.acquire().await;
        let call = self
            .sts
            .assume_role()
            .role_arn(&request.role_arn)
            .role_session_name(&request.session_name)
            .external_id(&request.external_id)
            .source_identity(&request.source_identity)
            .duration_seconds(request.duration_seconds)
            .set_policy(request.session_policy.clone())
            .set_tags((!request.tags.is_empty()).then(|| {
                request
                    .tags
                    .iter()
                    .filter_map(|(k, v)| {
                        aws_sdk_sts::types::Tag::builder()
                            .key(k)
                            .value(v)
                            .build()
                            .ok()
                    })
                    .collect()
            }))
            .set_transitive_tag_keys(
                (!request.transitive_tag_keys.is_empty())
                    .then(|| request.transitive_tag_keys.clone()),
            );
        let out = self.call("sts", "AssumeRole", call.send()).await?;
        let c = out.credentials().ok_or_else(|| AwsError {
            service: "sts",
            operation: "AssumeRole",
            kind: AwsErrorKind::Other,
            code: None,
            message: "AssumeRole returned no credentials".into(),
            request_id: None,
            source: None,
        })?;
        Ok(IssuedCredentials {
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: c.secret_access_key().to_owned(),
            session_token: c.session_token().to_owned(),
            expiration: jiff::Timestamp::from_second(c.expiration().secs()).unwrap_or_default(),
        })
    }
}

impl Aws for SdkAws {
    type Account = SdkAccount;

    fn source(&self) -> SdkAccount {
        self.source.clone()
    }

    async fn target(&self, access: &AccountAccess) -> SdkAccount {
        let Some(role_arn) = &access.management_role_arn else {
            return self.source.clone();
        };
        let now = Instant::now();
        {
            let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
            targets.retain(|_, (_, used)| now.duration_since(*used) < IDLE_CLIENT_LIFETIME);
            if let Some((cached, used)) = targets.get_mut(access) {
                *used = now;
                return cached.clone();
            }
        }
        let mut provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name(MANAGEMENT_SESSION_NAME)
            .configure(&self.base);
        if let Some(external_id) = &access.external_id {
            provider = provider.external_id(external_id);
        }
        let provider = provider.build().await;
        let config = self
            .base
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build();
        // The management role's ARN names the account; an unparsable one (refused before this by
        // the AwsAccount's validation) gets a budget of its own.
        let account_id = Arn::parse(role_arn)
            .map(|arn| arn.account().to_owned())
            .unwrap_or_else(|| role_arn.clone());
        let account = SdkAccount::new(
            &config,
            self.log.clone(),
            MANAGEMENT_ASSUME_ROLE_RATE,
            self.budgets.of(&account_id),
        );
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(access.clone())
            .or_insert((account, now))
            .0
            .clone()
    }
}
