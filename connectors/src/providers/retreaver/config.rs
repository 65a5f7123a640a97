use callsync_runtime::Secret;
use serde::Deserialize;

use crate::config::RateLimitOverride;

/// One Retreaver account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetreaverAccount {
    /// callsync's account id (the company id is a good choice).
    pub account: String,
    pub api_key: Secret,
    /// Sent as `company_id` (needed when the key sees several companies).
    #[serde(default)]
    pub company_id: Option<String>,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// `v1` … `v4`; v2 is the documented default.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default = "default_per_page")]
    pub per_page: u32,
    /// Send `updated_at_start`/`updated_at_end` on updated scans (only partly documented);
    /// off: page `sort_by=updated_at` (forced newest first) and stop at the window start.
    #[serde(default)]
    pub updated_at_filter: bool,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub rate_limit: RateLimitOverride,
}

fn default_base_url() -> String {
    "https://api.retreaver.com".to_string()
}
fn default_api_version() -> String {
    "v2".to_string()
}
fn default_per_page() -> u32 {
    100
}
