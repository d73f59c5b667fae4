//! The `credentials-endpoint` mode of the binary: a sidecar that serves the credentials of a
//! mounted CrossAccountRole Secret over the container credentials protocol, for applications whose
//! image has nothing to run a `credential_process` with. Every major AWS SDK reads
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` (a loopback address) with the token of
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, and fetches again before the `Expiration` it was
//! given, so a long-running process follows every refresh of the Secret.
//!
//! Each request re-reads the mounted files (kubelet swaps them atomically); nothing is cached and
//! nothing secret is logged.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The file names in the mounted Secret.
const CREDENTIALS_JSON: &str = "credentials.json";
const TOKEN: &str = "container-token";

/// Binds `addr` and returns the server, which runs until `shutdown` completes.
pub async fn serve(
    dir: PathBuf,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<impl Future<Output = std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, dir = %dir.display(), "serving container credentials");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(get(credentials))
        .with_state(Arc::new(dir));
    Ok(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    })
}

async fn credentials(State(dir): State<Arc<PathBuf>>, headers: HeaderMap) -> Response {
    match answer(
        &dir,
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
    .await
    {
        Ok(body) => (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
        Err((status, message)) => (status, message).into_response(),
    }
}

/// The container credentials document for a request with `authorization`, or why not.
async fn answer(
    dir: &std::path::Path,
    authorization: Option<&str>,
) -> Result<Value, (StatusCode, &'static str)> {
    let unavailable = |_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the mounted credentials cannot be read yet",
        )
    };
    let token = tokio::fs::read_to_string(dir.join(TOKEN))
        .await
        .map_err(unavailable)?;
    let token = token.trim();
    if token.is_empty() || !same(authorization.unwrap_or_default().trim(), token) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing or wrong authorization token",
        ));
    }
    let text = tokio::fs::read_to_string(dir.join(CREDENTIALS_JSON))
        .await
        .map_err(unavailable)?;
    let process: Value = serde_json::from_str(&text).map_err(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the mounted credentials are not complete",
        )
    })?;
    container_document(&process).ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "the mounted credentials are not complete",
    ))
}

/// The `credential_process` document (`SessionToken`) as the container endpoint answers it
/// (`Token`).
fn container_document(process: &Value) -> Option<Value> {
    let field = |k: &str| process.get(k).and_then(Value::as_str);
    Some(json!({
        "AccessKeyId": field("AccessKeyId")?,
        "SecretAccessKey": field("SecretAccessKey")?,
        "Token": field("SessionToken")?,
        "Expiration": field("Expiration")?,
    }))
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(token: &str, credentials: &Value) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        std::fs::write(dir.path().join(TOKEN), token).unwrap();
        std::fs::write(dir.path().join(CREDENTIALS_JSON), credentials.to_string()).unwrap();
        dir
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let path = std::env::temp_dir().join(format!(
                    "cao-endpoint-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const PROCESS: &str = r#"{"Version":1,"AccessKeyId":"ASIAKEY","SecretAccessKey":"s","SessionToken":"t","Expiration":"2026-12-01T12:00:00Z"}"#;

    #[tokio::test]
    async fn the_token_is_required_and_the_document_is_the_container_shape() {
        let dir = mounted("tok", &serde_json::from_str(PROCESS).unwrap());
        assert_eq!(
            answer(dir.path(), None).await.unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            answer(dir.path(), Some("other")).await.unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        let body = answer(dir.path(), Some("tok")).await.unwrap();
        assert_eq!(
            body,
            json!({"AccessKeyId": "ASIAKEY", "SecretAccessKey": "s", "Token": "t", "Expiration": "2026-12-01T12:00:00Z"})
        );
    }

    #[tokio::test]
    async fn every_request_reads_the_files_again() {
        let dir = mounted("tok", &serde_json::from_str(PROCESS).unwrap());
        let next = PROCESS.replace("ASIAKEY", "ASIANEXT");
        std::fs::write(dir.path().join(CREDENTIALS_JSON), next).unwrap();
        assert_eq!(
            answer(dir.path(), Some("tok")).await.unwrap()["AccessKeyId"],
            "ASIANEXT"
        );
        std::fs::remove_file(dir.path().join(CREDENTIALS_JSON)).unwrap();
        assert_eq!(
            answer(dir.path(), Some("tok")).await.unwrap_err().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd") && !same("abc", "ab") && !same("", "a"));
    }
}
