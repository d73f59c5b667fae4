//! An HTTP proxy in front of the local AWS emulator that injects faults by rule: throttling and
//! server errors in the query-protocol shape IAM and STS use, added latency, and dropped
//! connections. It counts the requests it sees per (service, operation).
//!
//! Self-contained on purpose (no other test helper is used), so that a benchmark can include it
//! with `#[path = "../tests/common/aws_proxy.rs"] mod aws_proxy;` to count the AWS calls of a
//! controller.
//!
//! The proxy forwards method, path, query, headers (the `Host` header included: SigV4 signs it and
//! the emulator checks signatures) and body unchanged, over pooled upstream connections. The
//! service comes from the SigV4 credential scope of the `Authorization` header, the operation from
//! `Action=` in the form body (or the query string).
#![allow(dead_code)] // each includer uses a different subset

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use rand::Rng;

/// What a rule does to a request it picks.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// HTTP 400 with error code `Throttling` ("Rate exceeded"), as IAM and STS throttle.
    Throttling,
    /// HTTP 500 with error code `InternalFailure`.
    InternalFailure,
    /// HTTP 503 with error code `ServiceUnavailable`.
    ServiceUnavailable,
    /// Waits this long, then forwards the request.
    Latency(Duration),
    /// Drops the connection without an answer (TCP reset): the client sees a connection error.
    ConnectionReset,
    /// Every matching request fails at the connection level, whatever the rule's probability.
    Outage,
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::Throttling => "Throttling",
            Fault::InternalFailure => "InternalFailure",
            Fault::ServiceUnavailable => "ServiceUnavailable",
            Fault::Latency(_) => "Latency",
            Fault::ConnectionReset => "ConnectionReset",
            Fault::Outage => "Outage",
        }
    }
}

/// A fault and the requests it applies to: a service (`iam`, `sts`; any when `None`), a set of
/// operations (any when empty), optionally a text the form body must contain (to pick resources,
/// e.g. `RoleName=app-`), a probability, and optionally a maximum number of times.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    pub service: Option<String>,
    pub operations: BTreeSet<String>,
    pub body_contains: Option<String>,
    pub probability: f64,
    pub times: Option<u64>,
    pub fault: Fault,
}

impl FaultRule {
    /// `fault` for every request (narrow it with the builder methods).
    pub fn new(fault: Fault) -> Self {
        Self {
            service: None,
            operations: BTreeSet::new(),
            body_contains: None,
            probability: 1.0,
            times: None,
            fault,
        }
    }

    /// Only requests to `service` (the SigV4 signing name: `iam`, `sts`).
    pub fn service(mut self, service: &str) -> Self {
        self.service = Some(service.to_owned());
        self
    }

    /// Only these operations (`Action=` names such as `CreateRole`).
    pub fn operations(mut self, operations: &[&str]) -> Self {
        self.operations = operations.iter().map(|op| (*op).to_owned()).collect();
        self
    }

    /// Only requests whose (form-encoded) body contains `text`, such as `RoleName=app-`.
    pub fn body_contains(mut self, text: &str) -> Self {
        self.body_contains = Some(text.to_owned());
        self
    }

    /// Applies to each matching request with this probability (0.0 to 1.0).
    pub fn probability(mut self, probability: f64) -> Self {
        self.probability = probability;
        self
    }

    /// Applies at most `times` times, then lets requests through.
    pub fn times(mut self, times: u64) -> Self {
        self.times = Some(times);
        self
    }

    fn matches(&self, service: &str, operation: &str, body: &[u8]) -> bool {
        self.service.as_deref().is_none_or(|s| s == service)
            && (self.operations.is_empty() || self.operations.contains(operation))
            && self.body_contains.as_deref().is_none_or(|text| {
                body.windows(text.len().max(1))
                    .any(|window| window == text.as_bytes())
            })
    }
}

/// Requests of one (service, operation): forwarded to the upstream (delayed ones included) and
/// answered by it, or answered or dropped by a fault instead. A request is counted as forwarded
/// once the upstream answered it; it is sent on even when the client has gone away meanwhile
/// (as AWS carries out a request whose caller died), so a count is what really reached AWS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCount {
    pub forwarded: u64,
    /// Of the forwarded ones, those the upstream answered with success (2xx).
    pub succeeded: u64,
    pub faulted: u64,
    /// Forwarded after a `Latency` fault (also counted in `forwarded`).
    pub delayed: u64,
}

impl CallCount {
    /// Every request seen.
    pub fn total(&self) -> u64 {
        self.forwarded + self.faulted
    }
}

/// A rule and how often it has fired.
struct ActiveRule {
    rule: FaultRule,
    fired: AtomicU64,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Arc<Vec<ActiveRule>>>,
    counts: Mutex<BTreeMap<(String, String), CallCount>>,
    request_ids: AtomicU64,
}

/// The running proxy; it stops accepting connections when dropped.
pub struct AwsProxy {
    endpoint: String,
    state: Arc<State>,
    acceptor: tokio::task::JoinHandle<()>,
}

/// How a request ends at the proxy.
enum Decision {
    Forward { delay: Option<Duration> },
    Answer(Fault),
    Drop,
}

/// The connection is dropped without an answer: hyper closes a connection whose service fails.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by a fault rule")
    }
}

impl std::error::Error for Dropped {}

impl AwsProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (e.g. `http://127.0.0.1:5000`).
    pub async fn start(upstream: &str) -> AwsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the AWS proxy on loopback");
        let address = listener.local_addr().expect("proxy address");
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(120))
            .build()
            .expect("upstream HTTP client");
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client,
            rules: Mutex::new(Arc::new(Vec::new())),
            counts: Mutex::new(BTreeMap::new()),
            request_ids: AtomicU64::new(0),
        });
        let acceptor = tokio::spawn(accept_loop(listener, state.clone()));
        AwsProxy {
            endpoint: format!("http://{address}"),
            state,
            acceptor,
        }
    }

    /// The URL clients use instead of the upstream's (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Replaces the rules; the first rule that matches a request and fires decides its fate.
    pub fn set_rules(&self, rules: Vec<FaultRule>) {
        let active = rules
            .into_iter()
            .map(|rule| ActiveRule {
                rule,
                fired: AtomicU64::new(0),
            })
            .collect();
        *self.state.rules.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
    }

    /// No faults: every request is forwarded.
    pub fn clear_rules(&self) {
        self.set_rules(Vec::new());
    }

    /// Requests seen so far per (service, operation).
    pub fn counts(&self) -> BTreeMap<(String, String), CallCount> {
        self.state
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The count of one (service, operation).
    pub fn count(&self, service: &str, operation: &str) -> CallCount {
        self.counts()
            .get(&(service.to_owned(), operation.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// The sum over the operations of `service` (of all services when `None`).
    pub fn total(&self, service: Option<&str>) -> CallCount {
        self.counts()
            .iter()
            .filter(|((s, _), _)| service.is_none_or(|want| want == s))
            .fold(CallCount::default(), |sum, (_, c)| CallCount {
                forwarded: sum.forwarded + c.forwarded,
                succeeded: sum.succeeded + c.succeeded,
                faulted: sum.faulted + c.faulted,
                delayed: sum.delayed + c.delayed,
            })
    }

    /// Forgets the counts.
    pub fn reset_counts(&self) {
        self.state
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // SO_LINGER 0: a connection the proxy drops is reset (RST), not closed in order.
        let _ = stream.set_zero_linger();
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { state.handle(request).await }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl State {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Dropped> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        let service = service_of(&parts.headers);
        let operation = operation_of(parts.uri.query(), &body);
        let decision = self.decide(&service, &operation, &body);
        match decision {
            Decision::Drop => {
                self.count_fault(&service, &operation);
                Err(Dropped)
            }
            Decision::Answer(fault) => {
                self.count_fault(&service, &operation);
                Ok(self.error_response(&fault))
            }
            Decision::Forward { delay } => {
                // In a task of its own: a client that goes away does not stop the request.
                let state = self.clone();
                let sent = tokio::spawn(async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    let answer = state.forward(parts, body).await;
                    if let Ok(response) = &answer {
                        state.count_answer(
                            &service,
                            &operation,
                            delay.is_some(),
                            response.status(),
                        );
                    }
                    answer
                });
                sent.await.map_err(|_| Dropped)?
            }
        }
    }

    fn decide(&self, service: &str, operation: &str, body: &[u8]) -> Decision {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for active in rules.iter() {
            let rule = &active.rule;
            if !rule.matches(service, operation, body) {
                continue;
            }
            let fires =
                rule.fault == Fault::Outage || rand::rng().random::<f64>() < rule.probability;
            if !fires {
                continue;
            }
            // Claim one of the rule's `times`; a rule used up lets the request go to the next.
            let claimed = active
                .fired
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    rule.times.is_none_or(|max| n < max).then_some(n + 1)
                })
                .is_ok();
            if !claimed {
                continue;
            }
            return match &rule.fault {
                Fault::Latency(delay) => Decision::Forward {
                    delay: Some(*delay),
                },
                Fault::ConnectionReset | Fault::Outage => Decision::Drop,
                fault => Decision::Answer(fault.clone()),
            };
        }
        Decision::Forward { delay: None }
    }

    fn with_count(&self, service: &str, operation: &str, update: impl FnOnce(&mut CallCount)) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        update(
            counts
                .entry((service.to_owned(), operation.to_owned()))
                .or_default(),
        );
    }

    fn count_fault(&self, service: &str, operation: &str) {
        self.with_count(service, operation, |c| c.faulted += 1);
    }

    fn count_answer(&self, service: &str, operation: &str, delayed: bool, status: StatusCode) {
        self.with_count(service, operation, |c| {
            c.forwarded += 1;
            c.succeeded += u64::from(status.is_success());
            c.delayed += u64::from(delayed);
        });
    }

    /// The query-protocol error document IAM and STS answer with.
    fn error_response(&self, fault: &Fault) -> Response<Full<Bytes>> {
        let (status, type_, message) = match fault {
            Fault::Throttling => (StatusCode::BAD_REQUEST, "Sender", "Rate exceeded"),
            Fault::InternalFailure => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Receiver",
                "An internal error occurred (injected by the test proxy)",
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Receiver",
                "Service is unavailable (injected by the test proxy)",
            ),
        };
        let request_id = format!(
            "fault-proxy-{}",
            self.request_ids.fetch_add(1, Ordering::Relaxed)
        );
        let body = format!(
            "<ErrorResponse><Error><Type>{type_}</Type><Code>{}</Code><Message>{message}</Message>\
             </Error><RequestId>{request_id}</RequestId></ErrorResponse>",
            fault.name()
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert(HeaderName::from_static("x-amzn-requestid"), value);
        }
        response
    }

    async fn forward(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Full<Bytes>>, Dropped> {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut upstream = self
            .client
            .request(parts.method, format!("{}{path}", self.upstream));
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) {
                upstream = upstream.header(name, value);
            }
        }
        // An upstream that cannot be reached looks like one to the client too.
        let answer = upstream.body(body).send().await.map_err(|_| Dropped)?;
        let status = answer.status();
        let headers = answer.headers().clone();
        let body = answer.bytes().await.map_err(|_| Dropped)?;
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        for (name, value) in &headers {
            if !is_hop_by_hop(name) {
                response.headers_mut().append(name, value.clone());
            }
        }
        Ok(response)
    }
}

/// Headers that belong to one connection (or that the HTTP stack recomputes for the body).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// The SigV4 signing name: `Credential=AKID/date/region/SERVICE/aws4_request`.
fn service_of(headers: &hyper::HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|scope| scope.split([',', ' ']).next())
        .and_then(|scope| scope.split('/').nth(3))
        .unwrap_or("unknown")
        .to_owned()
}

/// `Action=` of a query-protocol request, from the form body or else the query string.
fn operation_of(query: Option<&str>, body: &[u8]) -> String {
    let action = |form: &str| {
        form.split('&')
            .find_map(|pair| pair.strip_prefix("Action="))
            .map(str::to_owned)
    };
    std::str::from_utf8(body)
        .ok()
        .and_then(action)
        .or_else(|| query.and_then(action))
        .unwrap_or_else(|| "unknown".to_owned())
}
