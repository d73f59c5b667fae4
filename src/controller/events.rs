//! Publishing the events the pipeline returns as notes. kube's recorder folds events of the same
//! object, type, reason and action within minutes into one, which is why AWS changes carry their
//! IAM operation as the action (see `Note::change`).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::{
    api::names::FIELD_MANAGER,
    pipeline::status::{Note, Severity},
};

/// How long one recorder is used. kube's recorder remembers each event it published for 6
/// minutes (to fold repeats into a series) in a map that never shrinks and is pruned only when it
/// publishes, so a burst of objects (hundreds created and deleted) would keep that memory for
/// good (measured in `make bench`'s churn phase). A fresh recorder this often lets the old map
/// go; a repeat just after the swap starts a new series instead of counting in the old one.
const RECORDER_LIFETIME: Duration = Duration::from_secs(6 * 60);

/// The operator's event recorder.
pub(crate) struct Events {
    client: Client,
    reporter: Reporter,
    /// The recorder in use and when it was made.
    recorder: Mutex<(Recorder, Instant)>,
}

impl Events {
    /// Events reported by the operator, from `instance` (the pod name) when known.
    pub(crate) fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Self {
            client,
            reporter,
            recorder: Mutex::new((recorder, Instant::now())),
        }
    }

    /// The recorder to publish with now: a fresh one once the current one is
    /// [`RECORDER_LIFETIME`] old.
    fn recorder(&self, now: Instant) -> Recorder {
        let mut current = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(current.1) >= RECORDER_LIFETIME {
            *current = (
                Recorder::new(self.client.clone(), self.reporter.clone()),
                now,
            );
        }
        current.0.clone()
    }

    /// Publishes `notes` about `object`; a failure is logged, never fails the reconcile.
    pub(crate) async fn publish(&self, object: &ObjectReference, notes: &[Note]) {
        if notes.is_empty() {
            return;
        }
        let recorder = self.recorder(Instant::now());
        for note in notes {
            if let Err(e) = recorder.publish(&event(note), object).await {
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

    #[tokio::test]
    async fn the_recorder_is_replaced_once_it_is_old_so_its_cache_goes() {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let events = Events::new(Client::new(service, "default"), None);
        let made = events.recorder.lock().unwrap().1;
        let _young = events.recorder(made + Duration::from_secs(60));
        assert_eq!(events.recorder.lock().unwrap().1, made, "kept while young");
        let later = made + RECORDER_LIFETIME;
        let _old = events.recorder(later);
        assert_eq!(
            events.recorder.lock().unwrap().1,
            later,
            "replaced once old"
        );
    }

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
