//! The services a benchmark needs, set up with the same harness as the tests:
//! the real Kafka broker (`KAFKA_BOOTSTRAP`, else started with
//! `scripts/kafka-broker.sh start`) and Postgres (`DATABASE_URL`, else a
//! throwaway cluster from callsync-testkit).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// The repository root (bench/ sits one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `bootstrap.servers` of a real broker: `KAFKA_BOOTSTRAP`, or one started by the script.
pub fn kafka_bootstrap() -> anyhow::Result<String> {
    if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
        if !b.trim().is_empty() {
            return Ok(b.trim().to_string());
        }
    }
    let script = repo_root().join("scripts/kafka-broker.sh");
    eprintln!(
        "bench: KAFKA_BOOTSTRAP unset; starting the broker with {}",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .output()
        .with_context(|| format!("running {} start", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} start failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
    {
        Some(b) => Ok(b.trim().to_string()),
        None => bail!(
            "{} start printed no KAFKA_BOOTSTRAP line: {stdout}",
            script.display()
        ),
    }
}

/// A fresh database on `DATABASE_URL`'s server or a throwaway cluster.
pub async fn database() -> anyhow::Result<callsync_testkit::TestDatabase> {
    let server = callsync_testkit::pg_server()
        .await
        .context("starting Postgres")?;
    server
        .create_database()
        .await
        .context("creating the benchmark database")
}

/// Peak resident set size of this process (VmHWM) in bytes; 0 where unknown.
pub use callsync_sinks::bench_support::peak_rss_bytes;

/// A one-line description of this machine for the benchmark table.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb as f64 / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB")
}

/// The `callsync` binary of this build (next to this benchmark's executable), built or brought
/// up to date with cargo first (a no-op when fresh), so the figures are of the current code.
pub fn callsync_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the benchmark executable")?;
    let dir = exe
        .parent()
        .context("the benchmark executable has no directory")?
        .to_path_buf();
    let bin = dir.join("callsync");
    // <target>/<profile>/callsync-bench: build the service binary into the same target dir
    let release = dir.file_name().is_some_and(|n| n == "release");
    let target = dir
        .parent()
        .context("the benchmark executable is not in a cargo target dir")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!(
        "bench: building the callsync binary into {}",
        target.display()
    );
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args(["build", "-q", "-p", "callsync", "--bin", "callsync"])
        .env("CARGO_TARGET_DIR", target)
        .env("SQLX_OFFLINE", "true");
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build for callsync")?;
    if !status.success() || !bin.is_file() {
        bail!("building the callsync binary failed ({status})");
    }
    Ok(bin)
}

/// One field of `/proc/<pid>/status` in bytes (`VmHWM`, `VmRSS`); `None` once it is gone.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// A `callsync` process started by a benchmark, so that its memory is measured apart from
/// the benchmark's own clients. It is killed if dropped while running.
pub struct CallsyncProcess {
    child: std::process::Child,
    what: String,
    log: PathBuf,
}

impl CallsyncProcess {
    /// Starts `callsync --config CONFIG ARGS...`, its output going to `log`.
    pub fn spawn(config: &std::path::Path, args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        let bin = callsync_binary()?;
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("log file handle")?;
        let what = format!("callsync {}", args.join(" "));
        let child = Command::new(&bin)
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        eprintln!("bench: started `{what}` (pid {})", child.id());
        Ok(CallsyncProcess { child, what, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far (`VmHWM`), bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        proc_status_bytes(self.pid(), "VmHWM").unwrap_or(0)
    }

    /// Fails when the process has exited (naming its log).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait().context("waiting on callsync")? {
            None => Ok(()),
            Some(status) => bail!(
                "`{}` exited early with {status}; its log: {}",
                self.what,
                self.log.display()
            ),
        }
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (SIGKILL after that).
    pub fn terminate(mut self, grace: std::time::Duration) -> anyhow::Result<()> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("bench: `{}` did not stop on SIGTERM; killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for CallsyncProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
