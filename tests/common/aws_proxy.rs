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
//! - **IAM as AWS** ([`Emulation::IamAsAws`], the default). moto enforces none of IAM's quotas
//!   and few of its parameter constraints. The proxy refuses, before forwarding, what AWS
//!   refuses: names, paths and session names outside their constraints (`ValidationError`),
//!   inline policies past the aggregate size of their user, role or group, more managed
//!   policies attached than a principal may have, managed policy and trust policy documents past
//!   their size, a sixth version of a managed policy, more than 50 tags on a role
//!   (`LimitExceeded`), session policies and session tags past their size on AssumeRole, and
//!   an AssumeRole that the role's trust policy or the caller's policies (with their
//!   conditions) do not allow (`AccessDenied`; see [`State::judge_assume_role`]). A
//!   refused request never reaches moto; the answer carries AWS's error code, HTTP status and
//!   message (each rule cites where they come from, see [`IamQuotas`] and the rules section
//!   below). GetAccountSummary reports the quotas the proxy enforces. Quotas that count what
//!   exists are decided on moto's current state, read directly from moto with the proxy's own
//!   credentials ([`IamAsAws`]). [`Emulation::Lenient`] switches it off for a test that needs
//!   moto's leniency.
//!
//! Secret material (secret keys, session tokens, signatures) is never stored. Access key IDs are,
//! to match sessions; `Debug` of a [`LoggedRequest`] does not show them, and tests must not print
//! them either.
//!
//! Self-contained on purpose (no other test helper is used), so that a benchmark can include it
//! with `#[path = "../tests/common/aws_proxy.rs"] mod aws_proxy;` to count the AWS calls of a
//! controller.
//!
//! Quota state is read, not tracked: a proxy starts per test binary (or per test) while moto
//! lives as long as the environment, so policies, attachments, versions and tags created before
//! the proxy started (by an earlier test binary, the seed, or a test writing to moto directly)
//! count as they count on AWS. The request's own signature cannot be reused for the reads, so
//! the proxy reads with its own identity (the SDK's default chain: the environment's
//! `AWS_ACCESS_KEY_ID`) in its own account, and through roles it assumes
//! ([`IamAsAws::reader_roles`], the environment's `MANAGEMENT_ROLE_ARN`) in theirs. The account
//! a request acts in comes from the key it is signed with: the proxy's own key, or a session
//! STS issued through the proxy (the account of its `AssumedRoleUser`). Where the proxy cannot
//! read (a key it does not know, an account it has no reader for, a read the reader may not
//! make), the rules that need state let the request through and the log says so
//! ([`LoggedRequest::unjudged`]); the rules that need only the request still apply. Writes to
//! one principal that a quota rule judges are serialised through the proxy (read, decide,
//! forward), so two concurrent writes cannot both fit into the room that only one of them has.
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
    /// HTTP 403 with error code `AccessDenied`, type Sender, "User: ... is not authorized to
    /// perform: SERVICE:OPERATION ...", as IAM and STS answer a caller whose policies do not allow
    /// the request (a management role whose permissions were taken away, an SCP).
    AccessDenied,
    /// HTTP 400 with error code `PackedPolicyTooLarge` on AssumeRole: "Packed policy consumes
    /// `percent`% of allotted space, please use smaller policy.". STS compresses session
    /// policies and session tags into a packed format whose size AWS does not publish, so the
    /// proxy cannot tell when AWS would answer this; a rule injects it instead.
    PackedPolicyTooLarge { percent: u32 },
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
            Fault::AccessDenied => "AccessDenied",
            Fault::PackedPolicyTooLarge { .. } => "PackedPolicyTooLarge",
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
    /// Answered or dropped by the proxy itself: by a fault rule, as an expired session, or
    /// refused by the IAM-as-AWS rules ([`Outcome`] tells which).
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
    /// Refused by the IAM-as-AWS rules with this AWS error code (`LimitExceeded`,
    /// `ValidationError`), as AWS refuses it; never forwarded.
    Refused(&'static str),
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
    /// Why an IAM-as-AWS rule that counts what exists could not judge it (it was forwarded
    /// unjudged), e.g. the account of its key is unknown to the proxy.
    pub unjudged: Option<String>,
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
            .field("unjudged", &self.unjudged)
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

    /// Whether a fault (a rule, or an expired session) answered or dropped it instead of the
    /// upstream.
    pub fn faulted(&self) -> bool {
        matches!(self.outcome, Outcome::Faulted(_))
    }

    /// Whether the IAM-as-AWS rules refused it (it never reached the upstream).
    pub fn refused(&self) -> bool {
        matches!(self.outcome, Outcome::Refused(_))
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
            Outcome::Refused(code) => format!("refused as AWS refuses it ({code})"),
            Outcome::Answered(status) => format!("HTTP {status}"),
            Outcome::UpstreamFailed => "upstream unreachable".to_owned(),
        };
        line.push_str(&format!(" -> {outcome}"));
        if self.delayed {
            line.push_str(" (delayed)");
        }
        if let Some(reason) = &self.unjudged {
            line.push_str(&format!(" (quota unjudged: {reason})"));
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
    /// The account each of those sessions acts in: access key ID -> account ID.
    session_accounts: Mutex<HashMap<String, String>>,
    /// Who each of those sessions is, for the authorization of AssumeRole: access key ID ->
    /// its principal.
    session_principals: Mutex<HashMap<String, SessionPrincipal>>,
    /// The IAM-as-AWS rules, unless the proxy is lenient.
    iam_as_aws: Option<IamAsAwsState>,
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
    /// `http://127.0.0.1:5000`), serving on the caller's runtime, with IAM as AWS
    /// ([`Emulation::default`]).
    pub async fn start(upstream: &str) -> AwsProxy {
        AwsProxy::start_with(upstream, Emulation::default()).await
    }

    /// [`AwsProxy::start`] with moto's leniency: no IAM-as-AWS rules. For a test that truly
    /// needs to do what AWS would refuse.
    pub async fn start_lenient(upstream: &str) -> AwsProxy {
        AwsProxy::start_with(upstream, Emulation::Lenient).await
    }

    /// [`AwsProxy::start`] with the given emulation.
    pub async fn start_with(upstream: &str, emulation: Emulation) -> AwsProxy {
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
            session_accounts: Mutex::new(HashMap::new()),
            session_principals: Mutex::new(HashMap::new()),
            iam_as_aws: match emulation {
                Emulation::Lenient => None,
                Emulation::IamAsAws(config) => Some(IamAsAwsState::new(upstream, config)),
            },
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
    /// thread end when the proxy is dropped. IAM as AWS ([`Emulation::default`]).
    pub fn start_on_own_runtime(upstream: &str) -> AwsProxy {
        AwsProxy::start_on_own_runtime_with(upstream, Emulation::default())
    }

    /// [`AwsProxy::start_on_own_runtime`] with the given emulation.
    pub fn start_on_own_runtime_with(upstream: &str, emulation: Emulation) -> AwsProxy {
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
                    let proxy = AwsProxy::start_with(&upstream, emulation).await;
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

    /// The quotas the IAM-as-AWS rules enforce (`None` for a lenient proxy).
    pub fn iam_quotas(&self) -> Option<IamQuotas> {
        self.state.iam_as_aws.as_ref().map(|iam| *lock(&iam.quotas))
    }

    /// Enforces `quotas` from now on (as after a quota increase in the account; GetAccountSummary
    /// reports them too). Panics on a lenient proxy.
    pub fn set_iam_quotas(&self, quotas: IamQuotas) {
        let iam = self
            .state
            .iam_as_aws
            .as_ref()
            .expect("set_iam_quotas on a lenient proxy");
        *lock(&iam.quotas) = quotas;
    }

    /// The requests since `mark` the IAM-as-AWS rules refused.
    pub fn refused_since(&self, mark: &RequestMark) -> Vec<LoggedRequest> {
        let log = lock(&self.state.log);
        log.get(mark.0..)
            .unwrap_or_default()
            .iter()
            .filter(|r| r.refused())
            .cloned()
            .collect()
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
                params: params.clone(),
                access_key_id: access_key_id.clone(),
                arrived,
                delayed: matches!(decision, Decision::Forward { delay: Some(_) }),
                outcome: Outcome::InFlight,
                unjudged: None,
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
                Ok(self.error_response(&fault, &service, &operation))
            }
            Decision::Forward { delay } => {
                // In a task of its own: a client that goes away does not stop the request.
                let state = self.clone();
                let sent = tokio::spawn(async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    // Judged after any delay, on the state closest to the write; a principal
                    // lock taken for a quota is held until the upstream has answered.
                    let request = Judged {
                        service: &service,
                        operation: &operation,
                        params: &params,
                        access_key_id: access_key_id.as_deref(),
                        moto_account: parts
                            .headers
                            .get("x-moto-account-id")
                            .and_then(|v| v.to_str().ok()),
                    };
                    let (verdict, _principal_lock) = state.judge(&request).await;
                    match verdict {
                        Verdict::Pass => {}
                        Verdict::Unjudged(reason) => state.set_unjudged(seq, reason),
                        Verdict::Refuse(refusal) => {
                            state.count_refusal(seq, &service, &operation, refusal.code);
                            return Ok(state.refusal_response(&service, &refusal));
                        }
                    }
                    let caller = access_key_id.clone();
                    let answer = state
                        .forward(
                            parts,
                            body,
                            &service,
                            &operation,
                            caller.as_deref(),
                            &params,
                        )
                        .await;
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

    fn count_refusal(&self, seq: usize, service: &str, operation: &str, code: &'static str) {
        self.set_outcome(seq, Outcome::Refused(code));
        self.with_count(service, operation, |c| c.faulted += 1);
    }

    fn set_unjudged(&self, seq: usize, reason: String) {
        if let Some(entry) = lock(&self.log).get_mut(seq) {
            entry.unjudged = Some(reason);
        }
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
    fn error_response(
        &self,
        fault: &Fault,
        service: &str,
        operation: &str,
    ) -> Response<Full<Bytes>> {
        let (status, type_, message) = match fault {
            Fault::Throttling => (
                StatusCode::BAD_REQUEST,
                "Sender",
                "Rate exceeded".to_owned(),
            ),
            Fault::InternalFailure => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Receiver",
                "An internal error occurred (injected by the test proxy)".to_owned(),
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
                "The security token included in the request is expired".to_owned(),
            ),
            // IAM's and STS's answer to a caller not allowed the action: code `AccessDenied`,
            // type Sender, HTTP 403, "User: ARN is not authorized to perform: ACTION on
            // resource: ARN" (IAM API Reference, Common Errors, `AccessDeniedException`; the
            // wording as the proxy's own AssumeRole authorization and captured IAM answers give
            // it). The proxy does not name the caller (it may not know it): the message says so.
            Fault::AccessDenied => (
                StatusCode::FORBIDDEN,
                "Sender",
                format!(
                    "User: (the caller) is not authorized to perform: {service}:{operation} \
                     on resource: * (injected by the test proxy)"
                ),
            ),
            // STS's `PackedPolicyTooLargeException`: code `PackedPolicyTooLarge`, HTTP 400,
            // sender fault (botocore's STS model, botocore/data/sts/2011-06-15/service-2.json);
            // the message as AWS words it (AWS Knowledge Center, "How can I avoid getting a
            // PackedPolicyTooLarge error when I assume an IAM role via AWS STS?",
            // https://repost.aws/knowledge-center/iam-role-aws-sts-error).
            Fault::PackedPolicyTooLarge { percent } => (
                StatusCode::BAD_REQUEST,
                "Sender",
                format!(
                    "Packed policy consumes {percent}% of allotted space, please use smaller policy."
                ),
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Receiver",
                "Service is unavailable (injected by the test proxy)".to_owned(),
            ),
        };
        self.aws_error(None, status, type_, fault.name(), &message)
    }

    /// The answer to a request the IAM-as-AWS rules refuse.
    fn refusal_response(&self, service: &str, refusal: &Refusal) -> Response<Full<Bytes>> {
        self.aws_error(
            Some(service),
            refusal.status,
            "Sender",
            refusal.code,
            &refusal.message,
        )
    }

    /// An error document of the query protocol (`ErrorResponse`), in the XML namespace of
    /// `service` when given, with a request ID of the proxy's.
    fn aws_error(
        &self,
        service: Option<&str>,
        status: StatusCode,
        type_: &str,
        code: &str,
        message: &str,
    ) -> Response<Full<Bytes>> {
        let request_id = format!(
            "fault-proxy-{}",
            self.request_ids.fetch_add(1, Ordering::Relaxed)
        );
        let namespace = match service {
            Some("iam") => " xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"",
            Some("sts") => " xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"",
            _ => "",
        };
        let body = format!(
            "<ErrorResponse{namespace}><Error><Type>{type_}</Type><Code>{code}</Code>\
             <Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
            xml_escape(message)
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
        operation: &str,
        caller: Option<&str>,
        params: &BTreeMap<String, String>,
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
        let mut body = answer.bytes().await.map_err(|_| Dropped)?;
        if service == "sts" && status.is_success() {
            self.learn_session(&body, caller, params);
        }
        if service == "iam"
            && operation == "GetAccountSummary"
            && status.is_success()
            && let Some(iam) = &self.iam_as_aws
            && let Ok(text) = std::str::from_utf8(&body)
        {
            let quotas = *lock(&iam.quotas);
            body = Bytes::from(with_summary_quotas(text, &quotas.summary_entries()));
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
    /// kind): its access key ID, expiration and account (that of its `AssumedRoleUser` or
    /// `FederatedUser`, else the caller's), and for AssumeRole who it is (its `AssumedRoleUser`
    /// ARN, the role ARN of the request and its session tags), for AssumeRole requests it signs
    /// later ([`State::judge_assume_role`]). Nothing else of the answer is kept.
    fn learn_session(&self, body: &[u8], caller: Option<&str>, params: &BTreeMap<String, String>) {
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
            let key = key.trim().to_owned();
            let account = xml_element(text, "Arn")
                .and_then(|arn| arn.trim().split(':').nth(4))
                .filter(|account| !account.is_empty())
                .map(str::to_owned)
                .or_else(|| caller.and_then(|c| lock(&self.session_accounts).get(c).cloned()));
            if let Some(account) = account {
                lock(&self.session_accounts).insert(key.clone(), account.clone());
                let session_arn = xml_element(text, "AssumedRoleUser")
                    .and_then(|user| xml_element(user, "Arn"))
                    .map(|arn| arn.trim().to_owned());
                if params.get("Action").map(String::as_str) == Some("AssumeRole")
                    && let (Some(session_arn), Some(role_arn)) =
                        (session_arn, params.get("RoleArn"))
                {
                    lock(&self.session_principals).insert(
                        key.clone(),
                        SessionPrincipal {
                            account,
                            session_arn,
                            role_arn: role_arn.clone(),
                        },
                    );
                }
            }
            lock(&self.sessions).insert(key, expiration);
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

/// Text safe inside an XML element.
fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    escaped
}

// =============================================================================================
// IAM as AWS: what AWS refuses and moto does not.
//
// Sources, cited per rule below:
// - [quotas] IAM User Guide, "IAM and AWS STS quotas",
//   https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html (the object
//   quotas and the character quotas tables; "IAM does not count white space when calculating
//   the size of a policy against these quotas").
// - [model] botocore's service models of IAM (botocore/data/iam/2010-05-08/service-2.json) and
//   STS (botocore/data/sts/2011-06-15/service-2.json), botocore 1.44.8 as pinned in
//   hack/devenv/requirements.txt: the length, range and pattern constraints of each parameter,
//   the errors each operation declares, and each error's code and HTTP status
//   (`LimitExceededException`: code `LimitExceeded`, HTTP 409; `PackedPolicyTooLargeException`:
//   `PackedPolicyTooLarge`, 400). The same constraints are on each operation's page of the IAM
//   and STS API references (https://docs.aws.amazon.com/IAM/latest/APIReference/,
//   https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html).
// - [validation] the shape of AWS's answer to a parameter outside its constraints: code
//   `ValidationError`, HTTP 400 (IAM API Reference, Common Errors,
//   https://docs.aws.amazon.com/IAM/latest/APIReference/CommonErrors.html), message
//   "1 validation error detected: Value '<v>' at '<member>' failed to satisfy constraint: Member
//   must have length less than or equal to <n>", several joined as "<k> validation errors
//   detected: <a>; <b>", as captured from AWS in aws/aws-cli#7854 (roleName),
//   bringmeister/aws-kinesis-spring-boot-starter#19 and getmoto/moto#9218 (roleSessionName,
//   "Status Code: 400; Error Code: ValidationError"), and the GetFederationToken error scenario
//   of the AWS SDKs' integration tests (aws-sdk-ruby/aws-sdk-java features/sts: "Value '' at
//   'policy' failed to satisfy constraint").
// =============================================================================================

/// What the proxy enforces, besides its fault rules, before it forwards a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Emulation {
    /// moto's leniency: whatever the fault rules let through is forwarded.
    Lenient,
    /// Refuses what AWS refuses and moto does not (see the module docs).
    IamAsAws(IamAsAws),
}

impl Default for Emulation {
    /// IAM as AWS with AWS's default quotas, reading moto as the environment's identity
    /// ([`IamAsAws::from_env`]).
    fn default() -> Self {
        Emulation::IamAsAws(IamAsAws::from_env())
    }
}

/// The IAM-as-AWS rules: the quotas, and how the proxy reads what exists.
#[derive(Clone, Debug, PartialEq)]
pub struct IamAsAws {
    pub quotas: IamQuotas,
    /// Roles the proxy assumes, with its own identity (the SDK's default chain), to read the
    /// IAM state of the accounts they are in. The account of its own identity is read with
    /// that identity, within what its policies allow.
    pub reader_roles: Vec<String>,
}

impl IamAsAws {
    /// AWS's default quotas; the target account is read through `MANAGEMENT_ROLE_ARN` when the
    /// environment (`target/devenv/env`) names it.
    pub fn from_env() -> Self {
        IamAsAws {
            quotas: IamQuotas::default(),
            reader_roles: std::env::var("MANAGEMENT_ROLE_ARN")
                .ok()
                .filter(|arn| !arn.is_empty())
                .into_iter()
                .collect(),
        }
    }
}

/// IAM's quotas as the proxy enforces them. [`IamQuotas::default`] is an account's default
/// ([quotas]: "IAM object quotas" and "IAM and STS character quotas"); the adjustable ones may be
/// set higher, as a quota increase would, and GetAccountSummary reports what is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IamQuotas {
    /// The sum of a user's inline policies, in characters without white space: 2,048.
    pub user_policy_size: usize,
    /// The sum of a role's inline policies: 10,240.
    pub role_policy_size: usize,
    /// The sum of a group's inline policies: 5,120.
    pub group_policy_size: usize,
    /// Managed policies attached to a user: 10 (adjustable up to 20).
    pub attached_policies_per_user: usize,
    /// Managed policies attached to a role: 10 (adjustable up to 20).
    pub attached_policies_per_role: usize,
    /// Managed policies attached to a group: 10.
    pub attached_policies_per_group: usize,
    /// A managed policy document, in characters without white space: 6,144.
    pub policy_size: usize,
    /// Versions of a managed policy: 5.
    pub versions_per_policy: usize,
    /// A role's trust policy, in characters without white space: 2,048 (adjustable up to 4,096).
    pub assume_role_policy_size: usize,
    /// Tags on a role: 50.
    pub tags_per_role: usize,
}

impl Default for IamQuotas {
    fn default() -> Self {
        IamQuotas {
            user_policy_size: 2048,
            role_policy_size: 10240,
            group_policy_size: 5120,
            attached_policies_per_user: 10,
            attached_policies_per_role: 10,
            attached_policies_per_group: 10,
            policy_size: 6144,
            versions_per_policy: 5,
            assume_role_policy_size: 2048,
            tags_per_role: 50,
        }
    }
}

impl IamQuotas {
    /// The quotas as GetAccountSummary names them (its `SummaryMap` keys: IAM API Reference,
    /// GetAccountSummary, https://docs.aws.amazon.com/IAM/latest/APIReference/API_GetAccountSummary.html).
    /// Tags per role has no key there.
    pub fn summary_entries(&self) -> [(&'static str, usize); 9] {
        [
            ("UserPolicySizeQuota", self.user_policy_size),
            ("RolePolicySizeQuota", self.role_policy_size),
            ("GroupPolicySizeQuota", self.group_policy_size),
            (
                "AttachedPoliciesPerUserQuota",
                self.attached_policies_per_user,
            ),
            (
                "AttachedPoliciesPerRoleQuota",
                self.attached_policies_per_role,
            ),
            (
                "AttachedPoliciesPerGroupQuota",
                self.attached_policies_per_group,
            ),
            ("PolicySizeQuota", self.policy_size),
            ("VersionsPerPolicyQuota", self.versions_per_policy),
            ("AssumeRolePolicySizeQuota", self.assume_role_policy_size),
        ]
    }

    fn inline_policy_size(&self, kind: PrincipalKind) -> usize {
        match kind {
            PrincipalKind::User => self.user_policy_size,
            PrincipalKind::Role => self.role_policy_size,
            PrincipalKind::Group => self.group_policy_size,
        }
    }

    fn attached_policies(&self, kind: PrincipalKind) -> usize {
        match kind {
            PrincipalKind::User => self.attached_policies_per_user,
            PrincipalKind::Role => self.attached_policies_per_role,
            PrincipalKind::Group => self.attached_policies_per_group,
        }
    }
}

/// The size IAM counts for a policy document: its characters, white space left out ([quotas]).
/// White space is JSON's (space, tab, line feed, carriage return), the only white space a
/// policy document may hold besides U+00A0 and U+0085 ([model]: `policyDocumentType` allows
/// U+0009, U+000A, U+000D and U+0020 to U+00FF).
pub fn iam_policy_size(document: &str) -> usize {
    document
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'))
        .count()
}

/// A policy document as IAM returns it (URL-encoded JSON), as text.
fn decoded_document(document: &str) -> String {
    if document.trim_start().starts_with('{') {
        document.to_owned()
    } else {
        percent_encoding::percent_decode_str(document)
            .decode_utf8_lossy()
            .into_owned()
    }
}

/// The IAM-as-AWS rules of a running proxy.
struct IamAsAwsState {
    quotas: Mutex<IamQuotas>,
    reader: StateReader,
    /// One lock per principal (account and name) whose quota a write is judged on.
    principal_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The users long-term access keys belong to, as looked up for AssumeRole: access key ID ->
    /// (account, user name). An access key ID is never reused, so this does not go stale.
    key_owners: Mutex<HashMap<String, (String, String)>>,
}

impl IamAsAwsState {
    fn new(upstream: &str, config: IamAsAws) -> Self {
        IamAsAwsState {
            quotas: Mutex::new(config.quotas),
            reader: StateReader {
                upstream: upstream.trim_end_matches('/').to_owned(),
                roles: config.reader_roles,
                clients: tokio::sync::OnceCell::new(),
            },
            principal_locks: Mutex::new(HashMap::new()),
            key_owners: Mutex::new(HashMap::new()),
        }
    }

    fn principal_lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.principal_locks).entry(key).or_default().clone()
    }
}

/// What the rules look at in a request.
struct Judged<'a> {
    service: &'a str,
    operation: &'a str,
    params: &'a BTreeMap<String, String>,
    access_key_id: Option<&'a str>,
    /// moto's `x-moto-account-id` header: the account a request acts in, ahead of its key.
    moto_account: Option<&'a str>,
}

impl Judged<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

enum Verdict {
    Pass,
    /// Forwarded, but a rule that counts what exists could not judge it: why.
    Unjudged(String),
    Refuse(Refusal),
}

/// An answer as AWS gives it to a request it refuses.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    /// [validation]: `ValidationError`, HTTP 400, every violated constraint in one message.
    fn validation(violations: &[String]) -> Self {
        let n = violations.len();
        let plural = if n == 1 { "" } else { "s" };
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "ValidationError",
            message: format!(
                "{n} validation error{plural} detected: {}",
                violations.join("; ")
            ),
        }
    }

    /// [model]: `LimitExceeded`, HTTP 409.
    fn limit_exceeded(message: String) -> Self {
        Refusal {
            status: StatusCode::CONFLICT,
            code: "LimitExceeded",
            message,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrincipalKind {
    User,
    Role,
    Group,
}

impl PrincipalKind {
    fn noun(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Role => "role",
            PrincipalKind::Group => "group",
        }
    }

    /// The quota's name in IAM's message for attachments ("PoliciesPerRole").
    fn attachment_quota_name(self) -> &'static str {
        match self {
            PrincipalKind::User => "PoliciesPerUser",
            PrincipalKind::Role => "PoliciesPerRole",
            PrincipalKind::Group => "PoliciesPerGroup",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parameter constraints ([model]), answered `ValidationError` ([validation]).
// ---------------------------------------------------------------------------------------------

/// IAM operations whose `UserName` is `userNameType` (1-64 characters); every other IAM
/// operation with a `UserName` takes `existingUserNameType` (1-128) [model].
const USER_NAME_64_OPERATIONS: &[&str] = &[
    "AttachUserPolicy",
    "CreateLoginProfile",
    "CreateServiceSpecificCredential",
    "CreateUser",
    "DeleteLoginProfile",
    "DeleteSSHPublicKey",
    "DeleteServiceSpecificCredential",
    "DeleteUserPermissionsBoundary",
    "DetachUserPolicy",
    "GetLoginProfile",
    "GetMFADevice",
    "GetSSHPublicKey",
    "ListAttachedUserPolicies",
    "ListSSHPublicKeys",
    "ListServiceSpecificCredentials",
    "PutUserPermissionsBoundary",
    "ResetServiceSpecificCredential",
    "UpdateLoginProfile",
    "UpdateSSHPublicKey",
    "UpdateServiceSpecificCredential",
    "UploadSSHPublicKey",
];

/// IAM operations whose `Path` is `pathType` [model] (CreatePolicy's is `policyPathType`).
const ENTITY_PATH_OPERATIONS: &[&str] = &[
    "CreateGroup",
    "CreateInstanceProfile",
    "CreateRole",
    "CreateUser",
    "CreateVirtualMFADevice",
    "UploadServerCertificate",
];

/// IAM operations whose `Tags` is `tagListType` (at most 50 tags) [model].
const TAGGING_OPERATIONS: &[&str] = &[
    "CreateInstanceProfile",
    "CreateOpenIDConnectProvider",
    "CreatePolicy",
    "CreateRole",
    "CreateSAMLProvider",
    "CreateUser",
    "CreateVirtualMFADevice",
    "TagInstanceProfile",
    "TagMFADevice",
    "TagOpenIDConnectProvider",
    "TagPolicy",
    "TagRole",
    "TagSAMLProvider",
    "TagServerCertificate",
    "TagUser",
    "UploadServerCertificate",
];

/// The violated constraints of a request, each as AWS words it [validation].
#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn push(&mut self, member: &str, value: &str, constraint: &str) {
        self.0.push(format!(
            "Value '{value}' at '{member}' failed to satisfy constraint: {constraint}"
        ));
    }

    fn max_length(&mut self, member: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.push(
                member,
                value,
                &format!("Member must have length less than or equal to {max}"),
            );
        }
    }

    fn min_length(&mut self, member: &str, value: &str, min: usize) {
        if value.chars().count() < min {
            self.push(
                member,
                value,
                &format!("Member must have length greater than or equal to {min}"),
            );
        }
    }

    fn pattern(&mut self, member: &str, value: &str, pattern: &str, matches: bool) {
        if !matches {
            self.push(
                member,
                value,
                &format!("Member must satisfy regular expression pattern: {pattern}"),
            );
        }
    }

    fn range(&mut self, member: &str, value: &str, min: i64, max: i64) {
        let Ok(number) = value.trim().parse::<i64>() else {
            return; // not a number: moto answers that itself
        };
        if number < min {
            self.push(
                member,
                value,
                &format!("Member must have value greater than or equal to {min}"),
            );
        } else if number > max {
            self.push(
                member,
                value,
                &format!("Member must have value less than or equal to {max}"),
            );
        }
    }

    /// A name of `[\w+=,.@-]+` (user, group, role and policy names) of at most `max`
    /// characters (patterns are whole-string matches, `\w` is `[A-Za-z0-9_]` as in Java).
    fn name(&mut self, member: &str, value: &str, max: usize) {
        self.pattern(
            member,
            value,
            r"[\w+=,.@-]+",
            !value.is_empty() && value.chars().all(is_name_char),
        );
        self.min_length(member, value, 1);
        self.max_length(member, value, max);
    }

    /// Tags of a `tagListType`: at most 50, keys of 1-128 and values of 0-256 characters.
    /// ([model] `tagListType`, `tagKeyType`, `tagValueType`; [quotas] "Tag key", "Tag value").
    /// The key and value patterns are left to moto, which checks the key's.
    fn tags(&mut self, params: &BTreeMap<String, String>) {
        let tags = tags_of(params);
        if tags.len() > 50 {
            let listed: Vec<String> = tags.values().map(|(k, v)| format!("{k}={v}")).collect();
            self.push(
                "tags",
                &format!("[{}]", listed.join(", ")),
                "Member must have length less than or equal to 50",
            );
        }
        for (index, (key, value)) in &tags {
            let key_member = format!("tags.{index}.member.key");
            self.min_length(&key_member, key, 1);
            self.max_length(&key_member, key, 128);
            self.max_length(&format!("tags.{index}.member.value"), value, 256);
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// `Tags.member.N.Key` and `Tags.member.N.Value` of a query-protocol request, by N.
fn tags_of(params: &BTreeMap<String, String>) -> BTreeMap<usize, (String, String)> {
    let mut tags: BTreeMap<usize, (String, String)> = BTreeMap::new();
    for (name, value) in params {
        let Some(rest) = name.strip_prefix("Tags.member.") else {
            continue;
        };
        let Some((index, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        let tag = tags.entry(index).or_default();
        match field {
            "Key" => tag.0 = value.clone(),
            "Value" => tag.1 = value.clone(),
            _ => {}
        }
    }
    tags
}

/// Every constraint of [model] the request violates that the rules check.
fn constraint_violations(request: &Judged<'_>) -> Vec<String> {
    let mut v = Violations::default();
    let operation = request.operation;
    match request.service {
        "iam" => {
            // Role names: `roleNameType`, 1-64 characters ([quotas]: "Role name: 64 characters").
            if let Some(name) = request.param("RoleName") {
                v.name("roleName", name, 64);
            }
            if let Some(name) = request.param("UserName") {
                let max = if USER_NAME_64_OPERATIONS.contains(&operation) {
                    64
                } else {
                    128
                };
                v.name("userName", name, max);
            }
            if let Some(name) = request.param("GroupName") {
                v.name("groupName", name, 128);
            }
            // Policy names: `policyNameType`, 1-128 ([quotas]: "Policy name: 128 characters").
            if let Some(name) = request.param("PolicyName") {
                v.name("policyName", name, 128);
            }
            // Paths: 1-512 characters ([quotas]: "Path: 512 characters"), `pathType`
            // `(\u002F)|(\u002F[\u0021-\u007E]+\u002F)` or, for CreatePolicy,
            // `policyPathType` `((/[A-Za-z0-9\.,\+@=_-]+)*)/`.
            if let Some(path) = request.param("Path") {
                if operation == "CreatePolicy" {
                    v.pattern(
                        "path",
                        path,
                        r"((/[A-Za-z0-9\.,\+@=_-]+)*)/",
                        is_policy_path(path),
                    );
                    v.min_length("path", path, 1);
                    v.max_length("path", path, 512);
                } else if ENTITY_PATH_OPERATIONS.contains(&operation) {
                    v.pattern(
                        "path",
                        path,
                        r"(\u002F)|(\u002F[\u0021-\u007E]+\u002F)",
                        is_entity_path(path),
                    );
                    v.min_length("path", path, 1);
                    v.max_length("path", path, 512);
                }
            }
            if TAGGING_OPERATIONS.contains(&operation) {
                v.tags(request.params);
            }
            // `roleMaxSessionDurationType` 3600-43200, `roleDescriptionType` at most 1000.
            if matches!(operation, "CreateRole" | "UpdateRole") {
                if let Some(seconds) = request.param("MaxSessionDuration") {
                    v.range("maxSessionDuration", seconds, 3600, 43200);
                }
                if let Some(description) = request.param("Description") {
                    v.max_length("description", description, 1000);
                }
            }
        }
        "sts" if operation == "AssumeRole" => {
            // `roleSessionNameType`: 2-64 characters of `[\w+=,.@-]*` ([quotas]: "Role session
            // name: 64 characters").
            if let Some(name) = request.param("RoleSessionName") {
                v.pattern(
                    "roleSessionName",
                    name,
                    r"[\w+=,.@-]*",
                    name.chars().all(is_name_char),
                );
                v.min_length("roleSessionName", name, 2);
                v.max_length("roleSessionName", name, 64);
            }
            // The session policy: "The plaintext that you use for both inline and managed
            // session policies can't exceed 2,048 characters" (STS API Reference, AssumeRole,
            // `Policy`; [quotas] "Role session policies"). botocore 1.44.8 models AssumeRole's
            // `Policy` as `unrestrictedSessionPolicyDocumentType` (no maximum) while the other
            // operations keep `sessionPolicyDocumentType` (at most 2,048): the documented limit
            // stands, answered as its length constraint was, `ValidationError`. No answer of
            // AWS to a longer AssumeRole policy since that model change was found.
            if let Some(policy) = request.param("Policy") {
                v.max_length("policy", policy, 2048);
            }
            // `roleDurationSecondsType` 900-43200, `externalIdType` 2-1224 of
            // `[\w+=,.@:\/-]*`, `sourceIdentityType` 2-256 of `[\w+=,.@-]*`.
            if let Some(seconds) = request.param("DurationSeconds") {
                v.range("durationSeconds", seconds, 900, 43200);
            }
            if let Some(id) = request.param("ExternalId") {
                v.pattern(
                    "externalId",
                    id,
                    r"[\w+=,.@:\/-]*",
                    id.chars().all(|c| is_name_char(c) || c == ':' || c == '/'),
                );
                v.min_length("externalId", id, 2);
                v.max_length("externalId", id, 1224);
            }
            if let Some(identity) = request.param("SourceIdentity") {
                v.pattern(
                    "sourceIdentity",
                    identity,
                    r"[\w+=,.@-]*",
                    identity.chars().all(is_name_char),
                );
                v.min_length("sourceIdentity", identity, 2);
                v.max_length("sourceIdentity", identity, 256);
            }
            // Session tags: up to 50, keys 128, values 256 ([quotas] "Role session tags";
            // STS API Reference, AssumeRole, `Tags`).
            v.tags(request.params);
        }
        _ => {}
    }
    v.0
}

/// `(\u002F)|(\u002F[\u0021-\u007E]+\u002F)`, matched as a whole.
fn is_entity_path(path: &str) -> bool {
    path == "/"
        || (path.len() >= 3
            && path.starts_with('/')
            && path.ends_with('/')
            && path.chars().all(|c| ('\u{21}'..='\u{7e}').contains(&c)))
}

/// `((/[A-Za-z0-9\.,\+@=_-]+)*)/`, matched as a whole.
fn is_policy_path(path: &str) -> bool {
    let Some(inner) = path.strip_suffix('/') else {
        return false;
    };
    inner.is_empty()
        || inner.strip_prefix('/').is_some_and(|segments| {
            segments.split('/').all(|segment| {
                !segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".,+@=_-".contains(c))
            })
        })
}

// ---------------------------------------------------------------------------------------------
// Quotas on a document of the request alone.
// ---------------------------------------------------------------------------------------------

/// The refusal of a document past its quota, decided on the request alone.
fn document_quota_refusal(request: &Judged<'_>, quotas: &IamQuotas) -> Option<Refusal> {
    if request.service != "iam" {
        return None;
    }
    let size = |param: &str| request.param(param).map(iam_policy_size);
    match request.operation {
        // Trust policies: "Role trust policy length: 2048 characters" ([quotas], adjustable to
        // 4096), refused `LimitExceeded` "Cannot exceed quota for ACLSizePerRole: 2048", as AWS
        // answered CreateRole (aws/aws-cdk#18564: "Status Code: 409; Error Code:
        // LimitExceeded") and UpdateAssumeRolePolicy (apache/airflow#27331,
        // kubeflow/kubeflow#6687: "status code: 409"). CreateRole and UpdateAssumeRolePolicy
        // declare `LimitExceededException` [model].
        "CreateRole" | "UpdateAssumeRolePolicy" => {
            let param = if request.operation == "CreateRole" {
                "AssumeRolePolicyDocument"
            } else {
                "PolicyDocument"
            };
            (size(param)? > quotas.assume_role_policy_size).then(|| {
                Refusal::limit_exceeded(format!(
                    "Cannot exceed quota for ACLSizePerRole: {}",
                    quotas.assume_role_policy_size
                ))
            })
        }
        // Managed policy documents: "The size of each managed policy can't exceed 6,144
        // characters" ([quotas]), refused `LimitExceeded` "Cannot exceed quota for PolicySize:
        // 6144" (ministryofjustice/cloud-platform-environments#14473, docker/docs#5815;
        // LBHackney-IT/Data-Platform#2116 shows it with "Status code: 409").
        "CreatePolicy" | "CreatePolicyVersion" => (size("PolicyDocument")? > quotas.policy_size)
            .then(|| {
                Refusal::limit_exceeded(format!(
                    "Cannot exceed quota for PolicySize: {}",
                    quotas.policy_size
                ))
            }),
        // An inline policy that alone is past its principal's aggregate: refused as the
        // aggregate is (see `judge_inline_policy`), also when the proxy cannot read the others.
        "PutRolePolicy" | "PutUserPolicy" | "PutGroupPolicy" => {
            let (kind, name) = inline_policy_principal(request)?;
            let quota = quotas.inline_policy_size(kind);
            (size("PolicyDocument")? > quota).then(|| inline_policy_refusal(kind, name, quota))
        }
        _ => None,
    }
}

fn inline_policy_principal<'a>(request: &'a Judged<'_>) -> Option<(PrincipalKind, &'a str)> {
    match request.operation {
        "PutRolePolicy" => Some((PrincipalKind::Role, request.param("RoleName")?)),
        "PutUserPolicy" => Some((PrincipalKind::User, request.param("UserName")?)),
        "PutGroupPolicy" => Some((PrincipalKind::Group, request.param("GroupName")?)),
        _ => None,
    }
}

/// Inline policies past their principal's aggregate: "the total aggregate policy size (the sum
/// size of all inline policies) per entity can't exceed ... User policy size 2,048 characters,
/// Role policy size 10,240, Group policy size 5,120" ([quotas]), refused `LimitExceeded`
/// "Maximum policy size of 2048 bytes exceeded for user <name>" as AWS answers PutUserPolicy
/// (ministryofjustice/cloud-platform-environments#5302), PutRolePolicy ("Maximum policy size of
/// 10240 bytes exceeded for role <name>", aws-amplify/amplify-backend#2615,
/// aws/copilot-cli#5917) and PutGroupPolicy ("... 5120 bytes exceeded for group travis-ci",
/// HumanCellAtlas/data-store#1963). The three declare `LimitExceededException` [model].
fn inline_policy_refusal(kind: PrincipalKind, name: &str, quota: usize) -> Refusal {
    Refusal::limit_exceeded(format!(
        "Maximum policy size of {quota} bytes exceeded for {} {name}",
        kind.noun()
    ))
}

// ---------------------------------------------------------------------------------------------
// Quotas that count what exists.
// ---------------------------------------------------------------------------------------------

/// A write whose quota counts what exists.
enum Counted<'a> {
    /// Put{Role,User,Group}Policy: the principal's other inline policies plus this one.
    InlinePolicy {
        kind: PrincipalKind,
        name: &'a str,
        policy_name: &'a str,
        size: usize,
    },
    /// Attach{Role,User,Group}Policy: the managed policies attached to the principal.
    Attachment {
        kind: PrincipalKind,
        name: &'a str,
        arn: &'a str,
    },
    /// CreatePolicyVersion: the versions of the policy.
    PolicyVersion { arn: &'a str, account: &'a str },
    /// TagRole: the role's tags with the new ones.
    RoleTags {
        role: &'a str,
        keys: BTreeSet<String>,
    },
}

impl Counted<'_> {
    /// What the write is serialised on, within its account.
    fn lock_key(&self) -> String {
        match self {
            Counted::InlinePolicy { kind, name, .. } | Counted::Attachment { kind, name, .. } => {
                format!("{}/{}", kind.noun(), name.to_lowercase())
            }
            Counted::PolicyVersion { arn, .. } => format!("policy/{arn}"),
            Counted::RoleTags { role, .. } => format!("role/{}", role.to_lowercase()),
        }
    }
}

fn counted_write<'a>(request: &'a Judged<'_>) -> Option<Counted<'a>> {
    if request.service != "iam" {
        return None;
    }
    let attachment = |kind: PrincipalKind, name_param: &str| {
        Some(Counted::Attachment {
            kind,
            name: request.param(name_param)?,
            arn: request.param("PolicyArn")?,
        })
    };
    match request.operation {
        "PutRolePolicy" | "PutUserPolicy" | "PutGroupPolicy" => {
            let (kind, name) = inline_policy_principal(request)?;
            Some(Counted::InlinePolicy {
                kind,
                name,
                policy_name: request.param("PolicyName")?,
                size: iam_policy_size(request.param("PolicyDocument")?),
            })
        }
        "AttachRolePolicy" => attachment(PrincipalKind::Role, "RoleName"),
        "AttachUserPolicy" => attachment(PrincipalKind::User, "UserName"),
        "AttachGroupPolicy" => attachment(PrincipalKind::Group, "GroupName"),
        "CreatePolicyVersion" => {
            let arn = request.param("PolicyArn")?;
            // arn:aws:iam::ACCOUNT:policy/...; AWS managed policies (account `aws`) cannot get
            // versions from anyone but AWS, which moto answers itself.
            let account = arn
                .split(':')
                .nth(4)
                .filter(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_digit()))?;
            Some(Counted::PolicyVersion { arn, account })
        }
        "TagRole" => Some(Counted::RoleTags {
            role: request.param("RoleName")?,
            // Role tag keys are not case sensitive: "you cannot have separate Department and
            // department tag keys" (IAM User Guide, "Tagging IAM resources",
            // https://docs.aws.amazon.com/IAM/latest/UserGuide/id_tags.html).
            keys: tags_of(request.params)
                .into_values()
                .map(|(key, _)| key.to_lowercase())
                .collect(),
        }),
        _ => None,
    }
}

impl State {
    /// The verdict of the IAM-as-AWS rules on `request`, and the principal lock to hold until
    /// the upstream has answered a write judged on what exists.
    async fn judge(
        &self,
        request: &Judged<'_>,
    ) -> (Verdict, Option<tokio::sync::OwnedMutexGuard<()>>) {
        let Some(iam) = &self.iam_as_aws else {
            return (Verdict::Pass, None);
        };
        let quotas = *lock(&iam.quotas);
        // AWS validates parameters before anything else looks at a request.
        let violations = constraint_violations(request);
        if !violations.is_empty() {
            return (Verdict::Refuse(Refusal::validation(&violations)), None);
        }
        if let Some(refusal) = document_quota_refusal(request, &quotas) {
            return (Verdict::Refuse(refusal), None);
        }
        if request.service == "sts" && request.operation == "AssumeRole" {
            return (self.judge_assume_role(iam, request).await, None);
        }
        let Some(write) = counted_write(request) else {
            return (Verdict::Pass, None);
        };
        let account = match &write {
            Counted::PolicyVersion { account, .. } => Some((*account).to_owned()),
            _ => self.account_of(request).await,
        };
        let Some(account) = account else {
            return (
                Verdict::Unjudged(
                    "the proxy does not know the account of the signing key".to_owned(),
                ),
                None,
            );
        };
        let principal_lock = iam
            .principal_lock(format!("{account}/{}", write.lock_key()))
            .lock_owned()
            .await;
        let verdict = match iam.reader.client(&account).await {
            Err(reason) => Verdict::Unjudged(reason),
            Ok(client) => match judge_on_state(&client, &write, &quotas).await {
                Ok(None) => Verdict::Pass,
                Ok(Some(refusal)) => Verdict::Refuse(refusal),
                Err(reason) => Verdict::Unjudged(reason),
            },
        };
        (verdict, Some(principal_lock))
    }

    /// The account `request` acts in: moto's header, else that of its key (a session issued
    /// through the proxy, or the proxy's own identity).
    async fn account_of(&self, request: &Judged<'_>) -> Option<String> {
        if let Some(account) = request.moto_account {
            return Some(account.to_owned());
        }
        let key = request.access_key_id?;
        if let Some(account) = lock(&self.session_accounts).get(key) {
            return Some(account.clone());
        }
        self.iam_as_aws
            .as_ref()?
            .reader
            .own_account_if_key(key)
            .await
    }
}

/// The refusal of `write`, judged on moto's state as `iam` reads it; `Ok(None)` to forward it
/// (also when its principal or policy does not exist: moto answers `NoSuchEntity` then), `Err`
/// with the reason when the state cannot be read.
async fn judge_on_state(
    iam: &aws_sdk_iam::Client,
    write: &Counted<'_>,
    quotas: &IamQuotas,
) -> Result<Option<Refusal>, String> {
    match write {
        Counted::InlinePolicy {
            kind,
            name,
            policy_name,
            size,
        } => {
            let Some(sizes) = inline_policy_sizes(iam, *kind, name).await? else {
                return Ok(None);
            };
            // The policy of the same name is replaced, so it does not count.
            let others: usize = sizes
                .iter()
                .filter(|(existing, _)| existing.as_str() != *policy_name)
                .map(|(_, size)| size)
                .sum();
            let quota = quotas.inline_policy_size(*kind);
            Ok((others + size > quota).then(|| inline_policy_refusal(*kind, name, quota)))
        }
        // Managed policies attached to a role or user: 10 by default, to a group 10 ([quotas]:
        // "Managed policies attached to an IAM role/user/group"), refused `LimitExceeded`
        // "Cannot exceed quota for PoliciesPerRole: 10" as AWS answers AttachRolePolicy
        // (aws/eks-hybrid#741: "Status Code: 409"; LBHackney-IT/Data-Platform#1882; with a
        // raised quota "PoliciesPerRole: 20", aws-amplify/amplify-cli#9561), AttachUserPolicy
        // ("Cannot exceed quota for PoliciesPerUser: 10", e.g. the AttachUserPolicy refusals
        // quoted in deployment logs and runbooks found by a code search of that message) and
        // AttachGroupPolicy ("An error occurred (LimitExceeded) when calling the
        // AttachGroupPolicy operation: Cannot exceed quota for PoliciesPerGroup: 10", likewise).
        // Attaching a policy that is attached already changes nothing and passes.
        Counted::Attachment { kind, name, arn } => {
            let Some(attached) = attached_policy_arns(iam, *kind, name).await? else {
                return Ok(None);
            };
            let quota = quotas.attached_policies(*kind);
            Ok(
                (!attached.contains(*arn) && attached.len() >= quota).then(|| {
                    Refusal::limit_exceeded(format!(
                        "Cannot exceed quota for {}: {quota}",
                        kind.attachment_quota_name()
                    ))
                }),
            )
        }
        // "Versions of a managed policy that can be stored: 5" ([quotas]); "A managed policy
        // can have up to five versions. If the policy has five versions, you must delete an
        // existing version ... before you create a new version" (IAM API Reference,
        // CreatePolicyVersion), refused `LimitExceeded` "A managed policy can have up to 5
        // versions. Before you create a new version, you must delete an existing version." as
        // AWS answered it (99designs/iamy#21: "An error occurred (LimitExceeded) when calling
        // the CreatePolicyVersion operation: ...").
        Counted::PolicyVersion { arn, .. } => {
            let Some(versions) = policy_version_count(iam, arn).await? else {
                return Ok(None);
            };
            let quota = quotas.versions_per_policy;
            Ok((versions >= quota).then(|| {
                Refusal::limit_exceeded(format!(
                    "A managed policy can have up to {quota} versions. Before you create a new \
                     version, you must delete an existing version."
                ))
            }))
        }
        // "Tags that can be attached to an IAM role: 50" ([quotas]); TagRole: "If any one of
        // the tags is invalid or if you exceed the allowed maximum number of tags, then the
        // entire request fails" and declares `LimitExceededException` (IAM API Reference,
        // TagRole; [model]). A tag whose key the role has already is overwritten, so only new
        // keys count. The code and status are AWS's; no captured AWS answer of this refusal
        // was found, so its message is the proxy's, in the words of IAM's other quota
        // refusals.
        Counted::RoleTags { role, keys } => {
            let Some(existing) = role_tag_keys(iam, role).await? else {
                return Ok(None);
            };
            let quota = quotas.tags_per_role;
            let total = existing.union(keys).count();
            Ok((total > quota).then(|| {
                Refusal::limit_exceeded(format!("Cannot exceed quota for TagsPerRole: {quota}"))
            }))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading moto's state, bypassing the proxy.
// ---------------------------------------------------------------------------------------------

/// The session name of the proxy's own sessions in the accounts it reads.
const READER_SESSION_NAME: &str = "aws-proxy-state-reader";

/// IAM clients that talk to the upstream directly, one per account the proxy can read.
struct StateReader {
    upstream: String,
    roles: Vec<String>,
    clients: tokio::sync::OnceCell<ReaderClients>,
}

struct ReaderClients {
    /// The access key ID of the proxy's own identity (compared, never printed).
    own_key: String,
    own_account: String,
    /// The ARN of the proxy's own identity (GetCallerIdentity).
    own_arn: String,
    by_account: HashMap<String, aws_sdk_iam::Client>,
    /// The test bed's administrator of the source account (`SOURCE_ADMIN_ACCESS_KEY_ID`,
    /// `SOURCE_ADMIN_SECRET_ACCESS_KEY`), when the environment names one: its account and a
    /// client. The authorization of AssumeRole reads callers' keys and policies with it, which
    /// the proxy's own identity (the operator's user) may not read.
    admin: Option<(String, aws_sdk_iam::Client)>,
}

impl StateReader {
    /// The clients, connected on first use (an attempt that fails is tried again next time).
    async fn clients(&self) -> Result<&ReaderClients, String> {
        self.clients.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<ReaderClients, String> {
        use aws_credential_types::provider::ProvideCredentials;
        let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.upstream)
            .region(
                aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else("us-east-1"),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .load()
            .await;
        let credentials = base
            .credentials_provider()
            .ok_or("the proxy has no credentials to read moto with")?
            .provide_credentials()
            .await
            .map_err(|_| "the proxy has no credentials to read moto with (AWS_ACCESS_KEY_ID)")?;
        let identity = aws_sdk_sts::Client::new(&base)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| {
                format!(
                    "GetCallerIdentity of the proxy's reader failed ({})",
                    error_code(&e)
                )
            })?;
        let own_account = identity
            .account()
            .ok_or("GetCallerIdentity of the proxy's reader named no account")?
            .to_owned();
        let own_arn = identity.arn().unwrap_or_default().to_owned();
        let admin = Self::connect_admin(&base).await;
        let mut by_account =
            HashMap::from([(own_account.clone(), aws_sdk_iam::Client::new(&base))]);
        for role in &self.roles {
            let Some(account) = role.split(':').nth(4).filter(|a| !a.is_empty()) else {
                continue;
            };
            if by_account.contains_key(account) {
                continue;
            }
            let provider = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name(READER_SESSION_NAME)
                .configure(&base)
                .build()
                .await;
            let config = base
                .to_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build();
            by_account.insert(account.to_owned(), aws_sdk_iam::Client::new(&config));
        }
        Ok(ReaderClients {
            own_key: credentials.access_key_id().to_owned(),
            own_account,
            own_arn,
            by_account,
            admin,
        })
    }

    /// The client of the source account's administrator, if the environment names its keys and
    /// they work (GetCallerIdentity, to learn its account).
    async fn connect_admin(base: &aws_config::SdkConfig) -> Option<(String, aws_sdk_iam::Client)> {
        let id = std::env::var("SOURCE_ADMIN_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("SOURCE_ADMIN_SECRET_ACCESS_KEY").ok()?;
        if id.is_empty() || secret.is_empty() {
            return None;
        }
        let credentials = aws_credential_types::Credentials::new(
            id,
            secret,
            None,
            None,
            "aws-proxy-source-admin",
        );
        let config = base
            .to_builder()
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
            )
            .build();
        let identity = aws_sdk_sts::Client::new(&config)
            .get_caller_identity()
            .send()
            .await
            .ok()?;
        let account = identity.account()?.to_owned();
        Some((account, aws_sdk_iam::Client::new(&config)))
    }

    /// The client that reads `account` for the authorization of AssumeRole: the administrator's
    /// in its account, else the reader of [`StateReader::client`].
    async fn authorization_client(&self, account: &str) -> Result<aws_sdk_iam::Client, String> {
        let clients = self.clients().await?;
        if let Some((admin_account, admin)) = &clients.admin
            && admin_account == account
        {
            return Ok(admin.clone());
        }
        self.client(account).await
    }

    /// Every account the proxy can read, with the client it reads it with (the
    /// administrator's account first).
    async fn readable_accounts(&self) -> Vec<(String, aws_sdk_iam::Client)> {
        let Ok(clients) = self.clients().await else {
            return Vec::new();
        };
        let mut accounts: Vec<(String, aws_sdk_iam::Client)> =
            clients.admin.iter().cloned().collect();
        for (account, client) in &clients.by_account {
            if !accounts.iter().any(|(a, _)| a == account) {
                accounts.push((account.clone(), client.clone()));
            }
        }
        accounts
    }

    /// The proxy's own account and ARN, when `key` is its own access key.
    async fn own_identity_if_key(&self, key: &str) -> Option<(String, String)> {
        let clients = self.clients().await.ok()?;
        (clients.own_key == key).then(|| (clients.own_account.clone(), clients.own_arn.clone()))
    }

    async fn client(&self, account: &str) -> Result<aws_sdk_iam::Client, String> {
        self.clients()
            .await?
            .by_account
            .get(account)
            .cloned()
            .ok_or_else(|| format!("the proxy has no reader for account {account}"))
    }

    /// The proxy's own account, when `key` is its own access key.
    async fn own_account_if_key(&self, key: &str) -> Option<String> {
        let clients = self.clients().await.ok()?;
        (clients.own_key == key).then(|| clients.own_account.clone())
    }
}

fn error_code<E: aws_sdk_iam::error::ProvideErrorMetadata>(error: &E) -> String {
    error.code().unwrap_or("no error code").to_owned()
}

/// `Ok(Some)` for an answer, `Ok(None)` for `NoSuchEntity`, `Err` with the reason otherwise.
fn absent_if_no_such_entity<T, E>(
    operation: &str,
    result: Result<T, aws_sdk_iam::error::SdkError<E, aws_smithy_runtime_api::http::Response>>,
) -> Result<Option<T>, String>
where
    E: aws_sdk_iam::error::ProvideErrorMetadata,
{
    use aws_sdk_iam::error::ProvideErrorMetadata;
    match result {
        Ok(answer) => Ok(Some(answer)),
        Err(e) if e.code() == Some("NoSuchEntity") => Ok(None),
        Err(e) => Err(format!(
            "{operation} by the proxy's reader failed ({})",
            error_code(&e)
        )),
    }
}

/// The inline policies of a principal and their sizes; `None` when it does not exist.
async fn inline_policy_sizes(
    iam: &aws_sdk_iam::Client,
    kind: PrincipalKind,
    name: &str,
) -> Result<Option<BTreeMap<String, usize>>, String> {
    let mut names = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = match kind {
            PrincipalKind::Role => absent_if_no_such_entity(
                "ListRolePolicies",
                iam.list_role_policies()
                    .role_name(name)
                    .set_marker(marker.clone())
                    .send()
                    .await,
            )?
            .map(|o| (o.policy_names().to_vec(), o.is_truncated(), o.marker)),
            PrincipalKind::User => absent_if_no_such_entity(
                "ListUserPolicies",
                iam.list_user_policies()
                    .user_name(name)
                    .set_marker(marker.clone())
                    .send()
                    .await,
            )?
            .map(|o| (o.policy_names().to_vec(), o.is_truncated(), o.marker)),
            PrincipalKind::Group => absent_if_no_such_entity(
                "ListGroupPolicies",
                iam.list_group_policies()
                    .group_name(name)
                    .set_marker(marker.clone())
                    .send()
                    .await,
            )?
            .map(|o| (o.policy_names().to_vec(), o.is_truncated(), o.marker)),
        };
        let Some((page_names, truncated, next)) = page else {
            return Ok(None);
        };
        names.extend(page_names);
        match (truncated, next) {
            (true, Some(next)) => marker = Some(next),
            _ => break,
        }
    }
    let mut sizes = BTreeMap::new();
    for policy in names {
        let document = match kind {
            PrincipalKind::Role => absent_if_no_such_entity(
                "GetRolePolicy",
                iam.get_role_policy()
                    .role_name(name)
                    .policy_name(&policy)
                    .send()
                    .await,
            )?
            .map(|o| o.policy_document),
            PrincipalKind::User => absent_if_no_such_entity(
                "GetUserPolicy",
                iam.get_user_policy()
                    .user_name(name)
                    .policy_name(&policy)
                    .send()
                    .await,
            )?
            .map(|o| o.policy_document),
            PrincipalKind::Group => absent_if_no_such_entity(
                "GetGroupPolicy",
                iam.get_group_policy()
                    .group_name(name)
                    .policy_name(&policy)
                    .send()
                    .await,
            )?
            .map(|o| o.policy_document),
        };
        // A policy deleted meanwhile no longer counts.
        if let Some(document) = document {
            sizes.insert(policy, iam_policy_size(&decoded_document(&document)));
        }
    }
    Ok(Some(sizes))
}

/// The ARNs of the managed policies attached to a principal; `None` when it does not exist.
async fn attached_policy_arns(
    iam: &aws_sdk_iam::Client,
    kind: PrincipalKind,
    name: &str,
) -> Result<Option<BTreeSet<String>>, String> {
    let mut arns = BTreeSet::new();
    let mut marker: Option<String> = None;
    loop {
        let page = match kind {
            PrincipalKind::Role => absent_if_no_such_entity(
                "ListAttachedRolePolicies",
                iam.list_attached_role_policies()
                    .role_name(name)
                    .set_marker(marker.clone())
                    .send()
                    .await,
            )?
            .map(|o| {
                (
                    o.attached_policies.unwrap_or_default(),
                    o.is_truncated,
                    o.marker,
                )
            }),
            PrincipalKind::User => absent_if_no_such_entity(
                "ListAttachedUserPolicies",
                iam.list_attached_user_policies()
                    .user_name(name)
                    .set_marker(marker.clone())
                    .send()
                    .await,
            )?
            .map(|o| {
                (
                    o.attached_policies.unwrap_or_default(),
                    o.is_truncated,
                    o.marker,
                )
            }),
            PrincipalKind::Group => absent_if_no_such_entity(
                "ListAttachedGroupPolicies",
                iam.list_attached_group_policies()
                    .group_name(name)
                    .set_marker(marker.clone())
                    .send()
                    .await,
            )?
            .map(|o| {
                (
                    o.attached_policies.unwrap_or_default(),
                    o.is_truncated,
                    o.marker,
                )
            }),
        };
        let Some((policies, truncated, next)) = page else {
            return Ok(None);
        };
        arns.extend(policies.into_iter().filter_map(|p| p.policy_arn));
        match (truncated, next) {
            (true, Some(next)) => marker = Some(next),
            _ => return Ok(Some(arns)),
        }
    }
}

/// How many versions a managed policy has; `None` when it does not exist.
async fn policy_version_count(
    iam: &aws_sdk_iam::Client,
    arn: &str,
) -> Result<Option<usize>, String> {
    let mut count = 0;
    let mut marker: Option<String> = None;
    loop {
        let Some(page) = absent_if_no_such_entity(
            "ListPolicyVersions",
            iam.list_policy_versions()
                .policy_arn(arn)
                .set_marker(marker.clone())
                .send()
                .await,
        )?
        else {
            return Ok(None);
        };
        count += page.versions().len();
        match (page.is_truncated(), page.marker) {
            (true, Some(next)) => marker = Some(next),
            _ => return Ok(Some(count)),
        }
    }
}

/// The tag keys of a role, lower-cased (GetRole returns them all, and the proxy's identity may
/// read it where it may not call ListRoleTags); `None` when it does not exist.
async fn role_tag_keys(
    iam: &aws_sdk_iam::Client,
    role: &str,
) -> Result<Option<BTreeSet<String>>, String> {
    let answer = absent_if_no_such_entity("GetRole", iam.get_role().role_name(role).send().await)?;
    Ok(answer.map(|o| {
        o.role()
            .map(|r| r.tags().iter().map(|t| t.key().to_lowercase()).collect())
            .unwrap_or_default()
    }))
}

/// A GetAccountSummary answer with `quotas` as its `SummaryMap` values (each
/// `<entry><key>K</key><value>V</value></entry>`): values replaced, missing keys added.
fn with_summary_quotas(xml: &str, quotas: &[(&'static str, usize)]) -> String {
    let (Some(open), Some(close)) = (xml.find("<SummaryMap>"), xml.find("</SummaryMap>")) else {
        return xml.to_owned();
    };
    let start = open + "<SummaryMap>".len();
    if close < start {
        return xml.to_owned();
    }
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut rest = &xml[start..close];
    while let Some(begin) = rest.find("<entry>") {
        let Some(end) = rest[begin..].find("</entry>") else {
            break;
        };
        let entry = &rest[begin + "<entry>".len()..begin + end];
        if let (Some(key), Some(value)) = (xml_element(entry, "key"), xml_element(entry, "value")) {
            entries.push((key.trim().to_owned(), value.trim().to_owned()));
        }
        rest = &rest[begin + end + "</entry>".len()..];
    }
    for (key, quota) in quotas {
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = quota.to_string(),
            None => entries.push(((*key).to_owned(), quota.to_string())),
        }
    }
    let map: String = entries
        .iter()
        .map(|(k, v)| format!("<entry><key>{k}</key><value>{v}</value></entry>"))
        .collect();
    format!("{}{map}{}", &xml[..start], &xml[close..])
}

// =============================================================================================
// The authorization of sts:AssumeRole, as AWS evaluates it.
//
// moto's STS does not read the role's trust policy at all, and moto's IAM authorization matches
// only the Action and Resource of the caller's identity policies, ignoring every Condition: on
// moto, whoever may call sts:AssumeRole on `role/*` assumes any role. AWS evaluates both sides.
// Sources:
// - [cross-account] IAM User Guide, "Cross-account policy evaluation logic"
//   (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic-cross-account.html):
//   a request from one account to a role of another is allowed only when the caller's identity
//   policies allow it AND the role's trust policy (a resource-based policy) allows it.
// - [evaluation] "Policy evaluation logic"
//   (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
//   an explicit Deny in any policy wins; otherwise an Allow is needed; within one account a
//   resource-based policy that names the principal (a user's ARN, a role's or a session's)
//   allows by itself, while one that names the account (`arn:aws:iam::ACCT:root`, the bare
//   account ID, `*`) delegates to the account, whose identity policies must allow too
//   ("Resource-based policies" and reference_policies_elements_principal.html, "AWS account
//   principals").
// - [trust] "Grant a user permissions to switch roles" and "Roles terms and concepts"
//   (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_permissions-to-switch.html):
//   the trust policy must allow the principal sts:AssumeRole, the principal's permissions
//   policy must allow sts:AssumeRole on the role's ARN; a role ARN in a trust policy's
//   Principal stands for every session of that role (reference_policies_elements_principal.html,
//   "IAM role principals" and "Role session principals").
// - [tags] "Pass session tags in AWS STS", "Permissions required to add session tags"
//   (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_session-tags.html): passing session
//   tags (Tags, TransitiveTagKeys) needs the permissions-only action sts:TagSession, in the
//   role's trust policy and in the caller's policies.
// - [source-identity] "Monitor and control actions taken with assumed roles"
//   (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_temp_control-access_monitor.html):
//   setting SourceIdentity needs sts:SetSourceIdentity, in the trust policy and the caller's
//   policies.
// - [conditions] "IAM JSON policy elements: Condition operators"
//   (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html)
//   and "Condition with multiple context keys or values"
//   (reference_policies_condition-logic-multiple-context-keys-or-values.html): operators AND
//   each other, keys within an operator AND, values of one key OR (a negated operator: none may
//   match); a key missing from the request context matches no positive operator and every
//   negated one; `...IfExists` matches a missing key; `Null` tests presence; `ForAnyValue:` /
//   `ForAllValues:` for multivalued keys (`ForAllValues:` matches a missing key). Condition key
//   names are not case sensitive, values are (except `...IgnoreCase`); tag keys are not
//   (IAM's tags are unique whatever their case: reference_iam-quotas.html, "tagging").
// - [denied] AWS's answer: HTTP 403, query-protocol error `AccessDenied` of type Sender, "User:
//   <caller ARN> is not authorized to perform: sts:AssumeRole on resource: <role ARN>", the
//   caller's ARN being an assumed-role session's for a session (captured STS answers:
//   Netflix/security_monkey#77 shows the whole XML document; amzn/selling-partner-api-models#891
//   and #1186 and aws/karpenter-provider-aws#4680 the message for users and sessions). AWS
//   answers so also for a role that does not exist (it does not tell the two apart); moto issues
//   a session for any ARN.
//
// Not modelled: permissions boundaries of the caller, SCPs and RCPs, session policies of the
// calling session, `NotPrincipal`, principals stored as unique IDs (a trust policy naming a
// user that was deleted and recreated does not trust the new one on AWS), transitive tags and
// source identities carried through role chains, and condition keys beyond those
// [`AssumeRoleContext::values`] knows: a statement that needs one leaves the request unjudged
// (forwarded, `LoggedRequest::unjudged` says why), never silently passed or refused.
// =============================================================================================

/// A session STS issued through the proxy, as the caller of a later request.
#[derive(Clone, Debug)]
struct SessionPrincipal {
    account: String,
    /// Its `AssumedRoleUser` ARN: `arn:aws:sts::ACCT:assumed-role/NAME/SESSION`.
    session_arn: String,
    /// The role's ARN as the AssumeRole request named it (with its path).
    role_arn: String,
}

/// Who signed a request, as AWS's authorization sees them.
#[derive(Clone, Debug)]
struct Caller {
    /// The ARN AWS names in a refusal: the user's, or the assumed-role session's.
    arn: String,
    account: String,
    /// `aws:PrincipalArn`: the user's ARN, or the role's for a session.
    principal_arn: String,
    /// The ARNs that name this caller in a Principal element: the user's; for a session the
    /// role's and the session's.
    named_as: Vec<String>,
    /// Whose identity policies apply: the user's, or the session's role's.
    policies_of: (PrincipalKind, String),
    /// `aws:PrincipalTag/*`: a user's tags; `None` for a session (not modelled).
    tags: Option<BTreeMap<String, String>>,
}

/// A three-valued answer: a condition the proxy cannot evaluate is neither true nor false.
#[derive(Clone, Debug, PartialEq)]
enum Eval {
    Yes,
    No,
    Unknown(String),
}

impl Eval {
    fn of(yes: bool) -> Eval {
        if yes { Eval::Yes } else { Eval::No }
    }

    /// Both (false wins over unknown).
    fn and(self, other: Eval) -> Eval {
        match (self, other) {
            (Eval::No, _) | (_, Eval::No) => Eval::No,
            (Eval::Unknown(r), _) | (_, Eval::Unknown(r)) => Eval::Unknown(r),
            _ => Eval::Yes,
        }
    }
}

/// How a Principal element named the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NamedBy {
    /// Its own ARN (a user's, a role's for its sessions, a session's).
    Arn,
    /// Its account (`arn:aws:iam::ACCT:root`, `ACCT`) or everyone (`*`).
    Account,
}

/// What one policy (or a set of them) says about one action.
#[derive(Clone, Debug, PartialEq)]
struct PolicyAnswer {
    denied: Eval,
    allowed: Eval,
    /// For a trust policy that allows: whether an allowing statement named the caller by ARN.
    named_by: Option<NamedBy>,
}

/// What the conditions of an AssumeRole request are evaluated against.
struct AssumeRoleContext<'a> {
    params: &'a BTreeMap<String, String>,
    caller: &'a Caller,
    role_tags: &'a BTreeMap<String, String>,
    now: Timestamp,
}

impl AssumeRoleContext<'_> {
    /// The session tags of the request (`Tags.member.N.Key` / `.Value`).
    fn session_tags(&self) -> Vec<(String, String)> {
        tags_of(self.params).into_values().collect()
    }

    fn transitive_tag_keys(&self) -> Vec<String> {
        let mut keys: Vec<(usize, String)> = self
            .params
            .iter()
            .filter_map(|(name, value)| {
                let n = name.strip_prefix("TransitiveTagKeys.member.")?;
                Some((n.parse().ok()?, value.clone()))
            })
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    /// The values of condition key `key` in the request context: `Ok(None)` when the request
    /// does not carry it, `Err` for a key the proxy does not model. The flag says whether the
    /// key is multivalued.
    fn values(&self, key: &str) -> Result<(Option<Vec<String>>, bool), String> {
        let lower = key.to_ascii_lowercase();
        let param = |name: &str| Ok((self.params.get(name).map(|v| vec![v.clone()]), false));
        let tag = |tags: &BTreeMap<String, String>, wanted: &str| {
            tags.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(wanted))
                .map(|(_, v)| vec![v.clone()])
        };
        let list = |values: Vec<String>| Ok(((!values.is_empty()).then_some(values), true));
        if let Some(wanted) = lower
            .strip_prefix("iam:resourcetag/")
            .or_else(|| lower.strip_prefix("aws:resourcetag/"))
        {
            return Ok((tag(self.role_tags, wanted), false));
        }
        if let Some(wanted) = lower.strip_prefix("aws:requesttag/") {
            let tags: BTreeMap<String, String> = self.session_tags().into_iter().collect();
            return Ok((tag(&tags, wanted), false));
        }
        if let Some(wanted) = lower.strip_prefix("aws:principaltag/") {
            return match &self.caller.tags {
                Some(tags) => Ok((tag(tags, wanted), false)),
                None => Err(format!(
                    "condition key {key}: the tags of a session are not modelled"
                )),
            };
        }
        match lower.as_str() {
            "sts:externalid" => param("ExternalId"),
            "sts:rolesessionname" => param("RoleSessionName"),
            "sts:sourceidentity" => param("SourceIdentity"),
            "aws:principalarn" => Ok((Some(vec![self.caller.principal_arn.clone()]), false)),
            "aws:principalaccount" => Ok((Some(vec![self.caller.account.clone()]), false)),
            "aws:tagkeys" => list(self.session_tags().into_iter().map(|(k, _)| k).collect()),
            "sts:transitivetagkeys" => list(self.transitive_tag_keys()),
            "aws:currenttime" => Ok((Some(vec![self.now.to_string()]), false)),
            "aws:epochtime" => Ok((Some(vec![self.now.as_second().to_string()]), false)),
            _ => Err(format!("condition key {key} is not modelled")),
        }
    }
}

/// `*` any run of characters, `?` one character, as IAM matches actions, resources and
/// `StringLike` values.
fn glob_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let fold = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, t) = (fold(pattern), fold(text));
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `ArnLike` (and `ArnEquals`, which IAM evaluates alike): each of the six colon-separated
/// parts matched on its own, wildcards within a part.
fn arn_like(pattern: &str, arn: &str) -> bool {
    let p: Vec<&str> = pattern.splitn(6, ':').collect();
    let a: Vec<&str> = arn.splitn(6, ':').collect();
    p.len() == 6 && a.len() == 6 && p.iter().zip(&a).all(|(p, a)| glob_match(p, a, false))
}

/// A JSON value or list of values as strings (IAM reads numbers and booleans in policies as
/// their text).
fn string_values(value: &serde_json::Value) -> Vec<String> {
    let one = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match value {
        serde_json::Value::Array(list) => list.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// A timestamp as IAM's date operators read it: ISO 8601 or epoch seconds.
fn policy_date(text: &str) -> Option<Timestamp> {
    text.parse::<Timestamp>()
        .ok()
        .or_else(|| {
            text.parse::<i64>()
                .ok()
                .and_then(|s| Timestamp::from_second(s).ok())
        })
        .or_else(|| {
            // A date without a time: midnight UTC.
            text.parse::<jiff::civil::Date>()
                .ok()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map(|z| z.timestamp())
        })
}

/// Whether a context value (second) matches a policy value (first).
type ValueMatch = fn(&str, &str) -> bool;

/// Whether context value `v` matches policy value `x` under the positive form of `op` (`None`
/// for an operator the proxy does not model), and whether `op` is negated.
fn operator_match(op: &str) -> Option<(ValueMatch, bool)> {
    fn date(x: &str, v: &str, cmp: fn(std::cmp::Ordering) -> bool) -> bool {
        matches!((policy_date(v), policy_date(x)), (Some(v), Some(x)) if cmp(v.cmp(&x)))
    }
    fn number(x: &str, v: &str, cmp: fn(std::cmp::Ordering) -> bool) -> bool {
        matches!((v.parse::<f64>(), x.parse::<f64>()), (Ok(v), Ok(x)) if v.partial_cmp(&x).is_some_and(cmp))
    }
    let found: (ValueMatch, bool) = match op {
        "StringEquals" => (|x, v| x == v, false),
        "StringNotEquals" => (|x, v| x == v, true),
        "StringEqualsIgnoreCase" => (|x, v| x.to_lowercase() == v.to_lowercase(), false),
        "StringNotEqualsIgnoreCase" => (|x, v| x.to_lowercase() == v.to_lowercase(), true),
        "StringLike" => (|x, v| glob_match(x, v, false), false),
        "StringNotLike" => (|x, v| glob_match(x, v, false), true),
        "ArnEquals" | "ArnLike" => (arn_like, false),
        "ArnNotEquals" | "ArnNotLike" => (arn_like, true),
        "Bool" => (|x, v| x.eq_ignore_ascii_case(v), false),
        "DateEquals" => (|x, v| date(x, v, |o| o.is_eq()), false),
        "DateNotEquals" => (|x, v| date(x, v, |o| o.is_eq()), true),
        "DateLessThan" => (|x, v| date(x, v, |o| o.is_lt()), false),
        "DateLessThanEquals" => (|x, v| date(x, v, |o| o.is_le()), false),
        "DateGreaterThan" => (|x, v| date(x, v, |o| o.is_gt()), false),
        "DateGreaterThanEquals" => (|x, v| date(x, v, |o| o.is_ge()), false),
        "NumericEquals" => (|x, v| number(x, v, |o| o.is_eq()), false),
        "NumericNotEquals" => (|x, v| number(x, v, |o| o.is_eq()), true),
        "NumericLessThan" => (|x, v| number(x, v, |o| o.is_lt()), false),
        "NumericLessThanEquals" => (|x, v| number(x, v, |o| o.is_le()), false),
        "NumericGreaterThan" => (|x, v| number(x, v, |o| o.is_gt()), false),
        "NumericGreaterThanEquals" => (|x, v| number(x, v, |o| o.is_ge()), false),
        _ => return None,
    };
    Some(found)
}

/// Whether a statement's `Condition` block holds for `context` [conditions].
fn conditions_hold(condition: Option<&serde_json::Value>, context: &AssumeRoleContext<'_>) -> Eval {
    let Some(condition) = condition else {
        return Eval::Yes;
    };
    let Some(operators) = condition.as_object() else {
        return Eval::Unknown("a Condition that is not an object".to_owned());
    };
    let mut result = Eval::Yes;
    for (operator, block) in operators {
        let (set, op) = if let Some(rest) = operator.strip_prefix("ForAnyValue:") {
            (Some(false), rest)
        } else if let Some(rest) = operator.strip_prefix("ForAllValues:") {
            (Some(true), rest)
        } else {
            (None, operator.as_str())
        };
        let (op, if_exists) = match op.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (op, false),
        };
        let Some(keys) = block.as_object() else {
            return Eval::Unknown(format!("condition operator {operator} without keys"));
        };
        for (key, expected) in keys {
            let expected = string_values(expected);
            if expected.iter().any(|x| x.contains("${")) {
                return result.and(Eval::Unknown(format!(
                    "policy variables in condition {operator} {key} are not modelled"
                )));
            }
            let (actual, multivalued) = match context.values(key) {
                Ok(found) => found,
                Err(reason) => return result.and(Eval::Unknown(reason)),
            };
            let holds = if op == "Null" {
                let absent = actual.is_none();
                Eval::of(expected.iter().any(|x| {
                    (x.eq_ignore_ascii_case("true") && absent)
                        || (x.eq_ignore_ascii_case("false") && !absent)
                }))
            } else {
                let Some((matches, negated)) = operator_match(op) else {
                    return result.and(Eval::Unknown(format!(
                        "condition operator {operator} is not modelled"
                    )));
                };
                match actual {
                    None => Eval::of(if_exists || set == Some(true) || (set.is_none() && negated)),
                    Some(_) if multivalued && set.is_none() => Eval::Unknown(format!(
                        "condition {operator} on the multivalued key {key} without ForAnyValue or \
                         ForAllValues is not modelled"
                    )),
                    Some(values) => {
                        let one = |v: &String| {
                            let any = expected.iter().any(|x| matches(x, v));
                            if negated { !any } else { any }
                        };
                        Eval::of(if set == Some(true) {
                            values.iter().all(one)
                        } else {
                            values.iter().any(one)
                        })
                    }
                }
            };
            result = result.and(holds);
        }
    }
    result
}

/// Whether an `Action`/`NotAction` (or `Resource`/`NotResource`) pair of a statement covers
/// `value`; `None` when the statement has neither.
fn element_covers(
    statement: &serde_json::Value,
    element: &str,
    value: &str,
    matches: impl Fn(&str, &str) -> bool,
) -> Option<bool> {
    if let Some(listed) = statement.get(element) {
        return Some(string_values(listed).iter().any(|p| matches(p, value)));
    }
    let not = statement.get(format!("Not{element}"))?;
    Some(!string_values(not).iter().any(|p| matches(p, value)))
}

/// How a trust statement's Principal names `caller`, if it does [trust] [evaluation].
fn principal_names(
    statement: &serde_json::Value,
    caller: &Caller,
) -> Result<Option<NamedBy>, String> {
    if statement.get("NotPrincipal").is_some() {
        return Err("NotPrincipal in the trust policy is not modelled".to_owned());
    }
    let names: Vec<String> = match statement.get("Principal") {
        Some(serde_json::Value::String(s)) if s == "*" => vec!["*".to_owned()],
        Some(serde_json::Value::Object(map)) => {
            map.get("AWS").map(string_values).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let mut best = None;
    for name in names {
        if caller.named_as.contains(&name) {
            return Ok(Some(NamedBy::Arn));
        }
        let root = format!("arn:aws:iam::{}:root", caller.account);
        if name == "*" || name == caller.account || name == root {
            best = Some(NamedBy::Account);
        }
    }
    Ok(best)
}

/// What `documents` say about `action` on the role `role_arn`: trust policies (`trust`, the
/// Principal must name the caller) or identity policies (the Resource must cover the role).
fn evaluate_policies(
    documents: &[serde_json::Value],
    action: &str,
    role_arn: &str,
    trust: bool,
    context: &AssumeRoleContext<'_>,
) -> PolicyAnswer {
    let mut answer = PolicyAnswer {
        denied: Eval::No,
        allowed: Eval::No,
        named_by: None,
    };
    let statements = documents.iter().flat_map(|d| match &d["Statement"] {
        serde_json::Value::Array(list) => list.iter().collect::<Vec<_>>(),
        single @ serde_json::Value::Object(_) => vec![single],
        _ => Vec::new(),
    });
    for statement in statements {
        let deny = match statement["Effect"].as_str() {
            Some("Deny") => true,
            Some("Allow") => false,
            _ => continue,
        };
        if element_covers(statement, "Action", action, |p, a| glob_match(p, a, true)) != Some(true)
        {
            continue;
        }
        let mut named_by = None;
        let applies = if trust {
            match principal_names(statement, context.caller) {
                Err(reason) => Eval::Unknown(reason),
                Ok(None) => continue,
                Ok(Some(by)) => {
                    named_by = Some(by);
                    Eval::Yes
                }
            }
        } else {
            if element_covers(statement, "Resource", role_arn, |p, r| {
                glob_match(p, r, false)
            }) != Some(true)
            {
                continue;
            }
            Eval::Yes
        };
        let applies = applies.and(conditions_hold(statement.get("Condition"), context));
        if !deny && applies == Eval::Yes && answer.named_by != Some(NamedBy::Arn) {
            answer.named_by = named_by;
        }
        let slot = if deny {
            &mut answer.denied
        } else {
            &mut answer.allowed
        };
        // Yes wins over Unknown, Unknown over No.
        if *slot != Eval::Yes && applies != Eval::No {
            *slot = applies;
        }
    }
    answer
}

/// The role an AssumeRole request names: (account, role name).
fn role_of_arn(arn: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [_, _, "iam", _, account, resource] = parts[..] else {
        return None;
    };
    let name = resource.strip_prefix("role/")?.rsplit('/').next()?;
    (!account.is_empty() && !name.is_empty()).then_some((account, name))
}

/// AWS's refusal of an AssumeRole the caller may not make [denied].
fn access_denied(caller: &str, action: &str, role_arn: &str) -> Refusal {
    Refusal {
        status: StatusCode::FORBIDDEN,
        code: "AccessDenied",
        message: format!(
            "User: {caller} is not authorized to perform: {action} on resource: {role_arn}"
        ),
    }
}

/// A role as the authorization of AssumeRole reads it.
struct RoleForTrust {
    arn: String,
    trust_policy: serde_json::Value,
    tags: BTreeMap<String, String>,
}

impl State {
    /// The verdict on an AssumeRole request: refused as AWS refuses it when the role's trust
    /// policy or the caller's identity policies do not allow it (see the section's sources),
    /// passed when both do, unjudged when the proxy cannot tell.
    async fn judge_assume_role(&self, iam: &IamAsAwsState, request: &Judged<'_>) -> Verdict {
        let Some(role_arn) = request.param("RoleArn") else {
            return Verdict::Pass;
        };
        let Some((role_account, role_name)) = role_of_arn(role_arn) else {
            return Verdict::Pass;
        };
        let caller = match self.caller_of(iam, request).await {
            Ok(caller) => caller,
            Err(reason) => return Verdict::Unjudged(format!("AssumeRole: {reason}")),
        };
        let role = match iam.reader.authorization_client(role_account).await {
            Err(reason) => return Verdict::Unjudged(format!("AssumeRole: {reason}")),
            Ok(client) => match read_role_for_trust(&client, role_name).await {
                Err(reason) => return Verdict::Unjudged(format!("AssumeRole: {reason}")),
                Ok(role) => role,
            },
        };
        // A role that does not exist (or whose ARN has another path) is refused as one that
        // does not trust the caller [denied].
        let Some(role) = role.filter(|r| r.arn == role_arn) else {
            return Verdict::Refuse(access_denied(&caller.arn, "sts:AssumeRole", role_arn));
        };
        let context = AssumeRoleContext {
            params: request.params,
            caller: &caller,
            role_tags: &role.tags,
            now: self.now(),
        };
        let mut actions = vec!["sts:AssumeRole"];
        if request
            .params
            .keys()
            .any(|k| k.starts_with("Tags.member.") || k.starts_with("TransitiveTagKeys.member."))
        {
            actions.push("sts:TagSession");
        }
        if request.param("SourceIdentity").is_some() {
            actions.push("sts:SetSourceIdentity");
        }
        let trust = std::slice::from_ref(&role.trust_policy);
        let mut unknown: Option<String> = None;
        let mut note = |eval: &Eval, whose: &str, action: &str| {
            if let Eval::Unknown(reason) = eval
                && unknown.is_none()
            {
                unknown = Some(format!("AssumeRole ({action}, {whose}): {reason}"));
            }
        };
        // The trust policy first: most refusals need no read of the caller's policies.
        let mut trust_answers = Vec::new();
        for action in &actions {
            let answer = evaluate_policies(trust, action, role_arn, true, &context);
            if answer.denied == Eval::Yes || answer.allowed == Eval::No {
                return Verdict::Refuse(access_denied(&caller.arn, action, role_arn));
            }
            note(&answer.denied, "trust policy", action);
            note(&answer.allowed, "trust policy", action);
            trust_answers.push(answer);
        }
        let identity = match iam.reader.authorization_client(&caller.account).await {
            Err(reason) => Err(reason),
            Ok(client) => identity_policy_documents(&client, &caller.policies_of).await,
        };
        let identity = match identity {
            Ok(documents) => documents,
            Err(reason) => return Verdict::Unjudged(format!("AssumeRole: {reason}")),
        };
        for (action, trusted) in actions.iter().zip(&trust_answers) {
            let answer = evaluate_policies(&identity, action, role_arn, false, &context);
            // Within the role's account a trust policy that names the caller's ARN allows by
            // itself; one that names the account (or everyone), or any trust across accounts,
            // needs the caller's policies to allow too [cross-account] [evaluation].
            let needs_identity =
                caller.account != role_account || trusted.named_by != Some(NamedBy::Arn);
            if answer.denied == Eval::Yes || (needs_identity && answer.allowed == Eval::No) {
                return Verdict::Refuse(access_denied(&caller.arn, action, role_arn));
            }
            note(&answer.denied, "identity policies", action);
            if needs_identity {
                note(&answer.allowed, "identity policies", action);
            }
        }
        match unknown {
            Some(reason) => Verdict::Unjudged(reason),
            None => Verdict::Pass,
        }
    }

    /// The caller of `request`, from its access key: the proxy's own identity, a session
    /// issued through the proxy, or a user of an account the proxy reads (whose key moto's
    /// GetAccessKeyLastUsed names and ListAccessKeys confirms). `Err` says why not.
    async fn caller_of(&self, iam: &IamAsAwsState, request: &Judged<'_>) -> Result<Caller, String> {
        let key = request
            .access_key_id
            .ok_or("the request is not signed with an access key")?;
        if let Some(session) = lock(&self.session_principals).get(key).cloned() {
            let (_, role_name) =
                role_of_arn(&session.role_arn).ok_or("the session's role ARN is not a role's")?;
            return Ok(Caller {
                arn: session.session_arn.clone(),
                account: session.account,
                principal_arn: session.role_arn.clone(),
                named_as: vec![session.role_arn.clone(), session.session_arn],
                policies_of: (PrincipalKind::Role, role_name.to_owned()),
                tags: None,
            });
        }
        let owner = lock(&iam.key_owners).get(key).cloned();
        let (account, user) = match owner {
            Some(owner) => owner,
            None => {
                let found = match iam.reader.own_identity_if_key(key).await {
                    Some((account, arn)) if arn.contains(":user/") => {
                        let name = arn.rsplit('/').next().unwrap_or_default().to_owned();
                        Some((account, name))
                    }
                    _ => self.look_up_key_owner(iam, key).await?,
                };
                let found = found.ok_or(
                    "the proxy cannot identify the caller of the signing key (not its own, not \
                     a session it saw issued, no user of an account it reads)",
                )?;
                lock(&iam.key_owners).insert(key.to_owned(), found.clone());
                found
            }
        };
        let client = iam.reader.authorization_client(&account).await?;
        let answer =
            absent_if_no_such_entity("GetUser", client.get_user().user_name(&user).send().await)?
                .and_then(|o| o.user)
                .ok_or_else(|| format!("the user of the signing key ({user}) no longer exists"))?;
        Ok(Caller {
            arn: answer.arn.clone(),
            account,
            principal_arn: answer.arn.clone(),
            named_as: vec![answer.arn.clone()],
            policies_of: (PrincipalKind::User, user),
            tags: Some(
                answer
                    .tags()
                    .iter()
                    .map(|t| (t.key().to_owned(), t.value().to_owned()))
                    .collect(),
            ),
        })
    }

    /// The account and user name a long-term access key belongs to, looked up in each account
    /// the proxy reads.
    async fn look_up_key_owner(
        &self,
        iam: &IamAsAwsState,
        key: &str,
    ) -> Result<Option<(String, String)>, String> {
        for (account, client) in iam.reader.readable_accounts().await {
            let Ok(used) = client
                .get_access_key_last_used()
                .access_key_id(key)
                .send()
                .await
            else {
                continue;
            };
            let Some(user) = used.user_name().map(str::to_owned) else {
                continue;
            };
            // moto looks the key up in every account: confirm it is this account's user's.
            let Ok(keys) = client.list_access_keys().user_name(&user).send().await else {
                continue;
            };
            if keys
                .access_key_metadata()
                .iter()
                .any(|k| k.access_key_id() == Some(key))
            {
                return Ok(Some((account, user)));
            }
        }
        Ok(None)
    }
}

/// The role `name`'s ARN, trust policy and tags; `None` when it does not exist.
async fn read_role_for_trust(
    iam: &aws_sdk_iam::Client,
    name: &str,
) -> Result<Option<RoleForTrust>, String> {
    let answer = absent_if_no_such_entity("GetRole", iam.get_role().role_name(name).send().await)?;
    let Some(role) = answer.and_then(|o| o.role) else {
        return Ok(None);
    };
    let trust_policy = role
        .assume_role_policy_document()
        .map(|d| serde_json::from_str(&decoded_document(d)))
        .transpose()
        .map_err(|e| format!("the trust policy of role {name} is not JSON ({e})"))?
        .unwrap_or(serde_json::Value::Null);
    Ok(Some(RoleForTrust {
        arn: role.arn().to_owned(),
        trust_policy,
        tags: role
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect(),
    }))
}

fn policy_json(document: &str, whose: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(&decoded_document(document))
        .map_err(|e| format!("a policy of {whose} is not JSON ({e})"))
}

/// The default version's document of managed policy `arn`; `None` when it does not exist.
async fn managed_policy_document(
    iam: &aws_sdk_iam::Client,
    arn: &str,
) -> Result<Option<serde_json::Value>, String> {
    let Some(policy) =
        absent_if_no_such_entity("GetPolicy", iam.get_policy().policy_arn(arn).send().await)?
            .and_then(|o| o.policy)
    else {
        return Ok(None);
    };
    let Some(version) = policy.default_version_id() else {
        return Ok(None);
    };
    let answer = absent_if_no_such_entity(
        "GetPolicyVersion",
        iam.get_policy_version()
            .policy_arn(arn)
            .version_id(version)
            .send()
            .await,
    )?;
    answer
        .and_then(|o| o.policy_version)
        .and_then(|v| v.document)
        .map(|d| policy_json(&d, arn))
        .transpose()
}

/// The identity policies of a user (inline, attached, and those of its groups) or of a role
/// (inline and attached), read now.
async fn identity_policy_documents(
    iam: &aws_sdk_iam::Client,
    (kind, name): &(PrincipalKind, String),
) -> Result<Vec<serde_json::Value>, String> {
    let mut documents = Vec::new();
    let mut managed = BTreeSet::new();
    let mut inline: Vec<(PrincipalKind, String, String)> = Vec::new();
    let mut principals = vec![(*kind, name.clone())];
    if *kind == PrincipalKind::User {
        let groups = iam
            .list_groups_for_user()
            .user_name(name)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| {
                format!(
                    "ListGroupsForUser by the proxy's reader failed ({})",
                    error_code(&e)
                )
            })?;
        principals.extend(
            groups
                .into_iter()
                .map(|g| (PrincipalKind::Group, g.group_name().to_owned())),
        );
    }
    for (kind, name) in &principals {
        if let Some(sizes) = inline_policy_sizes_names(iam, *kind, name).await? {
            inline.extend(sizes.into_iter().map(|p| (*kind, name.clone(), p)));
        }
        if let Some(arns) = attached_policy_arns(iam, *kind, name).await? {
            managed.extend(arns);
        }
    }
    for (kind, name, policy) in inline {
        let document = match kind {
            PrincipalKind::User => absent_if_no_such_entity(
                "GetUserPolicy",
                iam.get_user_policy()
                    .user_name(&name)
                    .policy_name(&policy)
                    .send()
                    .await,
            )?
            .map(|o| o.policy_document),
            PrincipalKind::Role => absent_if_no_such_entity(
                "GetRolePolicy",
                iam.get_role_policy()
                    .role_name(&name)
                    .policy_name(&policy)
                    .send()
                    .await,
            )?
            .map(|o| o.policy_document),
            PrincipalKind::Group => absent_if_no_such_entity(
                "GetGroupPolicy",
                iam.get_group_policy()
                    .group_name(&name)
                    .policy_name(&policy)
                    .send()
                    .await,
            )?
            .map(|o| o.policy_document),
        };
        if let Some(document) = document {
            documents.push(policy_json(&document, &name)?);
        }
    }
    for arn in managed {
        if let Some(document) = managed_policy_document(iam, &arn).await? {
            documents.push(document);
        }
    }
    Ok(documents)
}

/// The names of a principal's inline policies; `None` when it does not exist.
async fn inline_policy_sizes_names(
    iam: &aws_sdk_iam::Client,
    kind: PrincipalKind,
    name: &str,
) -> Result<Option<Vec<String>>, String> {
    let page = match kind {
        PrincipalKind::Role => absent_if_no_such_entity(
            "ListRolePolicies",
            iam.list_role_policies()
                .role_name(name)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await,
        )?,
        PrincipalKind::User => absent_if_no_such_entity(
            "ListUserPolicies",
            iam.list_user_policies()
                .user_name(name)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await,
        )?,
        PrincipalKind::Group => absent_if_no_such_entity(
            "ListGroupPolicies",
            iam.list_group_policies()
                .group_name(name)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await,
        )?,
    };
    Ok(page)
}
