//! An HTTP proxy in front of the local AWS emulator: the tests' ground truth of what reached AWS,
//! and the place where the emulator is made to behave as AWS does where moto does not.
//!
//! - **Request log.** Every request is recorded: service and operation, its decoded form
//!   parameters, the access key ID it was signed with, when it arrived (on the proxy's clock) and
//!   how it ended (faulted by the proxy, or the upstream's HTTP status). Tests take a
//!   [`RequestMark`] and count what came after it ([`AwsProxy::requests_since`],
//!   [`AwsProxy::count_since`], [`AwsProxy::count_per_param_since`]). Per (service, operation)
//!   summaries are kept too ([`AwsProxy::counts`]).
//! - **Fault injection by rule**: throttling and server errors in the query-protocol shape IAM
//!   and STS use, added latency, and dropped connections.
//! - **Expired session credentials.** moto enforces no session expiry. The proxy learns every
//!   session STS issues through it (`AccessKeyId` and `Expiration` of the answer) and answers a
//!   later request signed with that key after the expiration as AWS does (`ExpiredToken`). Its
//!   clock can be moved forward ([`AwsProxy::advance_clock`]) so tests need not wait.
//!
//! Secret material (secret keys, session tokens, signatures) is never stored. Access key IDs are,
//! to match sessions; `Debug` of a [`LoggedRequest`] does not show them, and tests must not print
//! them either.
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
    collections::{BTreeMap, BTreeSet, HashMap},
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
use jiff::Timestamp;
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
    /// HTTP 403 with error code `ExpiredToken`, as AWS answers a request signed with session
    /// credentials past their expiration. The proxy answers so by itself for the sessions it saw
    /// issued (see [`AwsProxy::advance_clock`]); a rule can inject it for any request.
    ExpiredToken,
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
            Fault::ExpiredToken => "ExpiredToken",
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

/// How a logged request ended (so far).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded (or being delayed) and not answered yet.
    InFlight,
    /// Answered or dropped by the proxy instead of the upstream: the name of the fault (a rule's,
    /// or `ExpiredToken` for a session past its expiration).
    Faulted(&'static str),
    /// Forwarded and answered by the upstream with this HTTP status.
    Answered(u16),
    /// Forwarded, but the upstream could not be reached or its answer not read.
    UpstreamFailed,
}

/// One request the proxy saw.
#[derive(Clone, PartialEq)]
pub struct LoggedRequest {
    /// Position in the log (0 for the first request).
    pub seq: usize,
    /// The SigV4 signing name (`iam`, `sts`), `unknown` for an unsigned request.
    pub service: String,
    /// `Action=` of the request, `unknown` without one.
    pub operation: String,
    /// The decoded parameters of the query string and the form body (`Action` included).
    pub params: BTreeMap<String, String>,
    /// The access key ID of the SigV4 `Credential=`. Identifies a session; never print it.
    pub access_key_id: Option<String>,
    /// When it arrived, on the proxy's clock ([`AwsProxy::now`]).
    pub arrived: Timestamp,
    /// Whether a `Latency` fault delayed it.
    pub delayed: bool,
    pub outcome: Outcome,
}

/// Parameters whose values are credentials (or one-time codes): `Debug` leaves their values out.
fn is_sensitive_param(name: &str) -> bool {
    [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "TokenCode",
        "Password",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

impl std::fmt::Debug for LoggedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let params: BTreeMap<&str, &str> = self
            .params
            .iter()
            .map(|(k, v)| {
                let v = if is_sensitive_param(k) {
                    "(redacted)"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("LoggedRequest")
            .field("seq", &self.seq)
            .field("service", &self.service)
            .field("operation", &self.operation)
            .field("params", &params)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "(redacted)"),
            )
            .field("arrived", &self.arrived)
            .field("delayed", &self.delayed)
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// Parameters that name what a request is about, for [`LoggedRequest::summary`].
const NAMING_PARAMS: &[&str] = &[
    "RoleName",
    "UserName",
    "PolicyName",
    "PolicyArn",
    "PermissionsBoundary",
    "RoleArn",
    "RoleSessionName",
];

impl LoggedRequest {
    /// The decoded parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Whether it is `operation` of `service`.
    pub fn is(&self, service: &str, operation: &str) -> bool {
        self.service == service && self.operation == operation
    }

    /// Whether the upstream answered it (whatever the status).
    pub fn reached_upstream(&self) -> bool {
        matches!(self.outcome, Outcome::Answered(_))
    }

    /// Whether the upstream answered it with success (2xx).
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, Outcome::Answered(status) if (200..300).contains(&status))
    }

    /// Whether the proxy answered or dropped it instead of the upstream.
    pub fn faulted(&self) -> bool {
        matches!(self.outcome, Outcome::Faulted(_))
    }

    /// One line for failure messages: service, operation, the parameters that name its subject,
    /// and how it ended (no credentials, no policy documents).
    pub fn summary(&self) -> String {
        let mut line = format!("#{} {} {}", self.seq, self.service, self.operation);
        for name in NAMING_PARAMS {
            if let Some(value) = self.param(name) {
                line.push_str(&format!(" {name}={value}"));
            }
        }
        let outcome = match self.outcome {
            Outcome::InFlight => "in flight".to_owned(),
            Outcome::Faulted(fault) => format!("faulted ({fault})"),
            Outcome::Answered(status) => format!("HTTP {status}"),
            Outcome::UpstreamFailed => "upstream unreachable".to_owned(),
        };
        line.push_str(&format!(" -> {outcome}"));
        if self.delayed {
            line.push_str(" (delayed)");
        }
        line
    }
}

/// A position in the log: what came after it is [`AwsProxy::requests_since`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestMark(usize);

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
    log: Mutex<Vec<LoggedRequest>>,
    /// Sessions STS issued through the proxy: access key ID -> expiration.
    sessions: Mutex<HashMap<String, Timestamp>>,
    /// How far the proxy's clock is ahead of the real one, in milliseconds.
    clock_offset_ms: AtomicU64,
    request_ids: AtomicU64,
}

/// The running proxy; it stops accepting connections when dropped.
pub struct AwsProxy {
    endpoint: String,
    state: Arc<State>,
    acceptor: tokio::task::JoinHandle<()>,
    /// Set for a proxy on a runtime of its own: dropping it ends that runtime's thread.
    _runtime_stop: Option<futures::channel::oneshot::Sender<()>>,
}

/// How a request ends at the proxy.
enum Decision {
    Forward { delay: Option<Duration> },
    Answer(Fault),
    Drop(Fault),
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
    /// Starts a proxy on a free loopback port in front of `upstream` (such as
    /// `http://127.0.0.1:5000`), serving on the caller's runtime.
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
            log: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            clock_offset_ms: AtomicU64::new(0),
            request_ids: AtomicU64::new(0),
        });
        let acceptor = tokio::spawn(accept_loop(listener, state.clone()));
        AwsProxy {
            endpoint: format!("http://{address}"),
            state,
            acceptor,
            _runtime_stop: None,
        }
    }

    /// Starts a proxy like [`AwsProxy::start`], but on a runtime of its own in a thread of its
    /// own, so that it serves whatever happens to the caller's runtime: a proxy shared by the
    /// tests of a binary must outlive the test (and the `#[tokio::test]` runtime) that started
    /// it, and keep serving while a test's runtime is blocked in a `Drop`. The runtime and its
    /// thread end when the proxy is dropped.
    pub fn start_on_own_runtime(upstream: &str) -> AwsProxy {
        let upstream = upstream.to_owned();
        let (proxy_tx, proxy_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("aws-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("aws-proxy-worker")
                    .enable_all()
                    .build()
                    .expect("a runtime for the AWS proxy");
                runtime.block_on(async move {
                    let proxy = AwsProxy::start(&upstream).await;
                    if proxy_tx.send(proxy).is_ok() {
                        // Until the proxy is dropped (the sender with it).
                        let _ = stop_rx.await;
                    }
                });
            })
            .expect("spawn the AWS proxy's thread");
        let mut proxy = proxy_rx
            .recv()
            .expect("the AWS proxy's thread ended before the proxy started");
        proxy._runtime_stop = Some(stop_tx);
        proxy
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
        *lock(&self.state.rules) = Arc::new(active);
    }

    /// No faults: every request is forwarded (sessions past their expiration are still answered
    /// `ExpiredToken`: that is how AWS behaves, not a fault rule).
    pub fn clear_rules(&self) {
        self.set_rules(Vec::new());
    }

    /// Requests seen so far per (service, operation), since the last [`AwsProxy::reset_counts`].
    pub fn counts(&self) -> BTreeMap<(String, String), CallCount> {
        lock(&self.state.counts).clone()
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

    /// Forgets the counts (the request log is kept: use a [`RequestMark`] for it).
    pub fn reset_counts(&self) {
        lock(&self.state.counts).clear();
    }

    /// Every request seen so far, in order of arrival.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state.log).clone()
    }

    /// The current end of the log.
    pub fn mark(&self) -> RequestMark {
        RequestMark(lock(&self.state.log).len())
    }

    /// The requests that arrived after `mark` was taken.
    pub fn requests_since(&self, mark: &RequestMark) -> Vec<LoggedRequest> {
        let log = lock(&self.state.log);
        log.get(mark.0..).unwrap_or_default().to_vec()
    }

    /// Requests since `mark` of `operation` (any service) whose parameter `param.0` is `param.1`
    /// (any when `None`), whatever their outcome.
    pub fn count_since(
        &self,
        mark: &RequestMark,
        operation: &str,
        param: Option<(&str, &str)>,
    ) -> u64 {
        let log = lock(&self.state.log);
        log.get(mark.0..)
            .unwrap_or_default()
            .iter()
            .filter(|r| r.operation == operation)
            .filter(|r| param.is_none_or(|(name, value)| r.param(name) == Some(value)))
            .count() as u64
    }

    /// Requests since `mark` of `operation` (any service) per value of their parameter `param`
    /// (e.g. GetRole per `RoleName`), whatever their outcome; requests without it are left out.
    pub fn count_per_param_since(
        &self,
        mark: &RequestMark,
        operation: &str,
        param: &str,
    ) -> BTreeMap<String, u64> {
        let log = lock(&self.state.log);
        let mut counts = BTreeMap::new();
        for request in log.get(mark.0..).unwrap_or_default() {
            if request.operation == operation
                && let Some(value) = request.param(param)
            {
                *counts.entry(value.to_owned()).or_default() += 1;
            }
        }
        counts
    }

    /// The proxy's clock: the real time plus every [`AwsProxy::advance_clock`]. Session expiry
    /// and [`LoggedRequest::arrived`] are on it.
    pub fn now(&self) -> Timestamp {
        self.state.now()
    }

    /// Moves the proxy's clock forward by `by` (for tests of session expiry that cannot wait for
    /// it): sessions issued before expire that much sooner; sessions issued afterwards get their
    /// full duration from the moved clock. Only the proxy's view of time changes: requests are
    /// forwarded unchanged.
    pub fn advance_clock(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.state.clock_offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// How many sessions (STS-issued access keys) the proxy has seen issued.
    pub fn sessions_seen(&self) -> usize {
        lock(&self.state.sessions).len()
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// A lock that a panicking test thread does not poison for the others.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    /// How far the proxy's clock is ahead of the real one.
    fn clock_offset(&self) -> jiff::SignedDuration {
        let ms = self.clock_offset_ms.load(Ordering::SeqCst);
        jiff::SignedDuration::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.clock_offset())
            .unwrap_or(Timestamp::MAX)
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Dropped> {
        let arrived = self.now();
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        let service = service_of(&parts.headers);
        let params = params_of(parts.uri.query(), &parts.headers, &body);
        let operation = params
            .get("Action")
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        let access_key_id = access_key_id_of(&parts.headers);
        let decision = self.decide(&service, &operation, &body, access_key_id.as_deref());
        let seq = {
            let mut log = lock(&self.log);
            let seq = log.len();
            log.push(LoggedRequest {
                seq,
                service: service.clone(),
                operation: operation.clone(),
                params,
                access_key_id,
                arrived,
                delayed: matches!(decision, Decision::Forward { delay: Some(_) }),
                outcome: Outcome::InFlight,
            });
            seq
        };
        match decision {
            Decision::Drop(fault) => {
                self.count_fault(seq, &service, &operation, &fault);
                Err(Dropped)
            }
            Decision::Answer(fault) => {
                self.count_fault(seq, &service, &operation, &fault);
                Ok(self.error_response(&fault))
            }
            Decision::Forward { delay } => {
                // In a task of its own: a client that goes away does not stop the request.
                let state = self.clone();
                let sent = tokio::spawn(async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    let answer = state.forward(parts, body, &service).await;
                    match &answer {
                        Ok(response) => state.count_answer(
                            seq,
                            &service,
                            &operation,
                            delay.is_some(),
                            response.status(),
                        ),
                        Err(_) => state.set_outcome(seq, Outcome::UpstreamFailed),
                    }
                    answer
                });
                sent.await.map_err(|_| Dropped)?
            }
        }
    }

    fn decide(
        &self,
        service: &str,
        operation: &str,
        body: &[u8],
        access_key_id: Option<&str>,
    ) -> Decision {
        // Before any rule: AWS refuses an expired session before it gets to anything else.
        if let Some(key) = access_key_id
            && let Some(expiration) = lock(&self.sessions).get(key).copied()
            && self.now() >= expiration
        {
            return Decision::Answer(Fault::ExpiredToken);
        }
        let rules = lock(&self.rules).clone();
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
                Fault::ConnectionReset | Fault::Outage => Decision::Drop(rule.fault.clone()),
                fault => Decision::Answer(fault.clone()),
            };
        }
        Decision::Forward { delay: None }
    }

    fn with_count(&self, service: &str, operation: &str, update: impl FnOnce(&mut CallCount)) {
        let mut counts = lock(&self.counts);
        update(
            counts
                .entry((service.to_owned(), operation.to_owned()))
                .or_default(),
        );
    }

    fn set_outcome(&self, seq: usize, outcome: Outcome) {
        if let Some(entry) = lock(&self.log).get_mut(seq) {
            entry.outcome = outcome;
        }
    }

    fn count_fault(&self, seq: usize, service: &str, operation: &str, fault: &Fault) {
        self.set_outcome(seq, Outcome::Faulted(fault.name()));
        self.with_count(service, operation, |c| c.faulted += 1);
    }

    fn count_answer(
        &self,
        seq: usize,
        service: &str,
        operation: &str,
        delayed: bool,
        status: StatusCode,
    ) {
        self.set_outcome(seq, Outcome::Answered(status.as_u16()));
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
            // AWS's answer to a request signed with expired session credentials: the common
            // error `ExpiredToken(Exception)`, "The security token included in the request is
            // expired", HTTP 403 (IAM API Reference, Common Errors:
            // https://docs.aws.amazon.com/IAM/latest/APIReference/CommonErrors.html, and the AWS
            // common errors list https://docs.aws.amazon.com/awsconsolehelpdocs/latest/gsg/common-errors.html).
            // On the wire IAM and STS (query protocol) send the code `ExpiredToken` with type
            // Sender, as captured answers show (e.g. cfn-sphere/cfn-sphere#55,
            // aws/aws-sdk-java-v2#1649).
            Fault::ExpiredToken => (
                StatusCode::FORBIDDEN,
                "Sender",
                "The security token included in the request is expired",
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
        service: &str,
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
        if service == "sts" && status.is_success() {
            self.learn_session(&body);
        }
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        for (name, value) in &headers {
            if !is_hop_by_hop(name) {
                response.headers_mut().append(name, value.clone());
            }
        }
        Ok(response)
    }

    /// Remembers the session of an STS answer that issues credentials (AssumeRole and its
    /// kind): its access key ID and expiration. Nothing else of the answer is kept.
    fn learn_session(&self, body: &[u8]) {
        let Ok(text) = std::str::from_utf8(body) else {
            return;
        };
        let Some(credentials) = xml_element(text, "Credentials") else {
            return;
        };
        let key = xml_element(credentials, "AccessKeyId");
        let expiration =
            xml_element(credentials, "Expiration").and_then(|t| t.trim().parse::<Timestamp>().ok());
        if let (Some(key), Some(expiration)) = (key, expiration) {
            // The upstream's expiration is on the real clock; on the proxy's clock, the session
            // lives its full duration from now (a clock moved forward earlier does not shorten
            // the sessions issued afterwards).
            let expiration = expiration
                .checked_add(self.clock_offset())
                .unwrap_or(Timestamp::MAX);
            lock(&self.sessions).insert(key.trim().to_owned(), expiration);
        }
    }
}

/// The text inside the first `<name>...</name>` of `xml`.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(&xml[start..end])
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

/// The SigV4 credential of the `Authorization` header:
/// `Credential=AKID/date/region/SERVICE/aws4_request`.
fn credential_scope(headers: &hyper::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|scope| scope.split([',', ' ']).next())
}

/// The SigV4 signing name.
fn service_of(headers: &hyper::HeaderMap) -> String {
    credential_scope(headers)
        .and_then(|scope| scope.split('/').nth(3))
        .unwrap_or("unknown")
        .to_owned()
}

/// The access key ID the request was signed with.
fn access_key_id_of(headers: &hyper::HeaderMap) -> Option<String> {
    credential_scope(headers)
        .and_then(|scope| scope.split('/').next())
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
}

/// The decoded parameters of a query-protocol request: the query string's, then the form
/// body's (`application/x-www-form-urlencoded`, or a body without a content type).
fn params_of(
    query: Option<&str>,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    if let Some(query) = query {
        decode_form(query, &mut params);
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("application/x-www-form-urlencoded"));
    if form && let Ok(text) = std::str::from_utf8(body) {
        decode_form(text, &mut params);
    }
    params
}

/// `a=1&b=x%20y+z` into its pairs (`+` is a space in form encoding).
fn decode_form(form: &str, into: &mut BTreeMap<String, String>) {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(&text.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    for pair in form.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        into.insert(decode(name), decode(value));
    }
}
