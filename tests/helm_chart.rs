//! The Helm chart (`charts/cross-account-operator`) and the Dockerfile: the chart lints and renders,
//! its schema rejects misspelled keys and wrong types, its CRDs are the repository's, its RBAC is
//! exactly what the operator calls, it installs into and uninstalls from the local apiserver, and
//! the operator binary does its job running as the chart's ServiceAccount with only those
//! permissions. helm comes from `hack/install-helm.sh` (built once from the Go module proxy).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::Secret,
        rbac::v1::{ClusterRole, PolicyRule, Role},
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};

const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_cross-account-operator");

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/cross-account-operator")
}

/// A scratch directory of this test binary under `target/tmp`.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("helm_chart")
        .join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

// ---------------------------------------------------------------------------------------------
// helm
// ---------------------------------------------------------------------------------------------

/// The pinned helm binary, installed by `hack/install-helm.sh` on first use (later calls only
/// check the cache).
fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = repo_root().join("hack/install-helm.sh");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "hack/install-helm.sh printed {} which is not a file",
            path.display()
        );
        path
    })
}

/// helm with its cache, config and data kept under `target/tmp`, not in the user's home.
fn helm(args: &[&str]) -> Output {
    let home = scratch_dir("helm-home");
    Command::new(helm_binary())
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run helm {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// helm `args`, which must succeed; returns stdout.
fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// helm `args`, which must fail; returns stdout and stderr.
fn helm_fails(args: &[&str]) -> String {
    let out = helm(args);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "helm {} should have failed but succeeded:\n{all}",
        args.join(" ")
    );
    all
}

/// The extension points the peers' charts have: extra flags, environment, volumes, spread,
/// labels on everything, a PodDisruptionBudget by maxUnavailable.
const EXTENSIONS: &[&str] = &[
    "--set",
    "extraArgs[0]=--resync-interval=5m",
    "--set",
    "extraEnv[0].name=HTTPS_PROXY",
    "--set",
    "extraEnv[0].value=http://proxy.internal:3128",
    "--set",
    "extraVolumes[0].name=ca-bundle",
    "--set",
    "extraVolumes[0].emptyDir.medium=Memory",
    "--set",
    "extraVolumeMounts[0].name=ca-bundle",
    "--set",
    "extraVolumeMounts[0].mountPath=/etc/ca-bundle",
    "--set",
    "extraVolumeMounts[0].readOnly=true",
    "--set",
    "topologySpreadConstraints[0].maxSkew=1",
    "--set",
    "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
    "--set",
    "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    "--set",
    "topologySpreadConstraints[0].labelSelector.matchLabels.app\\.kubernetes\\.io/name=cross-account-operator",
    "--set",
    "commonLabels.team=platform",
    "--set",
    "podDisruptionBudget.maxUnavailable=1",
];

/// `--set` arguments that switch on every optional part of the chart.
const EVERY_OPTION: &[&str] = &[
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "serviceMonitor.labels.release=prometheus",
    "--set",
    "prometheusRule.enabled=true",
    "--set",
    "podDisruptionBudget.enabled=true",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "networkPolicy.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
    "--set",
    "grafanaDashboard.enabled=true",
    "--set",
    "rbac.rolloutRestarts=true",
    "--set",
    "rbac.aggregateToDefaultRoles=true",
    "--set",
    "metrics.perObjectLabels=false",
    "--set",
    "aws.region=eu-west-1",
    "--set",
    "aws.endpointUrl=https://sts.eu-west-1.amazonaws.com",
    "--set",
    "aws.credentialsSecret.name=operator-aws-keys",
    "--set",
    "operator.operatorRoleArn=arn:aws:iam::123456789012:role/platform/cross-account-operator",
    "--set",
    "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/platform/cross-account-operator",
    "--set",
    "tests.enabled=true",
    "--set",
    "tests.image.repository=registry.example.com/mirror/busybox",
    "--set",
    "tests.resources.limits.memory=24Mi",
];

/// Parts of the chart whose API the local apiserver serves (the ServiceMonitor needs the
/// prometheus-operator CRDs, which it does not have).
const OPTIONS_THE_APISERVER_SERVES: &[&str] = &[
    "--set",
    "rbac.aggregateToDefaultRoles=true",
    "--set",
    "podDisruptionBudget.enabled=true",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "grafanaDashboard.enabled=true",
    "--set",
    "aws.credentialsSecret.name=operator-aws-keys",
];

/// `helm template` of the chart as release `release` in `namespace` with `extra` arguments,
/// parsed into its documents.
fn render(release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    let yaml = helm_ok(&args);
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("helm template output is not YAML: {e}\n{yaml}"));
            serde_json::to_value(value).unwrap()
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one_of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// The `kind` named `name` among `docs`.
fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = of_kind(docs, kind)
        .into_iter()
        .filter(|d| d["metadata"]["name"] == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name}, found {}",
        found.len()
    );
    found[0]
}

fn is_cluster_scoped(kind: &str) -> bool {
    [
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    .contains(&kind)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Lint, render, schema
// ---------------------------------------------------------------------------------------------

#[test]
fn lints_with_defaults_and_with_every_option() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    helm_ok(&["lint", "--strict", chart, "--set", "clusterName=x"]);
    let mut args = vec!["lint", "--strict", chart, "--set", "clusterName=x"];
    args.extend_from_slice(EVERY_OPTION);
    args.extend_from_slice(EXTENSIONS);
    helm_ok(&args);
    // The one value without a usable default: lint says which.
    let out = helm_fails(&["lint", chart]);
    assert!(out.contains("clusterName"), "{out}");
}

#[test]
fn lints_with_its_ci_values_works_as_a_subchart_and_keeps_names_and_versions_valid() {
    let chart = chart_dir();
    let ci_values = chart.join("ci/default-values.yaml");
    let (chart, ci_values) = (chart.to_str().unwrap(), ci_values.to_str().unwrap());
    // chart-testing and scanners lint with the ci/ values: the chart must not be skipped.
    helm_ok(&["lint", "--strict", chart, "-f", ci_values]);
    let every_option = chart_dir().join("ci/every-option-values.yaml");
    helm_ok(&[
        "lint",
        "--strict",
        chart,
        "-f",
        every_option.to_str().unwrap(),
    ]);
    // Users of a chart repository upgrade the CRDs from `helm show crds`: it must give both,
    // exactly as crds/ has them, and the apiserver must take them by server-side apply.
    let shown = helm_ok(&["show", "crds", chart]);
    for kind in ["kind: AwsAccount", "kind: CrossAccountRole"] {
        assert!(shown.contains(kind), "helm show crds lacks {kind}");
    }
    let file = std::env::temp_dir().join(format!("cao-crds-{}.yaml", std::process::id()));
    std::fs::write(&file, &shown).unwrap();
    let applied = kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    // A parent chart's `global` values reach every subchart; the schema must let them in.
    render(
        "cao",
        "ops",
        &["--set", "clusterName=x", "--set", "global.imageRegistry=r"],
    );
    // A Service name is a DNS label (63 characters): a long release name is cut, not refused
    // by the apiserver.
    let long = "a-release-name-of-forty-characters-000000";
    let docs = render(long, "ops", &["--set", "clusterName=x"]);
    let service = one_of_kind(&docs, "Service")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        service.len() <= 63 && service.ends_with("-metrics"),
        "Service name {service:?} ({} characters)",
        service.len()
    );
    // /metrics has no authentication: no load balancer in front of it.
    let out = helm_fails(&[
        "template",
        "cao",
        chart,
        "--set",
        "clusterName=x",
        "--set",
        "service.type=LoadBalancer",
    ]);
    assert!(out.contains("/service/type"), "{out}");
    // The CRDs' fieldPath in x-kubernetes-validations needs Kubernetes 1.28.
    let out = helm_fails(&[
        "template",
        "cao",
        chart,
        "--set",
        "clusterName=x",
        "--kube-version",
        "1.27.0",
    ]);
    assert!(out.contains("kubeVersion"), "{out}");
    helm_ok(&[
        "template",
        "cao",
        chart,
        "--set",
        "clusterName=x",
        "--kube-version",
        "1.28.0",
    ]);
}

#[test]
fn renders_the_operator_with_leader_election_and_hardening_by_default() {
    let docs = render("cao", "ops", &["--set", "clusterName=prod-eu-1"]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "NetworkPolicy",
            "Pod",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
        .map(String::from)
        .into(),
        "the default objects"
    );
    for doc in &docs {
        if !doc["kind"].as_str().is_some_and(is_cluster_scoped) {
            assert_eq!(doc["metadata"]["namespace"], "ops", "{doc}");
        }
    }

    let deployment = one_of_kind(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "cao-cross-account-operator");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "cross-account-operator:0.1.0");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--cluster-name=prod-eu-1",
            "--http-addr=0.0.0.0:8080",
            "--concurrency=8",
            "--assume-role-rate=20",
            "--iam-rate=10",
            "--resync-interval=10m",
            "--log-format=json",
            "--leader-elect",
            "--leader-election-namespace=ops",
            "--leader-election-id=cao-cross-account-operator",
        ]
    );
    // Every flag the chart passes is one the binary knows.
    let help = Command::new(OPERATOR_BIN).arg("--help").output().unwrap();
    let help = text(&help.stdout);
    for arg in &args {
        let flag = arg.split('=').next().unwrap();
        assert!(help.contains(flag), "the operator's --help lacks {flag}");
    }

    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env["RUST_LOG"]["value"], "info");
    for absent in [
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(!env.contains_key(absent), "{absent} is set by default");
    }

    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["runAsGroup"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(container["resources"]["requests"]["memory"].is_string());

    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");

    let service = one_of_kind(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // /metrics names tenants' objects: by default no pod but the chart's `helm test` pod may
    // reach the operator (the kubelet's probes come from the node, which NetworkPolicies always
    // admit).
    let policy = named(&docs, "NetworkPolicy", "cao-cross-account-operator");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([test_pod_rule("cao")]),
        "{policy}"
    );
}

#[test]
fn renders_every_optional_part() {
    let mut args = vec!["--set", "clusterName=prod-eu-1"];
    args.extend_from_slice(EVERY_OPTION);
    args.extend_from_slice(EXTENSIONS);
    let docs = render("cao", "ops", &args);
    // The aggregated roles: view reads CrossAccountRoles, edit writes them; neither touches
    // status writes or AwsAccounts.
    let aggregated: Vec<ClusterRole> = of_kind(&docs, "ClusterRole")
        .into_iter()
        .filter(|d| is_aggregated(d))
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .collect();
    assert_eq!(aggregated.len(), 2);
    for role in &aggregated {
        let granted = permissions(role.rules.as_deref().unwrap_or_default());
        for (group, resource, verb) in &granted {
            assert_eq!(group, "crossaccount.io");
            assert!(!resource.starts_with("awsaccounts"), "{resource}");
            if resource.ends_with("/status") {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str()),
                    "{verb} {resource}"
                );
            }
        }
    }
    // The extension points reach the Deployment and every object.
    let deployment = one_of_kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let operator = &pod["containers"][0];
    assert_eq!(
        operator["args"].as_array().unwrap().last().unwrap(),
        "--resync-interval=5m"
    );
    assert!(
        operator["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "HTTPS_PROXY"),
        "{}",
        operator["env"]
    );
    assert_eq!(operator["volumeMounts"][0]["mountPath"], "/etc/ca-bundle");
    assert_eq!(pod["volumes"][0]["name"], "ca-bundle");
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    for doc in &docs {
        assert_eq!(
            doc["metadata"]["labels"]["team"], "platform",
            "{}",
            doc["kind"]
        );
    }
    let budget = one_of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert!(budget["spec"].get("minAvailable").is_none(), "{budget}");
    for kind in ["ServiceMonitor", "PodDisruptionBudget", "ConfigMap", "Pod"] {
        one_of_kind(&docs, kind);
    }
    // The operator's and the test pod's.
    assert_eq!(of_kind(&docs, "NetworkPolicy").len(), 2);

    let container = &one_of_kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(env["AWS_REGION"]["value"], "eu-west-1");
    assert_eq!(
        env["AWS_ENDPOINT_URL"]["value"],
        "https://sts.eu-west-1.amazonaws.com"
    );
    for (name, key) in [
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    ] {
        let reference = &env[name]["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["name"], "operator-aws-keys", "{name}");
        assert_eq!(reference["key"], key, "{name}");
    }
    assert!(container["args"].as_array().unwrap().contains(&json!(
        "--operator-role-arn=arn:aws:iam::123456789012:role/platform/cross-account-operator"
    )));
    let account = one_of_kind(&docs, "ServiceAccount");
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/platform/cross-account-operator"
    );

    let monitor = one_of_kind(&docs, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // Ingress only to the HTTP port, only from the listed peers (and the test pod).
    let policy = named(&docs, "NetworkPolicy", "cao-cross-account-operator");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(
        ingress.len(),
        2,
        "the listed peers and the test pod: {policy}"
    );
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "http", "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[0]["from"],
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
    );
    assert_eq!(ingress[1], test_pod_rule("cao"));
    // Per-object metric labels off.
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--per-object-metrics=false")),
        "{}",
        container["args"]
    );

    // The dashboard is valid JSON and charts the operator's metrics.
    let dashboard = one_of_kind(&docs, "ConfigMap");
    let json_text = dashboard["data"]["cross-account-operator.json"]
        .as_str()
        .expect("the dashboard ConfigMap holds cross-account-operator.json");
    let board: Value = serde_json::from_str(json_text).expect("the dashboard is JSON");
    let exprs: Vec<String> = board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_owned())
        .collect();
    for metric in [
        "crossaccount_credentials_expiry_seconds",
        "crossaccount_reconciles_total",
        "crossaccount_reconcile_errors_total",
        "crossaccount_aws_requests_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no dashboard panel uses {metric}"
        );
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("crossaccount_aws_requests_total") && e.contains("operation")),
        "no panel shows AWS calls by operation"
    );
}

#[test]
fn renders_as_the_subchart_of_a_parent_chart() {
    // A parent chart that depends on this one, with the chart unpacked in its charts/ (as
    // `helm dependency update` leaves it) and its values under the dependency's name.
    let parent = std::env::temp_dir().join(common::unique("cao-parent"));
    let charts = parent.join("charts");
    fs::create_dir_all(&charts).unwrap();
    let status = std::process::Command::new("cp")
        .args([
            "-r",
            chart_dir().to_str().unwrap(),
            charts.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    fs::write(
        parent.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: cross-account-operator\n    version: \"*\"\n",
    )
    .unwrap();
    let template = |values: &str| {
        fs::write(parent.join("values.yaml"), values).unwrap();
        helm(&[
            "template",
            "platform",
            parent.to_str().unwrap(),
            "-n",
            "ops",
        ])
    };
    let out = template(
        "global:\n  imageRegistry: registry.example.com\ncross-account-operator:\n  clusterName: prod-eu-1\n",
    );
    // The subchart's schema holds there too: a misspelled key fails the parent's render.
    let misspelled = template("cross-account-operator:\n  clusterName: x\n  replicaCont: 3\n");
    let _ = fs::remove_dir_all(&parent);
    let rendered = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        rendered.contains("name: platform-cross-account-operator")
            && rendered.contains("--cluster-name=prod-eu-1"),
        "{rendered}"
    );
    assert!(
        !misspelled.status.success(),
        "a misspelled subchart value was accepted"
    );
    assert!(
        text(&misspelled.stderr).contains("replicaCont"),
        "{}",
        text(&misspelled.stderr)
    );
}

#[test]
fn the_service_monitor_can_live_with_prometheus_and_relabel() {
    let values = chart_dir().join("ci/every-option-values.yaml");
    let docs = render("cao", "ops", &["-f", values.to_str().unwrap()]);
    let monitor = one_of_kind(&docs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["namespace"], "monitoring");
    assert_eq!(
        monitor["spec"]["namespaceSelector"],
        json!({"matchNames": ["ops"]}),
        "it still scrapes the release's Service"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        endpoint["relabelings"],
        json!([{"targetLabel": "cluster", "replacement": "ci"}])
    );
    assert_eq!(endpoint["metricRelabelings"][0]["action"], "drop");
    // Unset: in the release's namespace, without relabelings.
    let docs = render(
        "cao",
        "ops",
        &[
            "--set",
            "clusterName=x",
            "--set",
            "serviceMonitor.enabled=true",
        ],
    );
    let monitor = one_of_kind(&docs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["namespace"], "ops");
    assert!(monitor["spec"]["endpoints"][0].get("relabelings").is_none());
}

// ---------------------------------------------------------------------------------------------
// The `helm test` hook (rendered only: this test bed has no kubelet to run its pod)
// ---------------------------------------------------------------------------------------------

/// Whether the label selector `match_labels` (a JSON object, not empty) selects `labels`.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    match_labels.as_object().is_some_and(|wanted| {
        !wanted.is_empty()
            && wanted
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    })
}

/// The NetworkPolicy rule that admits the `helm test` pod of `release` to the HTTP port.
fn test_pod_rule(release: &str) -> Value {
    json!({
        "ports": [{"port": "http", "protocol": "TCP"}],
        "from": [{"podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "cross-account-operator-test",
            "app.kubernetes.io/instance": release,
        }}}],
    })
}

/// The value of environment variable `name` of `container`.
fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {name} in {container}"))
}

#[test]
fn the_helm_test_hook_asks_the_operator_through_the_metrics_service() {
    let docs = render("cao", "ops", &["--set", "clusterName=x"]);
    let pod = one_of_kind(&docs, "Pod");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/hook"], "test", "{pod}");
    assert_eq!(
        annotations["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded",
        "{pod}"
    );
    assert_eq!(pod["metadata"]["name"], "cao-cross-account-operator-test");
    assert_eq!(pod["metadata"]["namespace"], "ops");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["command"], json!(["sh", "-c"]));
    let script = container["args"][0].as_str().expect("the script");

    // It calls the metrics Service on the Service's port, which targets the operator's HTTP port.
    let service = one_of_kind(&docs, "Service");
    let deployment = one_of_kind(&docs, "Deployment");
    let operator = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "OPERATOR_URL"),
        format!(
            "http://{}.ops.svc:{}",
            service["metadata"]["name"].as_str().unwrap(),
            service["spec"]["ports"][0]["port"]
        )
    );
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        operator["ports"][0]["name"]
    );
    // The paths: the readiness probe's, and the one the ServiceMonitor scrapes.
    let readiness = operator["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    for path in [readiness, "/metrics"] {
        assert!(
            script.contains(&format!("wget -q -T 5 -O - \"$OPERATOR_URL{path}\"")),
            "the hook does not fetch {path}:\n{script}"
        );
    }
    // What it expects is what the operator serves: "ok" from /readyz when ready, and a metric
    // family it registers (a counter's TYPE line has no _total).
    let http = fs::read_to_string(repo_root().join("src/http.rs")).unwrap();
    for served in [
        ".route(\"/readyz\", get(readyz))",
        ".route(\"/metrics\", get(metrics_text))",
        "(StatusCode::OK, \"ok\")",
    ] {
        assert!(http.contains(served), "src/http.rs no longer has {served}");
    }
    assert!(script.contains("[ \"$answer\" = ok ]"), "{script}");
    let family = "crossaccount_reconciles";
    assert!(
        script.contains(&format!("*\"# TYPE {family} counter\"*")),
        "{script}"
    );
    assert!(OPERATOR_METRICS.contains(&format!("{family}_total").as_str()));

    // Not an operator pod: neither the Service nor the operator's NetworkPolicy selects it.
    let labels = &pod["metadata"]["labels"];
    let policy = named(&docs, "NetworkPolicy", "cao-cross-account-operator");
    assert!(!selects(&service["spec"]["selector"], labels), "{labels}");
    assert!(
        !selects(&policy["spec"]["podSelector"]["matchLabels"], labels),
        "{labels}"
    );
    assert_eq!(labels["app.kubernetes.io/instance"], "cao");
    assert_eq!(labels["app.kubernetes.io/component"], "test");

    // Hardened like the operator's pod, without its ServiceAccount token.
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert!(
        security["runAsUser"].as_u64().unwrap() >= 10000,
        "{security}"
    );
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "no {kind}.{resource}: {}",
                container["resources"]
            );
        }
    }
    // Pinned by digest by default.
    assert_eq!(
        container["image"],
        "docker.io/library/busybox@sha256:bdf57e528e45e4433820e045b29b4597825a1c9e38353532d90a01445013f82e"
    );
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");

    // The URL follows the release, its namespace and the Service's port.
    let docs = render(
        "platform",
        "team-ops",
        &["--set", "clusterName=x", "--set", "service.port=9090"],
    );
    let pod = one_of_kind(&docs, "Pod");
    assert_eq!(
        env_value(&pod["spec"]["containers"][0], "OPERATOR_URL"),
        "http://platform-cross-account-operator-metrics.team-ops.svc:9090"
    );
    assert_eq!(
        one_of_kind(&docs, "Service")["spec"]["ports"][0]["port"],
        9090
    );
}

#[test]
fn the_network_policies_let_the_test_pod_reach_the_operator_and_nothing_else() {
    let peer = [
        "--set",
        "networkPolicy.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
    ];
    for (with_peers, http_port) in [(false, 8080), (true, 9443)] {
        let port_value = format!("operator.httpPort={http_port}");
        let mut args = vec!["--set", "clusterName=x", "--set", &port_value];
        if with_peers {
            args.extend_from_slice(&peer);
        }
        let docs = render("cao", "ops", &args);
        let pod = one_of_kind(&docs, "Pod");
        let labels = &pod["metadata"]["labels"];
        let deployment = one_of_kind(&docs, "Deployment");
        let operator_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let operator = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(operator["ports"][0]["containerPort"], http_port);
        assert_eq!(of_kind(&docs, "NetworkPolicy").len(), 2);

        // The operator's: exactly one rule admits the test pod, by its labels, in the policy's
        // (the release's) namespace (a podSelector without namespaceSelector), to the HTTP port.
        let policy = named(&docs, "NetworkPolicy", "cao-cross-account-operator");
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), if with_peers { 2 } else { 1 }, "{policy}");
        let admitting: Vec<&Value> = rules
            .iter()
            .filter(|rule| {
                rule["from"].as_array().unwrap().iter().any(|from| {
                    from.get("namespaceSelector").is_none()
                        && from.get("ipBlock").is_none()
                        && selects(&from["podSelector"]["matchLabels"], labels)
                })
            })
            .collect();
        assert_eq!(admitting.len(), 1, "{policy}");
        assert_eq!(
            pod["metadata"]["namespace"],
            policy["metadata"]["namespace"]
        );
        assert_eq!(
            admitting[0]["ports"],
            json!([{"port": operator["ports"][0]["name"], "protocol": "TCP"}]),
            "{policy}"
        );

        // The test pod's own: nothing may connect to it, and it may reach the operator pods'
        // HTTP port (the container port: the policy sees the packet after the Service's
        // translation) and DNS, nothing else.
        let own = named(&docs, "NetworkPolicy", "cao-cross-account-operator-test");
        let own_selector = &own["spec"]["podSelector"]["matchLabels"];
        assert!(selects(own_selector, labels), "{own}");
        assert!(!selects(own_selector, operator_labels), "{own}");
        assert_eq!(own["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(own["spec"]["ingress"], json!([]));
        let egress = own["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2, "{own}");
        assert_eq!(
            egress[0]["ports"],
            json!([{"port": http_port, "protocol": "TCP"}])
        );
        let to = egress[0]["to"].as_array().unwrap();
        assert_eq!(to.len(), 1, "{own}");
        assert!(to[0].get("namespaceSelector").is_none(), "{own}");
        assert!(
            selects(&to[0]["podSelector"]["matchLabels"], operator_labels),
            "{own}"
        );
        assert_eq!(
            egress[1],
            json!({"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]})
        );
    }

    // Without the hook: no test pod, and neither its policy nor a rule for it.
    let docs = render(
        "cao",
        "ops",
        &["--set", "clusterName=x", "--set", "tests.enabled=false"],
    );
    assert!(
        of_kind(&docs, "Pod").is_empty(),
        "a test pod with tests.enabled=false"
    );
    assert_eq!(
        one_of_kind(&docs, "NetworkPolicy")["spec"]["ingress"],
        json!([]),
        "nobody may reach the operator"
    );
    let mut args = vec!["--set", "clusterName=x", "--set", "tests.enabled=false"];
    args.extend_from_slice(&peer);
    let docs = render("cao", "ops", &args);
    let rules = one_of_kind(&docs, "NetworkPolicy")["spec"]["ingress"].clone();
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
    assert!(
        rules[0]["from"][0].get("namespaceSelector").is_some(),
        "{rules}"
    );
    // Without NetworkPolicies: none for the test pod either.
    let docs = render(
        "cao",
        "ops",
        &[
            "--set",
            "clusterName=x",
            "--set",
            "networkPolicy.enabled=false",
        ],
    );
    assert!(of_kind(&docs, "NetworkPolicy").is_empty());
    one_of_kind(&docs, "Pod");
}

#[test]
fn the_test_pods_image_resources_and_scheduling_follow_the_values() {
    let docs = render(
        "cao",
        "ops",
        &[
            "--set",
            "clusterName=x",
            "--set",
            "tests.image.repository=registry.example.com/mirror/busybox",
            "--set",
            "tests.image.digest=",
            "--set",
            "tests.image.pullPolicy=Always",
            "--set",
            "tests.resources.limits.memory=24Mi",
            "--set",
            "imagePullSecrets[0].name=regcred",
            "--set",
            "nodeSelector.pool=system",
            "--set",
            "tolerations[0].key=dedicated",
            "--set",
            "tolerations[0].operator=Exists",
            "--set",
            "commonLabels.team=platform",
        ],
    );
    let pod = one_of_kind(&docs, "Pod");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/mirror/busybox:1.37.0"
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["resources"]["limits"]["memory"], "24Mi");
    // Scheduled and pulled like the operator's pods, labelled like every object.
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    assert_eq!(pod["spec"]["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}])
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    // Neither a tag nor a digest: refused with the value's name.
    let chart = chart_dir();
    let out = helm_fails(&[
        "template",
        "cao",
        chart.to_str().unwrap(),
        "--set",
        "clusterName=x",
        "--set",
        "tests.image.tag=",
        "--set",
        "tests.image.digest=",
    ]);
    assert!(out.contains("tests.image.tag"), "{out}");
}

#[test]
fn the_guardrails_admission_policy_is_the_one_of_crds_named_after_the_release() {
    let shipped: Value = serde_yaml::from_str(
        &fs::read_to_string(repo_root().join("crds/admission-policy.yaml")).unwrap(),
    )
    .unwrap();
    let docs = render("cao", "ops", &["--set", "clusterName=x"]);
    let policy = one_of_kind(&docs, "ValidatingAdmissionPolicy");
    let binding = one_of_kind(&docs, "ValidatingAdmissionPolicyBinding");
    let name = "cao-cross-account-operator-guardrails";
    assert_eq!(policy["metadata"]["name"], name);
    assert_eq!(binding["metadata"]["name"], name);
    assert_eq!(binding["spec"]["policyName"], name);
    assert_eq!(
        policy["spec"], shipped["items"][0]["spec"],
        "the policy of crds/"
    );
    let mut want = shipped["items"][1]["spec"].clone();
    want["policyName"] = json!(name);
    assert_eq!(binding["spec"], want, "every namespace by default");
    assert_eq!(
        policy["metadata"]["labels"]["app.kubernetes.io/instance"], "cao",
        "labelled as the release's"
    );

    let docs = render(
        "cao",
        "ops",
        &[
            "--set",
            "clusterName=x",
            "--set",
            "admissionPolicy.namespaceSelector.matchLabels.guardrails=on",
        ],
    );
    assert_eq!(
        one_of_kind(&docs, "ValidatingAdmissionPolicyBinding")["spec"]["matchResources"],
        json!({"namespaceSelector": {"matchLabels": {"guardrails": "on"}}})
    );
    // Off, or on a cluster without ValidatingAdmissionPolicy (GA in 1.30): not rendered.
    for extra in [
        ["--set", "admissionPolicy.enabled=false"],
        ["--kube-version", "1.29.0"],
    ] {
        let mut args = vec!["--set", "clusterName=x"];
        args.extend_from_slice(&extra);
        let docs = render("cao", "ops", &args);
        assert!(
            of_kind(&docs, "ValidatingAdmissionPolicy").is_empty(),
            "{extra:?}"
        );
        assert!(
            of_kind(&docs, "ValidatingAdmissionPolicyBinding").is_empty(),
            "{extra:?}"
        );
    }
}

#[test]
fn without_leader_election_there_is_no_lease_access_and_one_replica_is_required() {
    let docs = render(
        "cao",
        "ops",
        &[
            "--set",
            "clusterName=x",
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicaCount=1",
        ],
    );
    assert!(of_kind(&docs, "Role").is_empty());
    assert!(of_kind(&docs, "RoleBinding").is_empty());
    let args =
        &one_of_kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        !args
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("--leader-elect")),
        "{args}"
    );
    let chart = chart_dir();
    let out = helm_fails(&[
        "template",
        "cao",
        chart.to_str().unwrap(),
        "--set",
        "clusterName=x",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(out.contains("leaderElection.enabled"), "{out}");
}

/// `helm template` with `values` (YAML) as a values file; must fail; returns the output.
fn template_fails_with_values(name: &str, values: &str) -> String {
    let file = scratch_dir("values").join(format!("{name}.yaml"));
    fs::write(&file, values).unwrap();
    let chart = chart_dir();
    helm_fails(&[
        "template",
        "cao",
        chart.to_str().unwrap(),
        "--values",
        file.to_str().unwrap(),
    ])
}

#[test]
fn schema_rejects_misspelled_keys_and_wrong_types() {
    // (case, values, words the error must contain)
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "misspelled",
            "clusterNmae: prod-eu-1\n",
            &["clusterNmae", "not allowed"],
        ),
        (
            "nested-misspelled",
            "clusterName: prod-eu-1\noperator:\n  logFromat: json\n",
            &["logFromat"],
        ),
        (
            "wrong-type",
            "clusterName: prod-eu-1\nreplicaCount: \"two\"\n",
            &["replicaCount", "integer"],
        ),
        (
            "bad-enum",
            "clusterName: prod-eu-1\noperator:\n  logFormat: xml\n",
            &["logFormat"],
        ),
        (
            "bad-duration",
            "clusterName: prod-eu-1\noperator:\n  resyncInterval: 10 minutes\n",
            &["resyncInterval"],
        ),
        (
            "test-hook-misspelled",
            "clusterName: prod-eu-1\ntests:\n  image:\n    pullPolcy: Always\n",
            &["pullPolcy"],
        ),
    ];
    for (case, values, words) in cases {
        let out = template_fails_with_values(case, values);
        for word in words {
            assert!(out.contains(word), "{case}: {word:?} missing in {out}");
        }
    }
}

#[test]
fn chart_crds_are_the_repository_crds() {
    let list = |dir: &Path| -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let repo = repo_root().join("crds");
    let chart = chart_dir().join("crds");
    // The admission policy is not a CRD: the chart has it in files/, as a template (Helm
    // installs crds/ once and never upgrades it).
    let mut crds = list(&repo);
    assert!(crds.remove("admission-policy.yaml"));
    assert_eq!(
        list(&chart),
        crds,
        "charts/cross-account-operator/crds/ must hold the CRDs of crds/ (run `make crds`)"
    );
    for name in crds {
        let want = fs::read(repo.join(&name)).unwrap();
        let got = fs::read(chart.join(&name)).unwrap();
        assert!(
            want == got,
            "charts/cross-account-operator/crds/{name} differs from crds/{name}: \
             cp crds/*.yaml charts/cross-account-operator/crds/"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC: exactly what the operator calls
// ---------------------------------------------------------------------------------------------

/// (apiGroup, resource, verb)
type Permission = (String, String, String);

fn permissions(rules: &[PolicyRule]) -> BTreeSet<Permission> {
    let mut set = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "unexpected nonResourceURLs rule {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    set.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    set
}

fn permission_set(list: &[(&str, &str, &[&str])]) -> BTreeSet<Permission> {
    list.iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(|verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect()
}

/// The Kubernetes API calls of the operator (src/) on cluster-scoped kinds, as (apiGroup,
/// resource, verbs): granted by the ClusterRole in both modes.
fn operator_cluster_scoped_permissions() -> BTreeSet<Permission> {
    permission_set(&[
        // account and role controller watches (list, watch); get_opt when reconciling and
        // finalizing a role; startup's CRD probe lists it; the in-use finalizer (patch).
        (
            "crossaccount.io",
            "awsaccounts",
            &["get", "list", "watch", "patch"],
        ),
        // account status (server-side apply on /status).
        ("crossaccount.io", "awsaccounts/status", &["patch"]),
        // role_controller: the namespace's labels for allowedNamespaces.
        ("", "namespaces", &["get", "list", "watch"]),
    ])
}

/// The operator's calls in the namespaces of the CrossAccountRoles it manages: cluster-wide in
/// cluster mode, per watched namespace in namespaced mode. `rollouts`: with
/// `rbac.rolloutRestarts`.
fn operator_namespaced_permissions(rollouts: bool) -> BTreeSet<Permission> {
    let mut set = permission_set(&[
        // role_controller: watcher (list, watch); finalizer add/remove (JSON patch); startup's
        // CRD probe and the account's in-use check (list).
        (
            "crossaccount.io",
            "crossaccountroles",
            &["list", "watch", "patch"],
        ),
        // status::apply_status (server-side apply on /status).
        ("crossaccount.io", "crossaccountroles/status", &["patch"]),
        // credentials: get_opt, create if absent, replace (update), delete; the owned-Secret
        // watch (list, watch).
        (
            "",
            "secrets",
            &["get", "list", "watch", "create", "update", "delete"],
        ),
        // kube's event Recorder: create, and patch for a repeated event's series (events on
        // CrossAccountRoles, in their namespace; none are published on AwsAccounts).
        ("events.k8s.io", "events", &["create", "patch"]),
    ]);
    if rollouts {
        // rollout::restart_targets (get or list by selector; merge patch of the pod template).
        set.extend(permission_set(&[
            ("apps", "deployments", &["get", "list", "patch"]),
            ("apps", "statefulsets", &["get", "list", "patch"]),
            ("apps", "daemonsets", &["get", "list", "patch"]),
        ]));
    }
    set
}

/// Every call of the operator in cluster mode.
fn operator_cluster_permissions(rollouts: bool) -> BTreeSet<Permission> {
    let mut set = operator_cluster_scoped_permissions();
    set.extend(operator_namespaced_permissions(rollouts));
    set
}

/// The leader election's calls (kube-lease-manager: get, create when missing, patch to acquire,
/// renew and release), in the release namespace.
fn operator_lease_permissions() -> BTreeSet<Permission> {
    permission_set(&[("coordination.k8s.io", "leases", &["get", "create", "patch"])])
}

fn describe_difference(granted: &BTreeSet<Permission>, needed: &BTreeSet<Permission>) -> String {
    let extra: Vec<_> = granted.difference(needed).collect();
    let missing: Vec<_> = needed.difference(granted).collect();
    format!(
        "granted but not used by the operator: {extra:?}\nused by the operator but not granted: {missing:?}"
    )
}

/// The rules of `docs`' ClusterRole as permissions (no resourceNames, no wildcards).
fn cluster_role_permissions(docs: &[Value]) -> BTreeSet<Permission> {
    // The operator's own: not one aggregated into Kubernetes' default roles.
    let own: Vec<&Value> = of_kind(docs, "ClusterRole")
        .into_iter()
        .filter(|d| !is_aggregated(d))
        .collect();
    assert_eq!(own.len(), 1, "one ClusterRole of the operator's");
    let cluster_role: ClusterRole = serde_json::from_value(own[0].clone()).unwrap();
    rules_permissions("ClusterRole", &cluster_role.rules.unwrap_or_default())
}

fn is_aggregated(doc: &Value) -> bool {
    doc["metadata"]["labels"].as_object().is_some_and(|l| {
        l.keys()
            .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
    })
}

fn rules_permissions(what: &str, rules: &[PolicyRule]) -> BTreeSet<Permission> {
    for rule in rules {
        assert!(
            rule.resource_names.is_none(),
            "{what}: the operator works on objects of any name: {rule:?}"
        );
    }
    let granted = permissions(rules);
    for (group, resource, verb) in &granted {
        assert!(
            group != "*" && resource != "*" && verb != "*",
            "wildcard in the {what}"
        );
    }
    granted
}

/// The Role named `name` in `namespace` among `docs`.
fn role_in(docs: &[Value], namespace: &str, name: &str) -> Role {
    let found: Vec<&Value> = of_kind(docs, "Role")
        .into_iter()
        .filter(|r| r["metadata"]["namespace"] == namespace && r["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "Role {namespace}/{name}: {found:?}");
    serde_json::from_value(found[0].clone()).unwrap()
}

/// The RoleBinding or ClusterRoleBinding `name` (in `namespace`) binds `role_kind`/`name` to the
/// chart's ServiceAccount in the release namespace `ops`.
fn assert_bound(docs: &[Value], kind: &str, namespace: Option<&str>, name: &str, role_kind: &str) {
    let found: Vec<&Value> = of_kind(docs, kind)
        .into_iter()
        .filter(|b| {
            b["metadata"]["name"] == name && b["metadata"]["namespace"].as_str() == namespace
        })
        .collect();
    assert_eq!(found.len(), 1, "{kind} {namespace:?}/{name}: {found:?}");
    assert_eq!(
        found[0]["subjects"],
        json!([{"kind": "ServiceAccount", "name": "cao-cross-account-operator", "namespace": "ops"}]),
        "{kind} {name}"
    );
    assert_eq!(found[0]["roleRef"]["kind"], role_kind, "{kind} {name}");
    assert_eq!(found[0]["roleRef"]["name"], name, "{kind} {name}");
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses() {
    let mut args = vec!["--set", "clusterName=x"];
    args.extend_from_slice(EVERY_OPTION);
    for (docs, rollouts) in [
        (render("cao", "ops", &["--set", "clusterName=x"]), false),
        (render("cao", "ops", &args), true),
    ] {
        let granted = cluster_role_permissions(&docs);
        let needed = operator_cluster_permissions(rollouts);
        assert!(
            granted == needed,
            "ClusterRole rules differ from the operator's calls (rolloutRestarts {rollouts})\n{}",
            describe_difference(&granted, &needed)
        );
        assert_bound(
            &docs,
            "ClusterRoleBinding",
            None,
            "cao-cross-account-operator",
            "ClusterRole",
        );

        let role = role_in(&docs, "ops", "cao-cross-account-operator-leader-election");
        let rules = role.rules.unwrap_or_default();
        let granted = permissions(&rules);
        let needed = operator_lease_permissions();
        assert!(
            granted == needed,
            "Role rules differ from the leader election's calls\n{}",
            describe_difference(&granted, &needed)
        );
        // Reading and renewing are limited to the operator's own Lease.
        for rule in &rules {
            if rule.verbs.iter().any(|v| v == "get" || v == "patch") {
                assert_eq!(
                    rule.resource_names.as_deref(),
                    Some(&["cao-cross-account-operator".to_owned()][..]),
                    "{rule:?}"
                );
            }
        }

        assert_bound(
            &docs,
            "RoleBinding",
            Some("ops"),
            "cao-cross-account-operator-leader-election",
            "Role",
        );
    }
}

/// The metric families the operator exposes (src/metrics.rs; counters end in `_total`).
const OPERATOR_METRICS: &[&str] = &[
    "crossaccount_aws_requests_total",
    "crossaccount_reconciles_total",
    "crossaccount_reconcile_errors_total",
    "crossaccount_reconcile_duration_seconds",
    "crossaccount_reconcile_queue_seconds",
    "crossaccount_aws_budget_wait_seconds",
    "crossaccount_abandoned_roles_total",
    "crossaccount_events_dropped_total",
    "crossaccount_credentials_expiry_seconds",
];

#[test]
fn the_alerts_are_promql_on_the_operators_own_metrics() {
    let docs = render(
        "cao",
        "ops",
        &[
            "--set",
            "clusterName=x",
            "--set",
            "prometheusRule.enabled=true",
        ],
    );
    let rule = one_of_kind(&docs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        alerts,
        [
            "CrossAccountCredentialsExpiring",
            "CrossAccountIamBudgetSaturated",
            "CrossAccountOperatorNotReconciling",
            "CrossAccountReconcileErrors",
            "CrossAccountRolesAbandoned",
        ]
        .into(),
    );
    for rule in rules {
        let expr = rule["expr"].as_str().unwrap();
        promql_parser::parser::parse(expr)
            .unwrap_or_else(|e| panic!("{}: not PromQL: {e}\n{expr}", rule["alert"]));
        let mut rest = expr;
        while let Some(at) = rest.find("crossaccount_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // A histogram's series are its family's name with a suffix.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                OPERATOR_METRICS.contains(&name.as_str()) || OPERATOR_METRICS.contains(&family),
                "{}: {name} is not a metric the operator exposes",
                rule["alert"]
            );
            rest = &rest[at + name.len()..];
        }
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|t| !t.is_empty()),
                "{}: no {key}",
                rule["alert"]
            );
        }
        assert!(rule["labels"]["severity"].is_string(), "{}", rule["alert"]);
    }
}

#[test]
fn without_the_rollout_value_no_workload_can_be_touched() {
    for extra in [&[][..], &["--set", "watchNamespaces={team-a}"][..]] {
        let mut args = vec!["--set", "clusterName=x"];
        args.extend_from_slice(extra);
        let docs = render("cao", "ops", &args);
        for doc in of_kind(&docs, "ClusterRole")
            .into_iter()
            .chain(of_kind(&docs, "Role"))
        {
            let text = doc["rules"].to_string();
            for workload in ["apps", "deployments", "statefulsets", "daemonsets"] {
                assert!(!text.contains(workload), "{workload} in {doc}");
            }
        }
    }
}

#[test]
fn namespaced_mode_grants_namespaced_kinds_only_in_the_watched_namespaces() {
    for rollouts in [false, true] {
        let docs = render(
            "cao",
            "ops",
            &[
                "--set",
                "clusterName=x",
                "--set",
                "watchNamespaces={team-a,team-b}",
                "--set",
                &format!("rbac.rolloutRestarts={rollouts}"),
            ],
        );
        // The ClusterRole keeps what is cluster-scoped, and nothing else.
        let granted = cluster_role_permissions(&docs);
        let needed = operator_cluster_scoped_permissions();
        assert!(
            granted == needed,
            "ClusterRole rules in namespaced mode\n{}",
            describe_difference(&granted, &needed)
        );
        // A Role and RoleBinding in each watched namespace, and none elsewhere but the Lease's.
        for namespace in ["team-a", "team-b"] {
            let role = role_in(&docs, namespace, "cao-cross-account-operator");
            let granted = rules_permissions("Role", &role.rules.unwrap_or_default());
            let needed = operator_namespaced_permissions(rollouts);
            assert!(
                granted == needed,
                "Role in {namespace} (rolloutRestarts {rollouts})\n{}",
                describe_difference(&granted, &needed)
            );
            assert_bound(
                &docs,
                "RoleBinding",
                Some(namespace),
                "cao-cross-account-operator",
                "Role",
            );
        }
        let role_namespaces: BTreeSet<&str> = of_kind(&docs, "Role")
            .iter()
            .map(|r| r["metadata"]["namespace"].as_str().unwrap())
            .collect();
        assert_eq!(role_namespaces, ["ops", "team-a", "team-b"].into());
        let args =
            &one_of_kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
        assert!(
            args.as_array()
                .unwrap()
                .contains(&json!("--watch-namespaces=team-a,team-b")),
            "{args}"
        );
    }
    // Namespace names are checked by the schema.
    let out = template_fails_with_values(
        "bad-namespace",
        "clusterName: x\nwatchNamespaces: [Team_A]\n",
    );
    assert!(out.contains("watchNamespaces"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

/// The Dockerfile's instructions with line continuations joined.
fn dockerfile_instructions() -> Vec<String> {
    let text = fs::read_to_string(repo_root().join("Dockerfile")).expect("read Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            instructions.push(std::mem::take(&mut current));
        }
    }
    instructions
}

#[test]
fn dockerfile_builds_the_locked_release_binary_into_a_nonroot_static_image() {
    let instructions = dockerfile_instructions();
    let builds: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("RUN") && i.contains("cargo build"))
        .collect();
    assert_eq!(
        builds.len(),
        1,
        "one cargo build in the Dockerfile: {builds:?}"
    );
    // The cargo command: from `cargo build` to the end of that shell command.
    let run = builds[0];
    let command = &run[run.find("cargo build").unwrap()..];
    let command = command.split("&&").next().unwrap();
    // The documented release build, for the static (musl) target of the builder's own
    // architecture, which the same RUN adds, and the binary copied from where that build puts it.
    assert_eq!(
        command.split_whitespace().collect::<Vec<_>>().join(" "),
        "cargo build --release --locked --bin cross-account-operator --target \"$target\"",
        "{run}"
    );
    assert!(
        run.contains("target=\"$(uname -m)-unknown-linux-musl\"")
            && run.contains("rustup target add \"$target\"")
            && run.contains("\"target/$target/release/cross-account-operator\""),
        "{run}"
    );
    // It is the binary Cargo.toml declares.
    let manifest = fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("name = \"cross-account-operator\"\npath = \"src/main.rs\""),
        "Cargo.toml declares no [[bin]] cross-account-operator"
    );

    let froms: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM"))
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(
        froms[0].contains("rust:") && froms[0].ends_with("AS builder"),
        "{}",
        froms[0]
    );
    assert!(
        froms[1].starts_with("FROM gcr.io/distroless/static-debian12:nonroot@sha256:"),
        "{}",
        froms[1]
    );
    // Both bases pinned by digest (64 hex digits), the tag kept for readers.
    for from in &froms {
        let digest = from
            .split_whitespace()
            .nth(1)
            .and_then(|image| image.split_once("@sha256:"))
            .map(|(_, digest)| digest)
            .unwrap_or_else(|| panic!("{from} is not pinned by digest"));
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{from}"
        );
    }
    let final_stage = instructions
        .iter()
        .skip_while(|i| !std::ptr::eq(*i, froms[1]))
        .collect::<Vec<_>>();
    assert!(
        final_stage.iter().any(|i| *i == "USER 65532:65532"),
        "{final_stage:?}"
    );
    assert!(
        final_stage
            .iter()
            .any(|i| *i == "ENTRYPOINT [\"/usr/local/bin/cross-account-operator\"]"),
        "{final_stage:?}"
    );
    let labels: String = final_stage
        .iter()
        .filter(|i| i.starts_with("LABEL"))
        .map(|i| i.as_str())
        .collect();
    for key in [
        "org.opencontainers.image.title",
        "org.opencontainers.image.description",
        "org.opencontainers.image.source",
        "org.opencontainers.image.licenses",
    ] {
        assert!(labels.contains(key), "no {key} label");
    }

    // The build context has what the build copies, and little else.
    let ignore = fs::read_to_string(repo_root().join(".dockerignore")).expect("read .dockerignore");
    for needed in ["!Cargo.toml", "!Cargo.lock", "!src/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == needed),
            ".dockerignore lacks {needed}"
        );
    }

    // `--locked` succeeds only while Cargo.lock matches Cargo.toml; check that without building.
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--no-deps",
        ])
        .current_dir(repo_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "Cargo.lock is not in sync with Cargo.toml, so `cargo build --locked` would fail:\n{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Against the local apiserver
// ---------------------------------------------------------------------------------------------

/// A plain namespace for a release; deleted (best effort) when dropped.
struct ReleaseNamespace {
    name: String,
}

impl ReleaseNamespace {
    fn new(prefix: &str) -> Self {
        let name = common::unique(prefix);
        kubectl_ok(&["create", "namespace", &name]);
        Self { name }
    }
}

impl Drop for ReleaseNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A helm release that is uninstalled when dropped (also when the test panics).
struct Release {
    name: String,
    namespace: String,
    uninstalled: bool,
}

impl Release {
    fn install(name: &str, namespace: &str, extra: &[&str]) -> Self {
        let chart = chart_dir();
        let mut args = vec![
            "install",
            name,
            chart.to_str().unwrap(),
            "--namespace",
            namespace,
            "--skip-crds",
            "--timeout",
            "2m",
            // The guardrails' admission policy is installed but bound to no namespace: the
            // objects the tests create are the operator's to judge (tests/admission.rs tests
            // the policy itself).
            "--set",
            "admissionPolicy.namespaceSelector.matchLabels.cao-helm-test=nobody",
        ];
        args.extend_from_slice(extra);
        helm_ok(&args);
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uninstalled: false,
        }
    }

    fn uninstall(&mut self) {
        helm_ok(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "2m",
        ]);
        self.uninstalled = true;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = helm(&["uninstall", &self.name, "--namespace", &self.namespace]);
        }
    }
}

fn kubectl(args: &[&str]) -> Output {
    common::env("KUBECONFIG");
    Command::new("kubectl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run kubectl {args:?}: {e}"))
}

fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {} failed:\n{}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Whether `kubectl get <what>` finds the object.
fn exists(what: &[&str]) -> bool {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "name"]);
    let out = kubectl(&args);
    if out.status.success() {
        return true;
    }
    let err = text(&out.stderr);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "kubectl get {what:?}: {err}"
    );
    false
}

#[test]
fn installs_into_a_fresh_namespace_and_uninstalls_cleanly() {
    let namespace = ReleaseNamespace::new("helm-install");
    let release_name = common::unique("cao");
    let fullname = format!("{release_name}-cross-account-operator");
    let mut args = vec!["--set", "clusterName=it-install"];
    args.extend_from_slice(OPTIONS_THE_APISERVER_SERVES);
    // The apiserver validates what the extension points render.
    args.extend_from_slice(EXTENSIONS);
    let mut release = Release::install(&release_name, &namespace.name, &args);

    let status = helm_ok(&["status", &release_name, "--namespace", &namespace.name]);
    assert!(status.contains("STATUS: deployed"), "{status}");
    assert!(
        status.contains(
            "helm show crds <chart> --version <version> | kubectl apply --server-side -f -"
        ),
        "NOTES.txt: {status}"
    );
    let ns = namespace.name.as_str();
    let namespaced = [
        ("deployment", fullname.clone()),
        ("serviceaccount", fullname.clone()),
        ("service", format!("{fullname}-metrics")),
        ("role", format!("{fullname}-leader-election")),
        ("rolebinding", format!("{fullname}-leader-election")),
        ("poddisruptionbudget", fullname.clone()),
        ("networkpolicy", fullname.clone()),
        ("networkpolicy", format!("{fullname}-test")),
        ("configmap", format!("{fullname}-dashboard")),
    ];
    for (kind, name) in &namespaced {
        assert!(
            exists(&[kind, name, "-n", ns]),
            "{kind}/{name} was not installed"
        );
    }
    for kind in ["clusterrole", "clusterrolebinding"] {
        assert!(
            exists(&[kind, &fullname]),
            "{kind}/{fullname} was not installed"
        );
    }
    let guardrails = format!("{fullname}-guardrails");
    for kind in [
        "validatingadmissionpolicy",
        "validatingadmissionpolicybinding",
    ] {
        assert!(
            exists(&[kind, &guardrails]),
            "{kind}/{guardrails} was not installed"
        );
    }
    // kube-controller-manager folds the aggregated roles into Kubernetes' default ones.
    let rules_of = |role: &str| -> Result<Vec<PolicyRule>, String> {
        let out = kubectl(&["get", "clusterrole", role, "-o", "json"]);
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        let role: ClusterRole =
            serde_json::from_str(&text(&out.stdout)).map_err(|e| e.to_string())?;
        Ok(role.rules.unwrap_or_default())
    };
    let may = |rules: &[PolicyRule], verb: &str| {
        rules.iter().any(|r| {
            r.api_groups
                .as_ref()
                .is_some_and(|g| g.iter().any(|g| g == "crossaccount.io"))
                && r.resources
                    .as_ref()
                    .is_some_and(|x| x.iter().any(|x| x == "crossaccountroles"))
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    let started = std::time::Instant::now();
    loop {
        let (edit, view) = (rules_of("edit"), rules_of("view"));
        if let (Ok(edit), Ok(view)) = (&edit, &view)
            && may(edit, "create")
            && may(view, "list")
        {
            assert!(!may(view, "create"), "view may create CrossAccountRoles");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the default roles never got CrossAccountRoles: edit {edit:?}, view {view:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    for suffix in ["view", "edit"] {
        assert!(
            exists(&["clusterrole", &format!("{fullname}-{suffix}")]),
            "clusterrole {fullname}-{suffix} was not installed"
        );
    }

    // What the apiserver stored is what the chart rendered (nothing dropped as unknown).
    let stored: Value = serde_json::from_str(&kubectl_ok(&[
        "get",
        "deployment",
        &fullname,
        "-n",
        ns,
        "-o",
        "json",
    ]))
    .unwrap();
    let container = &stored["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "AWS_ACCESS_KEY_ID")
            .map(|e| e["valueFrom"]["secretKeyRef"]["name"].clone()),
        Some(json!("operator-aws-keys"))
    );

    release.uninstall();
    for (kind, name) in &namespaced {
        assert!(
            !exists(&[kind, name, "-n", ns]),
            "{kind}/{name} survived the uninstall"
        );
    }
    for kind in ["clusterrole", "clusterrolebinding"] {
        assert!(
            !exists(&[kind, &fullname]),
            "{kind}/{fullname} survived the uninstall"
        );
    }
    for kind in [
        "validatingadmissionpolicy",
        "validatingadmissionpolicybinding",
    ] {
        assert!(
            !exists(&[kind, &guardrails]),
            "{kind}/{guardrails} survived the uninstall"
        );
    }
    for suffix in ["view", "edit"] {
        assert!(
            !exists(&["clusterrole", &format!("{fullname}-{suffix}")]),
            "clusterrole {fullname}-{suffix} survived the uninstall"
        );
    }
    // The CRDs stay (Helm never deletes them; here they were not the release's anyway).
    assert!(exists(&["crd", "crossaccountroles.crossaccount.io"]));
}

// ---------------------------------------------------------------------------------------------
// The operator with the chart's RBAC, end to end
// ---------------------------------------------------------------------------------------------

/// A kubeconfig for the apiserver of `$KUBECONFIG` (its URL and CA) that authenticates with
/// `token`, written to `path`.
fn write_token_kubeconfig(path: &Path, token: &str) {
    let admin_path = common::env("KUBECONFIG");
    let admin: serde_yaml::Value = serde_yaml::from_str(
        &fs::read_to_string(&admin_path).unwrap_or_else(|e| panic!("read {admin_path}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{admin_path} is not YAML: {e}"));
    let admin = serde_json::to_value(admin).unwrap();
    let current = admin["current-context"].as_str().expect("current-context");
    let context = admin["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == current)
        .expect("the current context");
    let cluster_name = context["context"]["cluster"].as_str().unwrap();
    let cluster = admin["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster_name)
        .expect("the current context's cluster");
    let mut cluster_entry = json!({"server": cluster["cluster"]["server"]});
    if let Some(data) = cluster["cluster"].get("certificate-authority-data") {
        cluster_entry["certificate-authority-data"] = data.clone();
    } else if let Some(file) = cluster["cluster"]["certificate-authority"].as_str() {
        // Relative paths are relative to the kubeconfig's directory.
        let file = Path::new(&admin_path).parent().unwrap().join(file);
        cluster_entry["certificate-authority"] = json!(file.to_str().unwrap());
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devenv", "cluster": cluster_entry}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "devenv", "user": "operator"}}],
        "current-context": "operator",
    });
    fs::write(path, serde_yaml::to_string(&config).unwrap())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// The operator binary running with a given kubeconfig; SIGTERM (then SIGKILL) when dropped.
struct OperatorProcess {
    child: Child,
    base_url: String,
    log_path: PathBuf,
}

impl OperatorProcess {
    /// Starts the binary with `args` (the flags the chart's Deployment passes), except that
    /// `--http-addr` is a free loopback port.
    fn start(kubeconfig: &Path, namespace: &str, args: &[String], log_path: &Path) -> Self {
        common::hold_environment();
        let port = common::free_port();
        let log = fs::File::create(log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let log_err = log.try_clone().unwrap();
        let args: Vec<String> = args
            .iter()
            .map(|arg| {
                if arg.starts_with("--http-addr") {
                    format!("--http-addr=127.0.0.1:{port}")
                } else {
                    arg.clone()
                }
            })
            .collect();
        let child = Command::new(OPERATOR_BIN)
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            // What the Deployment sets from the downward API.
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", "it-rbac-operator")
            // kube_client=debug logs every request with its HTTP status: the refusal check
            // reads them.
            .env(
                "RUST_LOG",
                "info,cross_account_operator=debug,kube_client=debug",
            )
            .env("NO_COLOR", "1")
            .env_remove("CLUSTER_NAME")
            .env_remove("LEADER_ELECT")
            .env_remove("LEADER_ELECTION_NAMESPACE")
            .env_remove("LEADER_ELECTION_ID")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {OPERATOR_BIN}: {e} (run `cargo build --bins`)"));
        Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path: log_path.to_owned(),
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The last `lines` lines of the log, without kube_client's per-request lines except
    /// those about failed requests (they carry the apiserver's message).
    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("kube_client") || l.contains("Unsuccessful"))
            .collect();
        format!(
            "--- last {lines} lines of {} ---\n{}\n--- end of operator log ---",
            self.log_path.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// Waits until /readyz answers 200; `Err` with the log when the process exits first.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = format!("{}/readyz", self.base_url);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("the operator exited with {status}\n{}", self.log()));
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().as_u16() == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "the operator's /readyz did not answer 200 within {timeout:?}\n{}",
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The text of /metrics.
    async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base_url);
        let response = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        response.text().await.unwrap()
    }

    /// SIGTERM and wait (up to 40 s, then SIGKILL); returns whether it exited successfully.
    fn stop(&mut self) -> bool {
        if self.child.try_wait().unwrap().is_none() {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// Deletes the CrossAccountRole when dropped while the test panics, giving the operator (still
/// running: it is declared before this guard) the chance to clean up, then strips the finalizer
/// so that nothing is left stuck.
struct RoleCleanup {
    namespace: String,
    name: String,
}

impl Drop for RoleCleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (namespace, name) = (self.namespace.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let Ok(client) = Client::try_default().await else {
                        return;
                    };
                    let api = common::roles_api(&client, &namespace);
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                    let gone = common::try_poll(Duration::from_secs(30), || {
                        let api = api.clone();
                        let name = name.clone();
                        async move {
                            match api.get_opt(&name).await {
                                Ok(None) => Ok(()),
                                _ => Err(String::new()),
                            }
                        }
                    })
                    .await;
                    if gone.is_err() {
                        let _ = api
                            .patch(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                            )
                            .await;
                    }
                })
        })
        .join();
    }
}

fn condition<'a>(
    role: &'a cross_account_operator::api::CrossAccountRole,
    type_: &str,
) -> Option<&'a Condition> {
    role.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// Tests in this file that start an operator take this lock: two operators would fight over the
/// same objects, and a test could pass on the other one's work. (`make integration` runs test
/// binaries one after another; [`wait_for_no_other_operator`] covers runs started by hand.)
async fn one_operator_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Operator processes running on this machine (pid and command line), found by program name.
fn operator_processes() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // Only this checkout's operator binary: another checkout's runs against its own
        // environment.
        let ours = fs::canonicalize(env!("CARGO_BIN_EXE_cross-account-operator")).ok();
        let exe = fs::read_link(entry.path().join("exe")).ok().map(|exe| {
            PathBuf::from(
                exe.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned(),
            )
        });
        if args
            .first()
            .and_then(|program| Path::new(program).file_name())
            .is_some_and(|name| name == "cross-account-operator")
            && ours.is_some()
            && exe == ours
        {
            found.push((pid, args.join(" ")));
        }
    }
    found
}

/// Waits (up to 10 minutes) until no operator process runs on this machine, e.g. the shared
/// operator of another test binary started by hand in parallel; fails naming them otherwise.
async fn wait_for_no_other_operator() {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut told = false;
    loop {
        let running = operator_processes();
        if running.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "other operator processes kept running for 10 minutes; this test needs to be the \
                 only operator (stop them or run the test binaries one after another):\n{running:#?}"
            );
        }
        if !told {
            eprintln!("waiting for other operator processes to end: {running:?}");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The HTTP status codes of the Kubernetes API responses in an operator log written with
/// `kube_client=debug` (text or JSON format).
fn api_statuses(log: &str) -> Vec<(u16, &str)> {
    let mut statuses = Vec::new();
    for line in log.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("http.status_code") {
            rest = &rest[at + "http.status_code".len()..];
            let digits: String = rest
                .trim_start_matches(['"', ':', '='])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(code) = digits.parse() {
                statuses.push((code, line));
            }
        }
    }
    statuses
}

/// A kubeconfig (in the test's scratch directory) that authenticates as the chart's
/// ServiceAccount `fullname` in `namespace`, with a token from the TokenRequest API; checked with
/// `kubectl auth whoami`.
fn service_account_kubeconfig(namespace: &str, fullname: &str) -> PathBuf {
    let token = kubectl_ok(&[
        "create",
        "token",
        fullname,
        "-n",
        namespace,
        "--duration=1h",
    ]);
    let dir = scratch_dir(namespace);
    let kubeconfig = dir.join("kubeconfig");
    write_token_kubeconfig(&kubeconfig, token.trim());
    let whoami = Command::new("kubectl")
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(
        text(&whoami.stdout),
        format!("system:serviceaccount:{namespace}:{fullname}"),
        "{}",
        text(&whoami.stderr)
    );
    kubeconfig
}

/// The flags of the Deployment Helm installed for `release` in `namespace`.
fn deployment_args(release: &str, namespace: &str) -> Vec<String> {
    let manifest = helm_ok(&["get", "manifest", release, "--namespace", namespace]);
    let deployment = serde_yaml::Deserializer::from_str(&manifest)
        .map(|doc| {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(value).unwrap()
        })
        .find(|doc| doc["kind"] == "Deployment")
        .expect("the release has a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The log lines where the apiserver refused a call of the operator (401/403, "forbidden"),
/// except those `expected` accepts.
fn refusals(log: &str, expected: impl Fn(&str) -> bool) -> Vec<&str> {
    let statuses = api_statuses(log);
    assert!(
        statuses.iter().any(|(code, _)| *code == 201),
        "no successful create in the operator's log: is kube_client=debug logging on?"
    );
    let mut refused: Vec<&str> = statuses
        .iter()
        .filter(|(code, _)| *code == 401 || *code == 403)
        .map(|(_, line)| *line)
        .collect();
    refused.extend(
        log.lines()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden")),
    );
    refused.retain(|line| !expected(line));
    refused
}

#[tokio::test]
async fn operator_works_with_only_the_charts_rbac() {
    let _serial = one_operator_at_a_time().await;
    wait_for_no_other_operator().await;
    let admin = common::kube_client().await;
    common::env("AWS_ENDPOINT_URL");
    let account = common::env("TARGET_ACCOUNT_NAME");

    // The chart's objects, as Helm installs them, in a namespace of their own.
    let release_ns = ReleaseNamespace::new("helm-rbac");
    let release_name = common::unique("cao");
    let fullname = format!("{release_name}-cross-account-operator");
    let mut release = Release::install(
        &release_name,
        &release_ns.name,
        &["--set", "clusterName=it-rbac", "--set", "replicaCount=1"],
    );

    let kubeconfig = service_account_kubeconfig(&release_ns.name, &fullname);
    let chart_args = deployment_args(&release_name, &release_ns.name);
    assert!(
        chart_args.contains(&"--leader-elect".to_owned()),
        "{chart_args:?}"
    );

    let log_dir = common::devenv_dir().join("logs");
    fs::create_dir_all(&log_dir).unwrap();
    let log_path = log_dir.join("operator-helm_chart-rbac.log");
    let mut operator =
        OperatorProcess::start(&kubeconfig, &release_ns.name, &chart_args, &log_path);
    let mut leader_elect = true;
    if let Err(why) = operator.wait_ready(Duration::from_secs(60)).await {
        assert!(
            why.contains("leader-elect") && why.contains("not supported"),
            "the operator stopped: {why}"
        );
        // A version without leader election: one replica without the election flags, as its
        // message says.
        leader_elect = false;
        let single: Vec<String> = chart_args
            .iter()
            .filter(|a| !a.starts_with("--leader-elect"))
            .cloned()
            .collect();
        operator = OperatorProcess::start(&kubeconfig, &release_ns.name, &single, &log_path);
        operator
            .wait_ready(Duration::from_secs(60))
            .await
            .unwrap_or_else(|why| panic!("the operator stopped: {why}"));
    }
    if leader_elect {
        // It holds the Lease the chart's Role names, in the release namespace.
        let leases: Api<Lease> = Api::namespaced(admin.clone(), &release_ns.name);
        let held = common::try_poll(Duration::from_secs(60), || {
            let leases = leases.clone();
            let fullname = fullname.clone();
            async move {
                let lease = leases
                    .get_opt(&fullname)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no Lease yet")?;
                let holder = lease.spec.and_then(|s| s.holder_identity);
                if holder.as_deref() == Some("it-rbac-operator") {
                    Ok(())
                } else {
                    Err(format!("holder {holder:?}"))
                }
            }
        })
        .await;
        if let Err(last) = held {
            panic!(
                "the operator holds no Lease {fullname} in {}: {last}\n{}",
                release_ns.name,
                operator.log_tail(60)
            );
        }
    }

    // The seed scenario in a tenant namespace.
    let tenant = common::TestNamespace::new(&admin, "helm-rbac-tenant").await;
    let name = "signin";
    common::create_role(
        &admin,
        &tenant.name,
        name,
        json!({
            "accountRef": account,
            "policies": {"managed": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]},
            "grants": [{"user": "devTest"}],
            "credentials": {},
        }),
    )
    .await;
    let _cleanup = RoleCleanup {
        namespace: tenant.name.clone(),
        name: name.to_owned(),
    };
    let roles = common::roles_api(&admin, &tenant.name);
    let ready = common::try_poll(Duration::from_secs(90), || {
        let roles = roles.clone();
        async move {
            let role = roles.get(name).await.map_err(|e| e.to_string())?;
            let ok = condition(&role, "Ready").is_some_and(|c| {
                c.status == "True" && c.observed_generation == role.metadata.generation
            });
            if ok {
                Ok(role)
            } else {
                Err(common::describe_role(&role))
            }
        }
    })
    .await;
    let role = ready.unwrap_or_else(|last| {
        panic!(
            "{}/{name} did not become Ready with the chart's RBAC\nlast: {last}\n{}",
            tenant.name,
            operator.log_tail(80)
        )
    });
    let role_arn = role
        .status
        .as_ref()
        .and_then(|s| s.role_arn.clone())
        .expect("status.roleArn");
    let iam_role_name = role_arn.rsplit('/').next().unwrap().to_owned();
    let _iam_role = common::TargetRoleGuard::new(&iam_role_name);
    // This operator did the work: the role carries its cluster name, and it called AWS.
    let iam = common::target_iam().await;
    let tags = common::role_tags(&iam, &iam_role_name).await;
    assert_eq!(
        tags.get("crossaccount.io/cluster").map(String::as_str),
        Some("it-rbac"),
        "the IAM role was not created by the operator under test: {tags:?}"
    );
    let metrics = operator.metrics().await;
    for operation in ["CreateRole", "AssumeRole"] {
        assert!(
            common::metric_sum(
                &metrics,
                "crossaccount_aws_requests_total",
                &[("operation", operation), ("outcome", "ok")]
            ) >= 1,
            "the operator under test made no successful {operation}\n{metrics}"
        );
    }
    let secret_name = role
        .status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .map(|c| c.secret_name.clone())
        .expect("status.credentials.secretName");
    assert_eq!(secret_name, format!("{name}-aws"));
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &tenant.name);
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("Secret {secret_name} missing\n{}", operator.log_tail(60)));
    let data = secret.data.unwrap_or_default();
    for key in ["credentials", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"] {
        assert!(data.contains_key(key), "Secret {secret_name} lacks {key}");
    }

    // Deletion: the finalizer is released and the Secret goes.
    roles
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    let gone = common::try_poll(Duration::from_secs(90), || {
        let roles = roles.clone();
        let secrets = secrets.clone();
        let secret_name = secret_name.clone();
        async move {
            if let Some(role) = roles.get_opt(name).await.map_err(|e| e.to_string())? {
                return Err(common::describe_role(&role));
            }
            match secrets
                .get_opt(&secret_name)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(_) => Err(format!("Secret {secret_name} still exists")),
                None => Ok(()),
            }
        }
    })
    .await;
    if let Err(last) = gone {
        panic!(
            "{}/{name} or its Secret was not removed with the chart's RBAC\nlast: {last}\n{}",
            tenant.name,
            operator.log_tail(80)
        );
    }
    assert!(
        common::get_iam_role(&iam, &iam_role_name).await.is_none(),
        "the IAM role {role_arn} was not deleted"
    );

    // A clean stop (the Lease is released with the same permissions), and not one refusal.
    assert!(
        operator.stop(),
        "the operator did not exit cleanly\n{}",
        operator.log_tail(40)
    );
    let log = operator.log();
    let refusals = refusals(&log, |_| false);
    assert!(
        refusals.is_empty(),
        "the apiserver refused calls of the operator running with the chart's RBAC:\n{}",
        refusals.join("\n")
    );
    if leader_elect {
        assert!(
            log.contains("acquired leadership"),
            "{}",
            operator.log_tail(40)
        );
    }
    release.uninstall();
}

/// Namespaced mode (`watchNamespaces`) end to end: the operator runs with exactly the chart's
/// namespaced RBAC (a ClusterRole for the cluster-scoped kinds, a Role in the watched namespace)
/// and `--watch-namespaces`; it reconciles a CrossAccountRole there, and leaves one in another
/// namespace (allowed by the AwsAccount) untouched: no status, no finalizer, no Secret, no event,
/// no IAM role. Rollout restarts are off (the default): a rollout target is reported with the
/// missing permission and the chart value.
#[tokio::test]
async fn operator_in_namespaced_mode_manages_only_its_namespaces() {
    let _serial = one_operator_at_a_time().await;
    wait_for_no_other_operator().await;
    let admin = common::kube_client().await;
    common::env("AWS_ENDPOINT_URL");
    let account = common::env("TARGET_ACCOUNT_NAME");

    // The tenant namespaces first: the chart binds a Role in the watched one.
    let watched = common::TestNamespace::new(&admin, "helm-ns-watched").await;
    let other = common::TestNamespace::new(&admin, "helm-ns-other").await;
    let release_ns = ReleaseNamespace::new("helm-ns");
    let release_name = common::unique("cao");
    let fullname = format!("{release_name}-cross-account-operator");
    let watch = format!("watchNamespaces={{{}}}", watched.name);
    let mut release = Release::install(
        &release_name,
        &release_ns.name,
        &[
            "--set",
            "clusterName=it-rbac-ns",
            "--set",
            "replicaCount=1",
            "--set",
            &watch,
        ],
    );
    let kubeconfig = service_account_kubeconfig(&release_ns.name, &fullname);
    let chart_args = deployment_args(&release_name, &release_ns.name);
    assert!(
        chart_args.contains(&format!("--watch-namespaces={}", watched.name)),
        "{chart_args:?}"
    );
    // The ServiceAccount may not touch the other namespace at all.
    let can = |verb: &str, what: &str, namespace: &str| {
        let out = Command::new("kubectl")
            .args(["auth", "can-i", verb, what, "-n", namespace])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        text(&out.stdout).trim() == "yes"
    };
    assert!(can("create", "secrets", &watched.name));
    assert!(!can("create", "secrets", &other.name));
    assert!(!can(
        "list",
        "crossaccountroles.crossaccount.io",
        &other.name
    ));
    assert!(!can("patch", "deployments.apps", &watched.name));

    let log_dir = common::devenv_dir().join("logs");
    fs::create_dir_all(&log_dir).unwrap();
    let log_path = log_dir.join("operator-helm_chart-namespaced.log");
    let mut operator =
        OperatorProcess::start(&kubeconfig, &release_ns.name, &chart_args, &log_path);
    operator
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|why| panic!("the operator stopped: {why}"));

    // The ignored one first, so that by the time the watched one is Ready an operator watching
    // every namespace would have reconciled it too.
    let ignored_role_name = common::unique("ignored");
    common::create_role(
        &admin,
        &other.name,
        "ignored",
        json!({
            "accountRef": account,
            "roleName": ignored_role_name,
            "policies": {"managed": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]},
            "credentials": {},
        }),
    )
    .await;
    // Deleted before the test ends (also on failure): an operator of a later test that watches
    // every namespace must not find it.
    let _ignored_cleanup = RoleCleanup {
        namespace: other.name.clone(),
        name: "ignored".to_owned(),
    };
    let name = "signin";
    common::create_role(
        &admin,
        &watched.name,
        name,
        json!({
            "accountRef": account,
            "policies": {"managed": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]},
            "credentials": {
                "rolloutRestartTargets": [{"kind": "Deployment", "name": "web"}],
            },
        }),
    )
    .await;
    let _cleanup = RoleCleanup {
        namespace: watched.name.clone(),
        name: name.to_owned(),
    };
    let roles = common::roles_api(&admin, &watched.name);
    let ready = common::try_poll(Duration::from_secs(90), || {
        let roles = roles.clone();
        async move {
            let role = roles.get(name).await.map_err(|e| e.to_string())?;
            let credentials = condition(&role, "CredentialsReady").is_some_and(|c| {
                c.status == "True" && c.observed_generation == role.metadata.generation
            });
            let rollouts = condition(&role, "RolloutsRestarted").is_some();
            if credentials && rollouts {
                Ok(role)
            } else {
                Err(common::describe_role(&role))
            }
        }
    })
    .await;
    let role = ready.unwrap_or_else(|last| {
        panic!(
            "{}/{name} got no credentials with the namespaced RBAC\nlast: {last}\n{}",
            watched.name,
            operator.log_tail(80)
        )
    });
    let iam = common::target_iam().await;
    let role_arn = role
        .status
        .as_ref()
        .and_then(|s| s.role_arn.clone())
        .expect("status.roleArn");
    let iam_role_name = role_arn.rsplit('/').next().unwrap().to_owned();
    let _iam_role = common::TargetRoleGuard::new(&iam_role_name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &watched.name);
    assert!(
        secrets
            .get_opt(&format!("{name}-aws"))
            .await
            .unwrap()
            .is_some(),
        "no Secret in the watched namespace"
    );
    // Without rbac.rolloutRestarts the restart is refused, and the condition says what to grant.
    let rollouts = condition(&role, "RolloutsRestarted").unwrap();
    assert_eq!(rollouts.status, "False", "{rollouts:?}");
    assert_eq!(rollouts.reason, "RolloutRestartFailed", "{rollouts:?}");
    for words in ["Deployment/web", "deployments", "rbac.rolloutRestarts=true"] {
        assert!(rollouts.message.contains(words), "{words:?}: {rollouts:?}");
    }

    // The other namespace's object is as it was created.
    let ignored = common::roles_api(&admin, &other.name)
        .get("ignored")
        .await
        .unwrap();
    assert!(
        ignored.status.is_none(),
        "{}",
        common::describe_role(&ignored)
    );
    assert!(
        ignored.metadata.finalizers.unwrap_or_default().is_empty(),
        "a finalizer on the ignored object"
    );
    let other_secrets: Api<Secret> = Api::namespaced(admin.clone(), &other.name);
    assert!(
        other_secrets
            .get_opt("ignored-aws")
            .await
            .unwrap()
            .is_none(),
        "a Secret in the unwatched namespace"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(admin.clone(), &other.name);
    let listed = events.list(&Default::default()).await.unwrap();
    assert!(
        listed.items.is_empty(),
        "events in the unwatched namespace: {:?}",
        listed.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert!(
        common::get_iam_role(&iam, &ignored_role_name)
            .await
            .is_none(),
        "an IAM role was created for the ignored object"
    );

    // The ignored object has no finalizer: it goes at once.
    let ignored_api = common::roles_api(&admin, &other.name);
    ignored_api
        .delete("ignored", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_until_role_gone(&admin, &other.name, "ignored", Duration::from_secs(10)).await;

    // Deletion works with the namespaced RBAC: finalizer released, Secret gone.
    roles
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    common::wait_until_role_gone(&admin, &watched.name, name, Duration::from_secs(90)).await;
    assert!(
        secrets
            .get_opt(&format!("{name}-aws"))
            .await
            .unwrap()
            .is_none(),
        "the Secret outlived its CrossAccountRole"
    );
    assert!(
        common::get_iam_role(&iam, &iam_role_name).await.is_none(),
        "the IAM role {role_arn} was not deleted"
    );

    assert!(
        operator.stop(),
        "the operator did not exit cleanly\n{}",
        operator.log_tail(40)
    );
    // No refusal but the expected one: the rollout target's Deployment.
    let log = operator.log();
    let refused = refusals(&log, |line| {
        line.contains("/apis/apps/v1/") || line.contains("deployments")
    });
    assert!(
        refused.is_empty(),
        "the apiserver refused calls of the operator running with the namespaced RBAC:\n{}",
        refused.join("\n")
    );
    release.uninstall();
}
