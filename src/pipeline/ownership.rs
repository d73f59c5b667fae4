//! Step 4 (pure): whether the operator may manage the role it observed for this object. A role
//! that is not ours is never written to.
//!
//! Tags are evidence, not proof: anyone with `iam:TagRole` can write them. So a role is ours only
//! when it carries this object's ownership tags *and* facts a tag writer cannot also produce say
//! so: the operator's trust statement carries this object's external ID (which only the operator
//! writes, with `iam:UpdateAssumeRolePolicy`, in the CreateRole that makes the role). Nothing
//! else counts, a creation date included: a tenant can keep a refused object waiting for a role
//! an admin will create and tag that role once it exists, so a role younger than the object proves
//! nothing. A role whose operator statement is gone (removed by hand, or by `Retain`) is let go.
//! A role of another object's external ID, a role outside the account's role path, and any
//! AwsAccount's management role (or the operator's own) are never ours. Messages name no other
//! tenant.

use super::desired::operator_external_ids;
use crate::{aws::ObservedRole, naming::Owner};

/// Whether the operator may manage an existing role for this owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// No role yet, or the role is this object's.
    Owned,
    /// The role has no ownership tags and the CR asks to adopt it (where the account allows).
    Adopt,
    /// Not this object's: hands off.
    Foreign(String),
}

/// What the decision needs besides the role.
pub(crate) struct Claim<'a> {
    pub owner: &'a Owner,
    /// The CR asks to adopt an untagged role (validation checked the account allows it).
    pub adopt: bool,
    /// Roles no object may manage: every AwsAccount's management role, the operator's own.
    pub protected: &'a [String],
    /// The AwsAccount's role path (every managed role is there).
    pub role_path: &'a str,
    /// The permissions boundary the AwsAccount sets, if any.
    pub boundary: Option<&'a str>,
}

/// Decides [`Ownership`] of `role` for `claim`.
pub(crate) fn ownership(role: Option<&ObservedRole>, claim: &Claim<'_>) -> Ownership {
    let Some(role) = role else {
        return Ownership::Owned;
    };
    let arn = &role.arn;
    if claim
        .protected
        .iter()
        .any(|p| p.eq_ignore_ascii_case(arn) || same_role_name(p, arn))
    {
        return Ownership::Foreign(format!(
            "role {arn} is an AwsAccount's management role or the operator's own; the operator never manages it"
        ));
    }
    if role.path != claim.role_path {
        return Ownership::Foreign(format!(
            "role {arn} is outside the AwsAccount's role path {}; the operator manages only roles there",
            claim.role_path
        ));
    }
    let wanted = claim.owner.tags();
    let tagged_for_us = wanted.iter().all(|(k, v)| role.tags.get(k) == Some(v));
    let tagged = wanted.keys().any(|k| role.tags.contains_key(k));
    if tagged_for_us {
        let ids = operator_external_ids(&role.trust_policy);
        let ours = [claim.owner.external_id(), claim.owner.legacy_external_id()];
        if ids.iter().any(|id| ours.contains(id)) {
            return Ownership::Owned;
        }
        if !ids.is_empty() {
            return Ownership::Foreign(format!(
                "role {arn} is managed for another CrossAccountRole (its trust policy requires another object's external ID)"
            ));
        }
        // The operator's statement is gone: tags alone prove nothing.
        return Ownership::Foreign(format!(
            "role {arn} carries this object's ownership tags but its trust policy has no operator statement for this object (removed by hand, or the role was retained); tags alone do not prove ownership: restore the statement, or remove the crossaccount.io ownership tags and annotate the CrossAccountRole with crossaccount.io/adopt: \"true\" where the AwsAccount allows adoption"
        ));
    }
    if tagged {
        return Ownership::Foreign(format!(
            "role {arn} is managed for another CrossAccountRole"
        ));
    }
    if !claim.adopt {
        return Ownership::Foreign(format!(
            "role {arn} exists without this operator's ownership tags; annotate the CrossAccountRole with crossaccount.io/adopt: \"true\" to take it over"
        ));
    }
    match (&role.permissions_boundary, claim.boundary) {
        (Some(theirs), ours) if Some(theirs.as_str()) != ours => Ownership::Foreign(format!(
            "role {arn} has a permissions boundary the AwsAccount does not set ({theirs}); adopting it would remove it"
        )),
        _ => Ownership::Adopt,
    }
}

/// IAM role names are unique regardless of case; two ARNs of one account naming the same role
/// (at any path) are one role.
fn same_role_name(a: &str, b: &str) -> bool {
    let name = |arn: &str| {
        let (account, resource) = arn.split(":iam::").nth(1)?.split_once(':')?;
        let name = resource.strip_prefix("role/")?.rsplit('/').next()?;
        Some((account.to_owned(), name.to_ascii_lowercase()))
    };
    matches!((name(a), name(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn owner(namespace: &str) -> Owner {
        Owner {
            cluster: "dev".into(),
            namespace: namespace.into(),
            name: "signin".into(),
            uid: format!("uid-{namespace}"),
        }
    }

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    const ARN: &str = "arn:aws:iam::111111111111:role/r";

    /// A role made by the operator for `owner` at `created`.
    fn role_of(owner: &Owner, created: i64) -> ObservedRole {
        ObservedRole {
            arn: ARN.into(),
            path: "/".into(),
            tags: owner.tags(),
            trust_policy: json!({"Statement": [{"Sid": "CrossAccountOperator", "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:user/op"}, "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": owner.external_id()}}}]}),
            created: Some(at(created)),
            ..ObservedRole::default()
        }
    }

    fn claim<'a>(owner: &'a Owner, adopt: bool, protected: &'a [String]) -> Claim<'a> {
        Claim {
            owner,
            adopt,
            protected,
            role_path: "/",
            boundary: None,
        }
    }

    #[test]
    fn a_missing_role_or_our_own_is_ours() {
        let me = owner("a");
        assert_eq!(ownership(None, &claim(&me, false, &[])), Ownership::Owned);
        let mut role = role_of(&me, 150);
        role.tags.insert("team".into(), "x".into());
        assert_eq!(
            ownership(Some(&role), &claim(&me, false, &[])),
            Ownership::Owned
        );
    }

    #[test]
    fn forged_tags_on_an_older_role_do_not_make_it_ours() {
        let me = owner("a");
        // Someone with iam:TagRole put our tags on a role that existed before our object and
        // trusts the operator for nobody (or for its own object).
        let mut forged = role_of(&owner("victim"), 10);
        forged.tags = me.tags();
        let decision = ownership(Some(&forged), &claim(&me, true, &[]));
        assert!(
            matches!(&decision, Ownership::Foreign(m) if m.contains("another") && !m.contains("victim")),
            "{decision:?}"
        );
        forged.trust_policy = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
        let decision = ownership(Some(&forged), &claim(&me, true, &[]));
        assert!(
            matches!(&decision, Ownership::Foreign(m) if m.contains("no operator statement")),
            "{decision:?}"
        );
    }

    #[test]
    fn forged_tags_on_a_role_younger_than_the_object_do_not_make_it_ours() {
        let me = owner("a");
        // A tenant kept a refused object waiting for a role an admin would create, then tagged
        // the new role for it: younger than the object, but the operator never made it.
        for created in [90, 100, 101, 10_000] {
            let mut forged = role_of(&me, created);
            forged.trust_policy = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111111111111:root"}, "Action": "sts:AssumeRole"}]});
            let decision = ownership(Some(&forged), &claim(&me, false, &[]));
            assert!(
                matches!(&decision, Ownership::Foreign(m) if m.contains("no operator statement")),
                "created at {created}: {decision:?}"
            );
        }
    }

    #[test]
    fn our_role_whose_operator_statement_was_removed_is_let_go() {
        let me = owner("a");
        let mut role = role_of(&me, 150);
        role.trust_policy = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
        let decision = ownership(Some(&role), &claim(&me, false, &[]));
        assert!(
            matches!(&decision, Ownership::Foreign(m) if m.contains("restore the statement")),
            "{decision:?}"
        );
    }

    #[test]
    fn a_role_made_before_the_upgrade_is_recognised_by_its_old_external_id() {
        let me = owner("a");
        let mut role = role_of(&me, 10);
        role.trust_policy["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"] =
            json!(me.legacy_external_id());
        assert_eq!(
            ownership(Some(&role), &claim(&me, false, &[])),
            Ownership::Owned
        );
    }

    #[test]
    fn management_roles_and_roles_outside_the_path_are_never_ours() {
        let me = owner("a");
        let role = role_of(&me, 150);
        let protected = vec!["arn:aws:iam::111111111111:role/admin/R".to_owned()];
        let decision = ownership(Some(&role), &claim(&me, true, &protected));
        assert!(
            matches!(&decision, Ownership::Foreign(m) if m.contains("management role")),
            "{decision:?}"
        );
        let mut elsewhere = role_of(&me, 150);
        elsewhere.path = "/other/".into();
        assert!(
            matches!(ownership(Some(&elsewhere), &claim(&me, true, &[])), Ownership::Foreign(m) if m.contains("role path"))
        );
    }

    #[test]
    fn another_objects_role_is_foreign_and_its_owner_is_not_named() {
        let theirs = role_of(&owner("b"), 150);
        for adopt in [false, true] {
            let me = owner("a");
            let decision = ownership(Some(&theirs), &claim(&me, adopt, &[]));
            assert!(
                matches!(&decision, Ownership::Foreign(m) if !m.contains("b/") && !m.contains("uid-b")),
                "{decision:?}"
            );
        }
    }

    #[test]
    fn an_untagged_role_is_adopted_only_when_asked_and_without_a_foreign_boundary() {
        let me = owner("a");
        let untagged = ObservedRole {
            arn: ARN.into(),
            path: "/".into(),
            tags: BTreeMap::new(),
            created: Some(at(10)),
            ..ObservedRole::default()
        };
        assert!(matches!(
            ownership(Some(&untagged), &claim(&me, false, &[])),
            Ownership::Foreign(m) if m.contains("crossaccount.io/adopt")
        ));
        assert_eq!(
            ownership(Some(&untagged), &claim(&me, true, &[])),
            Ownership::Adopt
        );
        let bounded = ObservedRole {
            permissions_boundary: Some("arn:aws:iam::aws:policy/ReadOnlyAccess".into()),
            ..untagged
        };
        assert!(matches!(
            ownership(Some(&bounded), &claim(&me, true, &[])),
            Ownership::Foreign(m) if m.contains("boundary")
        ));
        let mut same = claim(&me, true, &[]);
        same.boundary = Some("arn:aws:iam::aws:policy/ReadOnlyAccess");
        assert_eq!(ownership(Some(&bounded), &same), Ownership::Adopt);
    }
}
