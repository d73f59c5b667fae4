//! The operator binary: config -> telemetry -> clients -> controllers + HTTP server, until SIGTERM.

use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_config::{BehaviorVersion, timeout::TimeoutConfig};
use tokio::sync::watch;

use cross_account_operator::{
    aws::{Rates, SdkAws},
    config::{EndpointArgs, Mode},
    controller, http,
    leader::{self, Ended, LeaseSettings},
    metrics::Metrics,
    naming::OperatorIdentity,
    startup, telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Mode::from_args(std::env::args().collect()) {
        Mode::Operator(config) => *config,
        Mode::CredentialsEndpoint(args) => return credentials_endpoint(args).await,
    };
    telemetry::init(config.log_format, &config.log_filter)?;

    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client from KUBECONFIG, ~/.kube/config or the in-cluster service account")?;
    let scope = controller::WatchScope::new(config.watch_namespaces.clone());
    startup::ensure_crds_installed(&client, &scope).await?;

    let metrics = Metrics::with_per_object_labels(config.per_object_metrics);
    // Bounded timeouts: an AWS endpoint that stops answering must fail a reconcile (and be retried
    // with backoff), never hang it.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .build();
    let aws_config = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await;
    let aws = SdkAws::new(
        aws_config,
        metrics.clone(),
        Rates {
            assume_role: config.assume_role_rate,
            iam: config.iam_rate,
        },
    );
    let operator = OperatorIdentity::discover(
        &aws,
        config.cluster_name.clone(),
        config.operator_role_arn.clone(),
    )
    .await
    .context(
        "cannot determine the operator's own AWS identity (sts:GetCallerIdentity); check its AWS credentials",
    )?;
    tracing::info!(principal = %operator.principal_arn, account = %operator.source_account_id, "operator identity");

    let readiness = http::Readiness::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = http::serve(
        config.http_addr,
        readiness.clone(),
        metrics.clone(),
        async move {
            let _ = server_stop.wait_for(|stop| *stop).await;
        },
    )
    .await
    .with_context(|| format!("cannot listen on {} (--http-addr)", config.http_addr))?;
    let server = tokio::spawn(server);

    let settings = controller::Settings {
        concurrency: config.concurrency,
        resync_interval: config.resync_interval,
        instance: config.pod_name.clone(),
        scope: scope.clone(),
    };
    let work = {
        let (client, readiness) = (client.clone(), readiness.clone());
        move |stop| controller::run(client, aws, operator, metrics, settings, readiness, stop)
    };
    let mut runner = if config.leader_elect {
        let namespace = config.lease_namespace();
        let identity = config.identity();
        let lease = config.leader_election_id.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            leader::run_as_leader(
                client,
                &namespace,
                &lease,
                identity,
                LeaseSettings::default(),
                readiness,
                stop_rx,
                work,
            )
            .await
        })
    } else {
        tokio::spawn(async move {
            work(stop_rx).await;
            Ended::Shutdown
        })
    };
    match scope.namespaces() {
        None => {
            tracing::info!(cluster = %config.cluster_name, "cross-account-operator started, watching every namespace")
        }
        Some(names) => {
            tracing::info!(cluster = %config.cluster_name, namespaces = ?names, "cross-account-operator started, watching only the listed namespaces")
        }
    }

    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            tracing::info!("shutting down");
            readiness.set(false);
            let _ = stop_tx.send(true);
            runner.await?
        }
        ended = &mut runner => ended?,
    };
    let _ = stop_tx.send(true);
    server.await??;
    match outcome {
        Ended::Shutdown => {
            tracing::info!("stopped");
            Ok(())
        }
        Ended::LeadershipLost => {
            bail!("lost the leader-election lease; exiting so that a restart rejoins the election")
        }
    }
}

/// The credentials sidecar: serves the mounted Secret until SIGTERM.
async fn credentials_endpoint(args: EndpointArgs) -> anyhow::Result<()> {
    telemetry::init(cross_account_operator::config::LogFormat::Text, "info")?;
    let server = cross_account_operator::endpoint::serve(args.dir, args.addr, async {
        let _ = shutdown_signal().await;
    })
    .await
    .with_context(|| format!("cannot listen on {}", args.addr))?;
    server.await?;
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
