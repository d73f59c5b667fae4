//! The operator binary: config -> telemetry -> clients -> controllers + HTTP server, until SIGTERM.

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use cross_account_operator::{config::Config, http, metrics::Metrics, startup, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log_format, &config.log_filter)?;

    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client from KUBECONFIG, ~/.kube/config or the in-cluster service account")?;
    startup::ensure_crds_installed(&client).await?;

    let metrics = Metrics::new();
    let readiness = http::Readiness::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = http::serve(
        config.http_addr,
        readiness.clone(),
        metrics,
        stopped(stop_rx),
    )
    .await
    .with_context(|| format!("cannot listen on {} (--http-addr)", config.http_addr))?;
    let server = tokio::spawn(server);

    readiness.set(true);
    tracing::info!(cluster = %config.cluster_name, "cross-account-operator started");

    shutdown_signal().await?;
    tracing::info!("shutting down");
    readiness.set(false);
    let _ = stop_tx.send(true);
    server.await??;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        res = tokio::signal::ctrl_c() => res?,
    }
    Ok(())
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
