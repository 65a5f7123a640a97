use callsync_runtime::Secret;
use serde::Deserialize;

use crate::config::RateLimitOverride;

/// One CallRail account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRailAccount {
    /// CallRail's account id (`ACC…`), also callsync's account id.
    pub account: String,
    pub api_key: Secret,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Rows per page (max 250).
    #[serde(default = "default_per_page")]
    pub per_page: u32,
    /// Use relative pagination (`relative_pagination=true`, `has_next_page`).
    #[serde(default)]
    pub relative_pagination: bool,
    /// Zone of `start_date`/`end_date` (IANA), default UTC.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Webhook signing key of the company (for `Signature` checks).
    #[serde(default)]
    pub signing_key: Option<Secret>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub rate_limit: RateLimitOverride,
}

fn default_base_url() -> String {
    "https://api.callrail.com/v3".to_string()
}
fn default_per_page() -> u32 {
    250
}
