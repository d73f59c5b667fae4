//! Publishing the events the pipeline returns as notes. kube's recorder folds events of the same
//! object, type, reason and action within minutes into one, which is why AWS changes carry their
//! IAM operation as the action (see `Note::change`).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

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

/// How many events may wait to be published. A reconcile never waits for an event: when the
/// apiserver is slower than the reconciles (a burst of thousands of objects, or an apiserver in
/// trouble), what does not fit is dropped and counted (`crossaccount_events_dropped`). Events
/// are a courtesy to the reader of `kubectl describe`; status carries the same facts. About
/// 300 bytes each, so a full queue holds well under a MiB.
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// The operator's events: [`Events::publish`] queues them, and a task of their own publishes
/// them in order, off the reconciles' critical path.
pub(crate) struct Events {
    queue: mpsc::Sender<(ObjectReference, Note)>,
    dropped: Counter,
}

impl Events {
    /// Events reported by the operator, from `instance` (the pod name) when known; dropped
    /// events are counted in `dropped`. Starts the publishing task (on the current Tokio
    /// runtime), which ends once this is dropped and the queue is drained.
    pub(crate) fn new(client: Client, instance: Option<String>, dropped: Counter) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        let (queue, received) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(publish_queued(Recorders::new(client, reporter), received));
        Self { queue, dropped }
    }

    /// Queues `notes` about `object` for publishing; never waits. What does not fit is dropped
    /// and counted; a failure to publish is logged and never fails a reconcile.
    pub(crate) fn publish(&self, object: &ObjectReference, notes: &[Note]) {
        for note in notes {
            if self.queue.try_send((object.clone(), note.clone())).is_err() {
                self.dropped.inc();
                tracing::debug!(
                    reason = note.reason.as_str(),
                    "event queue full; event dropped"
                );
            }
        }
    }
}

/// Publishes what is queued, one event after another (so that one object's events keep their
/// order), until every sender is gone.
async fn publish_queued(
    mut recorders: Recorders,
    mut received: mpsc::Receiver<(ObjectReference, Note)>,
) {
    while let Some((object, note)) = received.recv().await {
        let recorder = recorders.current(Instant::now());
        if let Err(e) = recorder.publish(&event(&note), &object).await {
            tracing::warn!(error = %e, reason = note.reason.as_str(), "could not publish an event");
        }
    }
}

/// The recorder in use, replaced once it is [`RECORDER_LIFETIME`] old.
struct Recorders {
    client: Client,
    reporter: Reporter,
    recorder: Recorder,
    made: Instant,
}

impl Recorders {
    fn new(client: Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Self {
            client,
            reporter,
            recorder,
            made: Instant::now(),
        }
    }

    /// The recorder to publish with at `now`.
    fn current(&mut self, now: Instant) -> &Recorder {
        if now.saturating_duration_since(self.made) >= RECORDER_LIFETIME {
            self.recorder = Recorder::new(self.client.clone(), self.reporter.clone());
            self.made = now;
        }
        &self.recorder
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

    fn mock_client() -> (
        Client,
        tower_test::mock::Handle<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >,
    ) {
        let (service, handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        (Client::new(service, "default"), handle)
    }

    #[tokio::test]
    async fn the_recorder_is_replaced_once_it_is_old_so_its_cache_goes() {
        let (client, _handle) = mock_client();
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: None,
        };
        let mut recorders = Recorders::new(client, reporter);
        let made = recorders.made;
        recorders.current(made + Duration::from_secs(60));
        assert_eq!(recorders.made, made, "kept while young");
        let later = made + RECORDER_LIFETIME;
        recorders.current(later);
        assert_eq!(recorders.made, later, "replaced once old");
    }

    fn note(n: usize) -> Note {
        Note::new(Severity::Normal, Reason::Retained, format!("note {n}"))
    }

    #[tokio::test]
    async fn publishing_never_waits_for_the_apiserver_and_counts_what_it_drops() {
        // An apiserver that never answers: the publishing task takes the first event and waits
        // on it; the queue fills behind it.
        let (client, mut handle) = mock_client();
        let dropped = Counter::default();
        let events = Events::new(client, None, dropped.clone());
        let object = ObjectReference::default();
        let notes: Vec<Note> = (0..QUEUE_CAPACITY + 10).map(note).collect();
        events.publish(&object, &notes[..1]);
        let (first, _reply) = handle
            .next_request()
            .await
            .expect("the first event is sent");
        assert_eq!(first.method(), http::Method::POST);
        events.publish(&object, &notes[1..]);
        assert_eq!(dropped.get(), 9, "what did not fit the queue was dropped");
    }

    #[tokio::test]
    async fn queued_events_are_published_in_order() {
        let (client, mut handle) = mock_client();
        let events = Events::new(client, None, Counter::default());
        let object = ObjectReference {
            namespace: Some("team".into()),
            name: Some("r".into()),
            ..Default::default()
        };
        // Different reasons: kube's recorder folds notes of one reason and action into a series.
        let reasons = [Reason::Retained, Reason::NotPermitted, Reason::InvalidSpec];
        let notes: Vec<Note> = reasons
            .iter()
            .map(|r| Note::new(Severity::Normal, *r, "n"))
            .collect();
        events.publish(&object, &notes);
        for reason in reasons {
            let (request, reply) = handle.next_request().await.expect("an event");
            let body = http_body_util::BodyExt::collect(request.into_body())
                .await
                .unwrap()
                .to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["reason"], reason.as_str());
            reply.send_response(
                http::Response::builder()
                    .status(201)
                    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
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
