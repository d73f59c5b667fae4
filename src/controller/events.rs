//! Publishing the events the pipeline returns as notes. kube's recorder folds events of the same
//! object, type, reason and action within minutes into one, which is why AWS changes carry their
//! IAM operation as the action (see `Note::change`).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::{
    api::names::FIELD_MANAGER,
    pipeline::status::{Note, Severity},
};

/// The operator's event recorder.
pub(crate) struct Events {
    recorder: Recorder,
}

impl Events {
    /// Events reported by the operator, from `instance` (the pod name) when known.
    pub(crate) fn new(client: Client, instance: Option<String>) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance,
                },
            ),
        }
    }

    /// Publishes `notes` about `object`; a failure is logged, never fails the reconcile.
    pub(crate) async fn publish(&self, object: &ObjectReference, notes: &[Note]) {
        for note in notes {
            if let Err(e) = self.recorder.publish(&event(note), object).await {
                tracing::warn!(error = %e, reason = note.reason.as_str(), "could not publish an event");
            }
        }
    }
}

/// The Kubernetes event for a note.
pub(crate) fn event(note: &Note) -> Event {
    Event {
        type_: match note.severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        },
        reason: note.reason.as_str().to_owned(),
        note: Some(note.message.clone()),
        action: note.action.clone(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::names::Reason;

    #[test]
    fn notes_become_events_with_their_reason_and_action() {
        let note = Note::new(
            Severity::Warning,
            Reason::NotPermitted,
            "namespace a is not allowed",
        );
        let e = event(&note);
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, "NotPermitted");
        assert_eq!(e.action, "Reconcile");
        assert_eq!(e.note.as_deref(), Some("namespace a is not allowed"));
    }
}
