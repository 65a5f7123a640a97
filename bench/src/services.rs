//! The services a benchmark needs, set up with the same harness as the tests:
//! the real Kafka broker (`KAFKA_BOOTSTRAP`, else started with
//! `scripts/kafka-broker.sh start`) and Postgres (`DATABASE_URL`, else a
//! throwaway cluster from callsync-testkit).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use callsync_testkit::TestDatabase;

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

/// A fresh database on `DATABASE_URL`'s server or a throwaway cluster, dropped when the
/// benchmark is done with it (see [`BenchDatabase`]).
pub async fn database() -> anyhow::Result<BenchDatabase> {
    let server = callsync_testkit::pg_server()
        .await
        .context("starting Postgres")?;
    let db = server
        .create_database()
        .await
        .context("creating the benchmark database")?;
    Ok(BenchDatabase::new(db))
}

/// A PostgreSQL cluster of the benchmark's own, set up as scripts/postgres.sh sets up the test
/// server (no durability, 256 MB of shared buffers, checkpoints every 2 GB of WAL or 30 min),
/// so that every CPU second its processes use is the benchmark's, and the figures stay
/// comparable with runs on the test server. Stopped and deleted when dropped.
pub struct OwnPostgres {
    pub server: callsync_testkit::PgServer,
    /// the postmaster, whose process tree is the whole server
    pub postmaster: Option<u32>,
}

impl OwnPostgres {
    pub async fn start() -> anyhow::Result<OwnPostgres> {
        use sqlx::Connection;
        let server = callsync_testkit::PgServer::start_throwaway()
            .await
            .context("starting a PostgreSQL cluster for the benchmark")?;
        let mut admin = sqlx::PgConnection::connect(server.admin_url())
            .await
            .context("connecting to the benchmark's cluster")?;
        for setting in [
            "ALTER SYSTEM SET shared_buffers = '256MB'",
            "ALTER SYSTEM SET max_wal_size = '2GB'",
            "ALTER SYSTEM SET checkpoint_timeout = '30min'",
        ] {
            sqlx::query(setting)
                .execute(&mut admin)
                .await
                .with_context(|| setting.to_string())?;
        }
        let _ = admin.close().await;
        // shared_buffers takes a restart
        server
            .restart(callsync_testkit::PgStopMode::Fast)
            .await
            .context("restarting the benchmark's cluster with its settings")?;
        let postmaster = server
            .data_dir()
            .and_then(crate::proc_usage::postmaster_pid);
        Ok(OwnPostgres { server, postmaster })
    }

    /// A fresh database on this cluster.
    pub async fn database(&self) -> anyhow::Result<BenchDatabase> {
        let db = self
            .server
            .create_database()
            .await
            .context("creating the benchmark database")?;
        Ok(BenchDatabase::new(db))
    }
}

/// A benchmark's own database, which must not outlive the benchmark (a 1M-call backfill
/// leaves 2.2 GB): [`BenchDatabase::drop_database`] drops it at the end, and on every other
/// path (an error returned early, a panic) dropping this guard drops it, from a thread of its
/// own with a new connection (`DROP DATABASE ... WITH (FORCE)`: the pool, or a `callsync`
/// process still connected, does not keep it alive). Reads as the [`TestDatabase`] it holds.
pub struct BenchDatabase {
    /// `Some` until the database is dropped.
    db: Option<TestDatabase>,
    name: String,
    admin_url: String,
}

impl BenchDatabase {
    pub fn new(db: TestDatabase) -> Self {
        BenchDatabase {
            name: db.name.clone(),
            admin_url: db.admin_url().to_string(),
            db: Some(db),
        }
    }

    /// Drops the database now (its pool closed first); a failure is reported, not returned,
    /// so that it never hides the benchmark's own result.
    pub async fn drop_database(mut self) {
        if let Some(db) = self.db.take() {
            db.pool.close().await;
        }
        report_dropped(&self.name, drop_by_name(&self.admin_url, &self.name).await);
    }
}

impl std::ops::Deref for BenchDatabase {
    type Target = TestDatabase;

    fn deref(&self) -> &TestDatabase {
        // only `drop_database` (which consumes the guard) and `drop` take it
        self.db
            .as_ref()
            .expect("a BenchDatabase holds its database until it is dropped")
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else {
            return;
        };
        drop(db);
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop cannot await, and may run on a runtime's thread: a thread and runtime of its own
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime to drop the benchmark database")?;
            runtime.block_on(drop_by_name(&admin_url, &name))
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread dropping it panicked")));
        report_dropped(&self.name, result);
    }
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)` over a new connection to `admin_url`.
async fn drop_by_name(admin_url: &str, name: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let limit = Duration::from_secs(60);
    let dropped = async {
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connecting to the server")?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .context("DROP DATABASE")?;
        let _ = admin.close().await;
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, dropped)
        .await
        .with_context(|| format!("no answer within {limit:?}"))?
}

fn report_dropped(name: &str, result: anyhow::Result<()>) {
    match result {
        Ok(()) => eprintln!("bench: dropped the benchmark database {name}"),
        Err(e) => eprintln!(
            "bench: could not drop the benchmark database {name} (drop it by hand): {e:#}"
        ),
    }
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

/// Through this variable `all` hands the binary it built to each benchmark's process, which
/// then runs no cargo of its own.
pub const CALLSYNC_BIN_ENV: &str = "CALLSYNC_BENCH_CALLSYNC_BIN";

static CALLSYNC_BIN: OnceLock<PathBuf> = OnceLock::new();

/// Builds the `callsync` binary of this build (next to this benchmark's executable) or brings it
/// up to date with cargo (a no-op when fresh), before anything is measured: a build running
/// beside a measurement takes both cores. `CALLSYNC_BENCH_CALLSYNC_BIN` names a binary to use
/// as it is instead. Later [`callsync_binary`] calls return this path and run no cargo.
pub fn prepare_callsync_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = CALLSYNC_BIN.get() {
        return Ok(bin.clone());
    }
    let bin = match std::env::var_os(CALLSYNC_BIN_ENV).filter(|v| !v.is_empty()) {
        Some(given) => {
            let bin = PathBuf::from(given);
            if !bin.is_file() {
                bail!("{CALLSYNC_BIN_ENV}={} is not a file", bin.display());
            }
            bin
        }
        None => build_callsync_binary()?,
    };
    Ok(CALLSYNC_BIN.get_or_init(|| bin).clone())
}

/// The binary [`prepare_callsync_binary`] built; an error if it was not called first (a
/// benchmark must never start cargo while it measures).
pub fn callsync_binary() -> anyhow::Result<PathBuf> {
    CALLSYNC_BIN
        .get()
        .cloned()
        .context("the callsync binary was not built before measuring (prepare_callsync_binary)")
}

fn build_callsync_binary() -> anyhow::Result<PathBuf> {
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
        "bench: building the callsync binary into {} (before measuring)",
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

/// A process a benchmark measures (a `callsync` role, the peer's Connect worker), started apart
/// from the benchmark's own clients so that its CPU and memory are its own. It is killed if
/// dropped while running.
pub struct BenchProcess {
    child: std::process::Child,
    what: String,
    log: PathBuf,
}

impl BenchProcess {
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
        Ok(BenchProcess { child, what, log })
    }

    /// A process the benchmark spawned itself, `what` naming it in errors.
    pub fn adopt(child: std::process::Child, what: &str, log: PathBuf) -> Self {
        eprintln!("bench: started {what} (pid {})", child.id());
        BenchProcess {
            child,
            what: what.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds the process has used so far (0 once it is gone).
    pub fn cpu_secs(&self) -> f64 {
        crate::proc_usage::cpu_secs(self.pid()).unwrap_or(0.0)
    }

    /// Peak resident set size so far (`VmHWM`), bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        crate::proc_usage::status_bytes(self.pid(), "VmHWM").unwrap_or(0)
    }

    /// Fails when the process has exited (naming its log).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self
            .child
            .try_wait()
            .context("waiting on a benchmark process")?
        {
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

impl Drop for BenchProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(db_pool: &sqlx::PgPool, name: &str) -> bool {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(db_pool)
            .await
            .expect("pg_database");
        n == 1
    }

    /// A benchmark that fails after creating its database.
    async fn failing_benchmark(db: BenchDatabase) -> anyhow::Result<()> {
        sqlx::query("CREATE TABLE t AS SELECT 1 AS x")
            .execute(&db.pool)
            .await?;
        bail!("the benchmark failed")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_benchmark_database_is_dropped_at_the_end_and_on_failure() {
        // (a panic unwinds through the same Drop as the early return)
        // a database that stays, to look from
        let observer = callsync_testkit::skip_unless_postgres!();

        // the normal end: dropped explicitly
        let db = BenchDatabase::new(callsync_testkit::test_database().await.expect("db"));
        let name = db.name.clone();
        assert!(exists(&observer.pool, &name).await);
        db.drop_database().await;
        assert!(!exists(&observer.pool, &name).await, "{name} left behind");

        // an error returned early: the guard drops it (on a runtime thread, pool still open)
        let db = BenchDatabase::new(callsync_testkit::test_database().await.expect("db"));
        let name = db.name.clone();
        assert!(failing_benchmark(db).await.is_err());
        assert!(!exists(&observer.pool, &name).await, "{name} left behind");

        observer.drop_database().await.expect("drop the observer");
    }
}
