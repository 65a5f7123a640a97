use callsync_runtime::Secret;
use serde::Deserialize;

use crate::config::RateLimitOverride;

/// One TrackDrive account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackDriveAccount {
    /// callsync's account id (the subdomain is a good choice).
    pub account: String,
    /// `{subdomain}.trackdrive.com`; ignored when `base_url` is set.
    #[serde(default)]
    pub subdomain: Option<String>,
    /// Overrides `https://{subdomain}.trackdrive.com/api/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    pub public_key: String,
    pub private_key: Secret,
    #[serde(default = "default_per_page")]
    pub per_page: u32,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub rate_limit: RateLimitOverride,
}

impl TrackDriveAccount {
    pub fn api_base(&self) -> Option<String> {
        match (&self.base_url, &self.subdomain) {
            (Some(b), _) => Some(b.trim_end_matches('/').to_string()),
            (None, Some(s)) => Some(format!("https://{s}.trackdrive.com/api/v1")),
            (None, None) => None,
        }
    }
}

fn default_per_page() -> u32 {
    100
}
