//! The role processes of the chaos test: each one a `callsync` process started by a command
//! line as docs/operations.md writes it, run by `sh` in the directory holding the shared
//! config; several per role, added, stopped, killed and restarted by the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::SeededRng;

/// What every process of one run shares: the binary's directory (put on `PATH`, so lines read
/// `callsync ...`), the work directory (holds `callsync.toml`, the logs) and the environment
/// the documented lines refer to (`$NEW_DATABASE_URL`, `CALLSYNC_CONFIG`, ...).
#[derive(Debug, Clone)]
pub struct Launcher {
    bin_dir: PathBuf,
    work_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Launcher {
    pub fn new(binary: &Path, work_dir: &Path, env: Vec<(String, String)>) -> Self {
        Launcher {
            bin_dir: binary
                .parent()
                .expect("the binary's directory")
                .to_path_buf(),
            work_dir: work_dir.to_path_buf(),
            env,
        }
    }

    /// `sh -c line` as a user types it in the work directory. The test's own `CALLSYNC*`
    /// variables (broker ports, data dirs) are removed: only the line and the launcher's
    /// environment configure the process.
    pub fn shell(&self, line: &str) -> Command {
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(line).current_dir(&self.work_dir);
        for (key, _) in std::env::vars() {
            if key.starts_with("CALLSYNC") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PATH", path).stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a command line to completion; returns its stdout, or what failed.
    pub async fn run(&self, line: &str) -> Result<String, String> {
        let out = self
            .shell(line)
            .output()
            .await
            .map_err(|e| format!("running `{line}`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`{line}` failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        String::from_utf8(out.stdout).map_err(|e| format!("`{line}` printed non-UTF-8: {e}"))
    }
}

/// One role process (`... callsync run --roles <role>`), restarted with the same line after
/// each death.
pub struct RoleProcess {
    pub role: &'static str,
    /// `processor-2`: the role and its number in the run.
    pub name: String,
    /// The command line, as docs/operations.md writes it.
    pub line: String,
    launcher: Launcher,
    log: PathBuf,
    child: Option<Child>,
    /// Processes started under this name, the first included.
    pub starts: u32,
    /// SIGKILLs sent by the test.
    pub kills: u32,
    /// Exits the test did not cause (the role stopped on its own).
    pub unplanned_exits: Vec<String>,
    /// How it ended when the test stopped it with SIGTERM (`None`: still running, or it did
    /// not stop within the grace period and was killed).
    pub stopped: Option<ExitStatus>,
}

impl RoleProcess {
    fn new(role: &'static str, name: String, line: String, launcher: &Launcher) -> Self {
        RoleProcess {
            log: launcher.work_dir.join(format!("{name}.log")),
            role,
            name,
            line,
            launcher: launcher.clone(),
            child: None,
            starts: 0,
            kills: 0,
            unplanned_exits: Vec::new(),
            stopped: None,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts the process; its stdout and stderr are appended to `<work_dir>/<name>.log`.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the role's log");
        // `exec` (after any leading `VAR=value` words), so signals reach callsync itself
        let at = self.line.find("callsync ").expect("a callsync command");
        let line = format!("{}exec {}", &self.line[..at], &self.line[at..]);
        let mut cmd = self.launcher.shell(&line);
        cmd.stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().expect("spawn the callsync binary"));
        self.starts += 1;
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, without warning, and reap it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // tokio's kill is SIGKILL on Unix
            let _ = child.kill().await;
            self.kills += 1;
        }
    }

    /// SIGTERM (graceful drain), SIGKILL after `grace`; records how it ended.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => {
                self.stopped = Some(status);
                Some(status)
            }
            _ => {
                let _ = child.kill().await;
                None
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

    /// The last `lines` lines of the process's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines that say the process was fenced out by another one.
    pub fn fenced_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("fenced") && !l.contains("zombie")
            })
            .map(str::to_string)
            .collect()
    }
}

/// Figures of one role over the run.
#[derive(Debug, Default, Clone)]
pub struct RoleFigures {
    pub processes: usize,
    pub most_at_once: usize,
    pub starts: u32,
    pub kills: u32,
    /// Processes stopped for good with SIGTERM (scale-in, the database move).
    pub terms: u32,
    pub unplanned_exits: usize,
    /// Log lines that mention a fence (a zombie refused, or a process fenced out).
    pub fence_lines: usize,
}

/// Every role process of the run: the running ones, and those stopped for good by a scale-in
/// or the database move.
#[derive(Default)]
pub struct Fleet {
    pub active: Vec<RoleProcess>,
    pub retired: Vec<RoleProcess>,
    numbers: BTreeMap<&'static str, usize>,
    most_at_once: BTreeMap<&'static str, usize>,
}

impl Fleet {
    /// Starts `n` more processes of `role` with `line`.
    pub fn start(&mut self, role: &'static str, line: &str, launcher: &Launcher, n: usize) {
        for _ in 0..n {
            let number = self.numbers.entry(role).or_default();
            *number += 1;
            let mut p =
                RoleProcess::new(role, format!("{role}-{number}"), line.to_string(), launcher);
            p.start();
            self.active.push(p);
        }
        let now = self.count(role);
        let most = self.most_at_once.entry(role).or_default();
        *most = (*most).max(now);
    }

    pub fn count(&self, role: &str) -> usize {
        self.active.iter().filter(|p| p.role == role).count()
    }

    /// A running process of `role`, drawn from `rng`.
    pub fn pick(&mut self, role: &str, rng: &mut SeededRng) -> Option<&mut RoleProcess> {
        let candidates: Vec<usize> = (0..self.active.len())
            .filter(|&i| self.active[i].role == role && self.active[i].is_running())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = candidates[rng.range(0, candidates.len() as u64) as usize];
        Some(&mut self.active[i])
    }

    /// Takes the newest processes of `role` out of the fleet until `keep` remain (to stop
    /// them outside the lock that guards the fleet; then [`Fleet::retire`] them).
    pub fn take_newest(&mut self, role: &str, keep: usize) -> Vec<RoleProcess> {
        let mut taken = Vec::new();
        while self.count(role) > keep {
            let i = self
                .active
                .iter()
                .rposition(|p| p.role == role)
                .expect("a process of the role");
            taken.push(self.active.remove(i));
        }
        taken
    }

    pub fn retire(&mut self, stopped: Vec<RoleProcess>) {
        self.retired.extend(stopped);
    }

    /// Per role: processes, most at once, starts, SIGKILLs, SIGTERMs, exits on their own.
    pub fn figures(&self) -> BTreeMap<&'static str, RoleFigures> {
        let mut out: BTreeMap<&'static str, RoleFigures> = BTreeMap::new();
        for (p, retired) in self
            .active
            .iter()
            .map(|p| (p, false))
            .chain(self.retired.iter().map(|p| (p, true)))
        {
            let f = out.entry(p.role).or_default();
            f.processes += 1;
            f.starts += p.starts;
            f.kills += p.kills;
            f.terms += u32::from(retired);
            f.unplanned_exits += p.unplanned_exits.len();
            f.fence_lines += p.fenced_lines().len();
        }
        for (role, f) in out.iter_mut() {
            f.most_at_once = self.most_at_once.get(role).copied().unwrap_or(0);
        }
        out
    }
}
