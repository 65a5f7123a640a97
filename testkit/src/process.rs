//! Running helper commands (initdb, pg_ctl, the scripts) with errors that name the command.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

use crate::TestkitError;

/// The repository root: testkit's manifest dir is `<repo>/testkit`.
pub(crate) fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The command as a user would type it, for messages.
pub(crate) fn display(program: &OsStr, args: &[&OsStr]) -> String {
    let mut s = program.to_string_lossy().into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Builds `program args...`, prefixed with `runuser -u <user> --` when `run_as` is set.
/// Returns the command and its printable form.
pub(crate) fn command(run_as: Option<&str>, program: &Path, args: &[&OsStr]) -> (Command, String) {
    let mut argv: Vec<&OsStr> = Vec::new();
    let exe: &OsStr = match run_as {
        Some(user) => {
            argv.extend([
                OsStr::new("-u"),
                OsStr::new(user),
                OsStr::new("--"),
                program.as_os_str(),
            ]);
            OsStr::new("runuser")
        }
        None => program.as_os_str(),
    };
    argv.extend_from_slice(args);
    let mut c = Command::new(exe);
    c.args(&argv).stdin(std::process::Stdio::null());
    if run_as.is_some() {
        // the test's directory may not be readable by that user (a clone under /root)
        c.current_dir("/");
    }
    (c, display(exe, &argv))
}

/// Runs the command to completion; a non-zero exit is an error carrying its output.
pub(crate) async fn run(mut cmd: Command, shown: String) -> Result<Output, TestkitError> {
    let out = cmd.output().await.map_err(|source| TestkitError::Spawn {
        command: shown.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(TestkitError::Command {
            command: shown,
            status: out.status.to_string(),
            output: output_text(&out),
        })
    }
}

pub(crate) fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stdout = stdout.trim();
    if !stdout.is_empty() {
        if !s.is_empty() {
            s.push_str(" | ");
        }
        s.push_str(stdout);
    }
    s
}

/// The last `n` lines of a log file, for error messages ("" if unreadable).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(_) => String::new(),
    }
}

/// True when this process runs as root (initdb refuses to).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
