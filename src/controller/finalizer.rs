//! The finalizer `crossaccount.io/cleanup`: added only after the first successful read of the
//! target account (before that nothing in AWS can belong to the object, so a CR that never got
//! that far is deleted without waiting for a cleanup), removed once cleanup succeeded. Both are
//! JSON patches with a precondition, so a concurrent change to the finalizers is never lost.

use json_patch::Patch as JsonPatch;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    api::{CrossAccountRole, names::FINALIZER},
    error::ReconcileError,
};

/// Whether `cr` carries the finalizer.
pub(crate) fn has_finalizer(cr: &CrossAccountRole) -> bool {
    cr.finalizers().iter().any(|f| f == FINALIZER)
}

/// The patch that adds the finalizer, if it is missing: it fails (409/422) when the object
/// changed since it was read.
pub(crate) fn add_patch(cr: &CrossAccountRole) -> Option<JsonPatch> {
    if has_finalizer(cr) {
        return None;
    }
    let mut ops = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": cr.resource_version()}),
    ];
    if cr.meta().finalizers.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}));
    }
    Some(serde_json::from_value(json!(ops)).expect("valid JSON patch"))
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
    let Some(patch) = add_patch(cr) else {
        return Ok(());
    };
    api.patch(
        &cr.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
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
    fn adding_tests_the_resource_version_and_creates_or_appends() {
        assert_eq!(
            ops(add_patch(&cr(None)).unwrap()),
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        );
        assert_eq!(
            ops(add_patch(&cr(Some(vec!["other.io/x"]))).unwrap())[1],
            json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER})
        );
        assert!(add_patch(&cr(Some(vec![FINALIZER]))).is_none());
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
