//! The CrossAccountRole reconcile against a mock apiserver that expects the exact request
//! sequence (in the way kube-rs/controller-rs tests its reconciler), with the in-memory AWS: what
//! the wiring asks of Kubernetes on create, in the steady state, on a refusal, and on deletion
//! with `Delete` and with `Retain`.

use std::{sync::Arc, time::Duration};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body, core::DeserializeGuard, runtime::controller::Action};
use serde_json::{Value, json};

use super::{Context, role};
use crate::{
    api::{CrossAccountRole, names::FINALIZER},
    aws::{
        Aws, Change,
        fake::{FakeAccount, FakeAws},
    },
    metrics::Metrics,
    naming::OperatorIdentity,
};

const SOURCE: &str = "123456789012";
const TARGET: &str = "111111111111";
const NS: &str = "team-a";
const CR: &str = "reader";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mock apiserver: each call takes the next request and checks it. Events reach it through
/// a client of their own (the second handle), as they are published by a task of their own, in
/// no fixed order with the reconcile's other requests.
struct ApiServer(Handle, Handle);

/// One request the apiserver received, with its body as JSON (or `Null`).
struct Received {
    method: Method,
    path: String,
    query: String,
    body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Received {
    fn answer(self, status: StatusCode, body: Value) {
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.respond.send_response(response);
    }

    fn ok(self, body: Value) {
        self.answer(StatusCode::OK, body);
    }

    fn not_found(self) {
        self.answer(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        );
    }
}

impl ApiServer {
    async fn next(&mut self) -> Received {
        Self::next_of(&mut self.0).await
    }

    async fn next_of(handle: &mut Handle) -> Received {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                .await
                .expect("the operator made no further request")
                .expect("the client is gone");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        Received {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            respond,
        }
    }

    /// The next request, which must be `method` on `path`.
    async fn expect(&mut self, method: Method, path: &str) -> Received {
        let received = self.next().await;
        assert_eq!(
            (&received.method, received.path.as_str()),
            (&method, path),
            "unexpected request (query {:?}, body {})",
            received.query,
            received.body
        );
        received
    }

    async fn account(&mut self, account: &Value) {
        self.expect(
            Method::GET,
            "/apis/crossaccount.io/v1alpha1/awsaccounts/target",
        )
        .await
        .ok(account.clone());
    }

    async fn namespace(&mut self) {
        self.expect(Method::GET, &format!("/api/v1/namespaces/{NS}"))
            .await
            .ok(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": NS, "labels": {"tenant": "true"}},
            }));
    }

    /// Events, in order of their reasons; each is answered as created.
    async fn events(&mut self, reasons: &[&str]) -> Vec<Value> {
        let mut seen = Vec::new();
        for reason in reasons {
            let received = Self::next_of(&mut self.1).await;
            assert_eq!(
                (&received.method, received.path.as_str()),
                (
                    &Method::POST,
                    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events").as_str()
                ),
                "unexpected request instead of an event"
            );
            assert_eq!(received.body["reason"], *reason, "{}", received.body);
            seen.push(received.body.clone());
            let body = received.body.clone();
            received.ok(body);
        }
        seen
    }

    /// Nothing more is asked of the apiserver.
    async fn done(mut self) {
        for handle in [&mut self.0, &mut self.1] {
            let more =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
            if let Ok(Some((request, _))) = more {
                panic!("unexpected request {} {}", request.method(), request.uri());
            }
        }
    }
}

fn operator() -> OperatorIdentity {
    OperatorIdentity {
        cluster_name: "dev".into(),
        source_account_id: SOURCE.into(),
        partition: "aws".into(),
        principal_arn: format!("arn:aws:iam::{SOURCE}:user/cross-account-operator"),
        chained: false,
    }
}

fn account(namespaces: Value) -> Value {
    json!({
        "apiVersion": "crossaccount.io/v1alpha1", "kind": "AwsAccount",
        "metadata": {"name": "target", "resourceVersion": "7", "uid": "acct"},
        "spec": {
            "accountId": TARGET,
            "allowedNamespaces": namespaces,
            "allowedPolicyArns": ["arn:aws:iam::aws:policy/*"],
            "allowedTrustPrincipals": [format!("arn:aws:iam::{SOURCE}:user/*")],
        },
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Verified",
            "message": "verified", "lastTransitionTime": "2026-12-01T00:00:00Z"}]},
    })
}

/// The seed scenario: S3 read-only, a grant to devTest, credentials.
fn cr() -> Value {
    json!({
        "apiVersion": "crossaccount.io/v1alpha1", "kind": "CrossAccountRole",
        "metadata": {"name": CR, "namespace": NS, "uid": "uid-1", "generation": 1,
            "resourceVersion": "10"},
        "spec": {
            "accountRef": "target",
            "policies": {"managed": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]},
            "grants": [{"user": "devTest"}],
            "credentials": {},
        },
    })
}

/// The object as the apiserver answers a status patch: the CR with the patched status.
fn with_status(patch: &Value) -> Value {
    let mut full = cr();
    full["status"] = patch["status"].clone();
    full
}

fn testbed() -> (Arc<Context<FakeAws>>, ApiServer, FakeAws) {
    testbed_in(super::WatchScope::All)
}

/// The testbed of an operator that manages the namespaces of `scope`.
fn testbed_in(scope: super::WatchScope) -> (Arc<Context<FakeAws>>, ApiServer, FakeAws) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let source = FakeAccount::new(SOURCE);
    source.add_user("devTest");
    let aws = FakeAws::new(source);
    let (events_service, events_handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (mut ctx, _feeds) = Context::new(
        client,
        aws.clone(),
        operator(),
        Metrics::new(),
        super::Settings {
            concurrency: 8,
            resync_interval: Duration::from_secs(600),
            instance: Some("operator-0".into()),
            scope,
        },
    );
    ctx.events = super::events::Events::new(
        Client::new(events_service, "default"),
        Some("operator-0".into()),
        Default::default(),
    );
    (Arc::new(ctx), ApiServer(handle, events_handle), aws)
}

fn guarded(object: &Value) -> Arc<DeserializeGuard<CrossAccountRole>> {
    Arc::new(serde_json::from_value(object.clone()).expect("a CrossAccountRole"))
}

fn operations(changes: &[Change]) -> Vec<&'static str> {
    changes.iter().map(Change::operation).collect()
}

/// Runs one reconcile of `object` while `script` plays the apiserver; returns its result.
async fn reconcile_with<F>(
    ctx: &Arc<Context<FakeAws>>,
    object: &Value,
    script: impl FnOnce() -> F,
) -> Action
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let server = tokio::spawn(script());
    let action = role::reconcile(guarded(object), ctx.clone())
        .await
        .expect("the reconcile succeeds");
    server.await.expect("the apiserver script");
    action
}

/// Create, then the steady state from what the create wrote.
#[tokio::test]
async fn a_new_role_is_created_and_an_unchanged_one_costs_three_reads() {
    let (ctx, server, aws) = testbed();
    let object = cr();
    let acct = account(json!({"names": [NS]}));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let script = {
        let acct = acct.clone();
        let mut server = server;
        move || async move {
            server.account(&acct).await;
            server.namespace().await;
            // The finalizer, after the first read of the target account and before any write.
            let patch = server
                .expect(
                    Method::PATCH,
                    &format!(
                        "/apis/crossaccount.io/v1alpha1/namespaces/{NS}/crossaccountroles/{CR}"
                    ),
                )
                .await;
            assert_eq!(
                patch.body["metadata"],
                json!({"name": CR, "uid": "uid-1", "finalizers": [FINALIZER]})
            );
            assert!(
                patch.query.contains("fieldManager=cross-account-operator"),
                "{}",
                patch.query
            );
            let mut with_finalizer = cr();
            with_finalizer["metadata"]["finalizers"] = json!([FINALIZER]);
            patch.ok(with_finalizer);
            server
                .expect(
                    Method::GET,
                    &format!("/api/v1/namespaces/{NS}/secrets/{CR}-aws"),
                )
                .await
                .not_found();
            // Created only if absent: a POST, which fails if someone created it meanwhile.
            let secret = server
                .expect(Method::POST, &format!("/api/v1/namespaces/{NS}/secrets"))
                .await;
            assert!(
                secret.query.contains("fieldManager=cross-account-operator"),
                "{}",
                secret.query
            );
            assert_eq!(
                secret.body["metadata"]["ownerReferences"][0]["uid"],
                "uid-1"
            );
            let secret_body = secret.body.clone();
            secret.ok(secret_body.clone());
            let status = server
                .expect(Method::PATCH, &format!("/apis/crossaccount.io/v1alpha1/namespaces/{NS}/crossaccountroles/{CR}/status"))
                .await;
            let status_body = status.body.clone();
            status.ok(with_status(&status_body));
            server
                .events(&["AwsChange", "AwsChange", "AwsChange", "CredentialsIssued"])
                .await;
            tx.send((secret_body, status_body, server)).ok();
        }
    };
    let action = reconcile_with(&ctx, &object, script).await;
    let (secret, status, server) = rx.await.unwrap();
    assert_ne!(action, Action::await_change());
    let writes = aws.account(TARGET).take_writes();
    assert_eq!(operations(&writes), ["CreateRole", "AttachRolePolicy"]);
    assert_eq!(
        operations(&aws.source().take_writes()),
        ["CreatePolicy", "AttachUserPolicy"]
    );
    assert_eq!(aws.source().assumed().len(), 1);
    let conditions = &status["status"]["conditions"];
    assert!(
        conditions
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "True"),
        "{conditions}"
    );
    assert!(
        !status.to_string().contains("ASIAFAKE"),
        "no secret material in status"
    );

    // The steady state: the CR with its finalizer and status, the Secret as written. Reading the
    // account, the namespace and the Secret is all; no write, no event, no mint.
    let mut steady = cr();
    steady["metadata"]["finalizers"] = json!([FINALIZER]);
    steady["status"] = status["status"].clone();
    let script = move || async move {
        let mut server = server;
        server.account(&acct).await;
        server.namespace().await;
        server
            .expect(
                Method::GET,
                &format!("/api/v1/namespaces/{NS}/secrets/{CR}-aws"),
            )
            .await
            .ok(secret);
        server.done().await;
    };
    reconcile_with(&ctx, &steady, script).await;
    assert!(aws.account(TARGET).take_writes().is_empty());
    assert!(aws.source().take_writes().is_empty());
    assert_eq!(
        aws.source().assumed().len(),
        1,
        "the held credentials are reused"
    );
}

#[tokio::test]
async fn a_refused_role_gets_its_condition_and_one_warning_and_nothing_else() {
    let (ctx, mut server, aws) = testbed();
    let acct = account(json!({"names": ["team-b"]}));
    let script = move || async move {
        server.account(&acct).await;
        server.namespace().await;
        let status = server
            .expect(
                Method::PATCH,
                &format!(
                    "/apis/crossaccount.io/v1alpha1/namespaces/{NS}/crossaccountroles/{CR}/status"
                ),
            )
            .await;
        let ready = status.body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("NotPermitted"))
        );
        let body = status.body.clone();
        status.ok(with_status(&body));
        let events = server.events(&["NotPermitted"]).await;
        assert_eq!(events[0]["type"], "Warning");
        server.done().await;
    };
    let action = reconcile_with(&ctx, &cr(), script).await;
    // Resynced like any other, so the guardrails stay enforced on its role; nothing sooner.
    assert_ne!(action, Action::await_change(), "a refusal is resynced");
    assert!(aws.account(TARGET).take_writes().is_empty());
    assert!(aws.source().assumed().is_empty());
}

/// With `--watch-namespaces`, an object elsewhere (which the watches do not deliver, but say it
/// came anyway) is left alone: no request to the apiserver, nothing in AWS.
#[tokio::test]
async fn an_object_outside_the_watched_namespaces_is_not_touched() {
    let (ctx, server, aws) = testbed_in(super::WatchScope::new(["team-b".to_owned()]));
    let action = reconcile_with(&ctx, &cr(), move || async move { server.done().await }).await;
    assert_eq!(action, Action::await_change());
    assert!(aws.account(TARGET).take_writes().is_empty());
    assert!(aws.source().assumed().is_empty());
}

/// A CR being deleted whose role was created earlier (in the fake).
async fn deleting(policy: &str) -> (Arc<Context<FakeAws>>, ApiServer, FakeAws, Value) {
    let (ctx, mut server, aws) = testbed();
    // Create the role first, through the same wiring.
    let acct = account(json!({"names": [NS]}));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut object = cr();
    object["spec"]["deletionPolicy"] = json!(policy);
    let script = {
        let acct = acct.clone();
        move || async move {
            server.account(&acct).await;
            server.namespace().await;
            let patch = server.next().await;
            patch.ok(cr());
            server.next().await.not_found();
            let secret = server.next().await;
            let body = secret.body.clone();
            secret.ok(body);
            let status = server.next().await;
            let body = status.body.clone();
            status.ok(with_status(&body));
            server
                .events(&["AwsChange", "AwsChange", "AwsChange", "CredentialsIssued"])
                .await;
            tx.send((body, server)).ok();
        }
    };
    reconcile_with(&ctx, &object, script).await;
    let (status, server) = rx.await.unwrap();
    aws.account(TARGET).take_writes();
    aws.source().take_writes();
    let mut gone = object;
    gone["metadata"]["finalizers"] = json!([FINALIZER]);
    gone["metadata"]["deletionTimestamp"] = json!("2026-12-01T01:00:00Z");
    gone["status"] = status["status"].clone();
    let _ = acct;
    (ctx, server, aws, gone)
}

fn secret_owned_by_the_cr() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{CR}-aws"), "namespace": NS,
            "ownerReferences": [{"apiVersion": "crossaccount.io/v1alpha1", "kind": "CrossAccountRole",
                "name": CR, "uid": "uid-1", "controller": true}]}})
}

async fn release_finalizer(server: &mut ApiServer) {
    server
        .expect(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/secrets/{CR}-aws"),
        )
        .await
        .ok(secret_owned_by_the_cr());
    server
        .expect(
            Method::DELETE,
            &format!("/api/v1/namespaces/{NS}/secrets/{CR}-aws"),
        )
        .await
        .ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
    let patch = server
        .expect(
            Method::PATCH,
            &format!("/apis/crossaccount.io/v1alpha1/namespaces/{NS}/crossaccountroles/{CR}"),
        )
        .await;
    assert_eq!(
        patch.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    patch.ok(cr());
}

#[tokio::test]
async fn deleting_with_delete_removes_the_role_and_the_grant_then_releases() {
    let (ctx, mut server, aws, gone) = deleting("Delete").await;
    let acct = account(json!({"names": [NS]}));
    let script = move || async move {
        server.account(&acct).await;
        // Which grants the spec may revoke depends on the namespace.
        server.namespace().await;
        server.events(&["AwsChange", "AwsChange"]).await;
        release_finalizer(&mut server).await;
        server.done().await;
    };
    let action = reconcile_with(&ctx, &gone, script).await;
    assert_eq!(action, Action::await_change());
    // The grant was the role's tag and trust entry: it went with the role. The user's grant
    // policy stays attached (it allows only roles tagged for the user).
    assert!(aws.source().take_writes().is_empty());
    assert_eq!(
        operations(&aws.account(TARGET).take_writes()),
        ["DetachRolePolicy", "DeleteRole"]
    );
    assert!(aws.account(TARGET).role(&format!("{NS}_{CR}")).is_none());
}

#[tokio::test]
async fn deleting_with_retain_lets_go_of_the_role_and_releases() {
    let (ctx, mut server, aws, gone) = deleting("Retain").await;
    let acct = account(json!({"names": [NS]}));
    let script = move || async move {
        server.account(&acct).await;
        server.namespace().await;
        // The operator lets go of the role: its trust statement and the ownership tags go.
        server
            .events(&["AwsChange", "AwsChange", "AwsChange", "Retained"])
            .await;
        release_finalizer(&mut server).await;
        server.done().await;
    };
    reconcile_with(&ctx, &gone, script).await;
    assert_eq!(
        operations(&aws.account(TARGET).take_writes()),
        ["UpdateAssumeRolePolicy", "UntagRole", "TagRole"]
    );
    assert!(aws.source().take_writes().is_empty(), "grants stay");
    let role = aws
        .account(TARGET)
        .role(&format!("{NS}_{CR}"))
        .expect("the role stays");
    assert!(role.tags.contains_key("crossaccount.io/retained"));
    assert!(!role.tags.contains_key("crossaccount.io/name"));
    assert!(
        !role
            .trust_policy
            .to_string()
            .contains("CrossAccountOperator"),
        "{}",
        role.trust_policy
    );
}

/// An AwsAccount that cannot be read is not a deleted one: the finalizer stays, the role stays,
/// and `Ready` says why; only a deletion confirmed by the apiserver lets go, counted.
#[tokio::test]
async fn deleting_with_an_unreadable_account_keeps_the_finalizer_and_says_why() {
    let (ctx, mut server, aws, gone) = deleting("Delete").await;
    let script = move || async move {
        let unreadable = json!({
            "apiVersion": "crossaccount.io/v1alpha1", "kind": "AwsAccount",
            "metadata": {"name": "target", "uid": "acct"},
            "spec": {"accountId": 111111111111i64},
        });
        server
            .expect(
                Method::GET,
                "/apis/crossaccount.io/v1alpha1/awsaccounts/target",
            )
            .await
            .ok(unreadable);
        let status = server
            .expect(
                Method::PATCH,
                &format!(
                    "/apis/crossaccount.io/v1alpha1/namespaces/{NS}/crossaccountroles/{CR}/status"
                ),
            )
            .await;
        let ready = status.body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("cannot be read"),
            "{ready}"
        );
        let body = status.body.clone();
        status.ok(with_status(&body));
        server.done().await;
    };
    // An earlier attempt failed already (the error policy counted it).
    let key = format!("{NS}/{CR}");
    ctx.backoff.next(&key);
    let server = tokio::spawn(script());
    let result = role::reconcile(guarded(&gone), ctx.clone()).await;
    server.await.unwrap();
    assert!(result.is_err(), "retried, not released");
    assert!(aws.account(TARGET).role(&format!("{NS}_{CR}")).is_some());
    // A deletion that keeps failing backs off: its failure count is not reset by the attempt
    // (it was, and a blocked deletion was retried every second).
    let second = ctx.backoff.next(&key);
    assert!(second >= Duration::from_millis(1500), "{second:?}");
}

#[tokio::test]
async fn deleting_after_the_account_is_gone_lets_go_and_counts_what_is_left() {
    let (ctx, mut server, aws, gone) = deleting("Delete").await;
    let metrics = ctx.metrics.clone();
    let script = move || async move {
        // The cache misses, and the apiserver confirms.
        server
            .expect(
                Method::GET,
                "/apis/crossaccount.io/v1alpha1/awsaccounts/target",
            )
            .await
            .not_found();
        server
            .expect(
                Method::GET,
                "/apis/crossaccount.io/v1alpha1/awsaccounts/target",
            )
            .await
            .not_found();
        let status = server
            .expect(
                Method::PATCH,
                &format!(
                    "/apis/crossaccount.io/v1alpha1/namespaces/{NS}/crossaccountroles/{CR}/status"
                ),
            )
            .await;
        let body = status.body.clone();
        status.ok(with_status(&body));
        let events = server.events(&["AccountNotReady"]).await;
        assert_eq!(events[0]["type"], "Warning");
        assert!(
            events[0]["note"].as_str().unwrap().contains("left in AWS"),
            "{}",
            events[0]
        );
        release_finalizer(&mut server).await;
        server.done().await;
    };
    reconcile_with(&ctx, &gone, script).await;
    assert_eq!(metrics.abandoned_roles.get(), 1);
    assert!(
        aws.account(TARGET).role(&format!("{NS}_{CR}")).is_some(),
        "nothing could remove it"
    );
}
