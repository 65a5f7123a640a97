use callsync_runtime::Secret;
use serde::Deserialize;

use crate::config::RateLimitOverride;

/// Which Transactions API endpoint the credentials are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvocaRole {
    Network,
    Advertiser,
    Affiliate,
}

impl InvocaRole {
    pub fn path(self) -> &'static str {
        match self {
            InvocaRole::Network => "networks",
            InvocaRole::Advertiser => "advertisers",
            InvocaRole::Affiliate => "affiliates",
        }
    }
}

/// One Invoca account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocaAccount {
    /// callsync's account id.
    pub account: String,
    #[serde(default = "default_role")]
    pub role: InvocaRole,
    /// The network/advertiser/affiliate id in the URL.
    pub role_id: String,
    /// Sent raw as `Authorization: <token>` (no scheme word).
    pub token: Secret,
    /// `https://{vanity}.invoca.net`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Rows per request (max 4000).
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// The API user's time zone (IANA), in which `from`/`to` dates are read.
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub rate_limit: RateLimitOverride,
}

fn default_role() -> InvocaRole {
    InvocaRole::Network
}
fn default_base_url() -> String {
    "https://invoca.net".to_string()
}
fn default_api_version() -> String {
    "2020-10-01".to_string()
}
fn default_limit() -> u32 {
    1000
}
