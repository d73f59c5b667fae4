//! The AWS fault proxy of the tests (tests/common/aws_proxy.rs), checked against the local AWS
//! emulator with the real SDK: each fault does what it says, the operator's error classification
//! sees it as intended, and the counts are right.

mod common;

use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, retry::RetryConfig};
use aws_sdk_iam::{
    error::{ProvideErrorMetadata, SdkError},
    operation::RequestId,
};
use common::{
    aws_proxy::{AwsProxy, CallCount, Fault, FaultRule},
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
    // Other operations pass.
    iam.list_user_policies()
        .user_name("devTest")
        .send()
        .await
        .expect("ListUserPolicies is not throttled");
    assert_eq!(proxy.count("iam", "ListUserPolicies").forwarded, 1);
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
