//! Prometheus metrics. Label values are fixed strings (kinds, operations, outcomes, categories),
//! never error payloads or secret material.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram,
    },
    registry::Registry,
};

/// Labels of one AWS API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsRequestLabels {
    pub service: &'static str,
    pub operation: &'static str,
    pub outcome: &'static str,
}

/// Labels of the request budget an AWS request waited for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsBudgetLabels {
    pub service: &'static str,
}

/// Labels of one reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
}

/// Labels of one reconcile failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileErrorLabels {
    pub kind: &'static str,
    pub category: &'static str,
}

/// Seconds until the credentials of each CrossAccountRole expire, computed at scrape time from
/// the expiration times the reconciler records. Without per-object labels, one series: the
/// soonest expiry (enough for the alert; `kubectl get xar -A` says which object), so that a
/// reader of /metrics learns no namespace or object name.
#[derive(Debug)]
pub struct CredentialsExpiry {
    expirations: Mutex<HashMap<(String, String), Timestamp>>,
    per_object: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    namespace: String,
    name: String,
}

impl CredentialsExpiry {
    pub fn set(&self, namespace: &str, name: &str, expiration: Timestamp) {
        self.expirations
            .lock()
            .expect("lock")
            .insert((namespace.to_owned(), name.to_owned()), expiration);
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        self.expirations
            .lock()
            .expect("lock")
            .remove(&(namespace.to_owned(), name.to_owned()));
    }
}

impl Collector for CredentialsExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Timestamp::now();
        let expirations = self.expirations.lock().expect("lock");
        if !self.per_object {
            let family = encoder.encode_descriptor(
                "credentials_expiry_seconds",
                "Seconds until the soonest expiry of the credentials in the CrossAccountRoles' Secrets (per-object labels are off)",
                None,
                MetricType::Gauge,
            )?;
            if let Some(soonest) = expirations.values().min() {
                let seconds = soonest.duration_since(now).as_secs_f64();
                ConstGauge::new(seconds).encode(family)?;
            }
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "credentials_expiry_seconds",
            "Seconds until the credentials in each CrossAccountRole's Secret expire",
            None,
            MetricType::Gauge,
        )?;
        for ((namespace, name), expiration) in expirations.iter() {
            let labels = ObjectLabels {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            let seconds = expiration.duration_since(now).as_secs_f64();
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// All metrics of the operator and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    pub(crate) credentials_expiry: Arc<CredentialsExpiry>,
    pub(crate) aws_requests: Family<AwsRequestLabels, Counter>,
    pub(crate) reconciles: Family<ReconcileLabels, Counter>,
    pub(crate) reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    pub(crate) reconcile_duration: Family<ReconcileLabels, Histogram>,
    pub(crate) reconcile_queue: Family<ReconcileLabels, Histogram>,
    pub(crate) aws_budget_wait: Family<AwsBudgetLabels, Histogram>,
    pub(crate) abandoned_roles: Counter,
    pub(crate) events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::build(true)
    }
}

impl Metrics {
    /// The metrics, with `crossaccount_credentials_expiry_seconds` per object (labels namespace
    /// and name) when `per_object`, else as the soonest expiry without labels.
    fn build(per_object: bool) -> Self {
        let mut registry = Registry::with_prefix("crossaccount");
        let aws_requests = Family::<AwsRequestLabels, Counter>::default();
        registry.register(
            "aws_requests",
            "AWS API requests by service, operation and outcome",
            aws_requests.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles started, by kind",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ReconcileErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and error category",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<ReconcileLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by one reconcile, by kind",
            reconcile_duration.clone(),
        );
        let reconcile_queue = Family::<ReconcileLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0])
        });
        registry.register(
            "reconcile_queue_seconds",
            "Time an object due for reconcile waited for a worker, by kind (CrossAccountRole only)",
            reconcile_queue.clone(),
        );
        let aws_budget_wait = Family::<AwsBudgetLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0])
        });
        registry.register(
            "aws_budget_wait_seconds",
            "Time an AWS request waited for its account's request budget (--iam-rate), by service; its count is the budget's use",
            aws_budget_wait.clone(),
        );
        let abandoned_roles = Counter::default();
        registry.register(
            "abandoned_roles",
            "IAM roles left in AWS because their AwsAccount was deleted before their CrossAccountRole",
            abandoned_roles.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Kubernetes events not published because the queue of events waiting for the apiserver was full",
            events_dropped.clone(),
        );
        let credentials_expiry = Arc::new(CredentialsExpiry {
            expirations: Mutex::default(),
            per_object,
        });
        registry.register_collector(Box::new(credentials_expiry.clone()));
        Self {
            registry,
            credentials_expiry,
            aws_requests,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            reconcile_queue,
            aws_budget_wait,
            abandoned_roles,
            events_dropped,
        }
    }

    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// See [`Metrics::build`] (`--per-object-metrics`).
    pub fn with_per_object_labels(per_object: bool) -> Arc<Self> {
        Arc::new(Self::build(per_object))
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl crate::aws::RequestLog for Metrics {
    fn request(&self, service: &'static str, operation: &'static str, outcome: &'static str) {
        self.aws_requests
            .get_or_create(&AwsRequestLabels {
                service,
                operation,
                outcome,
            })
            .inc();
    }

    fn budget_wait(&self, service: &'static str, waited: std::time::Duration) {
        self.aws_budget_wait
            .get_or_create(&AwsBudgetLabels { service })
            .observe(waited.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_prefix_and_labels() {
        let metrics = Metrics::default();
        metrics
            .aws_requests
            .get_or_create(&AwsRequestLabels {
                service: "iam",
                operation: "GetRole",
                outcome: "ok",
            })
            .inc();
        metrics
            .reconcile_duration
            .get_or_create(&ReconcileLabels {
                kind: "CrossAccountRole",
            })
            .observe(0.2);
        metrics.credentials_expiry.set(
            "team-a",
            "signin",
            Timestamp::now() + jiff::SignedDuration::from_secs(600),
        );
        let text = metrics.render();
        let series =
            r#"crossaccount_credentials_expiry_seconds{namespace="team-a",name="signin"} "#;
        let seconds: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .unwrap_or_else(|| panic!("no expiry series in {text}"))
            .parse()
            .expect("a number");
        assert!(
            (598.0..=600.0).contains(&seconds),
            "expires in {seconds} s, set to 600 s from now"
        );
        assert!(text.contains(
            r#"crossaccount_aws_requests_total{service="iam",operation="GetRole",outcome="ok"} 1"#
        ), "{text}");
        assert!(
            text.contains("# HELP crossaccount_reconcile_duration_seconds"),
            "{text}"
        );
    }

    #[test]
    fn budget_waits_count_uses_and_those_that_waited() {
        use crate::aws::RequestLog;
        let metrics = Metrics::default();
        metrics.budget_wait("iam", std::time::Duration::ZERO);
        metrics.budget_wait("iam", std::time::Duration::from_millis(300));
        let text = metrics.render();
        for line in [
            r#"crossaccount_aws_budget_wait_seconds_count{service="iam"} 2"#,
            r#"crossaccount_aws_budget_wait_seconds_bucket{le="0.0",service="iam"} 1"#,
            r#"crossaccount_aws_budget_wait_seconds_bucket{le="0.5",service="iam"} 2"#,
        ] {
            assert!(text.contains(line), "no `{line}` in {text}");
        }
    }

    #[test]
    fn without_per_object_labels_only_the_soonest_expiry_is_exported() {
        let metrics = Metrics::build(false);
        let text = metrics.render();
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("crossaccount_credentials_expiry_seconds")),
            "no series without credentials: {text}"
        );
        let now = Timestamp::now();
        for (name, seconds) in [("signin", 600), ("billing", 300)] {
            metrics.credentials_expiry.set(
                "team-a",
                name,
                now + jiff::SignedDuration::from_secs(seconds),
            );
        }
        let text = metrics.render();
        assert!(
            !text.contains("team-a") && !text.contains("signin"),
            "no namespace or name: {text}"
        );
        let seconds: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("crossaccount_credentials_expiry_seconds "))
            .unwrap_or_else(|| panic!("no unlabelled expiry series in {text}"))
            .parse()
            .expect("a number");
        assert!((298.0..=300.0).contains(&seconds), "{seconds}");
    }
}
