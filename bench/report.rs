//! The results of one run: `results.json` (everything) and `results.md` (the table people read).

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use serde::Serialize;

use crate::{Settings, process::Sample, workload::Convergence};

/// AWS calls by "service:Operation", as the proxy counted them (retries included).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AwsCalls {
    pub by_operation: BTreeMap<String, u64>,
    pub total: u64,
    pub iam_writes: u64,
    pub assume_role: u64,
}

/// IAM operations that change something.
fn is_iam_write(key: &str) -> bool {
    let Some(op) = key.strip_prefix("iam:") else {
        return false;
    };
    [
        "Create", "Update", "Put", "Delete", "Attach", "Detach", "Tag", "Untag", "Add", "Remove",
    ]
    .iter()
    .any(|verb| op.starts_with(verb))
}

impl From<BTreeMap<String, u64>> for AwsCalls {
    fn from(by_operation: BTreeMap<String, u64>) -> Self {
        let total = by_operation.values().sum();
        let iam_writes = by_operation
            .iter()
            .filter(|(k, _)| is_iam_write(k))
            .map(|(_, v)| v)
            .sum();
        let assume_role = by_operation.get("sts:AssumeRole").copied().unwrap_or(0);
        AwsCalls {
            by_operation,
            total,
            iam_writes,
            assume_role,
        }
    }
}

impl AwsCalls {
    pub fn per_object(&self, n: usize) -> f64 {
        self.total as f64 / n.max(1) as f64
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SteadyState {
    pub window_seconds: f64,
    pub resyncs: u32,
    pub calls: AwsCalls,
    pub cpu_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Restart {
    pub seconds_to_reconcile_all: f64,
    /// Every AWS call after the restart, the management-role session included.
    pub calls: AwsCalls,
    /// AssumeRole calls that minted credentials for a Secret (the operator's metric).
    pub credential_mints: u64,
}

/// Memory and CPU of the controller process, from /proc.
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub idle_rss_mib: f64,
    pub peak_rss_mib: f64,
    pub steady_rss_mib: f64,
    /// (steady - idle) / N, KiB.
    pub per_object_kib: f64,
    /// CPU seconds from start until all objects were ready.
    pub cpu_seconds_to_ready: f64,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Memory {
    pub fn new(idle: Sample, at_ready: Sample, steady: Sample, n: usize) -> Memory {
        Memory {
            idle_rss_mib: idle.rss as f64 / MIB,
            peak_rss_mib: steady.peak_rss.max(at_ready.peak_rss) as f64 / MIB,
            steady_rss_mib: steady.rss as f64 / MIB,
            per_object_kib: (steady.rss as f64 - idle.rss as f64) / 1024.0 / n.max(1) as f64,
            cpu_seconds_to_ready: at_ready.cpu_seconds,
        }
    }
}

/// One round of the churn phase.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnRound {
    pub ready_rss_mib: f64,
    pub after_delete_rss_mib: f64,
    pub seconds: f64,
}

impl ChurnRound {
    pub fn new(at_ready: Sample, after_delete: Sample, took: Duration) -> ChurnRound {
        ChurnRound {
            ready_rss_mib: at_ready.rss as f64 / MIB,
            after_delete_rss_mib: after_delete.rss as f64 / MIB,
            seconds: took.as_secs_f64(),
        }
    }
}

/// Memory of one operator process under create/delete churn.
#[derive(Clone, Debug, Serialize)]
pub struct Churn {
    pub idle_rss_mib: f64,
    pub rounds: Vec<ChurnRound>,
    /// RSS after the last round's deletion less that after the first's, MiB.
    pub growth_mib: f64,
    /// RSS once kube's event cache expired (6.5 minutes later, one more object), MiB.
    pub after_retention_rss_mib: f64,
}

impl Churn {
    pub fn new(idle: Sample, rounds: Vec<ChurnRound>, after_retention: Sample) -> Churn {
        let after = |r: Option<&ChurnRound>| r.map_or(0.0, |r| r.after_delete_rss_mib);
        Churn {
            idle_rss_mib: idle.rss as f64 / MIB,
            growth_mib: after(rounds.last()) - after(rounds.first()),
            after_retention_rss_mib: after_retention.rss as f64 / MIB,
            rounds,
        }
    }
}

/// One controller at N objects.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseResult {
    pub label: String,
    pub convergence: Convergence,
    pub calls_to_ready: AwsCalls,
    pub calls_per_object_to_ready: f64,
    pub memory: Option<Memory>,
    pub steady_state: Option<SteadyState>,
    pub restart: Option<Restart>,
    pub delete_seconds: Option<f64>,
    pub delete_calls: Option<AwsCalls>,
    /// The converging process's resident memory over its life: (seconds since it started, MiB).
    pub rss_mib_over_time: Vec<(f64, f64)>,
}

impl PhaseResult {
    pub fn new(label: &str, convergence: Convergence, calls: AwsCalls, n: usize) -> PhaseResult {
        PhaseResult {
            label: label.to_owned(),
            convergence,
            calls_per_object_to_ready: calls.per_object(n),
            calls_to_ready: calls,
            memory: None,
            steady_state: None,
            restart: None,
            delete_seconds: None,
            delete_calls: None,
            rss_mib_over_time: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FloorResult {
    pub label: String,
    pub wall_seconds: f64,
    pub calls: AwsCalls,
    pub calls_per_object: f64,
    /// When each role's calls were done, seconds after the first, in order.
    pub ready_at_seconds: Vec<f64>,
}

/// The minimum calls per object, counted from the operator's own plan for the benchmark's spec.
#[derive(Clone, Debug, Serialize)]
pub struct Minimum {
    /// Reads that cannot be skipped: the existence check of the role.
    pub reads: u64,
    /// Writes the plan makes for a new object.
    pub writes: Vec<String>,
    pub assume_role: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub date: String,
    pub machine: String,
    pub settings: Settings,
    pub minimum_roles: Minimum,
    pub minimum_credentials: Minimum,
    pub operator_credentials: PhaseResult,
    pub operator_roles: PhaseResult,
    pub floor_credentials: FloorResult,
    pub floor_roles: FloorResult,
    /// ACK's IAM controller, or why it was not run.
    pub peer: Result<(String, PhaseResult), String>,
    /// The churn phase, unless skipped.
    pub churn: Option<Churn>,
    pub run_seconds: f64,
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    format!("{cpus} CPUs, {mem:.0} GiB, {}", std::env::consts::ARCH)
}

fn today() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    out.trim().to_owned()
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &Settings,
        minimum_roles: Minimum,
        minimum_credentials: Minimum,
        operator_credentials: PhaseResult,
        operator_roles: PhaseResult,
        floor_credentials: FloorResult,
        floor_roles: FloorResult,
        peer: Result<(String, PhaseResult), String>,
        churn: Option<Churn>,
        run: Duration,
    ) -> Results {
        Results {
            date: today(),
            machine: machine(),
            settings: settings.clone(),
            minimum_roles,
            minimum_credentials,
            operator_credentials,
            operator_roles,
            floor_credentials,
            floor_roles,
            peer,
            churn,
            run_seconds: run.as_secs_f64(),
        }
    }

    pub fn write(&self, dir: &Path) {
        let json = serde_json::to_string_pretty(self).expect("results to JSON");
        std::fs::write(dir.join("results.json"), json + "\n").expect("write results.json");
        std::fs::write(dir.join("results.md"), self.markdown()).expect("write results.md");
        eprintln!("{}", self.markdown());
    }

    /// The human table.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let oc = &self.operator_credentials;
        let or = &self.operator_roles;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Benchmark results, N = {} ({}; {})\n\nOne machine's numbers: compare the columns \
             of this run with each other, not with other machines. Concurrency {} for every \
             controller and the floor; resync every {} s.\n",
            s.n, self.date, self.machine, s.concurrency, s.resync_seconds
        );
        let _ = writeln!(
            md,
            "![Objects Ready over time: the operator, the floor and ACK](ready.png)\n\n\
             ![Resident memory of each controller over its phase](rss.png)\n"
        );
        let _ = writeln!(md, "## Roles only (like for like with ACK)\n");
        let peer = self.peer.as_ref().ok();
        let _ = writeln!(
            md,
            "| figure | cross-account-operator | {} | floor |\n|---|---|---|---|",
            peer.map_or("ACK iam-controller (not run)".to_owned(), |(v, _)| format!(
                "ACK iam-controller {v}"
            ))
        );
        let fr = &self.floor_roles;
        let ack = peer.map(|(_, p)| p);
        let cell = |f: &dyn Fn(&PhaseResult) -> String| ack.map_or("-".to_owned(), f);
        let rows: Vec<(&str, String, String, String)> = vec![
            (
                "time until all ready, s",
                format!("{:.1}", or.convergence.all_ready_seconds),
                cell(&|p| format!("{:.1}", p.convergence.all_ready_seconds)),
                format!("{:.1}", fr.wall_seconds),
            ),
            (
                "ratio to the floor",
                ratio(or.convergence.all_ready_seconds, fr.wall_seconds),
                cell(&|p| ratio(p.convergence.all_ready_seconds, fr.wall_seconds)),
                "1.00".into(),
            ),
            (
                "per object p50 / p99, s",
                format!(
                    "{:.2} / {:.2}",
                    or.convergence.p50_seconds, or.convergence.p99_seconds
                ),
                cell(&|p| {
                    format!(
                        "{:.2} / {:.2}",
                        p.convergence.p50_seconds, p.convergence.p99_seconds
                    )
                }),
                "-".into(),
            ),
            (
                "AWS calls per object to ready",
                format!("{:.2}", or.calls_per_object_to_ready),
                cell(&|p| format!("{:.2}", p.calls_per_object_to_ready)),
                format!("{:.2}", fr.calls_per_object),
            ),
            (
                "minimum AWS calls per object (from the plan)",
                self.minimum_roles.total.to_string(),
                "-".into(),
                self.minimum_roles.total.to_string(),
            ),
            (
                "IAM writes in a steady-state window (ours: the credentials phase)",
                steady_writes(oc),
                cell(&|p| steady_writes(p)),
                "-".into(),
            ),
            (
                "AWS calls per object per resync (drift detection)",
                steady_reads(oc, s.n),
                cell(&|p| steady_reads(p, s.n)),
                "-".into(),
            ),
            (
                "peak RSS, MiB",
                mem(or, |m| format!("{:.1}", m.peak_rss_mib)),
                cell(&|p| mem(p, |m| format!("{:.1}", m.peak_rss_mib))),
                "-".into(),
            ),
            (
                "RSS after ready, MiB",
                mem(or, |m| format!("{:.1}", m.steady_rss_mib)),
                cell(&|p| mem(p, |m| format!("{:.1}", m.steady_rss_mib))),
                "-".into(),
            ),
            (
                "CPU seconds until ready",
                mem(or, |m| format!("{:.1}", m.cpu_seconds_to_ready)),
                cell(&|p| mem(p, |m| format!("{:.1}", m.cpu_seconds_to_ready))),
                "-".into(),
            ),
            (
                "delete all, s",
                opt(or.delete_seconds),
                cell(&|p| opt(p.delete_seconds)),
                "-".into(),
            ),
        ];
        for (name, a, b, c) in rows {
            let _ = writeln!(md, "| {name} | {a} | {b} | {c} |");
        }
        if let Err(why) = &self.peer {
            let _ = writeln!(md, "\nACK was not run: {why}");
        }

        let fc = &self.floor_credentials;
        let _ = writeln!(md, "\n## With credentials (the operator's full job)\n");
        let _ = writeln!(
            md,
            "| figure | cross-account-operator | floor | target |\n|---|---|---|---|"
        );
        let steady = oc.steady_state.as_ref();
        let restart = oc.restart.as_ref();
        let rows: Vec<(&str, String, String, &str)> = vec![
            (
                "time until all Ready, s",
                format!("{:.1}", oc.convergence.all_ready_seconds),
                format!("{:.1}", fc.wall_seconds),
                "",
            ),
            (
                "ratio to the floor",
                ratio(oc.convergence.all_ready_seconds, fc.wall_seconds),
                "1.00".into(),
                "<= 1.2",
            ),
            (
                "per object p50 / p90 / p99, s",
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    oc.convergence.p50_seconds,
                    oc.convergence.p90_seconds,
                    oc.convergence.p99_seconds
                ),
                "-".into(),
                "",
            ),
            (
                "AWS calls per object to Ready",
                format!("{:.2}", oc.calls_per_object_to_ready),
                format!("{:.2}", fc.calls_per_object),
                "= minimum",
            ),
            (
                "minimum AWS calls per object (from the plan)",
                self.minimum_credentials.total.to_string(),
                self.minimum_credentials.total.to_string(),
                "",
            ),
            (
                "IAM writes in the steady-state window",
                steady.map_or("-".into(), |s| s.calls.iam_writes.to_string()),
                "-".into(),
                "0",
            ),
            (
                "AWS calls per object per resync (drift detection)",
                steady_reads(oc, self.settings.n),
                "-".into(),
                "",
            ),
            (
                "credentials minted after a restart",
                restart.map_or("-".into(), |r| r.credential_mints.to_string()),
                "-".into(),
                "0",
            ),
            (
                "all AWS calls after a restart, per object (AssumeRole of the management role included)",
                restart.map_or("-".into(), |r| {
                    format!(
                        "{:.2} ({} AssumeRole)",
                        r.calls.per_object(self.settings.n),
                        r.calls.assume_role
                    )
                }),
                "-".into(),
                "",
            ),
            (
                "restart: seconds until every object reconciled",
                restart.map_or("-".into(), |r| format!("{:.1}", r.seconds_to_reconcile_all)),
                "-".into(),
                "",
            ),
            (
                "peak RSS, MiB",
                mem(oc, |m| format!("{:.1}", m.peak_rss_mib)),
                "-".into(),
                "< 64 at N=1000",
            ),
            (
                "steady RSS, MiB (idle before: see JSON)",
                mem(oc, |m| format!("{:.1}", m.steady_rss_mib)),
                "-".into(),
                "",
            ),
            (
                "memory per object, KiB",
                mem(oc, |m| format!("{:.1}", m.per_object_kib)),
                "-".into(),
                "",
            ),
            (
                "CPU seconds until Ready / in the steady window",
                format!(
                    "{} / {}",
                    mem(oc, |m| format!("{:.1}", m.cpu_seconds_to_ready)),
                    steady.map_or("-".into(), |s| format!("{:.2}", s.cpu_seconds))
                ),
                "-".into(),
                "",
            ),
        ];
        for (name, a, b, c) in rows {
            let _ = writeln!(md, "| {name} | {a} | {b} | {c} |");
        }
        let _ = writeln!(
            md,
            "\n## AWS calls to Ready, by operation (whole run of N)\n"
        );
        let _ = writeln!(
            md,
            "| operation | operator (credentials) | floor (credentials) | operator (roles) | ACK (roles) |\n|---|---|---|---|---|"
        );
        let mut ops: Vec<&String> = oc
            .calls_to_ready
            .by_operation
            .keys()
            .chain(fc.calls.by_operation.keys())
            .chain(or.calls_to_ready.by_operation.keys())
            .chain(
                ack.iter()
                    .flat_map(|p| p.calls_to_ready.by_operation.keys()),
            )
            .collect();
        ops.sort();
        ops.dedup();
        for op in ops {
            let get = |c: &AwsCalls| c.by_operation.get(op).copied().unwrap_or(0).to_string();
            let _ = writeln!(
                md,
                "| {op} | {} | {} | {} | {} |",
                get(&oc.calls_to_ready),
                get(&fc.calls),
                get(&or.calls_to_ready),
                ack.map_or("-".into(), |p| get(&p.calls_to_ready))
            );
        }
        if let Some(churn) = &self.churn {
            md.push_str(&churn.markdown(s.n));
        }
        let _ = writeln!(md, "\nRun took {:.0} s.", self.run_seconds);
        md
    }
}

impl Churn {
    fn markdown(&self, n: usize) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "\n## Churn: {n} objects with credentials created and deleted, {} rounds, one \
             operator process\n\nRSS idle before the first round: {:.1} MiB. After the last \
             round's deletion it is {:+.1} MiB from after the first's; 6.5 minutes later (kube's \
             event recorder keeps published events for 6 minutes), after one more object, it is \
             {:.1} MiB.\n",
            self.rounds.len(),
            self.idle_rss_mib,
            self.growth_mib,
            self.after_retention_rss_mib
        );
        let _ = writeln!(
            md,
            "| round | RSS at Ready, MiB | RSS after deletion, MiB | s |\n|---|---|---|---|"
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.0} |",
                i + 1,
                r.ready_rss_mib,
                r.after_delete_rss_mib,
                r.seconds
            );
        }
        md
    }
}

fn steady_writes(p: &PhaseResult) -> String {
    p.steady_state
        .as_ref()
        .map_or("-".into(), |s| s.calls.iam_writes.to_string())
}

fn steady_reads(p: &PhaseResult, n: usize) -> String {
    p.steady_state.as_ref().map_or("-".into(), |s| {
        format!(
            "{:.2}",
            s.calls.total as f64 / f64::from(s.resyncs) / n.max(1) as f64
        )
    })
}

fn mem(p: &PhaseResult, f: impl Fn(&Memory) -> String) -> String {
    p.memory.as_ref().map_or("-".into(), f)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        return "-".into();
    }
    format!("{:.2}", a / b)
}
