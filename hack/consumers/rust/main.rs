//! A long-running service on the AWS SDK for Rust, as a consumer of the operator's Secret
//! (tests/consumers.rs runs it): it loads its configuration once with aws-config's default chain
//! (`AWS_CONFIG_FILE` with the Secret's `credential_process`, or
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` of the credentials-endpoint sidecar) and calls
//! sts:GetCallerIdentity every `CONSUMER_INTERVAL_MS`, leaving the refresh of its credentials
//! entirely to the SDK's identity cache. It stops by itself after `CONSUMER_DURATION_S`.
//!
//! One line per call on stdout: `<unix ms> ok` or `<unix ms> error <code>`; nothing secret.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata};

fn positive(name: &str, fallback: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(fallback)
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let interval = Duration::from_millis(positive("CONSUMER_INTERVAL_MS", 3000));
    let duration = Duration::from_secs(positive("CONSUMER_DURATION_S", 1500));
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let sts = aws_sdk_sts::Client::new(&config);
    eprintln!("rust consumer started");
    let started = Instant::now();
    while started.elapsed() < duration {
        let call =
            tokio::time::timeout(Duration::from_secs(20), sts.get_caller_identity().send()).await;
        match call {
            Ok(Ok(_)) => println!("{} ok", unix_ms()),
            Ok(Err(e)) => {
                println!("{} error {}", unix_ms(), e.code().unwrap_or("Unknown"));
                eprintln!("{} {}", unix_ms(), DisplayErrorContext(&e));
            }
            Err(_) => println!("{} error Timeout", unix_ms()),
        }
        tokio::time::sleep(interval).await;
    }
}
