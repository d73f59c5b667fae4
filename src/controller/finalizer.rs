//! The finalizer `crossaccount.io/cleanup`: added only after the first successful read of the
//! target account (before that nothing in AWS can belong to the object, so a CR that never got
//! that far is deleted without waiting for a cleanup), removed once cleanup succeeded.
//!
//! It is added by server-side apply of just that list item (finalizers are a set, so others'
//! entries are untouched and no resourceVersion is needed: a status write a moment earlier, which
//! the cached object does not show yet, does not make it fail), with the object's UID as a
//! precondition. It is removed by a JSON patch that tests the position it removes.

use json_patch::Patch as JsonPatch;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{
    api::{
        CrossAccountRole,
        names::{FIELD_MANAGER, FINALIZER},
    },
    error::ReconcileError,
};

/// Whether `cr` carries the finalizer.
pub(crate) fn has_finalizer(cr: &CrossAccountRole) -> bool {
    cr.finalizers().iter().any(|f| f == FINALIZER)
}

/// The apply body that adds the finalizer, if it is missing.
pub(crate) fn add_body(cr: &CrossAccountRole) -> Option<Value> {
    if has_finalizer(cr) {
        return None;
    }
    Some(json!({
        "apiVersion": CrossAccountRole::api_version(&()),
        "kind": CrossAccountRole::kind(&()),
        "metadata": {"name": cr.name_any(), "uid": cr.uid(), "finalizers": [FINALIZER]},
    }))
}

/// The patch that removes the finalizer, if present: it fails when the finalizer moved.
pub(crate) fn remove_patch(cr: &CrossAccountRole) -> Option<JsonPatch> {
    let index = cr.finalizers().iter().position(|f| f == FINALIZER)?;
    Some(
        serde_json::from_value(json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
        ]))
        .expect("valid JSON patch"),
    )
}

/// Adds the finalizer unless `cr` has it.
pub(crate) async fn ensure(
    api: &Api<CrossAccountRole>,
    cr: &CrossAccountRole,
) -> Result<(), ReconcileError> {
    let Some(body) = add_body(cr) else {
        return Ok(());
    };
    api.patch(
        &cr.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
    .map_err(ReconcileError::kube("adding the finalizer"))
}

/// Removes the finalizer; an object already gone is fine.
pub(crate) async fn release(
    api: &Api<CrossAccountRole>,
    cr: &CrossAccountRole,
) -> Result<(), ReconcileError> {
    let Some(patch) = remove_patch(cr) else {
        return Ok(());
    };
    match api
        .patch(
            &cr.name_any(),
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
    use crate::api::CrossAccountRoleSpec;

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
            add_body(&other).unwrap(),
            json!({
                "apiVersion": "crossaccount.io/v1alpha1", "kind": "CrossAccountRole",
                "metadata": {"name": "r", "uid": "uid-1", "finalizers": [FINALIZER]},
            }),
            "the other finalizer is not part of our apply, so it stays"
        );
        assert!(add_body(&cr(Some(vec![FINALIZER]))).is_none());
    }

    #[test]
    fn removing_tests_the_position_it_removes() {
        let patch = remove_patch(&cr(Some(vec!["other.io/x", FINALIZER]))).unwrap();
        assert_eq!(
            ops(patch),
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        assert!(remove_patch(&cr(Some(vec!["other.io/x"]))).is_none());
        assert!(remove_patch(&cr(None)).is_none());
    }
}
