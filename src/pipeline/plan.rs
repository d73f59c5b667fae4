//! Step 5 (pure): the ordered, minimal list of IAM writes that turns what was observed into what
//! is desired. An empty plan means AWS is in sync.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    desired::{DesiredRole, revoke_sessions_policy, sessions_revoked_before},
    observe::Observed,
    validate::REVOKE_SESSIONS_POLICY,
};
use crate::aws::{Change, GrantScope, IAM_DEFAULT_MAX_SESSION, ObservedRole, Principal, policy};

/// The writes that bring AWS to `desired`. A grant is the role's grant tag and trust entry (the
/// tag and trust diffs make and revoke it) and the principal's grant policy attached; the inline
/// grant policy an earlier version put on a principal goes once the grant no longer needs it.
pub(crate) fn plan_role_changes(desired: &DesiredRole, observed: &Observed) -> Vec<Change> {
    let role = desired.name.clone();
    let legacy = |principal: &Principal| {
        observed
            .grants
            .get(principal)
            .is_some_and(|g| g.legacy)
            .then(|| Change::DeleteGrant {
                principal: principal.clone(),
                policy_name: desired.legacy_grant_policy_name.clone(),
            })
    };
    // Revoked principals lose their old inline grant first; their tags and trust entry go with
    // the role's settings below.
    let mut changes: Vec<Change> = observed
        .previously_granted
        .difference(&desired.grants)
        .filter_map(legacy)
        .collect();
    let (attached, inline) = match &observed.role {
        None => {
            changes.push(Change::CreateRole {
                role: role.clone(),
                path: desired.path.clone(),
                trust_policy: desired.trust_policy.clone(),
                description: desired.description.clone(),
                max_session_duration: (desired.max_session_duration != IAM_DEFAULT_MAX_SESSION)
                    .then_some(desired.max_session_duration),
                permissions_boundary: desired.permissions_boundary.clone(),
                tags: desired.tags.clone(),
            });
            (BTreeSet::new(), BTreeMap::new())
        }
        Some(current) => {
            plan_role_settings(desired, current, &mut changes);
            (
                current.managed_policies.clone(),
                current.inline_policies.clone(),
            )
        }
    };

    for arn in desired.managed_policies.difference(&attached) {
        changes.push(Change::AttachPolicy {
            role: role.clone(),
            arn: arn.clone(),
        });
    }
    for (name, document) in &desired.inline_policies {
        if !inline
            .get(name)
            .is_some_and(|current| policy::equivalent(current, document))
        {
            changes.push(Change::PutInlinePolicy {
                role: role.clone(),
                name: name.clone(),
                document: document.clone(),
            });
        }
    }
    // A revocation the CR asks for: the console's policy, never moved to an earlier time.
    if let (Some(before), Some(current)) = (desired.revoke_sessions_before, &observed.role)
        && sessions_revoked_before(current).is_none_or(|at| at < before)
    {
        changes.push(Change::PutInlinePolicy {
            role: role.clone(),
            name: REVOKE_SESSIONS_POLICY.to_owned(),
            document: revoke_sessions_policy(before),
        });
    }
    for principal in &desired.grants {
        if !observed.grants.get(principal).is_some_and(|g| g.attached) {
            changes.push(Change::AttachGrantPolicy {
                principal: principal.clone(),
                scope: desired.grant_scope.clone(),
            });
        }
    }
    // The old one-per-object inline grant goes once the new grant is in place.
    changes.extend(desired.grants.iter().filter_map(legacy));
    // Policy removals last: new access is in place before old access goes.
    for arn in attached.difference(&desired.managed_policies) {
        changes.push(Change::DetachPolicy {
            role: role.clone(),
            arn: arn.clone(),
        });
    }
    for name in inline.keys().filter(|n| {
        !desired.inline_policies.contains_key(*n) && !desired.coexistence.inline_protected(n)
    }) {
        changes.push(Change::DeleteInlinePolicy {
            role: role.clone(),
            name: name.clone(),
        });
    }
    changes
}

fn plan_role_settings(desired: &DesiredRole, current: &ObservedRole, changes: &mut Vec<Change>) {
    let role = &desired.name;
    if !policy::equivalent(&current.trust_policy, &desired.trust_policy) {
        changes.push(Change::UpdateTrustPolicy {
            role: role.clone(),
            trust_policy: desired.trust_policy.clone(),
        });
    }
    if current.description != desired.description
        || current.max_session_duration != desired.max_session_duration
    {
        changes.push(Change::UpdateRole {
            role: role.clone(),
            description: desired.description.clone().unwrap_or_default(),
            max_session_duration: desired.max_session_duration,
        });
    }
    match (&desired.permissions_boundary, &current.permissions_boundary) {
        (Some(want), have) if have.as_ref() != Some(want) => {
            changes.push(Change::PutPermissionsBoundary {
                role: role.clone(),
                arn: want.clone(),
            })
        }
        (None, Some(_)) => changes.push(Change::DeletePermissionsBoundary { role: role.clone() }),
        _ => {}
    }
    let to_tag: BTreeMap<String, String> = desired
        .tags
        .iter()
        .filter(|(k, v)| current.tags.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !to_tag.is_empty() {
        changes.push(Change::TagRole {
            role: role.clone(),
            tags: to_tag,
        });
    }
    let to_untag: Vec<String> = current
        .tags
        .keys()
        .filter(|k| !desired.tags.contains_key(*k) && !desired.coexistence.tag_ignored(k))
        .cloned()
        .collect();
    if !to_untag.is_empty() {
        changes.push(Change::UntagRole {
            role: role.clone(),
            keys: to_untag,
        });
    }
}

/// `desired` cut down to what `current` already has: for a refused spec, the role keeps only the
/// permitted part of what it has (policies, inline policies, trusted and granted principals), so
/// that planning against it only takes away.
pub(crate) fn within(
    desired: &DesiredRole,
    current: &ObservedRole,
    observed: &Observed,
    spec: &crate::pipeline::validate::ValidatedSpec,
    operator: &crate::naming::OperatorIdentity,
) -> DesiredRole {
    let mut within = desired.clone();
    within
        .managed_policies
        .retain(|arn| current.managed_policies.contains(arn));
    within.inline_policies = current
        .inline_policies
        .iter()
        .filter(|(name, _)| desired.inline_policies.contains_key(*name))
        .map(|(name, document)| (name.clone(), document.clone()))
        .collect();
    within.grants = desired
        .grants
        .intersection(&observed.previously_granted)
        .cloned()
        .collect();
    let trusted_now = super::desired::trusted_principals(&current.trust_policy);
    let trusted: BTreeSet<String> = spec
        .trust_principals
        .iter()
        .filter(|p| trusted_now.contains(*p))
        .cloned()
        .collect();
    let granted = super::desired::grant_trust(spec, &within.grants, operator);
    within.trust_policy = super::desired::trust_policy(
        &operator.principal_arn,
        &operator_external_id(desired),
        &trusted,
        spec.trust_external_id.as_deref(),
        &granted,
    );
    within.max_session_duration = desired
        .max_session_duration
        .min(current.max_session_duration);
    within.description = current.description.clone();
    // The tags it has, but the grant tags only of the grants it keeps.
    within.tags = current
        .tags
        .iter()
        .filter(|(key, _)| {
            GrantScope::principal_of_tag(key).is_none_or(|p| within.grants.contains(&p))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    within
}

/// The external ID of the operator's statement of a desired trust policy.
fn operator_external_id(desired: &DesiredRole) -> String {
    super::desired::operator_external_ids(&desired.trust_policy)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Whether a change only takes access away (or restores the account's boundary): what a refused
/// spec's role may still be changed by.
pub(crate) fn narrows(change: &Change) -> bool {
    match change {
        // A revocation of sessions only takes away.
        Change::PutInlinePolicy { name, .. } => name == REVOKE_SESSIONS_POLICY,
        _ => matches!(
            change,
            Change::DetachPolicy { .. }
                | Change::DeleteInlinePolicy { .. }
                | Change::DeleteGrant { .. }
                | Change::PutPermissionsBoundary { .. }
                | Change::UpdateTrustPolicy { .. }
                | Change::UpdateRole { .. }
                // Grant tags of revoked grants (the ownership tags are never untagged).
                | Change::UntagRole { .. }
        ),
    }
}

/// The writes that remove a role and everything attached to it, and the inline grant policy an
/// earlier version put on each of `legacy` (the grants themselves are the role's tags and trust,
/// and go with it). Works from what was observed, so it needs no valid spec.
pub(crate) fn plan_delete(
    role_name: &str,
    role: Option<&ObservedRole>,
    legacy: &BTreeSet<Principal>,
    legacy_grant_policy_name: &str,
) -> Vec<Change> {
    let mut changes: Vec<Change> = legacy
        .iter()
        .map(|principal| Change::DeleteGrant {
            principal: principal.clone(),
            policy_name: legacy_grant_policy_name.to_owned(),
        })
        .collect();
    if let Some(role) = role {
        changes.extend(
            role.managed_policies
                .iter()
                .map(|arn| Change::DetachPolicy {
                    role: role_name.to_owned(),
                    arn: arn.clone(),
                }),
        );
        changes.extend(
            role.inline_policies
                .keys()
                .map(|name| Change::DeleteInlinePolicy {
                    role: role_name.to_owned(),
                    name: name.clone(),
                }),
        );
        changes.push(Change::DeleteRole {
            role: role_name.to_owned(),
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aws::{fake::FakeAccount, grants, policy},
        naming::{OperatorIdentity, Owner},
        pipeline::{
            apply::apply_changes,
            cleanup::delete_role,
            desired::{desired_role, granted_principals},
            observe::{GrantState, observe},
            ownership::{Claim, Ownership, ownership},
            validate::{Coexistence, ValidatedSpec},
        },
    };
    use serde_json::Value;
    use serde_json::json;

    const SOURCE: &str = "123456789012";
    const TARGET: &str = "111111111111";
    const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
    const EC2_READ: &str = "arn:aws:iam::aws:policy/AmazonEC2ReadOnlyAccess";

    fn operator() -> OperatorIdentity {
        OperatorIdentity {
            cluster_name: "dev".into(),
            source_account_id: SOURCE.into(),
            partition: "aws".into(),
            principal_arn: format!("arn:aws:iam::{SOURCE}:user/cross-account-operator"),
            chained: false,
        }
    }

    fn owner() -> Owner {
        Owner {
            cluster: "dev".into(),
            namespace: "team-a".into(),
            name: "signin".into(),
            uid: "uid-signin".into(),
        }
    }

    fn seed_spec() -> ValidatedSpec {
        ValidatedSpec {
            role_name: "CrossAccountSignin".into(),
            role_path: "/".into(),
            description: None,
            max_session_duration: None,
            managed_policies: BTreeSet::from([S3_READ.to_owned()]),
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

    struct World {
        target: FakeAccount,
        source: FakeAccount,
    }

    impl World {
        fn new() -> Self {
            let source = FakeAccount::new(SOURCE);
            for user in ["devTest", "alice"] {
                source.add_user(user);
            }
            for role in ["ci", "deployer"] {
                source.add_role_principal(role);
            }
            Self {
                target: FakeAccount::new(TARGET),
                source,
            }
        }

        /// Whether `principal` may assume the role, both halves: the role's trust policy allows
        /// it and the role carries its grant tag (target account), and its grant policy is
        /// attached (source account).
        async fn granted(&self, principal: &Principal) -> bool {
            let Some(role) = self.target.role("CrossAccountSignin") else {
                return false;
            };
            let scope = operator().grant_scope();
            let trusted = super::super::desired::granted_principals(
                &ObservedRole {
                    tags: BTreeMap::new(),
                    ..role.clone()
                },
                SOURCE,
            )
            .contains(principal);
            let tagged = role.tags.get(&GrantScope::tag_key(principal)) == Some(&scope.cluster);
            let attached = grants::is_attached(&self.source, principal, &scope)
                .await
                .unwrap()
                .unwrap_or(false);
            trusted && tagged && attached
        }

        async fn plan(&self, spec: &ValidatedSpec) -> Vec<Change> {
            let desired = desired_role(spec, &owner(), &operator(), TARGET).unwrap();
            let observed = observe(
                &self.target,
                &self.source,
                &desired,
                SOURCE,
                &Default::default(),
                &Default::default(),
            )
            .await
            .unwrap();
            plan_role_changes(&desired, &observed)
        }

        /// Plans and applies; returns the writes made, in order, as both fake accounts saw them.
        async fn sync(&self, spec: &ValidatedSpec) -> Vec<Change> {
            let changes = self.plan(spec).await;
            let (applied, result) = apply_changes(&self.target, &self.source, &changes).await;
            result.unwrap();
            // Attaching a grant policy is one or two IAM writes (creating it the first time);
            // every other change is one.
            let target = self.target.take_writes();
            let source = self.source.take_writes();
            let simple: Vec<&Change> = applied
                .iter()
                .filter(|c| !matches!(c, Change::AttachGrantPolicy { .. }))
                .collect();
            let in_target = simple.iter().filter(|c| !c.in_source_account()).count();
            assert_eq!(
                target.len(),
                in_target,
                "every target change reached AWS once"
            );
            assert!(source.len() >= applied.len() - in_target);
            applied
        }
    }

    fn operations(changes: &[Change]) -> Vec<&'static str> {
        changes.iter().map(Change::operation).collect()
    }

    #[tokio::test]
    async fn seed_scenario_creates_then_is_idempotent() {
        let world = World::new();
        let spec = seed_spec();
        let writes = world.sync(&spec).await;
        assert_eq!(
            operations(&writes),
            ["CreateRole", "AttachRolePolicy", "AttachGrantPolicy"]
        );

        let role = world.target.role("CrossAccountSignin").unwrap();
        let mut tags = owner().tags();
        tags.insert("crossaccount.io/grant/user/devTest".into(), "dev".into());
        assert_eq!(role.tags, tags);
        let statements = role.trust_policy["Statement"].as_array().unwrap();
        assert_eq!(
            statements[0]["Condition"]["StringEquals"]["sts:ExternalId"],
            "crossaccount:dev:uid-signin"
        );
        assert_eq!(
            granted_principals(&role, SOURCE),
            BTreeSet::from([Principal::User("devTest".into())])
        );
        assert!(world.granted(&Principal::User("devTest".into())).await);

        assert!(
            world.plan(&spec).await.is_empty(),
            "planning against the applied result is empty"
        );
    }

    /// The `GroupGrants` statement of a trust policy, if it has one.
    fn group_statement(trust: &Value) -> Option<Value> {
        trust["Statement"]
            .as_array()?
            .iter()
            .find(|s| s["Sid"] == "GroupGrants")
            .cloned()
    }

    #[tokio::test]
    async fn a_group_is_granted_through_its_policy_and_the_source_accounts_users_then_revoked() {
        let world = World::new();
        world.source.add_group("developers");
        let group = Principal::Group("developers".into());
        let mut spec = seed_spec();
        spec.grants.insert(group.clone());
        spec.grants.insert(Principal::Group("ghosts".into()));
        let (resolved, missing) =
            crate::pipeline::observe::resolve_grants(&world.source, &Default::default(), &spec)
                .await
                .unwrap();
        assert_eq!(missing, [Principal::Group("ghosts".into())]);
        let writes = world.sync(&resolved).await;
        assert_eq!(
            operations(&writes),
            [
                "CreateRole",
                "AttachRolePolicy",
                "AttachGrantPolicy",
                "AttachGrantPolicy"
            ]
        );
        let role = world.target.role("CrossAccountSignin").unwrap();
        assert_eq!(
            role.tags.get("crossaccount.io/grant/group/developers"),
            Some(&"dev".to_owned())
        );
        // The group's half: its grant policy attached with AttachGroupPolicy.
        let scope = operator().grant_scope();
        assert_eq!(
            grants::is_attached(&world.source, &group, &scope)
                .await
                .unwrap(),
            Some(true)
        );
        // The trust half: the user by ARN; for the group, the source account's IAM users but the
        // operator (a group cannot be named), which IAM accepted.
        assert_eq!(
            group_statement(&role.trust_policy),
            Some(json!({
                "Sid": "GroupGrants",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "ArnLike": {"aws:PrincipalArn": "arn:aws:iam::123456789012:user/*"},
                    "ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::123456789012:user/cross-account-operator"},
                },
            }))
        );
        assert!(!role.trust_policy.to_string().contains(":group/"));
        assert!(world.granted(&Principal::User("devTest".into())).await);
        assert_eq!(
            granted_principals(&role, SOURCE),
            BTreeSet::from([Principal::User("devTest".into()), group.clone()])
        );
        assert!(world.plan(&resolved).await.is_empty(), "in sync");

        // Removed from the spec: the tag and the account's trust go; the user's grant stays.
        let writes = world.sync(&seed_spec()).await;
        assert_eq!(operations(&writes), ["UpdateAssumeRolePolicy", "UntagRole"]);
        let role = world.target.role("CrossAccountSignin").unwrap();
        assert_eq!(group_statement(&role.trust_policy), None);
        assert!(
            !role
                .tags
                .contains_key("crossaccount.io/grant/group/developers")
        );
        assert!(world.granted(&Principal::User("devTest".into())).await);
    }

    #[tokio::test]
    async fn iam_refuses_a_group_in_a_trust_policy() {
        // Why a group is never named there: the fake answers as IAM does.
        let world = World::new();
        let mut trust = desired_role(&seed_spec(), &owner(), &operator(), TARGET)
            .unwrap()
            .trust_policy;
        trust["Statement"][1]["Principal"]["AWS"] =
            json!("arn:aws:iam::123456789012:group/developers");
        let error = crate::aws::AccountApi::apply(
            &world.target,
            &Change::CreateRole {
                role: "Grouped".into(),
                path: "/".into(),
                trust_policy: trust,
                description: None,
                max_session_duration: None,
                permissions_boundary: None,
                tags: BTreeMap::new(),
            },
        )
        .await
        .unwrap_err();
        assert!(error.is_invalid_principal(), "{error:?}");
    }

    #[tokio::test]
    async fn updates_make_only_the_needed_writes() {
        let world = World::new();
        let mut spec = seed_spec();
        spec.inline_policies.insert(
            "read".into(),
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}),
        );
        world.sync(&spec).await;

        spec.managed_policies = BTreeSet::from([EC2_READ.to_owned()]);
        spec.inline_policies.insert(
            "read".into(),
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}),
        );
        let writes = world.sync(&spec).await;
        assert_eq!(
            operations(&writes),
            ["AttachRolePolicy", "PutRolePolicy", "DetachRolePolicy"]
        );
        assert!(world.plan(&spec).await.is_empty());

        spec.grants = BTreeSet::from([Principal::Role("ci".into())]);
        spec.tags.insert("team".into(), "a".into());
        spec.description = Some("reads S3".into());
        let writes = world.sync(&spec).await;
        assert_eq!(
            operations(&writes),
            [
                "UpdateAssumeRolePolicy",
                "UpdateRole",
                "TagRole",
                "UntagRole",
                "AttachGrantPolicy"
            ]
        );
        assert!(!world.granted(&Principal::User("devTest".into())).await);
        assert!(world.granted(&Principal::Role("ci".into())).await);
        assert!(world.plan(&spec).await.is_empty());
    }

    #[tokio::test]
    async fn drift_is_corrected_with_minimal_writes() {
        let world = World::new();
        let spec = seed_spec();
        world.sync(&spec).await;
        world.target.edit_role("CrossAccountSignin", |r| {
            r.managed_policies.clear();
            r.managed_policies.insert("arn:aws:iam::aws:policy/AdministratorAccess".into());
            r.trust_policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
            r.tags.insert("extra".into(), "x".into());
        });
        let writes = world.sync(&spec).await;
        assert_eq!(
            operations(&writes),
            [
                "UpdateAssumeRolePolicy",
                "UntagRole",
                "AttachRolePolicy",
                "DetachRolePolicy"
            ]
        );
        assert!(world.plan(&spec).await.is_empty());
    }

    #[tokio::test]
    async fn semantically_equal_documents_cause_no_write() {
        let world = World::new();
        let spec = seed_spec();
        world.sync(&spec).await;
        // What IAM might hand back: statements reordered, single values as lists, keys reordered.
        world.target.edit_role("CrossAccountSignin", |r| {
            let mut doc = r.trust_policy.clone();
            let statements = doc["Statement"].as_array_mut().unwrap();
            statements.reverse();
            for s in statements.iter_mut() {
                if s["Action"].is_string() {
                    s["Action"] = json!([s["Action"].clone()]);
                }
            }
            r.trust_policy =
                serde_json::from_str(&serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        });
        assert!(world.plan(&spec).await.is_empty());
    }

    #[tokio::test]
    async fn delete_removes_everything_and_tolerates_what_is_gone() {
        let world = World::new();
        let mut spec = seed_spec();
        spec.inline_policies.insert(
            "p".into(),
            json!({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}),
        );
        world.sync(&spec).await;
        let role = world.target.role("CrossAccountSignin").unwrap();
        let (applied, result) = delete_role(
            &world.target,
            &world.source,
            "CrossAccountSignin",
            Some(&role),
            &BTreeSet::new(),
            &owner(),
        )
        .await;
        result.unwrap();
        assert_eq!(
            operations(&applied),
            ["DetachRolePolicy", "DeleteRolePolicy", "DeleteRole"]
        );
        assert!(world.target.role("CrossAccountSignin").is_none());
        // Again, with everything gone (and a grant named by the spec that no longer exists).
        let (applied, result) = delete_role(
            &world.target,
            &world.source,
            "CrossAccountSignin",
            None,
            &spec.grants,
            &owner(),
        )
        .await;
        result.unwrap();
        assert!(applied.is_empty());
    }

    #[tokio::test]
    async fn an_earlier_versions_inline_grant_goes_only_once_the_new_grant_is_in_place() {
        let world = World::new();
        let spec = seed_spec();
        world.sync(&spec).await;
        // The role as an earlier version left it: the grant in an inline policy on the user, no
        // grant tag, no grant policy.
        let user = Principal::User("devTest".into());
        world.source.detach_all(&user);
        world.target.edit_role("CrossAccountSignin", |r| {
            r.tags.remove(&GrantScope::tag_key(&user));
        });
        let arn = world.target.role("CrossAccountSignin").unwrap().arn;
        world.source.edit_principal_policies(|policies| {
            policies.insert(
                (user.clone(), owner().grant_policy_name()),
                json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": arn}]}),
            );
        });
        let writes = world.sync(&spec).await;
        assert_eq!(
            operations(&writes),
            ["TagRole", "AttachGrantPolicy", "DeleteUserPolicy"],
            "the inline grant is deleted last, after the new grant is complete"
        );
        assert!(world.granted(&user).await);
        assert!(
            world
                .source
                .principal_policy(&user, &owner().grant_policy_name())
                .is_none()
        );
        assert!(world.plan(&spec).await.is_empty());
    }

    #[tokio::test]
    async fn granted_principals_are_trusted_by_their_real_arn_and_missing_ones_are_left_out() {
        let world = World::new();
        world.source.add_user_at("pathed", "/team/");
        let mut spec = seed_spec();
        spec.grants = BTreeSet::from([
            Principal::User("pathed".into()),
            Principal::User("ghost".into()),
        ]);
        let (resolved, missing) =
            crate::pipeline::observe::resolve_grants(&world.source, &Default::default(), &spec)
                .await
                .unwrap();
        assert_eq!(missing, [Principal::User("ghost".into())]);
        let desired = desired_role(&resolved, &owner(), &operator(), TARGET).unwrap();
        let trust = desired.trust_policy.to_string();
        assert!(
            trust.contains("arn:aws:iam::123456789012:user/team/pathed"),
            "{trust}"
        );
        assert!(!trust.contains("ghost"), "{trust}");
        assert_eq!(
            desired.grants,
            BTreeSet::from([Principal::User("pathed".into())])
        );
    }

    #[tokio::test]
    async fn a_deleted_principals_grant_is_revoked_and_the_rest_still_applies() {
        let world = World::new();
        let spec = seed_spec();
        world.sync(&spec).await;
        let user = Principal::User("devTest".into());
        world.source.remove_principal(&user);
        // IAM shows a deleted principal's unique ID in the trust policy.
        world.target.edit_role("CrossAccountSignin", |r| {
            r.trust_policy["Statement"][1]["Principal"]["AWS"] = json!("AIDAEXAMPLEDELETED00");
        });
        let mut wanted = seed_spec();
        wanted.tags.insert("team".into(), "a".into());
        let (resolved, missing) =
            crate::pipeline::observe::resolve_grants(&world.source, &Default::default(), &wanted)
                .await
                .unwrap();
        assert_eq!(missing, std::slice::from_ref(&user));
        let desired = desired_role(&resolved, &owner(), &operator(), TARGET).unwrap();
        let observed = observe(
            &world.target,
            &world.source,
            &desired,
            SOURCE,
            &Default::default(),
            &Default::default(),
        )
        .await
        .unwrap();
        let changes = plan_role_changes(&desired, &observed);
        let (_, result) = apply_changes(&world.target, &world.source, &changes).await;
        result.unwrap();
        let role = world.target.role("CrossAccountSignin").unwrap();
        assert!(
            !role.tags.contains_key(&GrantScope::tag_key(&user)),
            "{:?}",
            role.tags
        );
        assert_eq!(role.tags.get("team").map(String::as_str), Some("a"));
        assert!(
            !role.trust_policy.to_string().contains("AIDA"),
            "{}",
            role.trust_policy
        );
    }

    #[tokio::test]
    async fn what_others_own_on_the_role_is_left_alone() {
        let world = World::new();
        let mut spec = seed_spec();
        spec.coexistence = Coexistence {
            ignored_tag_keys: vec!["cost-*".into()],
            protected_inline_policies: vec!["break-glass".into()],
        };
        world.sync(&spec).await;
        world.target.edit_role("CrossAccountSignin", |r| {
            r.tags.insert("cost-center".into(), "42".into());
            r.tags
                .insert("aws:cloudformation:stack-name".into(), "s".into());
            r.tags.insert("other".into(), "x".into());
            r.inline_policies
                .insert("break-glass".into(), inline_document(0));
            r.inline_policies.insert(
                REVOKE_SESSIONS_POLICY.into(),
                revoke_sessions_policy(jiff::Timestamp::UNIX_EPOCH),
            );
            r.inline_policies.insert("stray".into(), inline_document(1));
        });
        let changes = world.plan(&spec).await;
        assert_eq!(
            changes,
            [
                Change::UntagRole {
                    role: "CrossAccountSignin".into(),
                    keys: vec!["other".into()],
                },
                Change::DeleteInlinePolicy {
                    role: "CrossAccountSignin".into(),
                    name: "stray".into(),
                },
            ],
            "only what is neither ignored nor protected goes"
        );
    }

    #[tokio::test]
    async fn a_revocation_is_written_once_and_never_moved_earlier() {
        let world = World::new();
        let mut spec = seed_spec();
        world.sync(&spec).await;
        let at = |s: i64| jiff::Timestamp::from_second(1_800_000_000 + s).unwrap();
        spec.revoke_sessions = Some(crate::pipeline::validate::RevokeSessions {
            before: at(100),
            requested_by: Some("kubectl-annotate".into()),
        });
        let writes = world.sync(&spec).await;
        assert_eq!(operations(&writes), ["PutRolePolicy"]);
        let role = world.target.role("CrossAccountSignin").unwrap();
        assert_eq!(
            super::super::desired::sessions_revoked_before(&role),
            Some(at(100))
        );
        assert!(world.plan(&spec).await.is_empty(), "written once");
        // The console revokes later still: the annotation's earlier time does not undo it.
        world.target.edit_role("CrossAccountSignin", |r| {
            r.inline_policies.insert(
                REVOKE_SESSIONS_POLICY.into(),
                revoke_sessions_policy(at(500)),
            );
        });
        assert!(world.plan(&spec).await.is_empty());
        // A revocation only takes away: it is made for a refused spec too.
        spec.revoke_sessions.as_mut().unwrap().before = at(900);
        assert!(world.plan(&spec).await.iter().all(narrows));
    }

    #[tokio::test]
    async fn a_failure_stops_no_independent_change_but_every_removal() {
        let world = World::new();
        let mut spec = seed_spec();
        world.sync(&spec).await;
        // The new policy fails to attach (throttled); the tag and the description come before
        // it, the inline policy and the detach of the old policy after it.
        spec.managed_policies = BTreeSet::from([EC2_READ.to_owned()]);
        spec.tags.insert("team".into(), "a".into());
        spec.inline_policies
            .insert("read".into(), inline_document(0));
        let changes = world.plan(&spec).await;
        assert_eq!(
            operations(&changes),
            [
                "TagRole",
                "AttachRolePolicy",
                "PutRolePolicy",
                "DetachRolePolicy"
            ]
        );
        world.target.fail_next("AttachRolePolicy");
        let (applied, result) = apply_changes(&world.target, &world.source, &changes).await;
        assert!(result.is_err());
        assert_eq!(
            operations(&applied),
            ["TagRole", "PutRolePolicy"],
            "what does not depend on the failure is made; the old policy is not taken away"
        );
    }

    #[tokio::test]
    async fn a_grant_whose_trust_record_was_lost_is_still_revoked() {
        let world = World::new();
        let spec = seed_spec();
        world.sync(&spec).await;
        // The trust policy rewritten by hand: its Grants statement is gone, the tag is not.
        world.target.edit_role("CrossAccountSignin", |r| {
            r.trust_policy = json!({"Version": "2012-10-17", "Statement": [r.trust_policy["Statement"][0].clone()]});
        });
        let mut without = seed_spec();
        without.grants.clear();
        world.sync(&without).await;
        let role = world.target.role("CrossAccountSignin").unwrap();
        assert!(
            !role
                .tags
                .contains_key(&GrantScope::tag_key(&Principal::User("devTest".into()))),
            "the grant tag is removed: {:?}",
            role.tags
        );
    }

    #[tokio::test]
    async fn adoption_tags_the_role_and_takes_it_over() {
        let world = World::new();
        let spec = seed_spec();
        world.sync(&spec).await;
        world
            .target
            .edit_role("CrossAccountSignin", |r| r.tags.clear());
        let writes = world.sync(&spec).await;
        assert_eq!(operations(&writes), ["TagRole"]);
        let claim = Claim {
            owner: &owner(),
            adopt: false,
            protected: &[],
            role_path: "/",
            boundary: None,
        };
        assert_eq!(
            ownership(world.target.role("CrossAccountSignin").as_ref(), &claim),
            Ownership::Owned,
            "tagged again, and its trust carries our external ID"
        );
    }

    #[tokio::test]
    async fn a_refused_spec_only_takes_away_from_its_role() {
        let world = World::new();
        let mut spec = seed_spec();
        spec.managed_policies.insert(EC2_READ.to_owned());
        spec.trust_principals
            .insert(format!("arn:aws:iam::{SOURCE}:role/ci"));
        world.sync(&spec).await;
        // The account narrows: EC2 and the ci principal are no longer allowed, and the spec adds
        // something new at the same time.
        let mut permitted = seed_spec();
        permitted
            .managed_policies
            .insert("arn:aws:iam::aws:policy/IAMReadOnlyAccess".into());
        let desired = desired_role(&permitted, &owner(), &operator(), TARGET).unwrap();
        let observed = observe(
            &world.target,
            &world.source,
            &desired,
            SOURCE,
            &Default::default(),
            &Default::default(),
        )
        .await
        .unwrap();
        let current = observed.role.clone().unwrap();
        let within = within(&desired, &current, &observed, &permitted, &operator());
        let changes: Vec<Change> = plan_role_changes(&within, &observed)
            .into_iter()
            .filter(narrows)
            .collect();
        assert_eq!(
            operations(&changes),
            ["UpdateAssumeRolePolicy", "DetachRolePolicy"]
        );
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, Change::AttachPolicy { .. })),
            "nothing is added while refused"
        );
    }

    #[tokio::test]
    async fn a_group_no_longer_allowed_loses_its_tag_and_the_accounts_trust_while_refused() {
        let world = World::new();
        world.source.add_group("developers");
        let mut spec = seed_spec();
        spec.grants.insert(Principal::Group("developers".into()));
        world.sync(&spec).await;
        let world = &world;
        let narrowed = |permitted: ValidatedSpec| async move {
            let desired = desired_role(&permitted, &owner(), &operator(), TARGET).unwrap();
            let observed = observe(
                &world.target,
                &world.source,
                &desired,
                SOURCE,
                &Default::default(),
                &Default::default(),
            )
            .await
            .unwrap();
            let current = observed.role.clone().unwrap();
            let within = within(&desired, &current, &observed, &permitted, &operator());
            plan_role_changes(&within, &observed)
                .into_iter()
                .filter(narrows)
                .collect::<Vec<_>>()
        };
        // Still allowed: nothing to take away.
        assert!(narrowed(spec.clone()).await.is_empty());
        // The account no longer allows the group: its grant goes, the user's stays.
        let changes = narrowed(seed_spec()).await;
        assert_eq!(
            operations(&changes),
            ["UpdateAssumeRolePolicy", "UntagRole"]
        );
        let (_, result) = apply_changes(&world.target, &world.source, &changes).await;
        result.unwrap();
        let role = world.target.role("CrossAccountSignin").unwrap();
        assert_eq!(group_statement(&role.trust_policy), None);
        assert!(
            !role
                .tags
                .contains_key("crossaccount.io/grant/group/developers")
        );
        assert!(world.granted(&Principal::User("devTest".into())).await);
    }

    // ----- property tests: plans converge and are idempotent -----

    use proptest::prelude::*;

    const MANAGED: &[&str] = &[
        S3_READ,
        EC2_READ,
        "arn:aws:iam::aws:policy/IAMReadOnlyAccess",
        "arn:aws:iam::111111111111:policy/team/Custom",
    ];
    const PRINCIPAL_ARNS: &[&str] = &[
        "arn:aws:iam::123456789012:user/alice",
        "arn:aws:iam::123456789012:role/ci",
        "arn:aws:iam::222222222222:root",
    ];
    const BOUNDARIES: &[&str] = &[
        "arn:aws:iam::aws:policy/PowerUserAccess",
        "arn:aws:iam::111111111111:policy/Boundary",
    ];

    fn inline_document(n: usize) -> Value {
        let actions = [
            json!("s3:GetObject"),
            json!(["logs:GetLogEvents", "logs:FilterLogEvents"]),
            json!("sqs:*"),
        ];
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions[n % 3], "Resource": "*"}]})
    }

    fn principal() -> impl Strategy<Value = Principal> {
        prop_oneof![
            prop::sample::select(&["devTest", "alice"][..]).prop_map(|u| Principal::User(u.into())),
            prop::sample::select(&["ci", "deployer"][..]).prop_map(|r| Principal::Role(r.into())),
        ]
    }

    /// Validated specs for the role `CrossAccountSignin` (the name and path cannot change for a
    /// CR: both are immutable or come from the AwsAccount).
    fn spec() -> impl Strategy<Value = ValidatedSpec> {
        (
            prop::option::of(prop::sample::select(&["reads S3", "x"][..])),
            prop::option::of(prop::sample::select(&[3600, 7200, 43200][..])),
            prop::collection::btree_set(prop::sample::select(MANAGED), 0..=3),
            prop::collection::btree_map(
                prop::sample::select(&["a", "b", "c"][..]),
                0usize..3,
                0..=3,
            ),
            prop::collection::btree_set(prop::sample::select(PRINCIPAL_ARNS), 0..=2),
            prop::collection::btree_set(principal(), 0..=3),
            prop::collection::btree_map(
                prop::sample::select(&["team", "env", "cost"][..]),
                prop::sample::select(&["a", "b"][..]),
                0..=2,
            ),
            prop::option::of(prop::sample::select(BOUNDARIES)),
        )
            .prop_map(
                |(description, max, managed, inline, trusted, grants, tags, boundary)| {
                    ValidatedSpec {
                        role_name: "CrossAccountSignin".into(),
                        role_path: "/".into(),
                        description: description.map(str::to_owned),
                        max_session_duration: max,
                        managed_policies: managed.into_iter().map(str::to_owned).collect(),
                        inline_policies: inline
                            .into_iter()
                            .map(|(k, n)| (k.to_owned(), inline_document(n)))
                            .collect(),
                        trust_principals: trusted.into_iter().map(str::to_owned).collect(),
                        grants,
                        tags: tags
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                        permissions_boundary: boundary.map(str::to_owned),
                        trust_external_id: None,
                        adopt: false,
                        ..ValidatedSpec::default()
                    }
                },
            )
    }

    /// Changes made behind the operator's back (by people with AWS access), each optional. The
    /// ownership tags stay: without them the role is not the operator's to fix.
    #[derive(Clone, Debug)]
    struct Drift {
        attach_admin: bool,
        detach_all: bool,
        open_trust: bool,
        reshape_trust: bool,
        drop_boundary: bool,
        swap_boundary: bool,
        extra_tag: bool,
        change_tag: bool,
        description: Option<Option<String>>,
        max_session: Option<i32>,
        drop_inline: bool,
        foreign_inline: bool,
        drop_grant: bool,
        edit_grant: bool,
    }

    fn drift() -> impl Strategy<Value = Drift> {
        (
            prop::array::uniform8(any::<bool>()),
            prop::array::uniform4(any::<bool>()),
            prop::option::of(prop::option::of(prop::sample::select(&["edited", ""][..]))),
            prop::option::of(prop::sample::select(&[3600, 10800][..])),
        )
            .prop_map(|(a, b, description, max_session)| Drift {
                attach_admin: a[0],
                detach_all: a[1],
                open_trust: a[2],
                reshape_trust: a[3],
                drop_boundary: a[4],
                swap_boundary: a[5],
                extra_tag: a[6],
                change_tag: a[7],
                description: description.map(|d| d.map(str::to_owned)),
                max_session,
                drop_inline: b[0],
                foreign_inline: b[1],
                drop_grant: b[2],
                edit_grant: b[3],
            })
    }

    fn apply_drift(world: &World, drift: &Drift) {
        let Some(_) = world.target.role("CrossAccountSignin") else {
            return;
        };
        world.target.edit_role("CrossAccountSignin", |r| {
            if drift.detach_all {
                r.managed_policies.clear();
            }
            if drift.attach_admin {
                r.managed_policies
                    .insert("arn:aws:iam::aws:policy/AdministratorAccess".into());
            }
            if drift.reshape_trust {
                let mut doc = r.trust_policy.clone();
                if let Some(statements) = doc["Statement"].as_array_mut() {
                    statements.reverse();
                }
                r.trust_policy = doc;
            }
            if drift.open_trust {
                r.trust_policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
            }
            if drift.drop_boundary {
                r.permissions_boundary = None;
            }
            if drift.swap_boundary {
                r.permissions_boundary = Some("arn:aws:iam::aws:policy/AdministratorAccess".into());
            }
            if drift.extra_tag {
                r.tags.insert("added-by-hand".into(), "x".into());
            }
            if drift.change_tag
                && let Some(value) = r.tags.get_mut("team")
            {
                value.push('!');
            }
            if let Some(description) = &drift.description {
                r.description = description.clone().filter(|d| !d.is_empty());
            }
            if let Some(max) = drift.max_session {
                r.max_session_duration = max;
            }
            if drift.drop_inline {
                r.inline_policies.remove("a");
            }
            if drift.foreign_inline {
                r.inline_policies.insert("foreign".into(), inline_document(2));
            }
        });
    }

    /// Drift of the grants, behind the operator's back: devTest's grant policy detached, or the
    /// role's grant tag for it removed.
    fn apply_grant_drift(world: &World, drift: &Drift) {
        let user = Principal::User("devTest".into());
        if drift.drop_grant {
            world.source.detach_all(&user);
        }
        if drift.edit_grant && world.target.role("CrossAccountSignin").is_some() {
            world.target.edit_role("CrossAccountSignin", |r| {
                r.tags.remove(&GrantScope::tag_key(&user));
            });
        }
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// From any earlier spec, after any drift, one plan brings AWS to the new spec: planning
        /// again finds nothing to do.
        #[test]
        fn one_plan_converges_from_any_state(
            earlier in prop::option::of(spec()),
            drift in drift(),
            wanted in spec(),
        ) {
            block_on(async {
                let world = World::new();
                if let Some(earlier) = &earlier {
                    world.sync(earlier).await;
                }
                apply_drift(&world, &drift);
                apply_grant_drift(&world, &drift);
                world.sync(&wanted).await;
                let again = world.plan(&wanted).await;
                prop_assert!(again.is_empty(), "still planned after one sync: {:?}", operations(&again));
                // Nothing observable differs from what was wanted.
                let desired = desired_role(&wanted, &owner(), &operator(), TARGET).unwrap();
                let role = world.target.role("CrossAccountSignin").unwrap();
                prop_assert_eq!(&role.managed_policies, &desired.managed_policies);
                prop_assert_eq!(&role.tags, &desired.tags);
                prop_assert_eq!(&role.permissions_boundary, &desired.permissions_boundary);
                prop_assert!(policy::equivalent(&role.trust_policy, &desired.trust_policy));
                prop_assert_eq!(
                    role.inline_policies.keys().collect::<Vec<_>>(),
                    desired.inline_policies.keys().collect::<Vec<_>>()
                );
                // Exactly the wanted principals may assume the role.
                for principal in [Principal::User("devTest".into()), Principal::User("alice".into()), Principal::Role("ci".into()), Principal::Role("deployer".into())] {
                    prop_assert_eq!(world.granted(&principal).await, wanted.grants.contains(&principal), "{:?}", principal);
                }
                Ok(())
            })?;
        }

        /// An observed state equal to the desired one, in any of IAM's spellings (statements in
        /// any order, one-element lists as scalars, principals reordered, account roots as IDs or
        /// ARNs, documents URL-encoded as IAM returns them), plans nothing.
        #[test]
        fn a_state_equal_to_the_desired_one_plans_nothing(wanted in spec(), seed in any::<u64>()) {
            let desired = desired_role(&wanted, &owner(), &operator(), TARGET).unwrap();
            let mut rng = Spelling(seed);
            let observed = Observed {
                role: Some(ObservedRole {
                    arn: desired.arn.clone(),
                    path: desired.path.clone(),
                    description: desired.description.clone(),
                    max_session_duration: desired.max_session_duration,
                    trust_policy: rng.as_iam_returns(&desired.trust_policy),
                    permissions_boundary: desired.permissions_boundary.clone(),
                    tags: desired.tags.clone(),
                    managed_policies: desired.managed_policies.clone(),
                    inline_policies: desired
                        .inline_policies
                        .iter()
                        .map(|(name, doc)| (name.clone(), rng.as_iam_returns(doc)))
                        .collect(),
                    created: None,
                }),
                grants: desired
                    .grants
                    .iter()
                    .map(|p| (p.clone(), GrantState { attached: true, legacy: false }))
                    .collect(),
                previously_granted: desired.grants.clone(),
            };
            let changes = plan_role_changes(&desired, &observed);
            prop_assert!(changes.is_empty(), "{:?}", operations(&changes));
        }
    }

    /// Rewrites documents into other spellings IAM may hand back, driven by a seed.
    struct Spelling(u64);

    impl Spelling {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }

        fn shuffle(&mut self, items: &mut [Value]) {
            for i in (1..items.len()).rev() {
                let j = (self.next() % (i as u64 + 1)) as usize;
                items.swap(i, j);
            }
        }

        /// A one-element list as a scalar or a scalar as a one-element list, half of the time;
        /// longer lists shuffled.
        fn respell_list(&mut self, value: &mut Value) {
            match value {
                Value::Array(items) if items.len() == 1 && self.coin() => {
                    *value = items.pop().unwrap();
                }
                Value::Array(items) => self.shuffle(items),
                scalar @ Value::String(_) if self.coin() => {
                    *scalar = Value::Array(vec![scalar.clone()]);
                }
                _ => {}
            }
        }

        /// An account root ARN as the bare account ID, half of the time.
        fn respell_principal(&mut self, id: &mut Value) {
            let account = id
                .as_str()
                .and_then(|t| t.strip_prefix("arn:aws:iam::"))
                .and_then(|t| t.strip_suffix(":root"))
                .map(str::to_owned);
            if let Some(account) = account.filter(|_| self.coin()) {
                *id = Value::String(account);
            }
        }

        fn as_iam_returns(&mut self, document: &Value) -> Value {
            let mut doc = document.clone();
            if let Some(statements) = doc["Statement"].as_array_mut() {
                self.shuffle(statements);
                for statement in statements.iter_mut() {
                    for key in ["Action", "Resource"] {
                        if let Some(value) = statement.get_mut(key) {
                            self.respell_list(value);
                        }
                    }
                    if let Some(ids) = statement.pointer_mut("/Principal/AWS") {
                        if let Value::Array(list) = ids {
                            for id in list.iter_mut() {
                                self.respell_principal(id);
                            }
                        }
                        self.respell_list(ids);
                    }
                }
            }
            let encoded = percent_encoding::utf8_percent_encode(
                &policy::to_text(&doc),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string();
            policy::parse_observed(&encoded)
        }
    }
}
