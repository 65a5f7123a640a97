//! The `callsync` binary: CLI, configuration and role wiring.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use callsync::cli::{self, BackfillArgs, ConfigCheckArgs, EncryptArgs, SimulateArgs, SyncArgs};
use callsync::config::{CallsyncConfig, LogFormat};
use callsync::demo::{run_demo, DemoArgs};
use callsync::ops;
use callsync::role_health::{RoleFailed, RoleFailurePolicy};
use callsync::roles::{run_roles_with, Role, RunOptions};
use callsync::scheduler::TriggerRequest;
use callsync_runtime::{ensure_catalogue, KafkaClientFactory, Shutdown};
use callsync_sinks::row_security::{self, Account};

#[derive(Debug, Parser)]
#[command(
    name = "callsync",
    version,
    about = "Keeps call-tracking data complete, deduplicated and current in Kafka and Postgres"
)]
struct Cli {
    /// The TOML config file (overridden by CALLSYNC__SECTION__KEY variables).
    #[arg(long, short, global = true, env = "CALLSYNC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run roles until SIGTERM/SIGINT (default: all of them). Exit code: 0 after a clean
    /// stop, 1 when the roles could not start, 11-15 when a role failed (connector,
    /// processor, sink, scheduler, api).
    Run {
        /// Comma-separated roles to run in this process.
        #[arg(long, value_delimiter = ',', default_values_t = Role::ALL.to_vec())]
        roles: Vec<Role>,
        /// When one role fails: stop the others and exit (for a supervisor to restart), or
        /// keep them running with `/readyz` answering 503 until the process is restarted.
        #[arg(long, value_enum, default_value_t = RoleFailurePolicy::StopAll, env = "CALLSYNC_ON_ROLE_FAILURE")]
        on_role_failure: RoleFailurePolicy,
    },
    /// Check a config (file + CALLSYNC__ environment) and print its effective settings.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage callsync's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Manage the sink's database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Run an incremental or full sync of one provider account here, with a progress bar.
    Sync(SyncArgs),
    /// Backfill a date range of one provider account here, with a progress bar (resumable).
    Backfill(BackfillArgs),
    /// Encrypted config values (`enc:`).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Serve the provider simulator (fake Retreaver, Ringba, Invoca, CallRail, TrackDrive APIs).
    Simulate(SimulateArgs),
    /// The whole pipeline in this process with nothing installed: in-process Kafka, the
    /// simulator, every role and SQLite; ends with a summary.
    Demo(DemoArgs),
    /// Reset a consumer group's offsets (by time, offset or shift; dry run available).
    Replay(ops::ReplayArgs),
    /// The sink's offsets held in the database.
    Sink {
        #[command(subcommand)]
        command: SinkCommand,
    },
    /// Lag per group and partition, last syncs, DLQ counts, provider health.
    Status(ops::StatusArgs),
    /// List or redrive dead-lettered records.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Decode a topic's records to JSON lines.
    Tail(ops::TailArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load and validate the config as `run` would; print the effective settings with
    /// secrets redacted. Exit code 1, naming the key, when it is not valid.
    Check(ConfigCheckArgs),
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Read a value on stdin and print its `enc:` form (key from CALLSYNC_SECRET_KEY).
    Encrypt(EncryptArgs),
    /// Print a new random API token (stdout) and its `[[api.tokens]]` table (stderr).
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Who will hold the token (logs name it).
    #[arg(long, default_value = "ops")]
    name: String,
    /// Comma-separated scopes: read, operate.
    #[arg(long, value_delimiter = ',', default_value = "read")]
    scopes: Vec<TokenScope>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TokenScope {
    Read,
    Operate,
}

#[derive(Debug, Subcommand)]
enum SinkCommand {
    /// Move the sink's offsets back to a time; re-applying is harmless (version guard).
    Rewind(ops::SinkRewindArgs),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show dead-lettered records.
    List(ops::DlqListArgs),
    /// Re-inject dead-lettered records into calls.raw, exactly once.
    Redrive(ops::DlqRedriveArgs),
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Apply the sink's migrations (also done when the sink starts); with
    /// `[sink] row_level_security = true`, also enable and force row-level security.
    Migrate,
    /// Let an existing Postgres role read the calls of some accounts, and nothing else
    /// (needs row-level security enforced; see docs/security.md).
    GrantReader(ReaderArgs),
    /// Take accounts back from a reader role (all of them, and its access, without --account).
    RevokeReader(RevokeReaderArgs),
}

#[derive(Debug, clap::Args)]
struct ReaderArgs {
    /// The Postgres role (create it first: CREATE ROLE name LOGIN PASSWORD '...').
    role: String,
    /// retreaver, ringba, invoca, callrail or trackdrive.
    #[arg(long)]
    provider: callsync_schemas::Provider,
    /// An account id of that provider (repeat for several).
    #[arg(long = "account", required = true)]
    accounts: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct RevokeReaderArgs {
    role: String,
    #[arg(long, requires = "accounts")]
    provider: Option<callsync_schemas::Provider>,
    #[arg(long = "account", requires = "provider")]
    accounts: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the topics that are missing and report how existing ones differ.
    Ensure {
        /// How long to wait for the cluster.
        #[arg(long, default_value = "30s", value_parser = humantime_secs)]
        timeout: Duration,
    },
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let digits = s.strip_suffix('s').unwrap_or(s);
    digits
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("expected seconds like `30s`, got {s:?}"))
}

fn main() -> ExitCode {
    // before the runtime starts any thread: arenas are handed out as threads first allocate
    if let Err(e) = tune_malloc() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Dropping the runtime would wait for every blocking task, and a thread stuck in a
    // librdkafka call that never returns (the processor's: ProcessorError::Stuck; a connector
    // sync's: StoreError::Stuck) would then keep the process alive forever instead of letting
    // its supervisor restart it.
    runtime.shutdown_timeout(Duration::from_secs(10));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code_of(&e)
        }
    }
}

/// A failed role's own code (11-15), else 1.
fn exit_code_of(error: &anyhow::Error) -> ExitCode {
    match error.downcast_ref::<RoleFailed>() {
        Some(failed) => ExitCode::from(failed.role.exit_code()),
        None => ExitCode::FAILURE,
    }
}

/// Bounds what glibc's malloc keeps resident beyond what callsync holds.
///
/// `callsync run` has ~50 threads (tokio workers, blocking pollers, librdkafka's threads of
/// five clients). glibc gives threads their own arenas, up to 8 per core, and each arena
/// keeps the memory freed into it for its own threads: through a 1M-call backfill with every
/// role, the process held 431 MiB with the defaults and 359 MiB with 2 arenas
/// (docs/benchmarks.md). A fixed mmap threshold also stops glibc's dynamic one from rising
/// to 32 MiB after the first large free, so the large buffers that come and go (fetched and
/// decompressed Kafka batches, provider pages, sink batches, hash tables while they grow)
/// are mapped and unmapped instead of being carved from, and fragmenting, an arena.
///
/// And glibc gives the free memory inside its heaps back only when asked: a thread calls
/// `malloc_trim` every `CALLSYNC_MALLOC_TRIM_SECS` (default 10; 0: never), so the freed
/// batches and buffers of one burst do not stay resident until the next.
///
/// Each knob is left alone when its glibc variable (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`) is set, so an operator can still choose.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() -> Result<(), String> {
    /// Malloc arenas for the whole process (glibc's default: 8 per core).
    const MALLOC_ARENAS: libc::c_int = 2;
    /// Allocations from this size up get their own mapping, returned to the system when freed.
    const MALLOC_MMAP_THRESHOLD: libc::c_int = 256 * 1024;
    let knobs = [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, MALLOC_ARENAS),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MALLOC_MMAP_THRESHOLD,
        ),
    ];
    for (variable, param, value) in knobs {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt only sets a parameter of glibc's allocator (it takes the arena
            // locks itself); called once at startup, before other threads exist
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
    let trim_setting = std::env::var("CALLSYNC_MALLOC_TRIM_SECS").ok();
    if let Some(period) = malloc_trim_period(trim_setting.as_deref())? {
        let spawned = std::thread::Builder::new()
            .name("callsync-malloc-trim".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                // SAFETY: malloc_trim takes each arena's lock itself; it only returns free pages
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = spawned {
            eprintln!("warning: starting the malloc trim thread: {e}");
        }
    }
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() -> Result<(), String> {
    Ok(())
}

/// The period of `malloc_trim` from `CALLSYNC_MALLOC_TRIM_SECS` (unset: 10 s; `0`: never).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn malloc_trim_period(setting: Option<&str>) -> Result<Option<Duration>, String> {
    let secs = match setting {
        None => 10,
        Some(value) => value.trim().parse::<u64>().map_err(|_| {
            format!("CALLSYNC_MALLOC_TRIM_SECS={value:?}: expected whole seconds (0 turns trimming off)")
        })?,
    };
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // install the metrics recorder before anything records
    let _ = callsync_runtime::metrics::prometheus();
    let config_path = cli.config.as_deref();
    match cli.command {
        Command::Run {
            roles,
            on_role_failure,
        } => {
            let config = load_config(config_path)?;
            let shutdown = Shutdown::new();
            shutdown
                .listen_for_signals()
                .context("installing the SIGTERM/SIGINT handlers")?;
            let options = RunOptions {
                on_role_failure,
                ..RunOptions::default()
            };
            run_roles_with(&config, &roles, shutdown, options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => {
            cli::config_check(config_path, &args, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Db {
            command: DbCommand::Migrate,
        } => {
            let config = load_config(config_path)?;
            let sink = config
                .sink
                .as_ref()
                .context("`db migrate` needs the `sink.database_url` key")?;
            let store = callsync_sinks::connect_store(sink)
                .await
                .context("connecting to the sink's database")?;
            store.migrate().await.context("applying migrations")?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Db {
            command: DbCommand::GrantReader(args),
        } => {
            let config = load_config(config_path)?;
            let pool = postgres_pool(&config, "db grant-reader").await?;
            let accounts: Vec<Account> = args
                .accounts
                .iter()
                .map(|a| Account {
                    provider: args.provider.as_str().to_string(),
                    account_id: a.clone(),
                })
                .collect();
            let granted = row_security::grant_reader(&pool, &args.role, &accounts).await?;
            println!(
                "role {:?} reads the calls of: {}",
                args.role,
                list(&granted)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Db {
            command: DbCommand::RevokeReader(args),
        } => {
            let config = load_config(config_path)?;
            let pool = postgres_pool(&config, "db revoke-reader").await?;
            let accounts: Vec<Account> = args
                .accounts
                .iter()
                .map(|a| Account {
                    provider: args
                        .provider
                        .map(|p| p.as_str())
                        .unwrap_or_default()
                        .to_string(),
                    account_id: a.clone(),
                })
                .collect();
            let left = row_security::revoke_reader(&pool, &args.role, &accounts).await?;
            println!("role {:?} reads the calls of: {}", args.role, list(&left));
            Ok(ExitCode::SUCCESS)
        }
        Command::Secrets {
            command: SecretsCommand::Token(args),
        } => {
            let token = callsync::api::auth::generate_token();
            let scopes: Vec<&str> = args
                .scopes
                .iter()
                .map(|s| match s {
                    TokenScope::Read => "\"read\"",
                    TokenScope::Operate => "\"operate\"",
                })
                .collect();
            eprintln!("the token (give it to {:?}; it is shown once):", args.name);
            println!("{}", token.expose());
            eprintln!(
                "\nits table for the config file:\n[[api.tokens]]\nname = {:?}\nsha256 = \"{}\"\nscopes = [{}]",
                args.name,
                callsync::api::auth::token_sha256_hex(token.expose()),
                scopes.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics {
            command: TopicsCommand::Ensure { timeout },
        } => {
            let config = load_config(config_path)?;
            let factory = KafkaClientFactory::new(config.kafka.clone());
            let report = ensure_catalogue(&factory, &config.topics.catalogue_options(), timeout)
                .await
                .with_context(|| {
                    format!(
                        "ensuring topics on Kafka at {}",
                        config.kafka.bootstrap_servers
                    )
                })?;
            print!("{report}");
            Ok(if report.differing() > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Sync(args) => {
            let config = load_config(config_path)?;
            let trigger = TriggerRequest::from(&args);
            run_sync(&config, trigger, args.enqueue).await
        }
        Command::Backfill(args) => {
            let config = load_config(config_path)?;
            let trigger = TriggerRequest::from(&args);
            run_sync(&config, trigger, args.enqueue).await
        }
        Command::Secrets {
            command: SecretsCommand::Encrypt(args),
        } => {
            cli::secrets_encrypt(&args, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            init_plain_tracing("info");
            let shutdown = signal_shutdown()?;
            cli::simulate(&args, shutdown, &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            init_plain_tracing("error,rdkafka=off");
            let summary = run_demo(&args, &mut std::io::stdout()).await?;
            Ok(if summary.matches_truth {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Replay(args) => {
            let (_, factory) = ops_setup(config_path)?;
            ops::run_replay(&args, &factory, &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sink {
            command: SinkCommand::Rewind(mut args),
        } => {
            let (config, factory) = ops_setup(config_path)?;
            if let Some(given) = &args.topic {
                let named = ops::TopicName::resolve(factory.settings(), given);
                eprintln!("sink rewind: {named}");
                args.topic = Some(named.full);
            }
            let sink = config
                .sink
                .as_ref()
                .context("`sink rewind` needs the `sink.database_url` key")?;
            let pool = sqlx::PgPool::connect(sink.database_url.expose())
                .await
                .context("connecting to the sink's Postgres database")?;
            let mut args = args;
            args.group.get_or_insert_with(|| sink.group.clone());
            if args.topic.is_none() {
                args.topic.clone_from(&sink.topic);
            }
            ops::run_sink_rewind(&args, &factory, &pool, &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(mut args) => {
            let (config, factory) = ops_setup(config_path)?;
            args.own_groups = own_groups(&config);
            let sink = optional_sink_database(&config, &factory).await;
            ops::run_status_with(&args, &factory, sink.as_ref(), &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq {
            command: DlqCommand::List(args),
        } => {
            let (config, factory) = ops_setup(config_path)?;
            let sink = optional_sink_database(&config, &factory).await;
            ops::run_dlq_list_with(&args, &factory, sink.as_ref(), &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq {
            command: DlqCommand::Redrive(args),
        } => {
            let (config, factory) = ops_setup(config_path)?;
            let sink = match &config.sink {
                Some(sink) => Some(
                    ops::SinkDatabase::connect(sink, &factory)
                        .await
                        .context("`dlq redrive` re-applies the sink's dead letters")?,
                ),
                None => None,
            };
            let connectors = callsync_connectors::Connectors::from_config(
                &config.connectors,
                &Shutdown::new(),
            )
            .context(
                "`dlq redrive` maps connector dead letters again with the `connectors` accounts",
            )?;
            let targets = ops::RedriveTargets {
                sink,
                connectors: Some(std::sync::Arc::new(connectors)),
            };
            ops::run_dlq_redrive_with(&args, &factory, &targets, &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail(args) => {
            let (config, factory) = ops_setup(config_path)?;
            let registry = match &config.schema_registry {
                Some(r) => Some(std::sync::Arc::new(
                    callsync_schemas::SchemaRegistryClient::new(&r.url)
                        .context("the `schema_registry.url` key")?,
                )),
                None => None,
            };
            ops::run_tail(&args, &factory, registry, &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_sync(
    config: &CallsyncConfig,
    trigger: TriggerRequest,
    enqueue: bool,
) -> anyhow::Result<ExitCode> {
    let shutdown = signal_shutdown()?;
    cli::run_sync_command(config, trigger, enqueue, shutdown, &mut std::io::stdout()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The consumer groups of callsync's roles as `config` names them.
fn own_groups(config: &CallsyncConfig) -> Vec<String> {
    let mut groups = vec![config.processor.group_id.clone()];
    groups.push(
        config
            .sink
            .as_ref()
            .map_or_else(|| "callsync-sink".to_string(), |sink| sink.group.clone()),
    );
    groups.push(config.workers.group_id.clone());
    groups
}

fn signal_shutdown() -> anyhow::Result<Shutdown> {
    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .context("installing the SIGTERM/SIGINT handlers")?;
    Ok(shutdown)
}

/// The sink's database when the config names one; a warning (and None) when it cannot be
/// reached, so `status` and `dlq list` still show what Kafka holds.
async fn optional_sink_database(
    config: &CallsyncConfig,
    factory: &KafkaClientFactory,
) -> Option<ops::SinkDatabase> {
    let sink = config.sink.as_ref()?;
    match ops::SinkDatabase::connect(sink, factory).await {
        Ok(db) => Some(db),
        Err(e) => {
            eprintln!("warning: the sink's database is not shown: {e}");
            None
        }
    }
}

fn ops_setup(
    path: Option<&std::path::Path>,
) -> anyhow::Result<(CallsyncConfig, KafkaClientFactory)> {
    let config = load_config(path)?;
    let factory = KafkaClientFactory::new(config.kafka.clone());
    Ok((config, factory))
}

/// The sink's database as a Postgres pool (row-level security needs Postgres).
async fn postgres_pool(config: &CallsyncConfig, command: &str) -> anyhow::Result<sqlx::PgPool> {
    let sink = config
        .sink
        .as_ref()
        .with_context(|| format!("`{command}` needs the `sink.database_url` key"))?;
    let url = sink.database_url.expose();
    if !url.starts_with("postgres") {
        anyhow::bail!("`{command}` needs Postgres: row-level security does not exist in SQLite");
    }
    sqlx::PgPool::connect(url)
        .await
        .context("connecting to the sink's Postgres database")
}

fn list(accounts: &[Account]) -> String {
    if accounts.is_empty() {
        return "nothing".to_string();
    }
    accounts
        .iter()
        .map(|a| format!("{}/{}", a.provider, a.account_id))
        .collect::<Vec<_>>()
        .join(", ")
}

fn init_plain_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<CallsyncConfig> {
    let config = CallsyncConfig::load(path)?;
    init_tracing(&config);
    Ok(config)
}

fn init_tracing(config: &CallsyncConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    // colours only on a terminal: log files, journald and `docker logs` get plain text
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
