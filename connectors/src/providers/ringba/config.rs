use callsync_runtime::Secret;
use serde::Deserialize;

use crate::config::RateLimitOverride;

/// One Ringba account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingbaAccount {
    /// Ringba's account id (`RA…`), also callsync's account id.
    pub account: String,
    /// API access token, sent as `Authorization: Token {token}`.
    pub token: Secret,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Rows per request (max 1000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// The account's time zone (IANA): pixel tokens render local times without an offset
    /// (`11/26/2025 9:48:06 PM`), read in this zone. Default UTC.
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub rate_limit: RateLimitOverride,
}

fn default_base_url() -> String {
    "https://api.ringba.com/v2".to_string()
}
fn default_page_size() -> u32 {
    1000
}
