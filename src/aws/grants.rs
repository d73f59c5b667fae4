//! Grants, the source account's half: each granted principal has one grant policy of this
//! cluster attached, which allows assuming the roles tagged for it (see [`GrantScope`]). The
//! policy never changes once created, so attaching it is the only write, and it is the same for
//! the first grant of a principal as for its hundredth.
//!
//! The attachment counts against IAM's quota of managed policies attached to a user, role or group
//! (`AttachedPoliciesPerUserQuota`, `AttachedPoliciesPerRoleQuota`,
//! `AttachedPoliciesPerGroupQuota`, 10 by default, read from GetAccountSummary), which is checked before anything is written. See IAM's quotas:
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html>.

use super::{AccountApi, Arn, AwsError, AwsErrorKind, Change, GrantScope, Principal};

/// IAM's default, when GetAccountSummary does not say.
const DEFAULT_ATTACHED_PER_PRINCIPAL: i64 = 10;

/// Whether `principal`'s grant policy is attached to it (`None`: no such principal).
pub(crate) async fn is_attached<A: AccountApi>(
    account: &A,
    principal: &Principal,
    scope: &GrantScope,
) -> Result<Option<bool>, AwsError> {
    let name = scope.policy_name(principal);
    Ok(account
        .attached_policies(principal, &scope.path())
        .await?
        .map(|attached| attached.iter().any(|p| p.name == name)))
}

fn no_principal(principal: &Principal) -> AwsError {
    AwsError {
        service: "iam",
        operation: "AttachGrantPolicy",
        kind: AwsErrorKind::NotFound,
        code: Some("NoSuchEntity".into()),
        message: format!(
            "{} does not exist in the source account",
            principal.describe()
        )
        .into(),
        request_id: None,
        source: None,
    }
}

/// Creates `principal`'s grant policy if need be and attaches it. Returns the IAM writes made
/// (none when it is attached already).
pub(crate) async fn attach<A: AccountApi>(
    account: &A,
    principal: &Principal,
    scope: &GrantScope,
) -> (Vec<Change>, Result<(), AwsError>) {
    let mut writes = Vec::new();
    let result = attach_into(account, principal, scope, &mut writes).await;
    (writes, result)
}

async fn attach_into<A: AccountApi>(
    account: &A,
    principal: &Principal,
    scope: &GrantScope,
    writes: &mut Vec<Change>,
) -> Result<(), AwsError> {
    let name = scope.policy_name(principal);
    let attached = account
        .attached_policies(principal, "/")
        .await?
        .ok_or_else(|| no_principal(principal))?;
    if attached.iter().any(|p| p.name == name) {
        return Ok(());
    }
    let quota_name = principal.attachment_quota();
    let what = principal.kind_and_name().0;
    let quota = account
        .account_quota(quota_name)
        .await?
        .unwrap_or(DEFAULT_ATTACHED_PER_PRINCIPAL);
    if attached.len() as i64 >= quota {
        return Err(AwsError {
            service: "iam",
            operation: "AttachGrantPolicy",
            kind: AwsErrorKind::LimitExceeded,
            code: Some("LimitExceeded".into()),
            message: format!(
                "granting {} needs the grant policy {name} attached to it, and it has {} managed policies attached: IAM allows {quota} per {what} ({quota_name}); detach one, or grant another principal",
                principal.describe(),
                attached.len()
            )
            .into(),
            request_id: None,
            source: None,
        });
    }
    let path = scope.path();
    let document = scope.policy_document(principal);
    let arn = match account.create_policy(&name, &path, &document).await {
        Ok(arn) => {
            writes.push(Change::CreatePolicy {
                name,
                path,
                document,
            });
            arn
        }
        // Made by an earlier grant of this principal (then detached), or by a grant that failed
        // between creating and attaching it: the name is this cluster's, and the document never
        // changes.
        Err(e) if e.kind == AwsErrorKind::AlreadyExists => {
            let caller = account.caller_arn().await?;
            Arn::parse(&caller)
                .map(|c| Arn::iam(c.partition(), c.account(), &format!("policy{path}{name}")))
                .ok_or(e)?
                .to_string()
        }
        Err(e) => return Err(e),
    };
    let attach = Change::AttachPrincipalPolicy {
        principal: principal.clone(),
        arn,
    };
    account.apply(&attach).await?;
    writes.push(attach);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{fake::FakeAccount, policy};

    fn scope() -> GrantScope {
        GrantScope {
            cluster: "dev".into(),
        }
    }

    fn operations(changes: &[Change]) -> Vec<&'static str> {
        changes.iter().map(Change::operation).collect()
    }

    #[tokio::test]
    async fn the_first_grant_creates_and_attaches_the_policy_and_later_ones_write_nothing() {
        let source = FakeAccount::new("123456789012");
        let user = Principal::User("devTest".into());
        source.add_user("devTest");
        let (writes, result) = attach(&source, &user, &scope()).await;
        result.unwrap();
        assert_eq!(operations(&writes), ["CreatePolicy", "AttachUserPolicy"]);
        assert_eq!(
            is_attached(&source, &user, &scope()).await.unwrap(),
            Some(true)
        );
        let Change::AttachPrincipalPolicy { arn, .. } = &writes[1] else {
            panic!("{writes:?}")
        };
        assert_eq!(
            arn,
            "arn:aws:iam::123456789012:policy/crossaccount/dev/crossaccount-dev-user-devTest"
        );
        assert_eq!(
            source.managed_policy(arn),
            Some(scope().policy_document(&user))
        );
        let (writes, result) = attach(&source, &user, &scope()).await;
        result.unwrap();
        assert!(writes.is_empty(), "{:?}", operations(&writes));
    }

    #[tokio::test]
    async fn a_detached_policy_is_attached_again_without_being_made_anew() {
        let source = FakeAccount::new("123456789012");
        let role = Principal::Role("ci".into());
        source.add_role_principal("ci");
        attach(&source, &role, &scope()).await.1.unwrap();
        source.detach_all(&role);
        let (writes, result) = attach(&source, &role, &scope()).await;
        result.unwrap();
        assert_eq!(operations(&writes), ["AttachRolePolicy"]);
        assert_eq!(
            is_attached(&source, &role, &scope()).await.unwrap(),
            Some(true)
        );
    }

    #[tokio::test]
    async fn a_grant_past_the_attachment_quota_is_refused_before_any_write() {
        let source = FakeAccount::new("123456789012");
        let user = Principal::User("devTest".into());
        source.add_user("devTest");
        for n in 0..10 {
            source.attach_other_policy(&user, &format!("arn:aws:iam::aws:policy/Other{n}"));
        }
        let (writes, result) = attach(&source, &user, &scope()).await;
        let error = result.unwrap_err();
        assert_eq!(error.kind, AwsErrorKind::LimitExceeded);
        assert!(
            error.message.contains("AttachedPoliciesPerUserQuota"),
            "{}",
            error.message
        );
        assert!(writes.is_empty());
        assert!(source.take_writes().is_empty());
    }

    #[tokio::test]
    async fn a_group_gets_its_own_policy_attached_within_its_quota() {
        let source = FakeAccount::new("123456789012");
        let group = Principal::Group("developers".into());
        source.add_group("developers");
        let (writes, result) = attach(&source, &group, &scope()).await;
        result.unwrap();
        assert_eq!(operations(&writes), ["CreatePolicy", "AttachGroupPolicy"]);
        let Change::AttachPrincipalPolicy { arn, .. } = &writes[1] else {
            panic!("{writes:?}")
        };
        assert_eq!(
            arn,
            "arn:aws:iam::123456789012:policy/crossaccount/dev/crossaccount-dev-group-developers"
        );
        assert_eq!(
            scope().policy_document(&group)["Statement"][0]["Condition"]["StringEquals"]["iam:ResourceTag/crossaccount.io/grant/group/developers"],
            "dev"
        );
        let full = Principal::Group("full".into());
        source.add_group("full");
        for n in 0..10 {
            source.attach_other_policy(&full, &format!("arn:aws:iam::aws:policy/Other{n}"));
        }
        source.take_writes();
        let (writes, result) = attach(&source, &full, &scope()).await;
        let error = result.unwrap_err();
        assert_eq!(error.kind, AwsErrorKind::LimitExceeded);
        assert!(
            error
                .message
                .contains("IAM allows 10 per group (AttachedPoliciesPerGroupQuota)"),
            "{}",
            error.message
        );
        assert!(writes.is_empty() && source.take_writes().is_empty());
        let (_, result) = attach(&source, &Principal::Group("ghosts".into()), &scope()).await;
        assert!(
            result
                .unwrap_err()
                .message
                .contains("group ghosts does not exist in the source account")
        );
    }

    #[tokio::test]
    async fn a_missing_principal_is_said() {
        let source = FakeAccount::new("123456789012");
        let ghost = Principal::User("ghost".into());
        assert_eq!(is_attached(&source, &ghost, &scope()).await.unwrap(), None);
        let (_, result) = attach(&source, &ghost, &scope()).await;
        assert!(
            result
                .unwrap_err()
                .message
                .contains("user ghost does not exist")
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_roles_tagged_for_the_principal_in_this_cluster() {
        let user = Principal::User("devTest".into());
        let document = scope().policy_document(&user);
        let statement = &document["Statement"][0];
        assert_eq!(statement["Action"], "sts:AssumeRole");
        assert_eq!(
            statement["Condition"]["StringEquals"]["iam:ResourceTag/crossaccount.io/grant/user/devTest"],
            "dev"
        );
        // It fits every quota with room to spare, and its name and tag fit IAM's limits.
        assert!(policy::size_without_whitespace(&policy::to_text(&document)) < 400);
        let longest = GrantScope {
            cluster: "c".repeat(40),
        };
        let long_user = Principal::User("u".repeat(64));
        assert!(longest.policy_name(&long_user).len() <= 128);
        assert!(GrantScope::tag_key(&long_user).len() <= 128);
        assert_ne!(
            scope().policy_name(&user),
            GrantScope {
                cluster: "other".into()
            }
            .policy_name(&user)
        );
    }

    #[test]
    fn grant_tags_name_their_principal() {
        for principal in [
            Principal::User("devTest".into()),
            Principal::Role("ci.deployer@x".into()),
            Principal::Group("developers".into()),
        ] {
            assert_eq!(
                GrantScope::principal_of_tag(&GrantScope::tag_key(&principal)),
                Some(principal)
            );
        }
        for other in [
            "crossaccount.io/cluster",
            "crossaccount.io/grant/user/",
            "crossaccount.io/grant/group/",
            "crossaccount.io/grant/other/g",
            "team",
        ] {
            assert_eq!(GrantScope::principal_of_tag(other), None, "{other}");
        }
    }
}
