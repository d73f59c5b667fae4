//! Command-line flags of the operator binary, each with an environment-variable fallback.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use crate::api::DEFAULT_MOUNT_PATH;

/// What the binary is asked to run: the operator, or (first argument `credentials-endpoint`) the
/// credentials sidecar.
#[derive(Debug, Clone)]
pub enum Mode {
    Operator(Box<Config>),
    CredentialsEndpoint(EndpointArgs),
}

/// The first argument that selects the sidecar mode.
pub const ENDPOINT_MODE: &str = "credentials-endpoint";

impl Mode {
    /// Parses the command line (exits with clap's message on bad flags).
    pub fn from_args(args: Vec<String>) -> Self {
        if args.get(1).map(String::as_str) == Some(ENDPOINT_MODE) {
            let rest = std::iter::once(format!("{} {ENDPOINT_MODE}", args[0]))
                .chain(args.into_iter().skip(2));
            Mode::CredentialsEndpoint(EndpointArgs::parse_from(rest))
        } else {
            Mode::Operator(Box::new(Config::parse_from(args)))
        }
    }
}

/// Serves the credentials of a mounted CrossAccountRole Secret over the container credentials
/// protocol on loopback, as a sidecar (for images with no shell to run `credential_process`): the
/// application sets `AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:<port>/` and
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=<dir>/container-token`, and its SDK refreshes through
/// it.
#[derive(Parser, Debug, Clone)]
#[command(name = "cross-account-operator credentials-endpoint", version)]
pub struct EndpointArgs {
    /// Where the Secret is mounted (a directory mount, as `spec.credentials.mountPath`).
    #[arg(long, env = "CREDENTIALS_DIR", default_value = DEFAULT_MOUNT_PATH)]
    pub dir: PathBuf,

    /// Loopback address to listen on.
    #[arg(long, env = "CREDENTIALS_ENDPOINT_ADDR", default_value = "127.0.0.1:9911", value_parser = parse_loopback)]
    pub addr: SocketAddr,
}

/// An address on loopback: the endpoint serves credentials, so nothing outside the pod may reach
/// it.
pub fn parse_loopback(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("`{text}` is not an address such as 127.0.0.1:9911: {e}"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "`{text}` is not a loopback address; use 127.0.0.1 or [::1]"
        ))
    }
}

/// Kubernetes operator that keeps cross-account IAM roles and temporary STS credentials in sync with
/// CrossAccountRole objects. (`cross-account-operator credentials-endpoint --help`: the credentials
/// sidecar.)
#[derive(Parser, Debug, Clone)]
#[command(name = "cross-account-operator", version, about)]
pub struct Config {
    /// Name of this cluster. It is part of every managed role's ownership tags and external ID, so
    /// it must be unique among the clusters that share an AWS account.
    #[arg(long, env = "CLUSTER_NAME", value_parser = parse_cluster_name)]
    pub cluster_name: String,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// How many objects are reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Credential mints (AssumeRole with the operator's own identity) per second at most, with
    /// bursts of twice as many. STS allows 600 AssumeRole calls a second per source account,
    /// shared with everything else that account runs.
    #[arg(long, env = "ASSUME_ROLE_RATE", default_value_t = 20.0, value_parser = parse_rate)]
    pub assume_role_rate: f64,

    /// IAM requests (reads and writes alike) per second into one AWS account at most, with bursts
    /// of twice as many. IAM throttles each account with token buckets whose rates AWS does not
    /// publish or raise, shared with the console, the CLI and other automation of that account:
    /// the default leaves them room. One 10-minute resync of 1,500 roles fits in it (4 reads per
    /// role); beyond that, resyncs take longer than the interval, never more requests.
    #[arg(long, env = "IAM_RATE", default_value_t = 10.0, value_parser = parse_iam_rate)]
    pub iam_rate: f64,

    /// How often every object is checked against AWS to correct drift, e.g. `10m`: each once per
    /// interval, at a point of it set by the object's uid, so that the checks spread evenly.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Run only while holding a coordination.k8s.io Lease, so that one of several replicas works.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,

    /// Namespace of the leader-election Lease. Default: the namespace the operator runs in
    /// (`--pod-namespace`), else `default`.
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_ID",
        default_value = "cross-account-operator"
    )]
    pub leader_election_id: String,

    /// ARN to trust as the operator's principal instead of the one derived from
    /// GetCallerIdentity. Needed when the operator runs on a role with a path, because an
    /// assumed-role ARN drops the path.
    #[arg(long, env = "OPERATOR_ROLE_ARN")]
    pub operator_role_arn: Option<String>,

    /// Name of the pod the operator runs in (the chart sets it from the downward API): the
    /// leader-election identity and the events' reporting instance. Default: a name with the
    /// process ID.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Namespace of the pod the operator runs in (the chart sets it from the downward API): the
    /// default namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Namespaces whose CrossAccountRoles (and their Secrets) the operator watches and writes
    /// to, comma-separated, e.g. `team-a,team-b`; it needs RBAC in those namespaces only.
    /// AwsAccounts and Namespaces are cluster-scoped and always watched cluster-wide. Empty: every
    /// namespace.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        default_value = "",
        hide_default_value = true,
        value_parser = parse_namespace_list
    )]
    // Fully qualified: one value that parses into a list, not a repeatable flag.
    pub watch_namespaces: ::std::vec::Vec<String>,

    /// Export `crossaccount_credentials_expiry_seconds` per CrossAccountRole (labels namespace
    /// and name). `false`: one series without labels, the soonest expiry, so that whoever can
    /// read /metrics cannot list the tenants' objects.
    #[arg(long, env = "PER_OBJECT_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub per_object_metrics: bool,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,cross_account_operator=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

/// How log lines are written.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A cluster name goes into IAM tags, external IDs and policy names, so it is held to DNS-label
/// characters: lowercase letters, digits and `-`, at most 40 characters.
pub fn parse_cluster_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 40
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a valid cluster name: use 1-40 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// A namespace name (a DNS label: lowercase letters, digits and `-`, at most 63 characters);
/// blanks around it are dropped.
pub fn parse_namespace_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a namespace name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit, and separate names with ','"
        ))
    }
}

/// A comma-separated list of namespace names; empty (as `WATCH_NAMESPACES=""` gives it) is no
/// namespace, i.e. every namespace.
pub fn parse_namespace_list(text: &str) -> Result<Vec<String>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',').map(parse_namespace_name).collect()
}

/// Parses durations such as `90s`, `10m`, `1h` or `250ms`.
/// A rate of calls a second, between 0.1 and `max`; `what` names the calls and the example in the
/// error.
fn parse_rate_up_to(text: &str, max: f64, what: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && (0.1..=max).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate between 0.1 and {max} {what}"
        )),
    }
}

pub fn parse_rate(text: &str) -> Result<f64, String> {
    parse_rate_up_to(
        text,
        600.0,
        "(STS's AssumeRole quota per account) calls a second, e.g. 20",
    )
}

pub fn parse_iam_rate(text: &str) -> Result<f64, String> {
    parse_rate_up_to(text, 1000.0, "IAM requests a second, e.g. 10")
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. `30s`, `10m` or `1h`"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number, e.g. `10m`"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_secs(seconds))
}

impl Config {
    /// The leader-election identity: the pod name, stable across container restarts, so that a
    /// restarted leader takes its own Lease back at once.
    pub fn identity(&self) -> String {
        self.pod_name
            .clone()
            .unwrap_or_else(|| format!("cross-account-operator-{}", std::process::id()))
    }

    /// The namespace of the leader-election Lease.
    pub fn lease_namespace(&self) -> String {
        self.leader_election_namespace
            .clone()
            .or_else(|| self.pod_namespace.clone())
            .unwrap_or_else(|| "default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn cluster_names_are_dns_labels() {
        assert!(parse_cluster_name("prod-eu-1").is_ok());
        for bad in ["", "Prod", "a:b", "-a", "a-", &"a".repeat(41)] {
            assert!(parse_cluster_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_are_consistent() {
        Config::command().debug_assert();
        EndpointArgs::command().debug_assert();
    }

    #[test]
    fn the_endpoint_mode_needs_no_cluster_name_and_listens_on_loopback_only() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let Mode::CredentialsEndpoint(endpoint) =
            Mode::from_args(args(&["op", "credentials-endpoint", "--dir", "/mnt/aws"]))
        else {
            panic!("the endpoint mode")
        };
        assert_eq!(endpoint.dir, PathBuf::from("/mnt/aws"));
        assert!(endpoint.addr.ip().is_loopback());
        assert!(EndpointArgs::try_parse_from(["op", "--addr", "0.0.0.0:9911"]).is_err());
    }

    #[test]
    fn defaults_apply() {
        let config = Config::try_parse_from(["op", "--cluster-name", "dev"]).unwrap();
        assert_eq!(config.concurrency, 8);
        assert_eq!(config.assume_role_rate, 20.0);
        assert_eq!(config.iam_rate, 10.0);
        assert_eq!(config.resync_interval, Duration::from_secs(600));
        assert!(!config.leader_elect);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.watch_namespaces.is_empty(), "every namespace");
        assert!(config.per_object_metrics);
    }

    #[test]
    fn watched_namespaces_are_a_comma_separated_list_of_namespace_names() {
        let parse = |list: &str| {
            Config::try_parse_from([
                "op",
                "--cluster-name=dev",
                &format!("--watch-namespaces={list}"),
            ])
            .map(|c| c.watch_namespaces)
        };
        assert_eq!(parse("team-a").unwrap(), ["team-a"]);
        assert_eq!(parse("team-a, team-b").unwrap(), ["team-a", "team-b"]);
        for bad in ["Team-A", "a,,b", "a,", "-a", "a_b", &"a".repeat(64)] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("namespace name"), "{bad:?}: {error}");
        }
        // Empty, as an unset chart value or `WATCH_NAMESPACES=""` gives it: every namespace.
        assert!(parse("").unwrap().is_empty());
        assert!(parse_namespace_list(" ").unwrap().is_empty());
    }

    #[test]
    fn per_object_metrics_can_be_switched_off() {
        let config =
            Config::try_parse_from(["op", "--cluster-name=dev", "--per-object-metrics=false"])
                .unwrap();
        assert!(!config.per_object_metrics);
        assert!(
            Config::try_parse_from(["op", "--cluster-name=dev", "--per-object-metrics=no"])
                .is_err()
        );
    }

    #[test]
    fn the_iam_rate_is_a_positive_number_of_requests_a_second() {
        let rate = |r: &str| {
            let flag = format!("--iam-rate={r}");
            Config::try_parse_from(["op", "--cluster-name", "dev", flag.as_str()])
                .map(|c| c.iam_rate)
        };
        assert_eq!(rate("2.5").unwrap(), 2.5);
        for bad in ["0", "-1", "1001", "NaN", "inf", "fast"] {
            let err = rate(bad).unwrap_err().to_string();
            assert!(err.contains("between 0.1 and 1000"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_assume_role_rate_stays_within_stss_quota() {
        let rate = |r: &str| {
            let flag = format!("--assume-role-rate={r}");
            Config::try_parse_from(["op", "--cluster-name", "dev", flag.as_str()])
                .map(|c| c.assume_role_rate)
        };
        assert_eq!(rate("0.5").unwrap(), 0.5);
        for bad in ["0", "-1", "601", "NaN", "inf", "fast"] {
            let err = rate(bad).unwrap_err().to_string();
            assert!(err.contains("between 0.1 and 600"), "{bad}: {err}");
        }
    }
}
