//! A controller process under measurement: started from a binary, its resident memory and CPU
//! time sampled from /proc while it runs.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Memory and CPU of one process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Resident set size, bytes.
    pub rss: u64,
    /// Peak resident set size since the start, bytes (`VmHWM`).
    pub peak_rss: u64,
    /// User plus system CPU time since the start, seconds.
    pub cpu_seconds: f64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`; `None` once the process is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its closing paren):
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the paren.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Sample {
        rss: kib("VmRSS:"),
        peak_rss: kib("VmHWM:"),
        cpu_seconds: (ticks(11) + ticks(12)) as f64 / hz,
    })
}

/// How often the resident memory of a measured process is sampled for the plot.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// A running controller process. Peak memory comes from the kernel (`VmHWM`); a sampler thread
/// records the resident memory over time for the plot (`rss.png`).
pub struct Measured {
    child: Child,
    /// (seconds since start, MiB), filled by the sampler until the process is gone.
    rss: Arc<Mutex<Vec<(f64, f64)>>>,
}

impl Measured {
    /// Starts `command` with its output going to `log`; it dies with the benchmark (SIGKILL on
    /// our exit through PR_SET_PDEATHSIG) so an interrupted run leaves no controller behind.
    pub fn start(mut command: Command, log: &Path) -> Measured {
        let file =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log handle");
        command.stdin(Stdio::null()).stdout(file).stderr(err);
        // SAFETY: prctl in the child before exec is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
        let rss: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
        let (pid, samples) = (child.id(), rss.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            // A process that exited but is not reaped yet has no VmRSS: the end.
            while let Some(sample) = sample(pid).filter(|s| s.rss > 0) {
                let at = started.elapsed().as_secs_f64();
                let mib = sample.rss as f64 / 1048576.0;
                samples.lock().unwrap().push((at, mib));
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
        });
        Measured { child, rss }
    }

    /// The resident memory sampled so far: (seconds since start, MiB).
    pub fn rss_over_time(&self) -> Vec<(f64, f64)> {
        self.rss.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The current sample; panics when the process has exited (it must not, mid-benchmark).
    pub fn now(&mut self) -> Sample {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the process under measurement exited early: {status}");
        }
        sample(self.pid()).expect("the process under measurement is gone")
    }

    /// SIGTERM, then waits up to 30 s (SIGKILL after that).
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
