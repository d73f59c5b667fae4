//! The AWS proxy of the tests (tests/common/aws_proxy.rs), checked against the local AWS emulator
//! with the real SDK: each fault does what it says, the operator's error classification sees it
//! as intended, the counts and the request log are right, and sessions past their expiration
//! are answered as AWS answers them.

mod common;

use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, retry::RetryConfig};
use aws_sdk_iam::{
    error::{ProvideErrorMetadata, SdkError},
    operation::RequestId,
};
use common::{
    aws_proxy::{AwsProxy, CallCount, Fault, FaultRule, Outcome},
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
