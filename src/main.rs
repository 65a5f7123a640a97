//! The `callsync` binary: CLI, configuration and role wiring.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use callsync::config::{CallsyncConfig, LogFormat};
use callsync::roles::{run_roles, Role};
use callsync_runtime::{ensure_topics, KafkaClientFactory, Shutdown, TopicCatalogue};

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
    /// Run roles until SIGTERM/SIGINT (default: all of them).
    Run {
        /// Comma-separated roles to run in this process.
        #[arg(long, value_delimiter = ',', default_values_t = Role::ALL.to_vec())]
        roles: Vec<Role>,
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
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Apply the sink's migrations (also done when the sink starts).
    Migrate,
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { roles } => {
            let config = load_config(cli.config.as_deref())?;
            let shutdown = Shutdown::new();
            shutdown
                .listen_for_signals()
                .context("installing the SIGTERM/SIGINT handlers")?;
            run_roles(&config, &roles, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Db {
            command: DbCommand::Migrate,
        } => {
            let config = load_config(cli.config.as_deref())?;
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
        Command::Topics {
            command: TopicsCommand::Ensure { timeout },
        } => {
            let config = load_config(cli.config.as_deref())?;
            let factory = KafkaClientFactory::new(config.kafka.clone());
            let admin = factory.admin()?;
            let catalogue = TopicCatalogue::new(&config.kafka, &config.topics.catalogue_options());
            let report = ensure_topics(&admin, &catalogue, timeout)
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
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<CallsyncConfig> {
    let config = CallsyncConfig::load(path)?;
    init_tracing(&config);
    Ok(config)
}

fn init_tracing(config: &CallsyncConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
