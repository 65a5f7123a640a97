//! CLI commands that are more than a call into another module: `sync`/`backfill` with a
//! progress bar, `secrets encrypt`, `simulate`, `config check`.

pub mod config_check;
pub mod sync;

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use callsync_schemas::Provider;
use callsync_simulator::{RunningSimulator, Simulator, SimulatorConfig};
use serde_json::json;

use crate::secrets::{SecretKey, SECRET_KEY_ENV};

pub use config_check::{config_check, ConfigCheckArgs};
pub use sync::{run_sync_command, BackfillArgs, SyncArgs};

/// `callsync secrets encrypt`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncryptArgs {
    /// Generate a new key, print it on stderr (put it in CALLSYNC_SECRET_KEY) and encrypt
    /// with it.
    #[arg(long)]
    pub generate_key: bool,
}

/// Reads the value from stdin (one line, or all of it when piped) and prints its `enc:` form
/// on stdout. The value is never echoed.
pub fn secrets_encrypt(args: &EncryptArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let key = if args.generate_key {
        let (key, encoded) = SecretKey::generate();
        eprintln!("new key (keep it secret, set it where callsync runs):");
        eprintln!("{SECRET_KEY_ENV}={}", encoded.expose());
        key
    } else {
        SecretKey::from_env().context("encrypting needs the key (or use --generate-key)")?
    };
    let stdin = std::io::stdin();
    let value = if stdin.is_terminal() {
        eprint!("value to encrypt, then Enter: ");
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the value")?;
        line
    } else {
        std::io::read_to_string(stdin.lock()).context("reading the value from stdin")?
    };
    let value = value.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        anyhow::bail!("no value on stdin to encrypt");
    }
    let sealed = key.encrypt(value).context("encrypting")?;
    writeln!(out, "{sealed}")?;
    Ok(())
}

/// `callsync simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Where the simulator listens.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Seed of the generated data set.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A simulator config file (TOML: seed, clock, lifecycle, one table per provider).
    #[arg(long)]
    pub sim_config: Option<PathBuf>,
    /// Simulated "now" at start (default: the wall clock, so `backfill --from` dates line
    /// up with the data); pin it to get the same data set on every run.
    #[arg(long, value_parser = crate::ops::time::datetime_arg)]
    pub clock_start: Option<chrono::DateTime<chrono::Utc>>,
}

/// The simulator config of `args`.
pub fn simulator_config(args: &SimulateArgs) -> anyhow::Result<SimulatorConfig> {
    let mut config = match &args.sim_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<SimulatorConfig>(&text)
                .with_context(|| format!("{} is not a valid simulator config", path.display()))?
        }
        None => SimulatorConfig::default(),
    };
    if args.sim_config.is_none() {
        config.seed = args.seed;
        config.clock.start = chrono::Utc::now();
    }
    if let Some(start) = args.clock_start {
        config.clock.start = start;
    }
    Ok(config)
}

/// The `[connectors]` section (as JSON) that points every account of `sim` at it, with
/// `per_minute` requests per minute per account.
pub fn connectors_for_simulator(
    sim: &RunningSimulator,
    providers: &[Provider],
    per_minute: f64,
) -> serde_json::Value {
    let mut section = json!({});
    for &provider in providers {
        let base = sim.base_url(provider);
        let mut accounts = Vec::new();
        for account in sim.accounts(provider) {
            let Some(info) = sim.account_info(provider, &account) else {
                continue;
            };
            let creds = info.credentials;
            let tz = format!("Etc/GMT{:+}", -(info.utc_offset_minutes / 60));
            let mut a = match provider {
                Provider::Retreaver => {
                    json!({"account": account, "api_key": creds.api_key, "company_id": account, "base_url": base})
                }
                Provider::Ringba => {
                    json!({"account": account, "token": creds.api_key, "base_url": base, "time_zone": tz})
                }
                Provider::Invoca => {
                    json!({"account": account, "role_id": account, "token": creds.api_key, "base_url": base, "time_zone": tz})
                }
                Provider::CallRail => {
                    json!({"account": account, "api_key": creds.api_key, "base_url": base, "time_zone": tz})
                }
                Provider::TrackDrive => {
                    json!({"account": account, "base_url": base, "public_key": creds.api_key, "private_key": creds.api_secret})
                }
            };
            a["rate_limit"] = json!({"per_minute": per_minute});
            if provider == Provider::Invoca {
                a["rate_limit"]["min_incremental_interval_secs"] = json!(0);
            }
            accounts.push(a);
        }
        section[provider.as_str()] = serde_json::Value::Array(accounts);
    }
    section
}

/// Serves the simulator until SIGINT/SIGTERM, after printing its accounts and a `[connectors]`
/// section pointing at it.
pub async fn simulate(
    args: &SimulateArgs,
    shutdown: callsync_runtime::Shutdown,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let config = simulator_config(args)?;
    let sim = Simulator::start_on(config, args.listen)
        .await
        .with_context(|| format!("starting the simulator on {}", args.listen))?;
    writeln!(
        out,
        "provider simulator on {} (admin API: {}/_sim/accounts)",
        sim.root_url(),
        sim.root_url()
    )?;
    let providers = Provider::ALL.to_vec();
    let mut connectors = json!({});
    connectors["connectors"] = connectors_for_simulator(&sim, &providers, 600.0);
    match toml::to_string(&connectors) {
        Ok(text) => {
            writeln!(out, "\n# a [connectors] section for callsync.toml:\n{text}")?;
        }
        Err(e) => tracing::warn!(error = %e, "rendering the connectors section"),
    }
    out.flush()?;
    shutdown.wait().await;
    sim.shutdown().await.context("stopping the simulator")?;
    Ok(())
}
