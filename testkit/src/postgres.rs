//! Postgres for tests: a fresh database per test, on `DATABASE_URL`'s server or on a throwaway
//! cluster this process starts.

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::OnceCell;

use crate::process::{self, command, is_root, run};
use crate::TestkitError;

/// A fresh, uniquely named database (`cs_test_<uuid>`) for one test.
///
/// Dropping it leaves the database in place (the cluster is throwaway); call
/// [`TestDatabase::drop_database`] to remove it explicitly.
#[derive(Debug)]
pub struct TestDatabase {
    /// URL of this database (`postgres://postgres@127.0.0.1:<port>/cs_test_<uuid>`).
    pub url: String,
    /// The database's name.
    pub name: String,
    /// A pool to this database, at most 10 connections.
    pub pool: PgPool,
    admin_url: String,
}

impl TestDatabase {
    /// URL of the server's administrative database (`DATABASE_URL` as given, or the throwaway
    /// cluster's `postgres` database): for `CREATE DATABASE`, `pg_terminate_backend` and such.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Closes the pool and drops the database (terminating other sessions on it).
    pub async fn drop_database(self) -> Result<(), TestkitError> {
        self.pool.close().await;
        let mut admin = connect(&self.admin_url).await?;
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        sqlx::query(&sql)
            .execute(&mut admin)
            .await
            .map_err(|source| TestkitError::Postgres {
                url: redact(&self.admin_url),
                operation: sql,
                source,
            })?;
        Ok(())
    }
}

/// How [`PgServer::stop`] shuts the server down (`pg_ctl stop -m ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgStopMode {
    /// Abort sessions, shut down cleanly (`fast`).
    Fast,
    /// Kill the server without a shutdown checkpoint, as a crash would (`immediate`); the next
    /// start runs crash recovery.
    Immediate,
}

/// How much durability a throwaway cluster keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgDurability {
    /// `fsync`, `synchronous_commit` and `full_page_writes` off: fast tests, data lost on a
    /// machine crash (a process crash or `pg_ctl stop -m immediate` still recovers from WAL).
    Off,
    /// PostgreSQL's own defaults (`fsync`, `synchronous_commit`, `full_page_writes` on), as a
    /// production server runs: for benchmarks whose figures must mean something there.
    Production,
}

impl PgStopMode {
    fn as_str(self) -> &'static str {
        match self {
            PgStopMode::Fast => "fast",
            PgStopMode::Immediate => "immediate",
        }
    }
}

/// A PostgreSQL server the tests use: either a cluster this process owns (started with initdb
/// and pg_ctl in a temp dir) or the external one named by `DATABASE_URL`.
///
/// - [`pg_server()`] is the server [`test_database()`] uses, shared by all tests of the process.
/// - [`PgServer::start_throwaway()`] starts a cluster of the test's own, e.g. for a test that
///   restarts Postgres mid-run without disturbing tests running in parallel. It is stopped and
///   deleted when the handle is dropped.
///
/// [`stop`](PgServer::stop)/[`start`](PgServer::start) work on owned clusters, and on the
/// external one when `scripts/postgres.sh` started it and `CALLSYNC_PG_DATA` names its data
/// directory (`scripts/test.sh` exports both). Stopping the shared server affects every test in
/// the process: put such tests in their own test binary, or use a throwaway server.
#[derive(Debug)]
pub struct PgServer {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Owned(OwnedCluster),
    External {
        admin_url: String,
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug)]
struct OwnedCluster {
    bin: PathBuf,
    /// temp dir holding `data/` and `postgres.log`; deleted with the cluster
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// OS user running the server when this process is root
    run_as: Option<String>,
    admin_url: String,
    /// stop and delete on Drop (false for the process-wide shared cluster, which a watchdog
    /// cleans up when the process exits)
    delete_on_drop: bool,
}

static SHARED: OnceCell<PgServer> = OnceCell::const_new();

/// The server [`test_database()`] uses, started on first use and shared by every test in the
/// process: `DATABASE_URL`'s server when that is set, else a throwaway cluster on a free
/// loopback port (stopped and deleted by a watchdog shortly after this process exits).
pub async fn pg_server() -> Result<&'static PgServer, TestkitError> {
    SHARED
        .get_or_try_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.trim().is_empty() => Ok(PgServer::external(url.trim())),
                _ => PgServer::start_owned(false, PgDurability::Off).await,
            }
        })
        .await
}

/// A fresh database (`cs_test_<uuid>`) on [`pg_server()`], with a pool of at most 10
/// connections. Every call creates a new database, so tests never see each other's tables.
pub async fn test_database() -> Result<TestDatabase, TestkitError> {
    pg_server().await?.create_database().await
}

impl PgServer {
    fn external(admin_url: &str) -> PgServer {
        let data_dir = std::env::var_os("CALLSYNC_PG_DATA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        PgServer {
            inner: Inner::External {
                admin_url: admin_url.to_string(),
                data_dir,
            },
        }
    }

    /// Starts a new throwaway cluster owned by the caller (even when `DATABASE_URL` is set):
    /// initdb (from a cached template), loopback port, trust auth, no durability. Runs as an
    /// unprivileged user when this process is root. Dropping the handle stops it and deletes it.
    pub async fn start_throwaway() -> Result<PgServer, TestkitError> {
        PgServer::start_owned(true, PgDurability::Off).await
    }

    /// [`start_throwaway`](PgServer::start_throwaway) with the given durability settings.
    pub async fn start_throwaway_with(durability: PgDurability) -> Result<PgServer, TestkitError> {
        PgServer::start_owned(true, durability).await
    }

    async fn start_owned(
        delete_on_drop: bool,
        durability: PgDurability,
    ) -> Result<PgServer, TestkitError> {
        let bin = find_pg_bin()?;
        let run_as = if is_root() {
            Some(ensure_pg_user().await?)
        } else {
            None
        };
        let template = ensure_template(&bin, run_as.as_deref()).await?;

        let root = tempfile::Builder::new()
            .prefix("callsync-pg-")
            .tempdir()
            .map_err(|source| TestkitError::Io {
                operation: "create temp dir in",
                path: std::env::temp_dir(),
                source,
            })?
            .keep();
        if let Some(user) = &run_as {
            chown_to(&root, user).await?;
        }
        let data = root.join("data");
        let log = root.join("postgres.log");
        let (cmd, shown) = command(
            run_as.as_deref(),
            Path::new("cp"),
            &[OsStr::new("-a"), template.as_os_str(), data.as_os_str()],
        );
        run(cmd, shown).await?;

        let mut cluster = OwnedCluster {
            bin,
            root,
            data,
            log,
            port: 0,
            run_as,
            admin_url: String::new(),
            delete_on_drop,
        };
        // Spawned before the first start: whatever happens next, the cluster goes away with us.
        spawn_watchdog(&cluster);

        let mut last_err = None;
        for _attempt in 0..3 {
            cluster.port = free_port()?;
            cluster.admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
            write_config(&cluster.data, cluster.port, durability)?;
            match cluster.pg_ctl_start().await {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let log = process::tail(&cluster.log, 20);
                    let port_taken =
                        log.contains("could not bind") || log.contains("Address already in use");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        let server = PgServer {
            inner: Inner::Owned(cluster),
        };
        server.wait_ready(Duration::from_secs(30)).await?;
        tracing::info!(url = %server.admin_url(), "started throwaway PostgreSQL cluster");
        Ok(server)
    }

    /// URL of the administrative database (`DATABASE_URL` as given, or the owned cluster's
    /// `postgres` database).
    pub fn admin_url(&self) -> &str {
        match &self.inner {
            Inner::Owned(c) => &c.admin_url,
            Inner::External { admin_url, .. } => admin_url,
        }
    }

    /// The data directory, when known (owned clusters; external ones via `CALLSYNC_PG_DATA`).
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.inner {
            Inner::Owned(c) => Some(&c.data),
            Inner::External { data_dir, .. } => data_dir.as_deref(),
        }
    }

    /// True when this process started the cluster (and so can always stop/start it).
    pub fn is_owned(&self) -> bool {
        matches!(self.inner, Inner::Owned(_))
    }

    /// Creates a fresh database `cs_test_<uuid>` on this server and returns it with a pool
    /// (at most 10 connections).
    pub async fn create_database(&self) -> Result<TestDatabase, TestkitError> {
        let admin_url = self.admin_url().to_string();
        let name = format!("cs_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = connect(&admin_url).await?;
        let sql = format!("CREATE DATABASE \"{name}\"");
        sqlx::query(&sql)
            .execute(&mut admin)
            .await
            .map_err(|source| TestkitError::Postgres {
                url: redact(&admin_url),
                operation: sql,
                source,
            })?;
        // best effort: the admin connection is done
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .map_err(|source| TestkitError::Postgres {
                url: redact(&url),
                operation: "connect pool".to_string(),
                source,
            })?;
        Ok(TestDatabase {
            url,
            name,
            pool,
            admin_url,
        })
    }

    /// Stops the server. Connections break; pools reconnect once it is started again.
    pub async fn stop(&self, mode: PgStopMode) -> Result<(), TestkitError> {
        match &self.inner {
            Inner::Owned(c) => c.pg_ctl_stop(mode).await,
            Inner::External { .. } => self.script("stop", mode).await,
        }
    }

    /// Starts the server again after [`stop`](PgServer::stop), on the same port and data, and
    /// waits until it accepts connections.
    pub async fn start(&self) -> Result<(), TestkitError> {
        match &self.inner {
            Inner::Owned(c) => c.pg_ctl_start().await?,
            Inner::External { .. } => self.script("start", PgStopMode::Fast).await?,
        }
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// [`stop`](PgServer::stop) then [`start`](PgServer::start).
    pub async fn restart(&self, mode: PgStopMode) -> Result<(), TestkitError> {
        self.stop(mode).await?;
        self.start().await
    }

    async fn script(&self, action: &str, mode: PgStopMode) -> Result<(), TestkitError> {
        let Inner::External {
            admin_url,
            data_dir,
        } = &self.inner
        else {
            return Ok(());
        };
        let Some(data_dir) = data_dir else {
            return Err(TestkitError::NotControllable {
                service: "PostgreSQL",
                reason: format!(
                    "{} comes from DATABASE_URL and CALLSYNC_PG_DATA is unset; start it with \
                     scripts/postgres.sh (scripts/test.sh exports CALLSYNC_PG_DATA) or use \
                     PgServer::start_throwaway()",
                    redact(admin_url)
                ),
            });
        };
        let script = process::repo_root().join("scripts").join("postgres.sh");
        let (mut cmd, shown) = command(
            None,
            Path::new("bash"),
            &[script.as_os_str(), OsStr::new(action)],
        );
        cmd.env("CALLSYNC_PG_DATA", data_dir)
            .env("CALLSYNC_PG_STOP_MODE", mode.as_str());
        if let Some(port) = url::Url::parse(admin_url).ok().and_then(|u| u.port()) {
            cmd.env("CALLSYNC_PG_PORT", port.to_string());
        }
        run(cmd, shown).await.map(|_| ())
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match connect(self.admin_url()).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(TestkitError::Timeout {
                        what: format!("PostgreSQL to accept connections ({e})"),
                        seconds: timeout.as_secs(),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl OwnedCluster {
    async fn pg_ctl_start(&self) -> Result<(), TestkitError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let (cmd, shown) = command(
            self.run_as.as_deref(),
            &pg_ctl,
            &[
                OsStr::new("start"),
                OsStr::new("-D"),
                self.data.as_os_str(),
                OsStr::new("-l"),
                self.log.as_os_str(),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
                OsStr::new("-s"),
            ],
        );
        run(cmd, shown).await.map(|_| ()).map_err(|e| match e {
            TestkitError::Command {
                command,
                status,
                output,
            } => TestkitError::Command {
                command,
                status,
                output: format!(
                    "{output}\n--- {}:\n{}",
                    self.log.display(),
                    process::tail(&self.log, 30)
                ),
            },
            other => other,
        })
    }

    async fn pg_ctl_stop(&self, mode: PgStopMode) -> Result<(), TestkitError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let (cmd, shown) = command(
            self.run_as.as_deref(),
            &pg_ctl,
            &[
                OsStr::new("stop"),
                OsStr::new("-D"),
                self.data.as_os_str(),
                OsStr::new("-m"),
                OsStr::new(mode.as_str()),
                OsStr::new("-w"),
                OsStr::new("-s"),
            ],
        );
        run(cmd, shown).await.map(|_| ())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Inner::Owned(c) = &self.inner else { return };
        if !c.delete_on_drop {
            return;
        }
        // best effort, synchronous: stop hard, then delete
        let pg_ctl = c.bin.join("pg_ctl");
        let mut cmd = match &c.run_as {
            Some(user) => {
                let mut cmd = std::process::Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(&pg_ctl).current_dir("/");
                cmd
            }
            None => std::process::Command::new(&pg_ctl),
        };
        cmd.arg("stop")
            .arg("-D")
            .arg(&c.data)
            .args(["-m", "immediate", "-w", "-s"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _ = cmd.status();
        let _ = std::fs::remove_dir_all(&c.root);
    }
}

/// A watchdog shell in its own process group: when this process is gone (however it ended,
/// Ctrl-C included), it stops the cluster and deletes its directory.
fn spawn_watchdog(c: &OwnedCluster) {
    const SCRIPT: &str = r#"
pid="$1"; pg_ctl="$2"; data="$3"; root="$4"; user="$5"
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
if [ -n "$user" ]; then
  runuser -u "$user" -- "$pg_ctl" stop -D "$data" -m immediate -w -s >/dev/null 2>&1
else
  "$pg_ctl" stop -D "$data" -m immediate -w -s >/dev/null 2>&1
fi
rm -rf "$root"
"#;
    use std::os::unix::process::CommandExt;
    let spawned = std::process::Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("callsync-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(c.bin.join("pg_ctl"))
        .arg(&c.data)
        .arg(&c.root)
        .arg(c.run_as.as_deref().unwrap_or(""))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!(error = %e, root = %c.root.display(), "no watchdog for the throwaway PostgreSQL cluster; it may outlive the tests");
    }
}

/// initdb's output for this PostgreSQL and user, made once per machine and copied for every
/// cluster (copying takes ~0.2 s, initdb ~1.5 s).
async fn ensure_template(bin: &Path, run_as: Option<&str>) -> Result<PathBuf, TestkitError> {
    let mut h = DefaultHasher::new();
    bin.hash(&mut h);
    run_as.hash(&mut h);
    let template = std::env::temp_dir().join(format!("callsync-pg-template-{:016x}", h.finish()));
    if template.join("PG_VERSION").is_file() && template.join("postgresql.conf").is_file() {
        return Ok(template);
    }
    // build under a unique name, then rename into place (atomic; a concurrent builder wins)
    let parent = tempfile::Builder::new()
        .prefix("callsync-pg-template-build-")
        .tempdir()
        .map_err(|source| TestkitError::Io {
            operation: "create temp dir in",
            path: std::env::temp_dir(),
            source,
        })?;
    if let Some(user) = run_as {
        chown_to(parent.path(), user).await?;
    }
    let data = parent.path().join("data");
    let initdb = bin.join("initdb");
    let (cmd, shown) = command(
        run_as,
        &initdb,
        &[
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-U"),
            OsStr::new("postgres"),
            OsStr::new("--auth=trust"),
            OsStr::new("--encoding=UTF8"),
            OsStr::new("--locale=C"),
            OsStr::new("--no-sync"),
        ],
    );
    run(cmd, shown).await?;
    match std::fs::rename(&data, &template) {
        Ok(()) => {}
        Err(_) if template.join("PG_VERSION").is_file() => {} // someone else was faster
        Err(source) => {
            return Err(TestkitError::Io {
                operation: "rename initdb template to",
                path: template,
                source,
            })
        }
    }
    Ok(template)
}

fn write_config(data: &Path, port: u16, durability: PgDurability) -> Result<(), TestkitError> {
    let path = data.join("postgresql.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|source| TestkitError::Io {
            operation: "open for append",
            path: path.clone(),
            source,
        })?;
    let durability_conf = match durability {
        PgDurability::Off => {
            "# no durability\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             wal_level = minimal\nmax_wal_senders = 0\n"
        }
        PgDurability::Production => {
            "# durability as shipped\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
        }
    };
    // later lines win, so a retry on another port just appends again
    let conf = format!(
        "\n# callsync testkit: throwaway cluster, loopback only\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = ''\n\
         max_connections = 200\n\
         shared_buffers = 128MB\n\
         dynamic_shared_memory_type = mmap\n\
         log_min_messages = warning\n\
         {durability_conf}"
    );
    f.write_all(conf.as_bytes())
        .map_err(|source| TestkitError::Io {
            operation: "append to",
            path,
            source,
        })
}

fn free_port() -> Result<u16, TestkitError> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|source| TestkitError::Io {
            operation: "bind a free port on",
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| TestkitError::Io {
            operation: "read the port of",
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })
}

/// `CALLSYNC_PG_BIN`, else the newest `/usr/lib/postgresql/<v>/bin` (Debian), else `PATH`.
fn find_pg_bin() -> Result<PathBuf, TestkitError> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("CALLSYNC_PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_tools(&dir) {
            return Ok(dir);
        }
        return Err(TestkitError::PostgresNotInstalled {
            searched: format!("CALLSYNC_PG_BIN={}", dir.display()),
        });
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(TestkitError::PostgresNotInstalled {
        searched: "/usr/lib/postgresql/*/bin and PATH".to_string(),
    })
}

/// As root: the unprivileged user to run PostgreSQL as (`CALLSYNC_PG_USER`, default `callsync`,
/// created with useradd if missing; `nobody` if that fails).
async fn ensure_pg_user() -> Result<String, TestkitError> {
    let user = std::env::var("CALLSYNC_PG_USER")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "callsync".to_string());
    if user_exists(&user).await {
        return Ok(user);
    }
    let (cmd, shown) = command(
        None,
        Path::new("useradd"),
        &[
            OsStr::new("--system"),
            OsStr::new("--no-create-home"),
            OsStr::new("--home-dir"),
            OsStr::new("/nonexistent"),
            OsStr::new("--shell"),
            OsStr::new("/usr/sbin/nologin"),
            OsStr::new(&user),
        ],
    );
    let created = run(cmd, shown).await;
    // a concurrent test process may have created it first
    if user_exists(&user).await {
        return Ok(user);
    }
    if let Err(e) = created {
        tracing::warn!(error = %e, "could not create user {user}; running PostgreSQL as nobody");
    }
    Ok("nobody".to_string())
}

async fn user_exists(user: &str) -> bool {
    let (cmd, shown) = command(None, Path::new("id"), &[OsStr::new("-u"), OsStr::new(user)]);
    run(cmd, shown).await.is_ok()
}

async fn chown_to(path: &Path, user: &str) -> Result<(), TestkitError> {
    let (cmd, shown) = command(
        None,
        Path::new("chown"),
        &[OsStr::new(user), path.as_os_str()],
    );
    run(cmd, shown).await.map(|_| ())
}

async fn connect(url: &str) -> Result<PgConnection, TestkitError> {
    PgConnection::connect(url)
        .await
        .map_err(|source| TestkitError::Postgres {
            url: redact(url),
            operation: "connect".to_string(),
            source,
        })
}

/// `url` with its database (path) replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String, TestkitError> {
    let mut u = url::Url::parse(url).map_err(|e| TestkitError::InvalidUrl {
        url: redact(url),
        reason: e.to_string(),
    })?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}

/// `url` with any password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_and_redacts() {
        assert_eq!(
            with_database(
                "postgres://postgres@127.0.0.1:15432/postgres?sslmode=disable",
                "x"
            )
            .unwrap(),
            "postgres://postgres@127.0.0.1:15432/x?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://u:secret@h:1/db"),
            "postgres://u:***@h:1/db"
        );
    }
}
