//! Parts of the chaos test: the role processes it kills and restarts, the fault timeline it
//! prints, and a small seeded random number generator.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// SplitMix64: enough randomness for a fault schedule, and the same schedule for one seed.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }

    /// A duration uniform in `[low_ms, high_ms)` milliseconds.
    pub fn millis(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(self.range(low_ms, high_ms))
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// What was done when, relative to the start of the run.
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    entries: Arc<Mutex<Vec<(Duration, String)>>>,
}

impl Timeline {
    pub fn new() -> Self {
        Timeline {
            start: Instant::now(),
            entries: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records `what` now, and echoes it to stderr so a hanging run shows its progress.
    pub fn note(&self, what: impl Into<String>) {
        let what = what.into();
        let at = self.start.elapsed();
        eprintln!("[chaos {:>7.1}s] {what}", at.as_secs_f64());
        self.entries.lock().expect("timeline lock").push((at, what));
    }

    /// The timeline as a Markdown table.
    pub fn render(&self) -> String {
        let entries = self.entries.lock().expect("timeline lock");
        let mut out = String::from("| t (s) | what |\n|---:|---|\n");
        for (at, what) in entries.iter() {
            let _ = writeln!(out, "| {:.1} | {what} |", at.as_secs_f64());
        }
        out
    }
}

/// One role (`callsync run --roles <role>`) as a child process, restarted after each death.
pub struct RoleProcess {
    pub role: &'static str,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Processes started for this role, the first included.
    pub starts: u32,
    /// SIGKILLs sent by the test.
    pub kills: u32,
    /// Exits the test did not cause (the role stopped on its own).
    pub unplanned_exits: Vec<String>,
}

impl RoleProcess {
    pub fn new(
        role: &'static str,
        binary: &Path,
        config: &Path,
        log_dir: &Path,
        env: Vec<(String, String)>,
    ) -> Self {
        RoleProcess {
            role,
            binary: binary.to_path_buf(),
            config: config.to_path_buf(),
            log: log_dir.join(format!("{role}.log")),
            env,
            child: None,
            starts: 0,
            kills: 0,
            unplanned_exits: Vec::new(),
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts the role; its stdout and stderr are appended to `<log_dir>/<role>.log`.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the role's log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["run", "--roles", self.role])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn the callsync binary"));
        self.starts += 1;
    }

    /// SIGKILL, without warning, and reap it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // tokio's kill is SIGKILL on Unix
            let _ = child.kill().await;
            self.kills += 1;
        }
    }

    /// SIGTERM (graceful drain) at the end of the run, SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }

    /// Whether the process exited by itself; returns its status once (then it is gone).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// The last `lines` lines of the role's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
