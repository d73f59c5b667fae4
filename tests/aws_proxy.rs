//! The AWS proxy of the tests (tests/common/aws_proxy.rs), checked against the local AWS emulator
//! with the real SDK: each fault does what it says, the operator's error classification sees it
//! as intended, the counts and the request log are right, sessions past their expiration are
//! answered as AWS answers them, and IAM as AWS refuses what AWS refuses: for each rule the
//! request just inside the quota passes, the one past it is refused with AWS's code, status and
//! message (parsed by the SDK as that error), and moto's state is unchanged by the refusal.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use aws_config::{BehaviorVersion, retry::RetryConfig};
use aws_sdk_iam::types::SummaryKeyType;
use aws_sdk_iam::{
    error::{ProvideErrorMetadata, SdkError},
    operation::RequestId,
};
use common::{
    aws_proxy::{AwsProxy, CallCount, Fault, FaultRule, IamQuotas, Outcome},
    env,
};
use cross_account_operator::aws::{AwsError, AwsErrorKind};

/// The operator's own identity, talking to `endpoint` with `attempts` attempts per call (short
/// backoff, so retried faults do not slow the tests down).
async fn clients(endpoint: &str, attempts: u32) -> (aws_sdk_iam::Client, aws_sdk_sts::Client) {
    env("AWS_ACCESS_KEY_ID");
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(10))
                .with_max_backoff(Duration::from_millis(50)),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await;
    (
        aws_sdk_iam::Client::new(&config),
        aws_sdk_sts::Client::new(&config),
    )
}

/// What the operator makes of an SDK error: its classification from code and HTTP status.
fn operator_kind<E: ProvideErrorMetadata, R>(
    err: &SdkError<E, R>,
    status: Option<u16>,
) -> AwsErrorKind {
    AwsError::classify(err.code(), status)
}

fn status_of<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

async fn start_proxy() -> AwsProxy {
    AwsProxy::start(&env("AWS_ENDPOINT_URL")).await
}

#[tokio::test]
async fn forwards_signed_requests_unchanged_and_counts_them() {
    let proxy = start_proxy().await;
    let (iam, sts) = clients(&proxy.endpoint(), 1).await;
    // The emulator enforces authorization and checks signatures: a changed Host header or body
    // would fail these.
    let identity = sts
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity through the proxy");
    assert_eq!(identity.account(), Some(env("SOURCE_ACCOUNT_ID").as_str()));
    for _ in 0..3 {
        iam.get_user()
            .user_name("devTest")
            .send()
            .await
            .expect("GetUser through the proxy");
    }
    let counts = proxy.counts();
    assert_eq!(
        proxy.count("sts", "GetCallerIdentity"),
        CallCount {
            forwarded: 1,
            succeeded: 1,
            faulted: 0,
            delayed: 0
        },
        "{counts:?}"
    );
    assert_eq!(proxy.count("iam", "GetUser").forwarded, 3, "{counts:?}");
    assert_eq!(proxy.total(None).total(), 4, "nothing else: {counts:?}");
    proxy.reset_counts();
    assert!(proxy.counts().is_empty());
}

#[tokio::test]
async fn throttling_is_a_retried_throttling_error() {
    let proxy = start_proxy().await;
    proxy.set_rules(vec![
        FaultRule::new(Fault::Throttling)
            .service("iam")
            .operations(&["GetUser"]),
    ]);
    let (iam, _) = clients(&proxy.endpoint(), 3).await;
    let err = iam
        .get_user()
        .user_name("devTest")
        .send()
        .await
        .expect_err("every GetUser is throttled");
    assert_eq!(err.code(), Some("Throttling"), "{err:?}");
    assert_eq!(err.message(), Some("Rate exceeded"));
    assert_eq!(status_of(&err), Some(400));
    assert_eq!(
        operator_kind(&err, status_of(&err)),
        AwsErrorKind::Throttled
    );
    assert!(err.meta().request_id().is_some(), "a request ID: {err:?}");
    // The SDK's retry classifier took it for a retryable (throttling) error: all attempts used.
    assert_eq!(
        proxy.count("iam", "GetUser"),
        CallCount {
            forwarded: 0,
            succeeded: 0,
            faulted: 3,
            delayed: 0
        }
    );
    // Other operations pass (one the operator's identity may call: the seed's policy allows
    // ListAttachedUserPolicies, not ListUserPolicies).
    iam.list_attached_user_policies()
        .user_name("devTest")
        .send()
        .await
        .expect("ListAttachedUserPolicies is not throttled");
    assert_eq!(proxy.count("iam", "ListAttachedUserPolicies").forwarded, 1);
}

#[tokio::test]
async fn server_errors_are_retried_transient_errors() {
    let proxy = start_proxy().await;
    let (_, sts) = clients(&proxy.endpoint(), 2).await;
    for (fault, code, status) in [
        (Fault::InternalFailure, "InternalFailure", 500),
        (Fault::ServiceUnavailable, "ServiceUnavailable", 503),
    ] {
        proxy.reset_counts();
        proxy.set_rules(vec![FaultRule::new(fault.clone()).service("sts")]);
        let err = sts
            .get_caller_identity()
            .send()
            .await
            .expect_err("every STS call fails");
        assert_eq!(err.code(), Some(code), "{fault:?}: {err:?}");
        assert_eq!(status_of(&err), Some(status), "{fault:?}");
        assert_eq!(
            operator_kind(&err, status_of(&err)),
            AwsErrorKind::Transient,
            "{fault:?}"
        );
        assert_eq!(
            proxy.count("sts", "GetCallerIdentity").faulted,
            2,
            "{fault:?} is retried by the SDK"
        );
    }
    proxy.clear_rules();
    sts.get_caller_identity()
        .send()
        .await
        .expect("no rules: the call passes");
}

#[tokio::test]
async fn connection_reset_is_a_connection_error_without_a_response() {
    let proxy = start_proxy().await;
    proxy.set_rules(vec![
        FaultRule::new(Fault::ConnectionReset)
            .service("sts")
            .operations(&["GetCallerIdentity"]),
    ]);
    let (_, sts) = clients(&proxy.endpoint(), 1).await;
    let err = sts
        .get_caller_identity()
        .send()
        .await
        .expect_err("the connection is reset");
    match &err {
        SdkError::DispatchFailure(failure) => assert!(
            failure.is_io() || failure.is_other(),
            "a connection-level failure: {err:?}"
        ),
        other => panic!("expected a dispatch (connection) failure, got {other:?}"),
    }
    assert!(err.raw_response().is_none(), "no HTTP response at all");
    assert_eq!(
        operator_kind(&err, status_of(&err)),
        AwsErrorKind::Transient
    );
    assert_eq!(proxy.count("sts", "GetCallerIdentity").faulted, 1);
}

#[tokio::test]
async fn latency_delays_and_then_forwards() {
    let proxy = start_proxy().await;
    let delay = Duration::from_millis(800);
    proxy.set_rules(vec![
        FaultRule::new(Fault::Latency(delay))
            .service("iam")
            .operations(&["GetUser"]),
    ]);
    let (iam, _) = clients(&proxy.endpoint(), 1).await;
    let started = Instant::now();
    iam.get_user()
        .user_name("devTest")
        .send()
        .await
        .expect("a delayed call still succeeds");
    assert!(
        started.elapsed() >= delay,
        "took {:?}, less than the delay",
        started.elapsed()
    );
    assert_eq!(
        proxy.count("iam", "GetUser"),
        CallCount {
            forwarded: 1,
            succeeded: 1,
            faulted: 0,
            delayed: 1
        }
    );
}

#[tokio::test]
async fn outage_fails_every_matching_request_until_cleared() {
    let proxy = start_proxy().await;
    // Probability 0 does not matter for an outage: every matching request fails.
    proxy.set_rules(vec![
        FaultRule::new(Fault::Outage)
            .service("sts")
            .probability(0.0),
    ]);
    let (iam, sts) = clients(&proxy.endpoint(), 1).await;
    for _ in 0..5 {
        let err = sts
            .get_caller_identity()
            .send()
            .await
            .expect_err("STS is out");
        assert!(
            matches!(err, SdkError::DispatchFailure(_)),
            "a connection failure: {err:?}"
        );
    }
    iam.get_user()
        .user_name("devTest")
        .send()
        .await
        .expect("IAM is not part of the outage");
    assert_eq!(proxy.count("sts", "GetCallerIdentity").faulted, 5);
    proxy.clear_rules();
    sts.get_caller_identity()
        .send()
        .await
        .expect("the outage is over");
    assert_eq!(proxy.count("sts", "GetCallerIdentity").forwarded, 1);
}

#[tokio::test]
async fn probability_body_and_times_limit_where_and_how_often_a_rule_fires() {
    let proxy = start_proxy().await;
    let (iam, _) = clients(&proxy.endpoint(), 1).await;
    proxy.set_rules(vec![
        FaultRule::new(Fault::Throttling)
            .service("iam")
            .probability(0.5),
    ]);
    let calls = 120;
    let mut throttled = 0;
    for _ in 0..calls {
        match iam.get_user().user_name("devTest").send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("Throttling") => throttled += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    // Binomial(120, 0.5): 30..90 holds with overwhelming probability.
    assert!(
        (30..=90).contains(&throttled),
        "{throttled} of {calls} throttled at probability 0.5"
    );
    assert_eq!(proxy.count("iam", "GetUser").faulted, throttled);
    assert_eq!(proxy.count("iam", "GetUser").total(), calls);

    // A rule for one resource: the other user's calls pass.
    proxy.reset_counts();
    proxy.set_rules(vec![
        FaultRule::new(Fault::Throttling)
            .service("iam")
            .body_contains("UserName=devTest"),
    ]);
    let err = iam
        .get_user()
        .user_name("devTest")
        .send()
        .await
        .expect_err("devTest's calls are throttled");
    assert_eq!(err.code(), Some("Throttling"));
    iam.get_user()
        .user_name("cross-account-operator")
        .send()
        .await
        .expect("another user's calls pass");

    // A rule that may fire twice, then lets everything through.
    proxy.reset_counts();
    proxy.set_rules(vec![
        FaultRule::new(Fault::ServiceUnavailable)
            .service("iam")
            .times(2),
    ]);
    let outcomes: Vec<bool> = get_user_outcomes(&iam, 5).await;
    assert_eq!(outcomes, [false, false, true, true, true]);
    assert_eq!(proxy.count("iam", "GetUser").faulted, 2);
}

/// `n` GetUser calls one after another: whether each succeeded.
async fn get_user_outcomes(iam: &aws_sdk_iam::Client, n: usize) -> Vec<bool> {
    let mut outcomes = Vec::new();
    for _ in 0..n {
        outcomes.push(iam.get_user().user_name("devTest").send().await.is_ok());
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_all_forwarded_and_counted() {
    let proxy = start_proxy().await;
    let (iam, _) = clients(&proxy.endpoint(), 1).await;
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let iam = iam.clone();
            tokio::spawn(async move { iam.get_user().user_name("devTest").send().await })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("task")
            .expect("GetUser through the proxy");
    }
    assert_eq!(proxy.count("iam", "GetUser").forwarded, 40);
}

#[tokio::test]
async fn the_log_records_operation_parameters_access_key_time_and_outcome() {
    let proxy = start_proxy().await;
    let (iam, _) = clients(&proxy.endpoint(), 1).await;
    let key = env("AWS_ACCESS_KEY_ID");
    iam.get_user()
        .user_name("devTest")
        .send()
        .await
        .expect("GetUser through the proxy");
    let mark = proxy.mark();
    let started = proxy.now();
    // A role name that needs form encoding (`=`, `,`, `@`, `+`): the log holds it decoded.
    let odd_name = "no-such=role,x@y+z";
    let err = iam
        .get_role()
        .role_name(odd_name)
        .send()
        .await
        .expect_err("no such role");
    assert!(common::is_no_such_entity(&err), "{err:?}");
    proxy.set_rules(vec![
        FaultRule::new(Fault::Throttling)
            .service("iam")
            .operations(&["ListUserPolicies"]),
    ]);
    iam.list_user_policies()
        .user_name("devTest")
        .send()
        .await
        .expect_err("throttled");
    let ended = proxy.now();

    let all = proxy.requests();
    let since = proxy.requests_since(&mark);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(since.len(), 2, "the mark leaves the first out: {since:?}");
    assert_eq!(all[1..], since[..]);
    let get_user = &all[0];
    assert!(get_user.is("iam", "GetUser"), "{get_user:?}");
    assert_eq!(get_user.param("UserName"), Some("devTest"));
    assert_eq!(get_user.param("Action"), Some("GetUser"));
    assert!(get_user.param("Version").is_some(), "{get_user:?}");
    assert_eq!(get_user.outcome, Outcome::Answered(200));
    assert!(get_user.succeeded() && get_user.reached_upstream() && !get_user.faulted());
    // Compared, never printed.
    assert!(
        all.iter()
            .all(|r| r.access_key_id.as_deref() == Some(key.as_str())),
        "every request is logged with the access key ID it was signed with"
    );

    let get_role = &since[0];
    assert!(get_role.is("iam", "GetRole"), "{get_role:?}");
    assert_eq!(get_role.param("RoleName"), Some(odd_name));
    assert_eq!(get_role.outcome, Outcome::Answered(404));
    assert!(get_role.reached_upstream() && !get_role.succeeded());
    assert!(
        (started..=ended).contains(&get_role.arrived),
        "arrived {} between {started} and {ended}",
        get_role.arrived
    );
    let throttled = &since[1];
    assert!(throttled.is("iam", "ListUserPolicies"), "{throttled:?}");
    assert_eq!(throttled.outcome, Outcome::Faulted("Throttling"));
    assert!(throttled.faulted() && !throttled.reached_upstream());

    assert_eq!(proxy.count_since(&mark, "GetRole", None), 1);
    assert_eq!(
        proxy.count_since(&mark, "GetRole", Some(("RoleName", odd_name))),
        1
    );
    assert_eq!(
        proxy.count_since(&mark, "GetRole", Some(("RoleName", "other"))),
        0
    );
    assert_eq!(
        proxy.count_since(&mark, "GetUser", None),
        0,
        "before the mark"
    );
    assert_eq!(
        proxy.count_per_param_since(&mark, "ListUserPolicies", "UserName"),
        std::collections::BTreeMap::from([("devTest".to_owned(), 1)])
    );

    // What tests print of a request shows no access key ID.
    for request in &all {
        let shown = format!("{request:?} {}", request.summary());
        assert!(
            !shown.contains(key.as_str()),
            "the access key ID is printed by Debug or summary of #{}",
            request.seq
        );
    }
    assert!(
        throttled
            .summary()
            .contains("ListUserPolicies UserName=devTest -> faulted (Throttling)"),
        "{}",
        throttled.summary()
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_logged_as_such() {
    let proxy = AwsProxy::start(&format!("http://127.0.0.1:{}", common::free_port())).await;
    let (_, sts) = clients(&proxy.endpoint(), 1).await;
    let err = sts
        .get_caller_identity()
        .send()
        .await
        .expect_err("nothing listens upstream");
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    let log = proxy.requests();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].outcome, Outcome::UpstreamFailed);
    assert!(!log[0].reached_upstream() && !log[0].faulted());
    assert_eq!(
        proxy.count("sts", "GetCallerIdentity"),
        CallCount::default()
    );
}

/// IAM and STS clients signing with the session credentials of `assumed` (one attempt per call).
async fn session_clients(
    endpoint: &str,
    assumed: &aws_sdk_sts::types::Credentials,
) -> (aws_sdk_iam::Client, aws_sdk_sts::Client) {
    let credentials = aws_credential_types::Credentials::new(
        assumed.access_key_id(),
        assumed.secret_access_key(),
        Some(assumed.session_token().to_owned()),
        None,
        "proxy-test-session",
    );
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    (
        aws_sdk_iam::Client::new(&config),
        aws_sdk_sts::Client::new(&config),
    )
}

/// AssumeRole of the environment's management role through `sts`, for `seconds`.
async fn assume_management_role(
    sts: &aws_sdk_sts::Client,
    seconds: i32,
) -> aws_sdk_sts::types::Credentials {
    let role_arn = env("MANAGEMENT_ROLE_ARN");
    sts.assume_role()
        .role_arn(&role_arn)
        .role_session_name("proxy-expiry-test")
        .duration_seconds(seconds)
        .send()
        .await
        .unwrap_or_else(|e| panic!("AssumeRole {role_arn}: {e:?}"))
        .credentials()
        .cloned()
        .expect("AssumeRole returns credentials")
}

#[tokio::test]
async fn a_session_is_answered_expired_token_after_its_expiration() {
    let proxy = start_proxy().await;
    let (_, sts) = clients(&proxy.endpoint(), 1).await;
    let assumed = assume_management_role(&sts, 900).await;
    assert_eq!(proxy.sessions_seen(), 1, "the proxy learned the session");
    let expiration =
        jiff::Timestamp::from_second(assumed.expiration().secs()).expect("an expiration");
    let lifetime = Duration::try_from(expiration.duration_since(proxy.now()))
        .expect("the session expires in the future");
    assert!(
        lifetime <= Duration::from_secs(900) && lifetime > Duration::from_secs(850),
        "a 900 s session expires in {lifetime:?}"
    );
    let (session_iam, session_sts) = session_clients(&proxy.endpoint(), &assumed).await;

    // Unexpired: passes, also seconds before the expiration.
    let identity = session_sts
        .get_caller_identity()
        .send()
        .await
        .expect("an unexpired session passes");
    assert_eq!(identity.account(), Some(env("TARGET_ACCOUNT_ID").as_str()));
    proxy.advance_clock(lifetime.saturating_sub(Duration::from_secs(10)));
    session_iam
        .list_roles()
        .max_items(1)
        .send()
        .await
        .expect("seconds before its expiration the session still passes");

    // Expired: AWS's answer, for IAM and STS alike, and nothing reaches the upstream.
    proxy.advance_clock(Duration::from_secs(11));
    let mark = proxy.mark();
    let err = session_iam
        .list_roles()
        .max_items(1)
        .send()
        .await
        .expect_err("the session has expired");
    assert_eq!(err.code(), Some("ExpiredToken"), "{err:?}");
    assert_eq!(
        err.message(),
        Some("The security token included in the request is expired")
    );
    assert_eq!(status_of(&err), Some(403));
    assert!(err.meta().request_id().is_some(), "a request ID: {err:?}");
    assert_eq!(
        operator_kind(&err, status_of(&err)),
        AwsErrorKind::AccessDenied
    );
    let err = session_sts
        .get_caller_identity()
        .send()
        .await
        .expect_err("the session has expired for STS too");
    assert_eq!(err.code(), Some("ExpiredToken"), "{err:?}");
    let expired = proxy.requests_since(&mark);
    assert_eq!(expired.len(), 2, "{expired:?}");
    assert!(
        expired
            .iter()
            .all(|r| r.outcome == Outcome::Faulted("ExpiredToken")),
        "answered by the proxy as faults: {expired:?}"
    );
    assert_eq!(proxy.count("iam", "ListRoles").faulted, 1);
    assert_eq!(proxy.count("sts", "GetCallerIdentity").faulted, 1);

    // Long-term keys do not expire, and a session issued after the clock moved gets its full
    // duration on the proxy's clock.
    let fresh = assume_management_role(&sts, 900).await;
    assert_eq!(proxy.sessions_seen(), 2);
    let (fresh_iam, _) = session_clients(&proxy.endpoint(), &fresh).await;
    fresh_iam
        .list_roles()
        .max_items(1)
        .send()
        .await
        .expect("a fresh session passes");
    proxy.advance_clock(Duration::from_secs(600));
    fresh_iam
        .list_roles()
        .max_items(1)
        .send()
        .await
        .expect("the fresh session passes 600 s into its 900 s");
    session_iam
        .list_roles()
        .max_items(1)
        .send()
        .await
        .expect_err("the old session stays expired");
}

#[tokio::test]
async fn sessions_issued_elsewhere_are_not_judged() {
    // A session the proxy did not see issued (AssumeRole sent to the emulator directly) is
    // forwarded whatever the proxy's clock says: the proxy knows no expiration for it.
    let (_, direct_sts) = clients(&env("AWS_ENDPOINT_URL"), 1).await;
    let assumed = assume_management_role(&direct_sts, 900).await;
    let proxy = start_proxy().await;
    proxy.advance_clock(Duration::from_secs(3600));
    let (session_iam, _) = session_clients(&proxy.endpoint(), &assumed).await;
    session_iam
        .list_roles()
        .max_items(1)
        .send()
        .await
        .expect("forwarded: moto itself enforces no expiry");
    assert_eq!(proxy.sessions_seen(), 0);
    assert_eq!(proxy.count("iam", "ListRoles").forwarded, 1);
}

#[test]
fn a_proxy_on_its_own_runtime_outlives_the_runtimes_of_its_users() {
    env("AWS_ENDPOINT_URL");
    let proxy = AwsProxy::start_on_own_runtime(&env("AWS_ENDPOINT_URL"));
    // Two runtimes one after the other, as two `#[tokio::test]`s of one binary have.
    for round in 0..2 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (_, sts) = clients(&proxy.endpoint(), 1).await;
            sts.get_caller_identity()
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        });
        drop(runtime);
    }
    assert_eq!(proxy.count("sts", "GetCallerIdentity").succeeded, 2);
}

// ---------------------------------------------------------------------------------------------
// IAM as AWS
// ---------------------------------------------------------------------------------------------

/// What an SDK error carries, for assertions.
#[derive(Debug)]
struct Answer {
    code: Option<String>,
    message: Option<String>,
    status: Option<u16>,
    request_id: Option<String>,
}

/// The error of a call that must fail.
fn refused<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    result: Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
) -> (Answer, SdkError<E, aws_smithy_runtime_api::http::Response>) {
    let err = match result {
        Ok(out) => panic!("{what} passed, AWS refuses it: {out:?}"),
        Err(err) => err,
    };
    let answer = Answer {
        code: err.code().map(str::to_owned),
        message: err.message().map(str::to_owned),
        status: status_of(&err),
        request_id: err.meta().request_id().map(str::to_owned),
    };
    (answer, err)
}

fn assert_answer(answer: &Answer, code: &str, status: u16, message: &str) {
    assert_eq!(answer.code.as_deref(), Some(code), "{answer:?}");
    assert_eq!(answer.status, Some(status), "{answer:?}");
    assert_eq!(answer.message.as_deref(), Some(message), "{answer:?}");
    assert!(answer.request_id.is_some(), "a request ID: {answer:?}");
    let expected = if code == "LimitExceeded" {
        AwsErrorKind::LimitExceeded
    } else {
        AwsErrorKind::Invalid
    };
    assert_eq!(
        AwsError::classify(answer.code.as_deref(), answer.status),
        expected,
        "the operator's classification of {answer:?}"
    );
}

/// `LimitExceeded`, HTTP 409, `message`; the SDK's modelled `LimitExceededException`.
macro_rules! assert_limit_exceeded {
    ($what:expr, $result:expr, $message:expr) => {{
        let (answer, err) = refused($what, $result);
        assert_answer(&answer, "LimitExceeded", 409, &$message);
        assert!(
            err.as_service_error()
                .is_some_and(|e| e.is_limit_exceeded_exception()),
            "{}: the SDK parses the body as LimitExceededException: {err:?}",
            $what
        );
    }};
}

/// `ValidationError`, HTTP 400, `message`.
fn assert_validation_error<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    result: Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
    message: &str,
) {
    let (answer, _) = refused(what, result);
    assert_answer(&answer, "ValidationError", 400, message);
}

/// The last request of the log: refused with `code`, never forwarded.
fn assert_last_refused(proxy: &AwsProxy, operation: &str, code: &'static str) {
    let log = proxy.requests();
    let last = log.last().expect("a request");
    assert_eq!(last.operation, operation, "{}", last.summary());
    assert_eq!(last.outcome, Outcome::Refused(code), "{}", last.summary());
    assert!(last.refused() && !last.reached_upstream() && !last.faulted());
}

/// An identity policy of exactly `size` characters as IAM counts them (white space left out),
/// laid out with line feeds and tabs: its white space must not count. (Not spaces: moto checks
/// signatures on its own re-encoding of the form body, which writes a space as `+` where the
/// Rust SDK wrote `%20`, so a request with spaces in its body fails with
/// `SignatureDoesNotMatch`, proxy or not.)
fn identity_policy(size: usize) -> String {
    let document = |pad: &str| {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::bucket{pad}/*"),
            }],
        })
    };
    padded(size, document)
}

/// A trust policy of exactly `size` characters without white space, laid out as
/// [`identity_policy`].
fn trust_policy(size: usize) -> String {
    let document = |pad: &str| {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{}:root", env("SOURCE_ACCOUNT_ID"))},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": format!("id{pad}")}},
            }],
        })
    };
    padded(size, document)
}

fn padded(size: usize, document: impl Fn(&str) -> serde_json::Value) -> String {
    let compact = |pad: &str| serde_json::to_string(&document(pad)).unwrap();
    let base = compact("").len();
    assert!(size >= base, "a policy of {size} characters is too small");
    let pad = "a".repeat(size - base);
    assert_eq!(compact(&pad).len(), size);
    // The values hold none of `{[,`: white space after them is outside every string.
    let laid_out = compact(&pad)
        .replace('{', "{\n\t")
        .replace('[', "[\n\t\t")
        .replace(',', ",\n\t");
    assert!(laid_out.len() > size, "the document holds white space");
    laid_out
}

/// IAM and STS clients of a management-role session in the target account, issued through
/// `proxy` (so the proxy knows the session's account).
async fn target_session(proxy: &AwsProxy) -> (aws_sdk_iam::Client, aws_sdk_sts::Client) {
    let (_, sts) = clients(&proxy.endpoint(), 1).await;
    let assumed = assume_management_role(&sts, 3600).await;
    session_clients(&proxy.endpoint(), &assumed).await
}

/// Reads moto directly (not through any proxy), in the target account.
async fn moto_target() -> aws_sdk_iam::Client {
    common::target_iam().await
}

/// IAM entities a test made; removed when dropped (also when the test panics).
#[derive(Default)]
struct Made(Entities);

impl std::ops::Deref for Made {
    type Target = Entities;
    fn deref(&self) -> &Entities {
        &self.0
    }
}

impl std::ops::DerefMut for Made {
    fn deref_mut(&mut self) -> &mut Entities {
        &mut self.0
    }
}

#[derive(Default)]
struct Entities {
    roles: Vec<String>,
    users: Vec<String>,
    groups: Vec<String>,
    /// Customer managed policies.
    policies: Vec<String>,
}

impl Drop for Made {
    fn drop(&mut self) {
        let made = std::mem::take(&mut self.0);
        // The test's runtime is blocked in this drop: a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(made.remove())
        })
        .join();
    }
}

impl Entities {
    async fn remove(&self) {
        let target = moto_target().await;
        for role in &self.roles {
            common::delete_iam_role(&target, role).await;
        }
        for user in &self.users {
            for arn in list_attached(&target, "user", user).await {
                let _ = target
                    .detach_user_policy()
                    .user_name(user)
                    .policy_arn(arn)
                    .send()
                    .await;
            }
            if let Ok(out) = target.list_user_policies().user_name(user).send().await {
                for name in out.policy_names() {
                    let _ = target
                        .delete_user_policy()
                        .user_name(user)
                        .policy_name(name)
                        .send()
                        .await;
                }
            }
            let _ = target.delete_user().user_name(user).send().await;
        }
        for group in &self.groups {
            for arn in list_attached(&target, "group", group).await {
                let _ = target
                    .detach_group_policy()
                    .group_name(group)
                    .policy_arn(arn)
                    .send()
                    .await;
            }
            if let Ok(out) = target.list_group_policies().group_name(group).send().await {
                for name in out.policy_names() {
                    let _ = target
                        .delete_group_policy()
                        .group_name(group)
                        .policy_name(name)
                        .send()
                        .await;
                }
            }
            let _ = target.delete_group().group_name(group).send().await;
        }
        for arn in &self.policies {
            delete_managed_policy(&target, arn).await;
        }
    }
}

async fn list_attached(iam: &aws_sdk_iam::Client, kind: &str, name: &str) -> Vec<String> {
    let attached = match kind {
        "user" => iam
            .list_attached_user_policies()
            .user_name(name)
            .send()
            .await
            .map(|o| o.attached_policies.unwrap_or_default())
            .unwrap_or_default(),
        _ => iam
            .list_attached_group_policies()
            .group_name(name)
            .send()
            .await
            .map(|o| o.attached_policies.unwrap_or_default())
            .unwrap_or_default(),
    };
    attached.into_iter().filter_map(|p| p.policy_arn).collect()
}

async fn delete_managed_policy(iam: &aws_sdk_iam::Client, arn: &str) {
    if let Ok(out) = iam.list_policy_versions().policy_arn(arn).send().await {
        for version in out.versions() {
            if !version.is_default_version()
                && let Some(id) = version.version_id()
            {
                let _ = iam
                    .delete_policy_version()
                    .policy_arn(arn)
                    .version_id(id)
                    .send()
                    .await;
            }
        }
    }
    let _ = iam.delete_policy().policy_arn(arn).send().await;
}

async fn create_role(iam: &aws_sdk_iam::Client, made: &mut Made, prefix: &str) -> String {
    let name = common::unique(prefix);
    iam.create_role()
        .role_name(&name)
        .assume_role_policy_document(trust_policy(200))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateRole {name}: {e:?}"));
    made.roles.push(name.clone());
    name
}

async fn role_policy_names(iam: &aws_sdk_iam::Client, role: &str) -> Vec<String> {
    iam.list_role_policies()
        .role_name(role)
        .send()
        .await
        .expect("ListRolePolicies")
        .policy_names()
        .to_vec()
}

async fn role_policy_document(iam: &aws_sdk_iam::Client, role: &str, policy: &str) -> String {
    let out = iam
        .get_role_policy()
        .role_name(role)
        .policy_name(policy)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetRolePolicy {role} {policy}: {e:?}"));
    common::policy_json(out.policy_document()).to_string()
}

#[tokio::test]
async fn inline_policies_of_a_role_may_total_10240_characters_without_white_space() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let moto = moto_target().await;
    let mut made = Made::default();
    let role = create_role(&iam, &mut made, "quota-inline").await;

    // 6,000 + 4,240 = 10,240: at the quota, with the documents' white space well past it.
    let first = identity_policy(6000);
    let second = identity_policy(4240);
    assert!(first.len() + second.len() > 10240);
    for (name, document) in [("first", &first), ("second", &second)] {
        iam.put_role_policy()
            .role_name(&role)
            .policy_name(name)
            .policy_document(document)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutRolePolicy {name} at the quota: {e:?}"));
    }

    // One character more, replacing `second` (the policy of the same name does not count).
    let before = role_policy_document(&moto, &role, "second").await;
    assert_limit_exceeded!(
        "PutRolePolicy replacing one, past the quota",
        iam.put_role_policy()
            .role_name(&role)
            .policy_name("second")
            .policy_document(identity_policy(4241))
            .send()
            .await,
        format!("Maximum policy size of 10240 bytes exceeded for role {role}")
    );
    assert_last_refused(&proxy, "PutRolePolicy", "LimitExceeded");
    // A third policy, however small.
    assert_limit_exceeded!(
        "PutRolePolicy of a third policy",
        iam.put_role_policy()
            .role_name(&role)
            .policy_name("third")
            .policy_document(identity_policy(150))
            .send()
            .await,
        format!("Maximum policy size of 10240 bytes exceeded for role {role}")
    );
    // moto holds what it held.
    assert_eq!(
        role_policy_names(&moto, &role).await,
        ["first", "second"],
        "no policy was added"
    );
    assert_eq!(role_policy_document(&moto, &role, "second").await, before);

    // Replacing with a smaller one, then adding one into the room made, passes.
    iam.put_role_policy()
        .role_name(&role)
        .policy_name("second")
        .policy_document(identity_policy(3240))
        .send()
        .await
        .expect("PutRolePolicy with room to spare");
    iam.put_role_policy()
        .role_name(&role)
        .policy_name("third")
        .policy_document(identity_policy(1000))
        .send()
        .await
        .expect("PutRolePolicy into the room made");
    // After a delete the room is there again.
    iam.delete_role_policy()
        .role_name(&role)
        .policy_name("first")
        .send()
        .await
        .expect("DeleteRolePolicy");
    iam.put_role_policy()
        .role_name(&role)
        .policy_name("fourth")
        .policy_document(identity_policy(6000))
        .send()
        .await
        .expect("PutRolePolicy after a delete");
    assert!(proxy.requests().iter().all(|r| r.unjudged.is_none()));
}

#[tokio::test]
async fn inline_policies_of_a_user_and_a_group_may_total_2048_and_5120_characters() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let moto = moto_target().await;
    let mut made = Made::default();
    let user = common::unique("quota-user");
    iam.create_user()
        .user_name(&user)
        .send()
        .await
        .expect("CreateUser");
    made.users.push(user.clone());
    let group = common::unique("quota-group");
    iam.create_group()
        .group_name(&group)
        .send()
        .await
        .expect("CreateGroup");
    made.groups.push(group.clone());

    // A user: 1,500 + 548 = 2,048.
    for (name, size) in [("a", 1500), ("b", 548)] {
        iam.put_user_policy()
            .user_name(&user)
            .policy_name(name)
            .policy_document(identity_policy(size))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutUserPolicy {name}: {e:?}"));
    }
    assert_limit_exceeded!(
        "PutUserPolicy past 2048",
        iam.put_user_policy()
            .user_name(&user)
            .policy_name("b")
            .policy_document(identity_policy(549))
            .send()
            .await,
        format!("Maximum policy size of 2048 bytes exceeded for user {user}")
    );
    assert_last_refused(&proxy, "PutUserPolicy", "LimitExceeded");
    let stored = moto
        .get_user_policy()
        .user_name(&user)
        .policy_name("b")
        .send()
        .await
        .expect("GetUserPolicy");
    assert_eq!(
        common::policy_json(stored.policy_document()),
        common::policy_json(&identity_policy(548)),
        "moto keeps the policy the refusal would have replaced"
    );
    // A single document past the user's quota.
    assert_limit_exceeded!(
        "PutUserPolicy of one document past 2048",
        iam.put_user_policy()
            .user_name(&user)
            .policy_name("big")
            .policy_document(identity_policy(2049))
            .send()
            .await,
        format!("Maximum policy size of 2048 bytes exceeded for user {user}")
    );

    // A group: 4,900 + 220 = 5,120.
    for (name, size) in [("a", 4900), ("b", 220)] {
        iam.put_group_policy()
            .group_name(&group)
            .policy_name(name)
            .policy_document(identity_policy(size))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutGroupPolicy {name}: {e:?}"));
    }
    assert_limit_exceeded!(
        "PutGroupPolicy past 5120",
        iam.put_group_policy()
            .group_name(&group)
            .policy_name("c")
            .policy_document(identity_policy(150))
            .send()
            .await,
        format!("Maximum policy size of 5120 bytes exceeded for group {group}")
    );
    assert_last_refused(&proxy, "PutGroupPolicy", "LimitExceeded");
    let names = moto
        .list_group_policies()
        .group_name(&group)
        .send()
        .await
        .expect("ListGroupPolicies");
    assert_eq!(names.policy_names(), ["a", "b"]);
}

#[tokio::test]
async fn inline_policies_written_before_the_proxy_started_count() {
    // Written to moto directly, as an earlier test binary or the seed would have.
    let moto = moto_target().await;
    let mut made = Made::default();
    let role = create_role(&moto, &mut made, "quota-before").await;
    moto.put_role_policy()
        .role_name(&role)
        .policy_name("earlier")
        .policy_document(identity_policy(10000))
        .send()
        .await
        .expect("PutRolePolicy directly to moto");

    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    iam.put_role_policy()
        .role_name(&role)
        .policy_name("fits")
        .policy_document(identity_policy(240))
        .send()
        .await
        .expect("10,000 + 240 fits");
    assert_limit_exceeded!(
        "PutRolePolicy past what was there before the proxy",
        iam.put_role_policy()
            .role_name(&role)
            .policy_name("more")
            .policy_document(identity_policy(150))
            .send()
            .await,
        format!("Maximum policy size of 10240 bytes exceeded for role {role}")
    );
    assert_eq!(role_policy_names(&moto, &role).await, ["earlier", "fits"]);
}

/// Eleven AWS managed policies moto loads (`MOTO_IAM_LOAD_MANAGED_POLICIES`).
const MANAGED_POLICIES: [&str; 11] = [
    "AmazonS3ReadOnlyAccess",
    "ReadOnlyAccess",
    "AmazonEC2ReadOnlyAccess",
    "IAMReadOnlyAccess",
    "AmazonSQSReadOnlyAccess",
    "AmazonSNSReadOnlyAccess",
    "AmazonDynamoDBReadOnlyAccess",
    "CloudWatchReadOnlyAccess",
    "AmazonRDSReadOnlyAccess",
    "AWSLambda_ReadOnlyAccess",
    "AmazonVPCReadOnlyAccess",
];

fn managed_arn(name: &str) -> String {
    format!("arn:aws:iam::aws:policy/{name}")
}

#[tokio::test]
async fn ten_managed_policies_may_be_attached_to_a_role_a_user_and_a_group() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let moto = moto_target().await;
    let mut made = Made::default();
    let role = create_role(&iam, &mut made, "quota-attach").await;
    let user = common::unique("quota-attach-user");
    iam.create_user()
        .user_name(&user)
        .send()
        .await
        .expect("CreateUser");
    made.users.push(user.clone());
    let group = common::unique("quota-attach-group");
    iam.create_group()
        .group_name(&group)
        .send()
        .await
        .expect("CreateGroup");
    made.groups.push(group.clone());
    let (ten, eleventh) = MANAGED_POLICIES.split_at(10);
    let eleventh = managed_arn(eleventh[0]);

    for name in ten {
        let arn = managed_arn(name);
        iam.attach_role_policy()
            .role_name(&role)
            .policy_arn(&arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("AttachRolePolicy {arn}: {e:?}"));
        iam.attach_user_policy()
            .user_name(&user)
            .policy_arn(&arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("AttachUserPolicy {arn}: {e:?}"));
        iam.attach_group_policy()
            .group_name(&group)
            .policy_arn(&arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("AttachGroupPolicy {arn}: {e:?}"));
    }
    // Attaching one that is attached already changes nothing: it passes.
    iam.attach_role_policy()
        .role_name(&role)
        .policy_arn(managed_arn(ten[0]))
        .send()
        .await
        .expect("AttachRolePolicy of an attached policy");

    assert_limit_exceeded!(
        "AttachRolePolicy of an eleventh",
        iam.attach_role_policy()
            .role_name(&role)
            .policy_arn(&eleventh)
            .send()
            .await,
        "Cannot exceed quota for PoliciesPerRole: 10"
    );
    assert_last_refused(&proxy, "AttachRolePolicy", "LimitExceeded");
    assert_limit_exceeded!(
        "AttachUserPolicy of an eleventh",
        iam.attach_user_policy()
            .user_name(&user)
            .policy_arn(&eleventh)
            .send()
            .await,
        "Cannot exceed quota for PoliciesPerUser: 10"
    );
    assert_limit_exceeded!(
        "AttachGroupPolicy of an eleventh",
        iam.attach_group_policy()
            .group_name(&group)
            .policy_arn(&eleventh)
            .send()
            .await,
        "Cannot exceed quota for PoliciesPerGroup: 10"
    );
    assert_eq!(common::attached_policies(&moto, &role).await.len(), 10);
    assert_eq!(list_attached(&moto, "user", &user).await.len(), 10);
    assert_eq!(list_attached(&moto, "group", &group).await.len(), 10);

    // A quota increase (roles and users: up to 20) lets the eleventh in.
    let quotas = proxy.iam_quotas().expect("IAM as AWS");
    proxy.set_iam_quotas(IamQuotas {
        attached_policies_per_role: 20,
        ..quotas
    });
    iam.attach_role_policy()
        .role_name(&role)
        .policy_arn(&eleventh)
        .send()
        .await
        .expect("AttachRolePolicy of an eleventh with the quota at 20");
    assert_eq!(common::attached_policies(&moto, &role).await.len(), 11);
    let summary = iam
        .get_account_summary()
        .send()
        .await
        .expect("GetAccountSummary");
    assert_eq!(
        summary
            .summary_map()
            .and_then(|m| m.get(&SummaryKeyType::AttachedPoliciesPerRoleQuota))
            .copied(),
        Some(20)
    );
}

#[tokio::test]
async fn managed_policy_documents_may_have_6144_characters_and_five_versions() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let moto = moto_target().await;
    let mut made = Made::default();

    let name = common::unique("quota-policy");
    let created = iam
        .create_policy()
        .policy_name(&name)
        .policy_document(identity_policy(6144))
        .send()
        .await
        .expect("CreatePolicy at 6144");
    let arn = created
        .policy()
        .and_then(|p| p.arn())
        .expect("an ARN")
        .to_owned();
    made.policies.push(arn.clone());
    let too_big = common::unique("quota-policy-big");
    assert_limit_exceeded!(
        "CreatePolicy past 6144",
        iam.create_policy()
            .policy_name(&too_big)
            .policy_document(identity_policy(6145))
            .send()
            .await,
        "Cannot exceed quota for PolicySize: 6144"
    );
    assert_last_refused(&proxy, "CreatePolicy", "LimitExceeded");
    let big_arn = arn.replace(&name, &too_big);
    let absent = moto.get_policy().policy_arn(&big_arn).send().await;
    assert!(
        absent.as_ref().is_err_and(common::is_no_such_entity),
        "no policy was created: {absent:?}"
    );
    assert_limit_exceeded!(
        "CreatePolicyVersion past 6144",
        iam.create_policy_version()
            .policy_arn(&arn)
            .policy_document(identity_policy(6145))
            .send()
            .await,
        "Cannot exceed quota for PolicySize: 6144"
    );

    // v1 and four more: five versions.
    for size in [200, 300, 400, 500] {
        iam.create_policy_version()
            .policy_arn(&arn)
            .policy_document(identity_policy(size))
            .set_as_default(false)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreatePolicyVersion within five: {e:?}"));
    }
    let versions = || async {
        moto.list_policy_versions()
            .policy_arn(&arn)
            .send()
            .await
            .expect("ListPolicyVersions")
            .versions()
            .len()
    };
    assert_eq!(versions().await, 5);
    assert_limit_exceeded!(
        "CreatePolicyVersion of a sixth",
        iam.create_policy_version()
            .policy_arn(&arn)
            .policy_document(identity_policy(600))
            .send()
            .await,
        "A managed policy can have up to 5 versions. Before you create a new version, you must \
         delete an existing version."
    );
    assert_last_refused(&proxy, "CreatePolicyVersion", "LimitExceeded");
    assert_eq!(versions().await, 5);
}

#[tokio::test]
async fn the_proxys_own_account_is_read_with_its_own_identity() {
    // The operator's identity in the source account (the proxy's own): it may attach policies to
    // its account's users and list what is attached (the seed's policy).
    let proxy = start_proxy().await;
    let (iam, _) = clients(&proxy.endpoint(), 1).await;
    let source = common::source_iam().await;
    let user = "devTest";
    // Only this test attaches these AWS managed policies to devTest: any still attached were
    // left by a run killed before its guard could detach them.
    let leftovers: Vec<String> = list_attached(&source, "user", user)
        .await
        .into_iter()
        .filter(|arn| {
            MANAGED_POLICIES
                .iter()
                .any(|name| *arn == managed_arn(name))
        })
        .collect();
    drop(DetachFromSourceUser {
        user,
        arns: leftovers,
    });
    let attached_before: BTreeSet<String> = list_attached(&source, "user", user)
        .await
        .into_iter()
        .collect();
    assert!(attached_before.len() < 10, "{attached_before:?}");
    let mut ours = DetachFromSourceUser {
        user,
        arns: Vec::new(),
    };
    let free: Vec<String> = MANAGED_POLICIES
        .iter()
        .map(|name| managed_arn(name))
        .filter(|arn| !attached_before.contains(arn))
        .collect();
    let room = 10 - attached_before.len();
    for arn in &free[..room] {
        iam.attach_user_policy()
            .user_name(user)
            .policy_arn(arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("AttachUserPolicy {arn} within ten: {e:?}"));
        ours.arns.push(arn.clone());
    }
    assert_limit_exceeded!(
        "AttachUserPolicy of an eleventh in the proxy's own account",
        iam.attach_user_policy()
            .user_name(user)
            .policy_arn(&free[room])
            .send()
            .await,
        "Cannot exceed quota for PoliciesPerUser: 10"
    );
    assert_eq!(list_attached(&source, "user", user).await.len(), 10);
    assert!(proxy.requests().iter().all(|r| r.unjudged.is_none()));
}

/// Detaches `arns` from `user` of the source account when dropped.
struct DetachFromSourceUser {
    user: &'static str,
    arns: Vec<String>,
}

impl Drop for DetachFromSourceUser {
    fn drop(&mut self) {
        let (user, arns) = (self.user, std::mem::take(&mut self.arns));
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    // The operator's identity may attach but not detach: the administrator cleans up.
                    let source = common::source_admin_iam().await;
                    for arn in arns {
                        let _ = source
                            .detach_user_policy()
                            .user_name(user)
                            .policy_arn(arn)
                            .send()
                            .await;
                    }
                })
        })
        .join();
    }
}

#[tokio::test]
async fn trust_policies_may_have_2048_characters() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let moto = moto_target().await;
    let mut made = Made::default();

    let role = common::unique("quota-trust");
    iam.create_role()
        .role_name(&role)
        .assume_role_policy_document(trust_policy(2048))
        .send()
        .await
        .expect("CreateRole with a trust policy of 2048");
    made.roles.push(role.clone());
    let other = common::unique("quota-trust-big");
    assert_limit_exceeded!(
        "CreateRole with a trust policy past 2048",
        iam.create_role()
            .role_name(&other)
            .assume_role_policy_document(trust_policy(2049))
            .send()
            .await,
        "Cannot exceed quota for ACLSizePerRole: 2048"
    );
    assert_last_refused(&proxy, "CreateRole", "LimitExceeded");
    assert!(common::get_iam_role(&moto, &other).await.is_none());

    let stored = || async {
        common::policy_json(
            common::get_iam_role(&moto, &role)
                .await
                .and_then(|r| r.assume_role_policy_document)
                .as_deref()
                .expect("a trust policy"),
        )
    };
    let before = stored().await;
    assert_limit_exceeded!(
        "UpdateAssumeRolePolicy past 2048",
        iam.update_assume_role_policy()
            .role_name(&role)
            .policy_document(trust_policy(2049))
            .send()
            .await,
        "Cannot exceed quota for ACLSizePerRole: 2048"
    );
    assert_eq!(stored().await, before, "the trust policy is unchanged");

    // Raised to its maximum (4,096), the quota lets it in and says so.
    let quotas = proxy.iam_quotas().expect("IAM as AWS");
    proxy.set_iam_quotas(IamQuotas {
        assume_role_policy_size: 4096,
        ..quotas
    });
    iam.update_assume_role_policy()
        .role_name(&role)
        .policy_document(trust_policy(2049))
        .send()
        .await
        .expect("UpdateAssumeRolePolicy with the quota at 4096");
    assert_limit_exceeded!(
        "UpdateAssumeRolePolicy past 4096",
        iam.update_assume_role_policy()
            .role_name(&role)
            .policy_document(trust_policy(4097))
            .send()
            .await,
        "Cannot exceed quota for ACLSizePerRole: 4096"
    );
}

fn tags(prefix: &str, n: usize) -> Vec<aws_sdk_iam::types::Tag> {
    (0..n)
        .map(|i| {
            aws_sdk_iam::types::Tag::builder()
                .key(format!("{prefix}{i}"))
                .value("v")
                .build()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_role_may_have_50_tags_of_128_and_256_characters() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let moto = moto_target().await;
    let mut made = Made::default();

    // 51 in one request: the list's length constraint.
    let other = common::unique("quota-tags-51");
    let (answer, _) = refused(
        "CreateRole with 51 tags",
        iam.create_role()
            .role_name(&other)
            .assume_role_policy_document(trust_policy(200))
            .set_tags(Some(tags("k", 51)))
            .send()
            .await,
    );
    assert_eq!(
        answer.code.as_deref(),
        Some("ValidationError"),
        "{answer:?}"
    );
    assert_eq!(answer.status, Some(400));
    let message = answer.message.unwrap_or_default();
    assert!(
        message.starts_with("1 validation error detected: Value '[k0=v, ")
            && message.ends_with(
                "' at 'tags' failed to satisfy constraint: Member must have length less than \
                 or equal to 50"
            ),
        "{message}"
    );
    assert_last_refused(&proxy, "CreateRole", "ValidationError");
    assert!(common::get_iam_role(&moto, &other).await.is_none());

    let role = common::unique("quota-tags");
    iam.create_role()
        .role_name(&role)
        .assume_role_policy_document(trust_policy(200))
        .set_tags(Some(tags("k", 45)))
        .send()
        .await
        .expect("CreateRole with 45 tags");
    made.roles.push(role.clone());
    iam.tag_role()
        .role_name(&role)
        .set_tags(Some(tags("n", 5)))
        .send()
        .await
        .expect("TagRole up to 50");
    // Overwriting a tag the role has adds none.
    iam.tag_role()
        .role_name(&role)
        .set_tags(Some(tags("k", 1)))
        .send()
        .await
        .expect("TagRole overwriting one");
    assert_limit_exceeded!(
        "TagRole past 50",
        iam.tag_role()
            .role_name(&role)
            .set_tags(Some(tags("x", 1)))
            .send()
            .await,
        "Cannot exceed quota for TagsPerRole: 50"
    );
    assert_last_refused(&proxy, "TagRole", "LimitExceeded");
    assert_eq!(common::role_tags(&moto, &role).await.len(), 50);

    // Keys of 128 and values of 256 characters, one more each.
    let tag = |key: String, value: String| {
        aws_sdk_iam::types::Tag::builder()
            .key(key)
            .value(value)
            .build()
            .unwrap()
    };
    iam.untag_role()
        .role_name(&role)
        .tag_keys("k0")
        .send()
        .await
        .expect("UntagRole");
    let (key_128, value_256) = ("k".repeat(128), "v".repeat(256));
    iam.tag_role()
        .role_name(&role)
        .tags(tag(key_128.clone(), value_256.clone()))
        .send()
        .await
        .expect("TagRole of a 128-character key with a 256-character value");
    let (key_129, value_257) = ("k".repeat(129), "v".repeat(257));
    assert_validation_error(
        "TagRole of a 129-character key",
        iam.tag_role()
            .role_name(&role)
            .tags(tag(key_129.clone(), "v".to_owned()))
            .send()
            .await,
        &format!(
            "1 validation error detected: Value '{key_129}' at 'tags.1.member.key' failed to \
             satisfy constraint: Member must have length less than or equal to 128"
        ),
    );
    assert_validation_error(
        "TagRole of a 257-character value",
        iam.tag_role()
            .role_name(&role)
            .tags(tag("short".to_owned(), value_257.clone()))
            .send()
            .await,
        &format!(
            "1 validation error detected: Value '{value_257}' at 'tags.1.member.value' failed \
             to satisfy constraint: Member must have length less than or equal to 256"
        ),
    );
    let held = common::role_tags(&moto, &role).await;
    assert_eq!(held.len(), 50);
    assert_eq!(held.get(&key_128), Some(&value_256));
}

#[tokio::test]
async fn role_names_paths_and_policy_names_have_their_lengths() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let moto = moto_target().await;
    let mut made = Made::default();

    let name_64 = format!("{}-", common::unique("quota-name"));
    let name_64 = format!("{name_64}{}", "n".repeat(64 - name_64.len()));
    let path_512 = format!("/{}/", "p".repeat(510));
    iam.create_role()
        .role_name(&name_64)
        .path(&path_512)
        .assume_role_policy_document(trust_policy(200))
        .send()
        .await
        .expect("CreateRole with a 64-character name and a 512-character path");
    made.roles.push(name_64.clone());

    let name_65 = format!("{name_64}n");
    assert_validation_error(
        "CreateRole with a 65-character name",
        iam.create_role()
            .role_name(&name_65)
            .assume_role_policy_document(trust_policy(200))
            .send()
            .await,
        &format!(
            "1 validation error detected: Value '{name_65}' at 'roleName' failed to satisfy \
             constraint: Member must have length less than or equal to 64"
        ),
    );
    assert_last_refused(&proxy, "CreateRole", "ValidationError");
    assert!(common::get_iam_role(&moto, &name_65).await.is_none());

    let other = common::unique("quota-path");
    let path_513 = format!("/{}/", "p".repeat(511));
    assert_validation_error(
        "CreateRole with a 513-character path",
        iam.create_role()
            .role_name(&other)
            .path(&path_513)
            .assume_role_policy_document(trust_policy(200))
            .send()
            .await,
        &format!(
            "1 validation error detected: Value '{path_513}' at 'path' failed to satisfy \
             constraint: Member must have length less than or equal to 512"
        ),
    );
    // Two constraints of one request: both named, in one answer.
    let bad = format!("bad name {}", "n".repeat(60));
    assert_validation_error(
        "CreateRole with a 69-character name with spaces",
        iam.create_role()
            .role_name(&bad)
            .assume_role_policy_document(trust_policy(200))
            .send()
            .await,
        &format!(
            "2 validation errors detected: Value '{bad}' at 'roleName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+; Value \
             '{bad}' at 'roleName' failed to satisfy constraint: Member must have length less \
             than or equal to 64"
        ),
    );
    assert!(common::get_iam_role(&moto, &other).await.is_none());

    // Policy names: 128.
    let policy_128 = "p".repeat(128);
    iam.put_role_policy()
        .role_name(&name_64)
        .policy_name(&policy_128)
        .policy_document(identity_policy(200))
        .send()
        .await
        .expect("PutRolePolicy with a 128-character name");
    let policy_129 = "p".repeat(129);
    assert_validation_error(
        "PutRolePolicy with a 129-character name",
        iam.put_role_policy()
            .role_name(&name_64)
            .policy_name(&policy_129)
            .policy_document(identity_policy(200))
            .send()
            .await,
        &format!(
            "1 validation error detected: Value '{policy_129}' at 'policyName' failed to \
             satisfy constraint: Member must have length less than or equal to 128"
        ),
    );
    assert_eq!(role_policy_names(&moto, &name_64).await, [policy_128]);
}

#[tokio::test]
async fn assume_role_checks_session_names_policies_tags_and_identifiers() {
    let proxy = start_proxy().await;
    let (_, sts) = clients(&proxy.endpoint(), 1).await;
    let role_arn = env("MANAGEMENT_ROLE_ARN");
    let assume = |session_name: &str| {
        sts.assume_role()
            .role_arn(&role_arn)
            .role_session_name(session_name)
    };
    for name in ["ab".to_owned(), "s".repeat(64), "a+=,.@-_Z9".to_owned()] {
        assume(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("AssumeRole as {name:?}: {e:?}"));
    }
    let sessions = proxy.sessions_seen();
    assert_validation_error(
        "AssumeRole with a 1-character session name",
        assume("a").send().await,
        "1 validation error detected: Value 'a' at 'roleSessionName' failed to satisfy \
         constraint: Member must have length greater than or equal to 2",
    );
    assert_last_refused(&proxy, "AssumeRole", "ValidationError");
    let long = "s".repeat(65);
    assert_validation_error(
        "AssumeRole with a 65-character session name",
        assume(&long).send().await,
        &format!(
            "1 validation error detected: Value '{long}' at 'roleSessionName' failed to satisfy \
             constraint: Member must have length less than or equal to 64"
        ),
    );
    assert_validation_error(
        "AssumeRole with a space in the session name",
        assume("my session").send().await,
        "1 validation error detected: Value 'my session' at 'roleSessionName' failed to \
         satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*",
    );

    // Session policies: 2,048 characters (of the plaintext, white space included).
    let session_policy = |size: usize| {
        let compact =
            serde_json::to_string(&common::policy_json(&identity_policy(size))).expect("JSON");
        assert_eq!(compact.len(), size);
        compact
    };
    assume("policy-2048")
        .policy(session_policy(2048))
        .send()
        .await
        .expect("AssumeRole with a 2048-character session policy");
    let policy_2049 = session_policy(2049);
    assert_validation_error(
        "AssumeRole with a 2049-character session policy",
        assume("policy-2049").policy(&policy_2049).send().await,
        &format!(
            "1 validation error detected: Value '{policy_2049}' at 'policy' failed to satisfy \
             constraint: Member must have length less than or equal to 2048"
        ),
    );

    // Session tags: 50, values 256.
    let session_tag = |key: String, value: String| {
        aws_sdk_sts::types::Tag::builder()
            .key(key)
            .value(value)
            .build()
            .unwrap()
    };
    let value_257 = "v".repeat(257);
    assert_validation_error(
        "AssumeRole with a 257-character session tag value",
        assume("tags")
            .tags(session_tag("team".into(), value_257.clone()))
            .send()
            .await,
        &format!(
            "1 validation error detected: Value '{value_257}' at 'tags.1.member.value' failed \
             to satisfy constraint: Member must have length less than or equal to 256"
        ),
    );
    let (answer, _) = refused(
        "AssumeRole with 51 session tags",
        assume("tags")
            .set_tags(Some(
                (0..51)
                    .map(|i| session_tag(format!("k{i}"), "v".into()))
                    .collect(),
            ))
            .send()
            .await,
    );
    assert_eq!(
        answer.code.as_deref(),
        Some("ValidationError"),
        "{answer:?}"
    );
    assert!(
        answer.message.as_deref().is_some_and(|m| m.ends_with(
            "at 'tags' failed to satisfy constraint: Member must \
                                        have length less than or equal to 50"
        )),
        "{answer:?}"
    );

    // Duration, external ID and source identity: their ranges and lengths.
    assert_validation_error(
        "AssumeRole for 899 seconds",
        assume("duration").duration_seconds(899).send().await,
        "1 validation error detected: Value '899' at 'durationSeconds' failed to satisfy \
         constraint: Member must have value greater than or equal to 900",
    );
    assert_validation_error(
        "AssumeRole with a 1-character external ID",
        assume("external").external_id("x").send().await,
        "1 validation error detected: Value 'x' at 'externalId' failed to satisfy constraint: \
         Member must have length greater than or equal to 2",
    );
    assert_validation_error(
        "AssumeRole with a source identity with a space",
        assume("source").source_identity("a b").send().await,
        "1 validation error detected: Value 'a b' at 'sourceIdentity' failed to satisfy \
         constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*",
    );
    assert_eq!(
        proxy.sessions_seen(),
        sessions + 1,
        "only the 2048-character policy got a session"
    );
}

#[tokio::test]
async fn packed_policy_too_large_is_injected_as_sts_answers_it() {
    let proxy = start_proxy().await;
    proxy.set_rules(vec![
        FaultRule::new(Fault::PackedPolicyTooLarge { percent: 112 })
            .service("sts")
            .operations(&["AssumeRole"]),
    ]);
    let (_, sts) = clients(&proxy.endpoint(), 1).await;
    let err = sts
        .assume_role()
        .role_arn(env("MANAGEMENT_ROLE_ARN"))
        .role_session_name("packed")
        .send()
        .await
        .expect_err("AssumeRole is answered PackedPolicyTooLarge");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_packed_policy_too_large_exception()),
        "the SDK parses it as PackedPolicyTooLargeException: {err:?}"
    );
    let (answer, _) = refused::<(), _>("AssumeRole", Err(err));
    assert_eq!(answer.code.as_deref(), Some("PackedPolicyTooLarge"));
    assert_eq!(answer.status, Some(400));
    assert_eq!(
        answer.message.as_deref(),
        Some("Packed policy consumes 112% of allotted space, please use smaller policy.")
    );
    assert_eq!(
        AwsError::classify(answer.code.as_deref(), answer.status),
        AwsErrorKind::Invalid
    );
    assert_eq!(proxy.count("sts", "AssumeRole").faulted, 1);
}

#[tokio::test]
async fn access_denied_is_answered_as_iam_answers_it() {
    let proxy = start_proxy().await;
    proxy.set_rules(vec![FaultRule::new(Fault::AccessDenied).service("iam")]);
    // Three attempts allowed: AccessDenied is not retryable, so one is made.
    let (iam, sts) = clients(&proxy.endpoint(), 3).await;
    let err = iam
        .get_role()
        .role_name("anything")
        .send()
        .await
        .expect_err("GetRole is answered AccessDenied");
    assert!(
        err.as_service_error().is_some(),
        "the SDK parses it as a service error: {err:?}"
    );
    let (answer, err) = refused::<(), _>("GetRole", Err(err));
    assert_eq!(answer.code.as_deref(), Some("AccessDenied"), "{answer:?}");
    assert_eq!(answer.status, Some(403));
    let message = answer.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("User: ")
            && message.contains("is not authorized to perform: iam:GetRole"),
        "{message}"
    );
    assert!(answer.request_id.is_some(), "a request ID: {answer:?}");
    assert_eq!(
        operator_kind(&err, answer.status),
        AwsErrorKind::AccessDenied
    );
    assert_eq!(
        proxy.count("iam", "GetRole").faulted,
        1,
        "not retried by the SDK"
    );
    // Other services pass.
    sts.get_caller_identity()
        .send()
        .await
        .expect("STS is not denied");
    assert_eq!(proxy.count("sts", "GetCallerIdentity").succeeded, 1);
}

#[tokio::test]
async fn get_account_summary_reports_the_quotas_enforced() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let summary = |iam: aws_sdk_iam::Client| async move {
        iam.get_account_summary()
            .send()
            .await
            .expect("GetAccountSummary")
            .summary_map
            .unwrap_or_default()
    };
    let quotas = IamQuotas::default();
    let expected = [
        (SummaryKeyType::UserPolicySizeQuota, 2048),
        (SummaryKeyType::RolePolicySizeQuota, 10240),
        (SummaryKeyType::GroupPolicySizeQuota, 5120),
        (SummaryKeyType::AttachedPoliciesPerUserQuota, 10),
        (SummaryKeyType::AttachedPoliciesPerRoleQuota, 10),
        (SummaryKeyType::AttachedPoliciesPerGroupQuota, 10),
        (SummaryKeyType::PolicySizeQuota, 6144),
        (SummaryKeyType::VersionsPerPolicyQuota, 5),
        (SummaryKeyType::AssumeRolePolicySizeQuota, 2048),
    ];
    let map = summary(iam.clone()).await;
    for (key, value) in &expected {
        assert_eq!(map.get(key), Some(value), "{key:?} in {map:?}");
    }
    assert!(
        map.get(&SummaryKeyType::Roles).is_some_and(|n| *n > 0),
        "moto's counts are kept: {map:?}"
    );
    proxy.set_iam_quotas(IamQuotas {
        attached_policies_per_user: 20,
        attached_policies_per_role: 20,
        assume_role_policy_size: 4096,
        ..quotas
    });
    let map = summary(iam.clone()).await;
    assert_eq!(
        map.get(&SummaryKeyType::AttachedPoliciesPerUserQuota),
        Some(&20)
    );
    assert_eq!(
        map.get(&SummaryKeyType::AttachedPoliciesPerRoleQuota),
        Some(&20)
    );
    assert_eq!(
        map.get(&SummaryKeyType::AssumeRolePolicySizeQuota),
        Some(&4096)
    );
    assert_eq!(map.get(&SummaryKeyType::PolicySizeQuota), Some(&6144));
}

#[tokio::test]
async fn keys_the_proxy_cannot_place_are_judged_on_the_request_alone() {
    // A session issued by moto directly: the proxy does not know its account.
    let (_, direct_sts) = clients(&env("AWS_ENDPOINT_URL"), 1).await;
    let assumed = assume_management_role(&direct_sts, 900).await;
    let proxy = start_proxy().await;
    let (iam, _) = session_clients(&proxy.endpoint(), &assumed).await;
    let mut made = Made::default();
    let role = create_role(&iam, &mut made, "quota-unknown").await;
    iam.put_role_policy()
        .role_name(&role)
        .policy_name("p")
        .policy_document(identity_policy(200))
        .send()
        .await
        .expect("forwarded unjudged");
    let last = proxy.requests().pop().expect("a request");
    assert!(
        last.is("iam", "PutRolePolicy") && last.succeeded(),
        "{last:?}"
    );
    assert_eq!(
        last.unjudged.as_deref(),
        Some("the proxy does not know the account of the signing key")
    );
    assert!(
        last.summary().contains("quota unjudged"),
        "{}",
        last.summary()
    );
    // What the request alone shows is refused all the same.
    assert_limit_exceeded!(
        "PutRolePolicy of one document past 10240",
        iam.put_role_policy()
            .role_name(&role)
            .policy_name("big")
            .policy_document(identity_policy(10241))
            .send()
            .await,
        format!("Maximum policy size of 10240 bytes exceeded for role {role}")
    );
    assert_limit_exceeded!(
        "UpdateAssumeRolePolicy past 2048",
        iam.update_assume_role_policy()
            .role_name(&role)
            .policy_document(trust_policy(2049))
            .send()
            .await,
        "Cannot exceed quota for ACLSizePerRole: 2048"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_cannot_both_take_the_room_of_one() {
    let proxy = start_proxy().await;
    let (iam, _) = target_session(&proxy).await;
    let moto = moto_target().await;
    let mut made = Made::default();
    let role = create_role(&iam, &mut made, "quota-race").await;
    // Each fits alone, both do not.
    let writes: Vec<_> = ["left", "right"]
        .into_iter()
        .map(|name| {
            let iam = iam.clone();
            let role = role.clone();
            tokio::spawn(async move {
                iam.put_role_policy()
                    .role_name(&role)
                    .policy_name(name)
                    .policy_document(identity_policy(6000))
                    .send()
                    .await
                    .map_err(|e| e.code().map(str::to_owned))
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for write in writes {
        outcomes.push(write.await.expect("task"));
    }
    let passed = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(Some(code)) if code == "LimitExceeded"))
        .count();
    assert_eq!((passed, refused), (1, 1), "{outcomes:?}");
    assert_eq!(role_policy_names(&moto, &role).await.len(), 1);
}

#[tokio::test]
async fn a_lenient_proxy_forwards_what_aws_refuses() {
    // The opt-out, and proof that moto alone is lenient: it takes a trust policy AWS refuses.
    let proxy = AwsProxy::start_lenient(&env("AWS_ENDPOINT_URL")).await;
    assert_eq!(proxy.iam_quotas(), None);
    let (iam, _) = target_session(&proxy).await;
    let mut made = Made::default();
    let role = common::unique("lenient");
    iam.create_role()
        .role_name(&role)
        .assume_role_policy_document(trust_policy(2049))
        .send()
        .await
        .expect("moto takes a trust policy past 2048");
    made.roles.push(role);
    assert!(proxy.requests().iter().all(|r| !r.refused()));
}

// ---------------------------------------------------------------------------------------------
// IAM as AWS: the authorization of sts:AssumeRole (trust policy, identity policy, conditions).
// ---------------------------------------------------------------------------------------------

/// IAM of the source account as the test bed's administrator, straight to moto.
async fn source_admin_iam() -> aws_sdk_iam::Client {
    let credentials = aws_credential_types::Credentials::new(
        env("SOURCE_ADMIN_ACCESS_KEY_ID"),
        env("SOURCE_ADMIN_SECRET_ACCESS_KEY"),
        None,
        None,
        "devenv-admin",
    );
    let config = aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(credentials)
        .load()
        .await;
    aws_sdk_iam::Client::new(&config)
}

/// A user of the source account with keys of its own and one managed policy (made with the
/// administrator); removed with them when dropped.
struct AssumingUser {
    name: String,
    arn: String,
    policy_arn: String,
    credentials: aws_credential_types::Credentials,
}

impl AssumingUser {
    async fn create(prefix: &str, policy: serde_json::Value) -> Self {
        let iam = source_admin_iam().await;
        let name = common::unique(prefix);
        let user = iam
            .create_user()
            .user_name(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateUser {name}: {e:?}"));
        let arn = user.user().expect("a user").arn().to_owned();
        let policy_arn = iam
            .create_policy()
            .policy_name(&name)
            .policy_document(policy.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreatePolicy {name}: {e:?}"))
            .policy()
            .and_then(|p| p.arn())
            .expect("a policy ARN")
            .to_owned();
        iam.attach_user_policy()
            .user_name(&name)
            .policy_arn(&policy_arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("AttachUserPolicy {name}: {e:?}"));
        let key = iam
            .create_access_key()
            .user_name(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateAccessKey {name}: {e:?}"));
        let key = key.access_key().expect("an access key");
        let credentials = aws_credential_types::Credentials::new(
            key.access_key_id(),
            key.secret_access_key(),
            None,
            None,
            "assuming-user",
        );
        AssumingUser {
            name,
            arn,
            policy_arn,
            credentials,
        }
    }

    /// STS as this user, through `endpoint`, one attempt per call.
    async fn sts(&self, endpoint: &str) -> aws_sdk_sts::Client {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .credentials_provider(self.credentials.clone())
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .load()
            .await;
        aws_sdk_sts::Client::new(&config)
    }
}

impl Drop for AssumingUser {
    fn drop(&mut self) {
        let (name, policy_arn) = (self.name.clone(), self.policy_arn.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let iam = source_admin_iam().await;
                    let _ = iam
                        .detach_user_policy()
                        .user_name(&name)
                        .policy_arn(&policy_arn)
                        .send()
                        .await;
                    if let Ok(out) = iam.list_access_keys().user_name(&name).send().await {
                        for key in out.access_key_metadata() {
                            let _ = iam
                                .delete_access_key()
                                .user_name(&name)
                                .access_key_id(key.access_key_id().unwrap_or_default())
                                .send()
                                .await;
                        }
                    }
                    let _ = iam.delete_user().user_name(&name).send().await;
                    delete_managed_policy(&iam, &policy_arn).await;
                })
        })
        .join();
    }
}

/// A role of the target account made straight in moto, with `trust` and `tags`; its ARN.
async fn target_role(
    made: &mut Made,
    prefix: &str,
    trust: serde_json::Value,
    tags: &[(&str, &str)],
) -> String {
    let name = common::unique(prefix);
    let tags = tags
        .iter()
        .map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(*k)
                .value(*v)
                .build()
                .unwrap()
        })
        .collect();
    let arn = moto_target()
        .await
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(trust.to_string())
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateRole {name}: {e:?}"))
        .role()
        .expect("a role")
        .arn()
        .to_owned();
    made.roles.push(name);
    arn
}

/// Roles of the source account made straight in moto with the administrator; deleted when
/// dropped.
#[derive(Default)]
struct SourceRoles(Vec<String>);

impl SourceRoles {
    /// A role trusting per `trust`; its ARN.
    async fn create(&mut self, prefix: &str, trust: serde_json::Value) -> String {
        let name = common::unique(prefix);
        let arn = source_admin_iam()
            .await
            .create_role()
            .role_name(&name)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateRole {name}: {e:?}"))
            .role()
            .expect("a role")
            .arn()
            .to_owned();
        self.0.push(name);
        arn
    }
}

impl Drop for SourceRoles {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let iam = source_admin_iam().await;
                    for name in names {
                        let _ = iam.delete_role().role_name(&name).send().await;
                    }
                })
        })
        .join();
    }
}

/// A trust policy of one Allow statement: `principal` may do `actions`, under `condition`.
fn trusting(
    principal: &str,
    actions: &[&str],
    condition: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut statement = serde_json::json!({
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": actions,
    });
    if let Some(condition) = condition {
        statement["Condition"] = condition;
    }
    serde_json::json!({"Version": "2012-10-17", "Statement": [statement]})
}

/// AWS's refusal of an AssumeRole: 403 `AccessDenied`, the SDK's service error, classified
/// `AccessDenied` by the operator, and nothing reached moto (no session issued).
fn assert_access_denied<T: std::fmt::Debug>(
    what: &str,
    proxy: &AwsProxy,
    sessions: usize,
    result: Result<
        T,
        SdkError<
            aws_sdk_sts::operation::assume_role::AssumeRoleError,
            aws_smithy_runtime_api::http::Response,
        >,
    >,
    caller: &str,
    action: &str,
    role_arn: &str,
) {
    let (answer, err) = refused(what, result);
    assert!(
        err.as_service_error().is_some(),
        "{what}: a service error: {err:?}"
    );
    assert_eq!(
        answer.code.as_deref(),
        Some("AccessDenied"),
        "{what}: {answer:?}"
    );
    assert_eq!(answer.status, Some(403), "{what}: {answer:?}");
    assert_eq!(
        answer.message.as_deref(),
        Some(
            format!(
                "User: {caller} is not authorized to perform: {action} on resource: {role_arn}"
            )
            .as_str()
        ),
        "{what}"
    );
    assert!(answer.request_id.is_some(), "{what}: a request ID");
    assert_eq!(
        AwsError::classify(answer.code.as_deref(), answer.status),
        AwsErrorKind::AccessDenied
    );
    assert_last_refused(proxy, "AssumeRole", "AccessDenied");
    assert_eq!(
        proxy.sessions_seen(),
        sessions,
        "{what}: no session was issued"
    );
}

fn session_tag(key: &str, value: &str) -> aws_sdk_sts::types::Tag {
    aws_sdk_sts::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .unwrap()
}

#[tokio::test]
async fn assume_role_needs_the_trust_policy_and_the_callers_policy_with_their_conditions() {
    let proxy = start_proxy().await;
    let target = env("TARGET_ACCOUNT_ID");
    let grant = common::unique("grant");
    // The operator's kind of grant: sts:AssumeRole (and tagging, source identity) on any role
    // of the target account tagged for this user.
    let user = AssumingUser::create(
        "assumer",
        serde_json::json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
            "Resource": format!("arn:aws:iam::{target}:role/*"),
            "Condition": {"StringEquals": {"iam:ResourceTag/proxy-test/grant": &grant}},
        }]}),
    )
    .await;
    let mut made = Made::default();
    let tagged: &[(&str, &str)] = &[("Proxy-Test/Grant", &grant)];
    let granted = target_role(
        &mut made,
        "assume-granted",
        trusting(&user.arn, &["sts:AssumeRole"], None),
        tagged,
    )
    .await;
    let untagged = target_role(
        &mut made,
        "assume-untagged",
        trusting(&user.arn, &["sts:AssumeRole"], None),
        &[],
    )
    .await;
    let other_user = format!("arn:aws:iam::{}:user/devTest", env("SOURCE_ACCOUNT_ID"));
    let untrusting = target_role(
        &mut made,
        "assume-untrusting",
        trusting(&other_user, &["sts:AssumeRole"], None),
        tagged,
    )
    .await;
    let mut denying_trust = trusting(&user.arn, &["sts:AssumeRole"], None);
    denying_trust["Statement"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "sts:*"}));
    let denying = target_role(&mut made, "assume-denying", denying_trust, tagged).await;
    let external_id = common::unique("ext");
    let external = target_role(
        &mut made,
        "assume-external",
        trusting(
            &format!("arn:aws:iam::{}:root", env("SOURCE_ACCOUNT_ID")),
            &["sts:AssumeRole"],
            Some(serde_json::json!({"StringEquals": {"sts:ExternalId": &external_id}})),
        ),
        tagged,
    )
    .await;
    let full = target_role(
        &mut made,
        "assume-full",
        trusting(
            &user.arn,
            &["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
            None,
        ),
        tagged,
    )
    .await;
    let sts = user.sts(&proxy.endpoint()).await;
    let assume = |arn: &str| sts.assume_role().role_arn(arn).role_session_name("assumer");

    // Inside: trusted, tagged for the user.
    assume(&granted).send().await.expect("the granted role");
    assume(&external)
        .external_id(&external_id)
        .send()
        .await
        .expect("the right external ID");
    assume(&full)
        .tags(session_tag("team", "a"))
        .transitive_tag_keys("team")
        .source_identity("someone")
        .send()
        .await
        .expect("tags and a source identity where the trust policy allows them");
    assert_eq!(proxy.sessions_seen(), 3);
    assert!(
        proxy.requests().iter().all(|r| r.unjudged.is_none()),
        "all judged: {:?}",
        proxy.requests()
    );

    // Outside: each refused as AWS refuses it, before moto (which would issue each of them).
    let sessions = proxy.sessions_seen();
    let cases = [
        (
            "a role without the grant's tag",
            untagged.clone(),
            assume(&untagged),
            "sts:AssumeRole",
        ),
        (
            "a role whose trust does not name the user",
            untrusting.clone(),
            assume(&untrusting),
            "sts:AssumeRole",
        ),
        (
            "a role whose trust denies",
            denying.clone(),
            assume(&denying),
            "sts:AssumeRole",
        ),
        (
            "no external ID",
            external.clone(),
            assume(&external),
            "sts:AssumeRole",
        ),
        (
            "a wrong external ID",
            external.clone(),
            assume(&external).external_id("wrong-id"),
            "sts:AssumeRole",
        ),
        (
            "session tags without sts:TagSession in the trust",
            granted.clone(),
            assume(&granted).tags(session_tag("team", "a")),
            "sts:TagSession",
        ),
        (
            "a source identity without sts:SetSourceIdentity in the trust",
            granted.clone(),
            assume(&granted).source_identity("someone"),
            "sts:SetSourceIdentity",
        ),
        (
            "a role that does not exist",
            format!("{granted}-gone"),
            assume(&format!("{granted}-gone")),
            "sts:AssumeRole",
        ),
    ];
    for (what, arn, request, action) in cases {
        assert_access_denied(
            what,
            &proxy,
            sessions,
            request.send().await,
            &user.arn,
            action,
            &arn,
        );
    }
    // moto alone issues what the proxy refused.
    let direct = user.sts(&env("AWS_ENDPOINT_URL")).await;
    direct
        .assume_role()
        .role_arn(&untagged)
        .role_session_name("moto-is-lenient")
        .send()
        .await
        .expect("moto ignores the condition");
}

/// A group of the source account made with the administrator; its members taken out, its
/// policies detached or deleted, and it deleted, when dropped.
struct SourceGroup {
    name: String,
    policy_arns: Vec<String>,
}

impl Drop for SourceGroup {
    fn drop(&mut self) {
        let (name, policy_arns) = (self.name.clone(), std::mem::take(&mut self.policy_arns));
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let iam = source_admin_iam().await;
                    if let Ok(out) = iam.get_group().group_name(&name).send().await {
                        for user in out.users() {
                            let _ = iam
                                .remove_user_from_group()
                                .group_name(&name)
                                .user_name(user.user_name())
                                .send()
                                .await;
                        }
                    }
                    for arn in &policy_arns {
                        let _ = iam
                            .detach_group_policy()
                            .group_name(&name)
                            .policy_arn(arn)
                            .send()
                            .await;
                        delete_managed_policy(&iam, arn).await;
                    }
                    if let Ok(out) = iam.list_group_policies().group_name(&name).send().await {
                        for policy in out.policy_names() {
                            let _ = iam
                                .delete_group_policy()
                                .group_name(&name)
                                .policy_name(policy)
                                .send()
                                .await;
                        }
                    }
                    let _ = iam.delete_group().group_name(&name).send().await;
                })
        })
        .join();
    }
}

#[tokio::test]
async fn assume_role_by_a_user_counts_the_policies_of_its_groups() {
    // AWS evaluates a user's identity policies with those attached to and inline in its groups
    // (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
    // the proxy reads the user's groups (ListGroupsForUser) and their policies, at each request.
    let proxy = start_proxy().await;
    let source = env("SOURCE_ACCOUNT_ID");
    let target = env("TARGET_ACCOUNT_ID");
    let nothing = serde_json::json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*",
    }]});
    let member = AssumingUser::create("group-member", nothing.clone()).await;
    let outsider = AssumingUser::create("group-outsider", nothing).await;
    let iam = source_admin_iam().await;
    let mut group = SourceGroup {
        name: common::unique("assumers"),
        policy_arns: Vec::new(),
    };
    iam.create_group()
        .group_name(&group.name)
        .send()
        .await
        .expect("CreateGroup");
    let allow = |tag: &str| {
        serde_json::json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*",
            "Condition": {"StringEquals": {format!("iam:ResourceTag/proxy-test/{tag}"): "yes"}},
        }]})
    };
    let attached = iam
        .create_policy()
        .policy_name(&group.name)
        .policy_document(allow("attached").to_string())
        .send()
        .await
        .expect("CreatePolicy")
        .policy()
        .and_then(|p| p.arn())
        .expect("a policy ARN")
        .to_owned();
    group.policy_arns.push(attached.clone());
    iam.attach_group_policy()
        .group_name(&group.name)
        .policy_arn(&attached)
        .send()
        .await
        .expect("AttachGroupPolicy");
    iam.put_group_policy()
        .group_name(&group.name)
        .policy_name("inline")
        .policy_document(allow("inline").to_string())
        .send()
        .await
        .expect("PutGroupPolicy");
    iam.add_user_to_group()
        .group_name(&group.name)
        .user_name(&member.name)
        .send()
        .await
        .expect("AddUserToGroup");
    // Roles trusting the source account's users, as the operator's grants to groups do.
    let trust = trusting(
        &format!("arn:aws:iam::{source}:root"),
        &["sts:AssumeRole"],
        Some(
            serde_json::json!({"ArnLike": {"aws:PrincipalArn": format!("arn:aws:iam::{source}:user/*")}}),
        ),
    );
    let mut made = Made::default();
    let by_attached = target_role(
        &mut made,
        "group-attached",
        trust.clone(),
        &[("proxy-test/attached", "yes")],
    )
    .await;
    let by_inline = target_role(
        &mut made,
        "group-inline",
        trust,
        &[("proxy-test/inline", "yes")],
    )
    .await;
    assert!(by_attached.contains(&target));

    let member_sts = member.sts(&proxy.endpoint()).await;
    let outsider_sts = outsider.sts(&proxy.endpoint()).await;
    for arn in [&by_attached, &by_inline] {
        member_sts
            .assume_role()
            .role_arn(arn)
            .role_session_name("member")
            .send()
            .await
            .unwrap_or_else(|e| panic!("the member assumes {arn} through its group: {e:?}"));
    }
    assert!(
        proxy.requests().iter().all(|r| r.unjudged.is_none()),
        "all judged: {:?}",
        proxy.requests()
    );
    let sessions = proxy.sessions_seen();
    for arn in [&by_attached, &by_inline] {
        let result = outsider_sts
            .assume_role()
            .role_arn(arn)
            .role_session_name("outsider")
            .send()
            .await;
        assert_access_denied(
            "a user outside the group",
            &proxy,
            sessions,
            result,
            &outsider.arn,
            "sts:AssumeRole",
            arn,
        );
    }
    // Out of the group, the member is refused at once: groups are read at each request.
    iam.remove_user_from_group()
        .group_name(&group.name)
        .user_name(&member.name)
        .send()
        .await
        .expect("RemoveUserFromGroup");
    let result = member_sts
        .assume_role()
        .role_arn(&by_attached)
        .role_session_name("member")
        .send()
        .await;
    assert_access_denied(
        "a former member",
        &proxy,
        sessions,
        result,
        &member.arn,
        "sts:AssumeRole",
        &by_attached,
    );
}

#[tokio::test]
async fn a_session_issued_through_the_proxy_is_judged_as_its_role() {
    let proxy = start_proxy().await;
    let target = env("TARGET_ACCOUNT_ID");
    let user = AssumingUser::create(
        "chainer",
        serde_json::json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": format!("arn:aws:iam::{target}:role/*"),
        }]}),
    )
    .await;
    let mut made = Made::default();
    let first = target_role(
        &mut made,
        "chain-first",
        trusting(&user.arn, &["sts:AssumeRole"], None),
        &[],
    )
    .await;
    let first_name = first.rsplit('/').next().unwrap().to_owned();
    // The first role may assume roles of its account (moto requires an identity policy).
    moto_target()
        .await
        .put_role_policy()
        .role_name(&first_name)
        .policy_name("assume")
        .policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*",
                "Condition": {"StringLike": {"aws:PrincipalArn": format!("arn:aws:iam::{target}:role/chain-*")}},
            }]})
            .to_string(),
        )
        .send()
        .await
        .expect("PutRolePolicy");
    // The next roles are in the source account: across accounts moto checks no trust policy
    // at all (within one, it matches the Principal to the session's ARN only, stricter than
    // AWS, which lets a role's ARN stand for its sessions).
    let mut source_roles = SourceRoles::default();
    let second = source_roles
        .create("chain-second", trusting(&first, &["sts:AssumeRole"], None))
        .await;
    let elsewhere = source_roles
        .create(
            "chain-elsewhere",
            trusting(&user.arn, &["sts:AssumeRole"], None),
        )
        .await;
    let session = user
        .sts(&proxy.endpoint())
        .await
        .assume_role()
        .role_arn(&first)
        .role_session_name("first")
        .send()
        .await
        .expect("the first role")
        .credentials()
        .cloned()
        .expect("credentials");
    let (_, session_sts) = session_clients(&proxy.endpoint(), &session).await;
    session_sts
        .assume_role()
        .role_arn(&second)
        .role_session_name("second")
        .send()
        .await
        .expect("a role whose trust names the first role");
    let last = proxy.requests().pop().unwrap();
    assert!(
        last.succeeded() && last.unjudged.is_none(),
        "{}",
        last.summary()
    );
    let sessions = proxy.sessions_seen();
    assert_access_denied(
        "a role whose trust names someone else",
        &proxy,
        sessions,
        session_sts
            .assume_role()
            .role_arn(&elsewhere)
            .role_session_name("elsewhere")
            .send()
            .await,
        &format!("arn:aws:sts::{target}:assumed-role/{first_name}/first"),
        "sts:AssumeRole",
        &elsewhere,
    );
}

#[tokio::test]
async fn an_assume_role_the_proxy_cannot_judge_is_forwarded_and_says_why() {
    let proxy = start_proxy().await;
    let target = env("TARGET_ACCOUNT_ID");
    let user = AssumingUser::create(
        "unjudged",
        serde_json::json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": format!("arn:aws:iam::{target}:role/*"),
        }]}),
    )
    .await;
    let mut made = Made::default();
    let first = target_role(
        &mut made,
        "unjudged-first",
        trusting(&user.arn, &["sts:AssumeRole"], None),
        &[],
    )
    .await;
    moto_target()
        .await
        .put_role_policy()
        .role_name(first.rsplit('/').next().unwrap())
        .policy_name("assume")
        .policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*",
            }]})
            .to_string(),
        )
        .send()
        .await
        .expect("PutRolePolicy");
    let mut source_roles = SourceRoles::default();
    let second = source_roles
        .create(
            "unjudged-second",
            trusting(&first, &["sts:AssumeRole"], None),
        )
        .await;
    // A session issued by moto directly: the proxy cannot tell who it is.
    let session = user
        .sts(&env("AWS_ENDPOINT_URL"))
        .await
        .assume_role()
        .role_arn(&first)
        .role_session_name("direct")
        .send()
        .await
        .expect("the first role, from moto")
        .credentials()
        .cloned()
        .expect("credentials");
    let (_, session_sts) = session_clients(&proxy.endpoint(), &session).await;
    session_sts
        .assume_role()
        .role_arn(&second)
        .role_session_name("second")
        .send()
        .await
        .unwrap_or_else(|e| {
            let log: Vec<String> = proxy.requests().iter().map(|r| r.summary()).collect();
            panic!("forwarded unjudged: {e:?}\n{log:#?}")
        });
    let last = proxy.requests().pop().unwrap();
    assert!(last.succeeded(), "{}", last.summary());
    assert!(
        last.unjudged
            .as_deref()
            .is_some_and(|r| r.contains("cannot identify the caller")),
        "{}",
        last.summary()
    );
    // A condition key the proxy does not model: forwarded, and the log says which.
    let odd = target_role(
        &mut made,
        "unjudged-odd",
        trusting(
            &user.arn,
            &["sts:AssumeRole"],
            Some(serde_json::json!({"Bool": {"aws:MultiFactorAuthPresent": "false"}})),
        ),
        &[],
    )
    .await;
    user.sts(&proxy.endpoint())
        .await
        .assume_role()
        .role_arn(&odd)
        .role_session_name("odd")
        .send()
        .await
        .expect("forwarded unjudged");
    let last = proxy.requests().pop().unwrap();
    assert!(last.succeeded(), "{}", last.summary());
    assert!(
        last.unjudged
            .as_deref()
            .is_some_and(|r| r.contains("aws:MultiFactorAuthPresent is not modelled")),
        "{}",
        last.summary()
    );
}
