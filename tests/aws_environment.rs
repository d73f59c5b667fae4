//! The local AWS (moto) behaves as the operator will find AWS: the operator's credentials work,
//! the management role leads into the target account, and authorization is enforced.

mod common;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;

async fn operator_config() -> SdkConfig {
    common::env("AWS_ENDPOINT_URL");
    common::env("AWS_ACCESS_KEY_ID");
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

fn with_credentials(base: &SdkConfig, credentials: Credentials) -> SdkConfig {
    base.to_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
        )
        .build()
}

/// moto's authorization layer answers 403 with an EC2-style `<Errors><Error>` body that the SDK's
/// awsQuery parser does not decode into an error code, so the test reads the raw response.
fn assert_denied(raw: Option<&aws_smithy_runtime_api::http::Response>, code: &str) {
    let raw = raw.expect("a denial is an HTTP response");
    assert_eq!(raw.status().as_u16(), 403);
    let body = std::str::from_utf8(raw.body().bytes().unwrap_or_default()).unwrap();
    assert!(body.contains(&format!("<Code>{code}</Code>")), "{body}");
}

#[tokio::test]
async fn operator_identity_is_the_seeded_user_in_the_source_account() {
    let config = operator_config().await;
    let me = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with the operator's keys");
    assert_eq!(
        me.account(),
        Some(common::env("SOURCE_ACCOUNT_ID").as_str())
    );
    assert!(
        me.arn().unwrap().ends_with(":user/cross-account-operator"),
        "{:?}",
        me.arn()
    );
}

#[tokio::test]
async fn management_role_yields_an_identity_in_the_target_account() {
    let config = operator_config().await;
    let assumed = aws_sdk_sts::Client::new(&config)
        .assume_role()
        .role_arn(common::env("MANAGEMENT_ROLE_ARN"))
        .role_session_name("integration-test")
        .send()
        .await
        .expect("AssumeRole of the management role");
    let c = assumed.credentials().expect("credentials");
    let session = with_credentials(
        &config,
        Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "test",
        ),
    );
    let me = aws_sdk_sts::Client::new(&session)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity as the management role");
    assert_eq!(
        me.account(),
        Some(common::env("TARGET_ACCOUNT_ID").as_str())
    );
    assert!(
        me.arn()
            .unwrap()
            .contains(":assumed-role/cross-account-operator-management/integration-test"),
        "{:?}",
        me.arn()
    );
    // The management session may manage IAM in the target account.
    aws_sdk_iam::Client::new(&session)
        .list_roles()
        .send()
        .await
        .expect("iam:ListRoles as the management role");
}

#[tokio::test]
async fn wrong_credentials_are_denied() {
    let config = operator_config().await;
    let bogus = with_credentials(
        &config,
        Credentials::new("AKIAIOSFODNN7EXAMPLE", "not-the-secret", None, None, "test"),
    );
    let err = aws_sdk_sts::Client::new(&bogus)
        .get_caller_identity()
        .send()
        .await
        .expect_err("unknown keys must be refused");
    assert_denied(err.raw_response(), "InvalidClientTokenId");
}

#[tokio::test]
async fn permissions_are_enforced_for_valid_credentials() {
    // The operator's user may not create users: enforcement checks policies, not only keys.
    let config = operator_config().await;
    let err = aws_sdk_iam::Client::new(&config)
        .create_user()
        .user_name(common::unique("intruder"))
        .send()
        .await
        .expect_err("the operator's user has no iam:CreateUser");
    assert_denied(err.raw_response(), "AccessDenied");
}
