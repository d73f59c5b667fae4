//! Which namespaces the operator works in (`--watch-namespaces`): every namespace, or a list.
//! With a list, CrossAccountRoles and their Secrets are watched, read and written only there, so
//! the operator needs RBAC in those namespaces only (the chart's namespaced mode). AwsAccounts and
//! Namespaces are cluster-scoped: they are watched cluster-wide either way.

use std::collections::BTreeSet;

/// The namespaces of the CrossAccountRoles the operator manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (cluster-wide watches).
    #[default]
    All,
    /// Only these (one watch each); never empty.
    Namespaces(BTreeSet<String>),
}

impl WatchScope {
    /// The scope of `namespaces` as the flag lists them; no namespace means every namespace.
    pub fn new(namespaces: impl IntoIterator<Item = String>) -> Self {
        let namespaces: BTreeSet<String> = namespaces.into_iter().collect();
        if namespaces.is_empty() {
            WatchScope::All
        } else {
            WatchScope::Namespaces(namespaces)
        }
    }

    /// Whether objects in `namespace` are the operator's to manage.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            WatchScope::All => true,
            WatchScope::Namespaces(names) => names.contains(namespace),
        }
    }

    /// The listed namespaces; `None` for every namespace.
    pub fn namespaces(&self) -> Option<&BTreeSet<String>> {
        match self {
            WatchScope::All => None,
            WatchScope::Namespaces(names) => Some(names),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_means_every_namespace() {
        let all = WatchScope::new(Vec::new());
        assert_eq!(all, WatchScope::All);
        assert!(all.contains("anything"));
        assert!(all.namespaces().is_none());
    }

    #[test]
    fn a_list_contains_only_its_namespaces() {
        let scope = WatchScope::new(["b".to_owned(), "a".to_owned(), "a".to_owned()]);
        assert!(scope.contains("a") && scope.contains("b"));
        assert!(!scope.contains("c"));
        let names: Vec<&str> = scope
            .namespaces()
            .unwrap()
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(names, ["a", "b"], "sorted, without repeats");
    }
}
