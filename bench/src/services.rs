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
