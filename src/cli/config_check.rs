//! `callsync config check`: load a config exactly as `callsync run` does (the file, then the
//! `CALLSYNC__...` environment), make every check `run` makes before it starts the roles, and
//! print the effective settings (defaults included) with every secret redacted. A bad config
//! fails naming the key, with exit code 1; nothing is contacted.

use std::io::Write;
use std::path::Path;

use crate::config::{CallsyncConfig, ENV_PREFIX};
use crate::roles::{check_roles_config, Role};

/// `callsync config check`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigCheckArgs {
    /// The roles the config must be able to run (default: all of them).
    #[arg(long, value_delimiter = ',', default_values_t = Role::ALL.to_vec())]
    pub roles: Vec<Role>,
    /// Print only the verdict, not the effective settings.
    #[arg(long)]
    pub quiet: bool,
}

/// Loads and checks the config of `path` plus the environment; writes the verdict and the
/// effective settings to `out`.
pub fn config_check(
    path: Option<&Path>,
    args: &ConfigCheckArgs,
    out: &mut impl Write,
) -> anyhow::Result<CallsyncConfig> {
    let config = CallsyncConfig::load(path)?;
    check_roles_config(&config, &args.roles)?;
    let roles: Vec<&str> = args.roles.iter().map(|r| r.as_str()).collect();
    writeln!(out, "config OK for roles {}", roles.join(","))?;
    if args.quiet {
        return Ok(config);
    }
    let file = path.map_or_else(|| "none".to_string(), |p| p.display().to_string());
    let mut overrides: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with(ENV_PREFIX))
        .collect();
    overrides.sort();
    writeln!(out, "# file: {file}")?;
    writeln!(
        out,
        "# environment overrides: {}",
        if overrides.is_empty() {
            "none".to_string()
        } else {
            overrides.join(", ")
        }
    )?;
    writeln!(
        out,
        "# effective settings, defaults included; secrets are shown as [redacted]"
    )?;
    writeln!(out, "{config:#?}")?;
    Ok(config)
}
