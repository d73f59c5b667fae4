//! Finalizers. `crossaccount.io/cleanup` on a CrossAccountRole: added only after the first
//! successful read of the target account (before that nothing in AWS can belong to the object, so
//! a CR that never got that far is deleted without waiting for a cleanup), removed once cleanup
//! succeeded. `crossaccount.io/in-use` on an AwsAccount: an account is not deleted while
//! CrossAccountRoles use it (their roles could be neither kept inside its guardrails nor removed).
//!
//! It is added by server-side apply of just that list item (finalizers are a set, so others'
//! entries are untouched and no resourceVersion is needed: a status write a moment earlier, which
//! the cached object does not show yet, does not make it fail), with the object's UID as a
//! precondition. It is removed by a JSON patch that tests the position it removes.

use std::fmt::Debug;

use json_patch::Patch as JsonPatch;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{api::names::FIELD_MANAGER, error::ReconcileError};

/// Whether `object` carries `finalizer`.
pub(crate) fn has_finalizer(object: &impl Resource, finalizer: &str) -> bool {
    object.finalizers().iter().any(|f| f == finalizer)
}

/// The apply body that adds `finalizer`, if it is missing.
pub(crate) fn add_body<K: Resource<DynamicType = ()>>(
    object: &K,
    finalizer: &str,
) -> Option<Value> {
    if has_finalizer(object, finalizer) {
        return None;
    }
    Some(json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": object.name_any(), "uid": object.uid(), "finalizers": [finalizer]},
    }))
}

/// The patch that removes `finalizer`, if present: it fails when the finalizer moved.
pub(crate) fn remove_patch(object: &impl Resource, finalizer: &str) -> Option<JsonPatch> {
    let index = object.finalizers().iter().position(|f| f == finalizer)?;
    Some(
        serde_json::from_value(json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": finalizer},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
        ]))
        .expect("valid JSON patch"),
    )
}

/// Adds `finalizer` unless `object` has it.
pub(crate) async fn ensure<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(body) = add_body(object, finalizer) else {
        return Ok(());
    };
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
    .map_err(ReconcileError::kube("adding the finalizer"))
}

/// Removes `finalizer`; an object already gone is fine.
pub(crate) async fn release<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(patch) = remove_patch(object, finalizer) else {
        return Ok(());
    };
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ReconcileError::kube("removing the finalizer")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CrossAccountRole, CrossAccountRoleSpec, names::FINALIZER};

    fn cr(finalizers: Option<Vec<&str>>) -> CrossAccountRole {
        let spec: CrossAccountRoleSpec =
            serde_json::from_value(json!({"accountRef": "target"})).unwrap();
        let mut cr = CrossAccountRole::new("r", spec);
        cr.metadata.resource_version = Some("42".into());
        cr.metadata.finalizers = finalizers.map(|f| f.into_iter().map(str::to_owned).collect());
        cr
    }

    fn ops(patch: JsonPatch) -> serde_json::Value {
        serde_json::to_value(patch).unwrap()
    }

    #[test]
    fn adding_applies_just_our_item_of_the_set_with_the_uid_as_precondition() {
        let mut other = cr(Some(vec!["other.io/x"]));
        other.metadata.uid = Some("uid-1".into());
        assert_eq!(
            add_body(&other, FINALIZER).unwrap(),
            json!({
                "apiVersion": "crossaccount.io/v1alpha1", "kind": "CrossAccountRole",
                "metadata": {"name": "r", "uid": "uid-1", "finalizers": [FINALIZER]},
            }),
            "the other finalizer is not part of our apply, so it stays"
        );
        assert!(add_body(&cr(Some(vec![FINALIZER])), FINALIZER).is_none());
    }

    #[test]
    fn removing_tests_the_position_it_removes() {
        let patch = remove_patch(&cr(Some(vec!["other.io/x", FINALIZER])), FINALIZER).unwrap();
        assert_eq!(
            ops(patch),
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        assert!(remove_patch(&cr(Some(vec!["other.io/x"])), FINALIZER).is_none());
        assert!(remove_patch(&cr(None), FINALIZER).is_none());
    }
}
