//! Step 4 (pure): whether the operator may manage the role it observed for this object. A role
//! that is not ours is never written to.

use crate::{api::names::tags, aws::ObservedRole, naming::Owner};

/// Whether the operator may manage an existing role for this owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// No role yet, or the role carries this owner's tags.
    Owned,
    /// The role has no ownership tags and the CR asks to adopt it.
    Adopt,
    /// Tagged for another object, or untagged without adoption: hands off.
    Foreign(String),
}

/// Decides [`Ownership`] from the role's tags.
pub(crate) fn ownership(role: Option<&ObservedRole>, owner: &Owner, adopt: bool) -> Ownership {
    let Some(role) = role else {
        return Ownership::Owned;
    };
    let wanted = owner.tags();
    let ours = wanted.iter().all(|(k, v)| role.tags.get(k) == Some(v));
    if ours {
        return Ownership::Owned;
    }
    let tagged = wanted.keys().any(|k| role.tags.contains_key(k));
    match (tagged, adopt) {
        (false, true) => Ownership::Adopt,
        (false, false) => Ownership::Foreign(format!(
            "role {} exists without this operator's ownership tags; annotate the CrossAccountRole with crossaccount.io/adopt: \"true\" to take it over",
            role.arn
        )),
        (true, _) => Ownership::Foreign(format!(
            "role {} belongs to another CrossAccountRole ({}/{} in cluster {})",
            role.arn,
            role.tags.get(tags::NAMESPACE).map_or("?", String::as_str),
            role.tags.get(tags::NAME).map_or("?", String::as_str),
            role.tags.get(tags::CLUSTER).map_or("?", String::as_str),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(namespace: &str) -> Owner {
        Owner {
            cluster: "dev".into(),
            namespace: namespace.into(),
            name: "signin".into(),
        }
    }

    fn role(tags: std::collections::BTreeMap<String, String>) -> ObservedRole {
        ObservedRole {
            arn: "arn:aws:iam::111111111111:role/r".into(),
            tags,
            ..ObservedRole::default()
        }
    }

    #[test]
    fn a_missing_role_or_one_with_our_tags_is_ours() {
        assert_eq!(ownership(None, &owner("a"), false), Ownership::Owned);
        let mut tags = owner("a").tags();
        tags.insert("team".into(), "x".into());
        assert_eq!(
            ownership(Some(&role(tags)), &owner("a"), false),
            Ownership::Owned
        );
    }

    #[test]
    fn another_objects_role_is_foreign_even_with_adoption() {
        let theirs = role(owner("b").tags());
        for adopt in [false, true] {
            assert!(matches!(
                ownership(Some(&theirs), &owner("a"), adopt),
                Ownership::Foreign(m) if m.contains("b/signin")
            ));
        }
    }

    #[test]
    fn an_untagged_role_is_adopted_only_when_asked() {
        let untagged = role(Default::default());
        assert!(matches!(
            ownership(Some(&untagged), &owner("a"), false),
            Ownership::Foreign(m) if m.contains("crossaccount.io/adopt")
        ));
        assert_eq!(
            ownership(Some(&untagged), &owner("a"), true),
            Ownership::Adopt
        );
    }
}
