//! docker-compose.yml, checked without Docker: every callsync service's exact command and
//! environment run as the real binary against the test broker and Postgres.
//!
//! What is rewritten, and only that: `kafka:9092` becomes the test broker; the database URL's
//! host and port become the test server's, and its role and database get a unique name (the
//! role and database are created by `deploy/postgres/10-callsync.sql` itself, renamed, so the
//! sink connects as a non-superuser owner as in compose); the listen port becomes a free one.
//! On a broker shared by other tests the run also gets a unique topic prefix and unique group
//! names (added variables; compose sets neither).
//!
//! Then: the one-shot services (`topics`, `migrate`) must exit 0, each long-running service is
//! started as many times as its `deploy.replicas`, the api's healthcheck command must pass and
//! its `/readyz` answer 200, `callsync status` must show every replica in its group, no
//! process may log an error, and each must exit 0 on SIGTERM. On the compose file before this
//! change the `callsync` service stopped at once with "unknown field `postgres`".
//!
//! Needs `KAFKA_BOOTSTRAP` and Postgres (skipped without them outside CI, fails under CI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml_ng::Value;
use sha2::Digest as _;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One callsync service of the compose file.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
    replicas: usize,
    healthcheck: Option<Vec<String>>,
}

impl Service {
    fn is_one_shot(&self) -> bool {
        self.command.first().map(String::as_str) != Some("run")
    }

    /// The roles of a `run` service.
    fn roles(&self) -> Vec<String> {
        let at = self.command.iter().position(|a| a == "--roles");
        at.and_then(|i| self.command.get(i + 1))
            .map(|r| r.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    }
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The services built from this repository (`image: callsync:dev`), merge keys applied.
fn callsync_services() -> Vec<Service> {
    let text = std::fs::read_to_string(repo_path("docker-compose.yml")).expect("compose file");
    let mut compose: Value = serde_yaml_ng::from_str(&text).expect("compose file is YAML");
    compose.apply_merge().expect("merge keys");
    let services = compose["services"].as_mapping().expect("services");
    let mut out = Vec::new();
    for (name, service) in services {
        if service["image"].as_str() != Some("callsync:dev") {
            continue;
        }
        let mut service = service.clone();
        // `environment: {<<: [...]}` nests one level of merges
        service["environment"].apply_merge().expect("merge keys");
        let environment = service["environment"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let value = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => return None,
                        };
                        Some((k.as_str()?.to_string(), value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Service {
            name: name.as_str().expect("service name").to_string(),
            command: strings(&service["command"]),
            environment,
            replicas: service["deploy"]["replicas"].as_u64().unwrap_or(1) as usize,
            healthcheck: service["healthcheck"]["test"]
                .as_sequence()
                .map(|_| strings(&service["healthcheck"]["test"])),
        });
    }
    out
}

/// The token this test gives compose through `CALLSYNC_API_TOKENS` (as a user's `.env` would).
const TEST_TOKEN: &str = "compose-test-token-0123456789abcdef";

/// Compose's variable interpolation of one value: `${NAME}`, `${NAME:-default}`,
/// `${NAME-default}`, `${NAME:?error}` and `$$`, with `vars` as the shell environment / `.env`.
fn interpolate(value: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let Some(body) = rest.strip_prefix('{') else {
            return Err(format!("unbraced variable in {value:?}"));
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {value:?}"))?;
        let (expr, after) = (&body[..end], &body[end + 1..]);
        let name_end = expr
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len());
        let (name, op) = expr.split_at(name_end);
        let set = vars.get(name);
        let replaced = match (op.get(..2), op.get(..1)) {
            (Some(":-"), _) => set
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or(op[2..].into()),
            (Some(":?"), _) => match set.filter(|v| !v.is_empty()) {
                Some(v) => v.clone(),
                None => return Err(format!("{name}: {}", &op[2..])),
            },
            (_, Some("-")) => set.cloned().unwrap_or(op[1..].into()),
            (_, None) => set.cloned().unwrap_or_default(),
            _ => return Err(format!("unsupported interpolation ${{{expr}}}")),
        };
        out.push_str(&replaced);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

#[test]
fn interpolation_follows_compose() {
    let vars: BTreeMap<String, String> = [("SET", "v"), ("EMPTY", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let i = |s: &str| interpolate(s, &vars);
    assert_eq!(i("a${SET}b").as_deref(), Ok("avb"));
    assert_eq!(i("${UNSET:-[]}").as_deref(), Ok("[]"));
    assert_eq!(i("${EMPTY:-d}").as_deref(), Ok("d"));
    assert_eq!(i("${EMPTY-d}").as_deref(), Ok(""));
    assert_eq!(i("$$x").as_deref(), Ok("$x"));
    assert!(i("${UNSET:?needed}").is_err());
}

/// The test's rewrites of one variable's value.
struct Rewrites {
    bootstrap: String,
    database_url: String,
    /// The private control API (compose: 8081).
    api_port: u16,
    /// The public webhook listener (compose: 8080).
    hooks_port: u16,
}

impl Rewrites {
    fn apply(&self, key: &str, value: &str) -> String {
        match key {
            "CALLSYNC__KAFKA__BOOTSTRAP_SERVERS" => {
                assert_eq!(
                    value, "kafka:9092",
                    "compose points callsync at the kafka service"
                );
                self.bootstrap.clone()
            }
            "CALLSYNC__SINK__DATABASE_URL" => {
                assert_eq!(
                    value, "postgres://callsync:callsync@postgres:5432/callsync",
                    "compose connects as the role of deploy/postgres/10-callsync.sql"
                );
                self.database_url.clone()
            }
            "CALLSYNC__API__LISTEN" | "CALLSYNC__WEBHOOKS__LISTEN" => {
                let (host, _) = value.rsplit_once(':').expect("host:port");
                assert_eq!(
                    host, "0.0.0.0",
                    "the listeners listen on every interface in a container"
                );
                let port = if key == "CALLSYNC__API__LISTEN" {
                    self.api_port
                } else {
                    self.hooks_port
                };
                format!("{host}:{port}")
            }
            _ => value.to_string(),
        }
    }
}

/// A `callsync` process of one service; killed on drop.
struct Running {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Running {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("{} exited with {status}: {}", self.label, self.log_text());
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{} did not stop on SIGTERM: {}",
                    self.label,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn callsync(env: &BTreeMap<String, String>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsync"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLSYNC") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG").envs(env).stdin(Stdio::null());
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Members of `group` as `callsync status --json` shows them.
fn members(status: &Json, group: &str) -> usize {
    status["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["group"] == group))
        .and_then(|g| g["members"].as_array())
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compose_service_starts_with_its_exact_command_and_environment() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let services = callsync_services();

    // the shape ops rely on
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let run_roles: Vec<String> = services.iter().flat_map(Service::roles).collect();
    for role in ["api", "scheduler", "connector", "processor", "sink"] {
        assert!(
            run_roles.iter().any(|r| r == role),
            "no service runs {role}: {names:?}"
        );
    }
    for scaled in ["connector", "processor", "sink"] {
        let service = services.iter().find(|s| s.name == scaled).expect(scaled);
        assert!(
            service.replicas >= 2,
            "{scaled} runs two processes: {service:?}"
        );
    }
    let api = services
        .iter()
        .find(|s| s.roles().iter().any(|r| r == "api"))
        .expect("api service");
    assert!(
        api.healthcheck.is_some(),
        "the api service has a healthcheck"
    );

    // the sink's role and database, made by the init script compose mounts (renamed)
    let unique = format!(
        "callsync_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let init = std::fs::read_to_string(repo_path("deploy/postgres/10-callsync.sql"))
        .expect("init script")
        .replace("callsync", &unique);
    let admin = sqlx::PgPool::connect(db.admin_url()).await.expect("admin");
    for statement in init
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
        .filter(|s| !s.trim().is_empty())
    {
        sqlx::query(statement)
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("init script: {statement}: {e}"));
    }
    let server = reqwest::Url::parse(db.admin_url()).expect("admin URL");
    let rewrites = Rewrites {
        bootstrap: kafka.bootstrap().to_string(),
        database_url: format!(
            "postgres://{unique}:{unique}@{}:{}/{unique}",
            server.host_str().expect("host"),
            server.port().unwrap_or(5432)
        ),
        api_port: free_port(),
        hooks_port: free_port(),
    };
    // isolation on the shared broker (compose sets none of these)
    let prefix = format!("{}.", kafka.unique_topic("compose"));
    let isolation: BTreeMap<String, String> = [
        ("CALLSYNC__KAFKA__TOPIC_PREFIX", prefix.clone()),
        (
            "CALLSYNC__PROCESSOR__GROUP_ID",
            format!("{prefix}processor"),
        ),
        ("CALLSYNC__SINK__GROUP", format!("{prefix}sink")),
        ("CALLSYNC__WORKERS__GROUP_ID", format!("{prefix}workers")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // what a user's `.env` holds: the control API's token (its SHA-256, as docs/security.md says)
    let dotenv: BTreeMap<String, String> = [(
        "CALLSYNC_API_TOKENS".to_string(),
        format!(
            "[{{name=\"ops\",sha256=\"{:x}\",scopes=[\"read\",\"operate\"]}}]",
            sha2::Sha256::digest(TEST_TOKEN.as_bytes())
        ),
    )]
    .into_iter()
    .collect();
    let env_of = |service: &Service| -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = service
            .environment
            .iter()
            .map(|(k, v)| {
                let v = interpolate(v, &dotenv).unwrap_or_else(|e| panic!("{k}: {e}"));
                (k.clone(), rewrites.apply(k, &v))
            })
            .collect();
        env.extend(isolation.clone());
        env
    };
    let dir = tempfile::tempdir().expect("dir");

    // one-shot services first, as compose orders them
    for service in services.iter().filter(|s| s.is_one_shot()) {
        let out = callsync(&env_of(service))
            .args(&service.command)
            .output()
            .expect("run a one-shot service");
        assert!(
            out.status.success(),
            "service {} ({:?}) failed with {}: {}{}",
            service.name,
            service.command,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // every replica of every long-running service
    let mut running = Vec::new();
    for service in services.iter().filter(|s| !s.is_one_shot()) {
        for replica in 1..=service.replicas {
            let label = format!("{}-{replica}", service.name);
            let log = dir.path().join(format!("{label}.log"));
            let child = callsync(&env_of(service))
                .args(&service.command)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("start a service");
            running.push(Running {
                label,
                child: Some(child),
                log,
            });
        }
    }

    // the api's healthcheck as compose runs it (in the container, on the public listener, port
    // rewritten), and /readyz on the private one with the token of `.env`
    let check: Vec<String> = api.healthcheck.clone().expect("healthcheck")[1..]
        .iter()
        .map(|a| a.replace(":8080", &format!(":{}", rewrites.hooks_port)))
        .collect();
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TEST_TOKEN}").parse().expect("header"),
    );
    let http = reqwest::Client::builder()
        .default_headers(auth)
        .build()
        .expect("http");
    let started = Instant::now();
    loop {
        let healthy = Command::new(&check[0])
            .args(&check[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let ready = http
            .get(format!("http://127.0.0.1:{}/readyz", rewrites.api_port))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy && ready {
            break;
        }
        for r in running.iter_mut() {
            r.assert_running();
        }
        assert!(
            started.elapsed() < STARTUP_TIMEOUT,
            "the api service's healthcheck {check:?} (healthy: {healthy}) and /readyz (ready: {ready}) did not pass"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // the control API takes no call without the token
    let anonymous = reqwest::get(format!("http://127.0.0.1:{}/readyz", rewrites.api_port))
        .await
        .expect("readyz");
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);

    // every replica joined its group
    let status_env = env_of(
        services
            .iter()
            .find(|s| s.name == "processor")
            .expect("processor"),
    );
    let expected = [
        (format!("{prefix}processor"), "processor"),
        (format!("{prefix}sink"), "sink"),
        (format!("{prefix}workers"), "connector"),
    ];
    let started = Instant::now();
    loop {
        let out = callsync(&status_env)
            .args(["status", "--json"])
            .output()
            .expect("callsync status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: Json = serde_json::from_slice(&out.stdout).expect("status JSON");
        let joined = expected.iter().all(|(group, service)| {
            let replicas = services
                .iter()
                .find(|s| s.name == *service)
                .expect("service")
                .replicas;
            members(&status, group) == replicas
        });
        if joined {
            break;
        }
        for r in running.iter_mut() {
            r.assert_running();
        }
        assert!(
            started.elapsed() < STARTUP_TIMEOUT,
            "not every replica joined its group: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // no startup error anywhere, and a clean stop
    for mut r in running {
        r.assert_running();
        let log = r.log_text();
        assert!(
            !log.contains("\"level\":\"ERROR\""),
            "{} logged an error: {log}",
            r.label
        );
        let label = r.label.clone();
        let status = r.terminate();
        assert!(status.success(), "{label} stopped with {status}");
    }

    admin.close().await;
    let admin = sqlx::PgPool::connect(db.admin_url()).await.expect("admin");
    for cleanup in [
        format!("DROP DATABASE IF EXISTS \"{unique}\" WITH (FORCE)"),
        format!("DROP ROLE IF EXISTS \"{unique}\""),
    ] {
        sqlx::query(&cleanup)
            .execute(&admin)
            .await
            .expect("cleanup");
    }
    let _ = db.drop_database().await;
}
