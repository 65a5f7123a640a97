//! `[webhooks]`: the public listener, its limits and the accounts that may post.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use callsync_schemas::Provider;
use serde::Deserialize;

use super::signature::WebhookAuth;
use crate::api::ListenerLimits;

/// Shortest signing key, HMAC secret or token accepted (characters).
pub const MIN_SECRET_LEN: usize = 16;

/// librdkafka's default `message.max.bytes`: the largest record a producer sends.
pub const KAFKA_DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// `[webhooks]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The public listener: only `/webhooks/*` and `/healthz` (default `127.0.0.1:8080`;
    /// `0.0.0.0:8080` to take webhooks from the internet, behind TLS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Timeouts and connection caps of the public listener.
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Largest body accepted, in bytes (default 512 KiB; at most Kafka's `message.max.bytes`).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The whole body must arrive within this, seconds (default 10; 408 past it).
    #[serde(default = "default_body_read_timeout_secs")]
    pub body_read_timeout_secs: u64,
    /// Sustained requests per second per account, counted once the signature is verified
    /// (default 100).
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: u32,
    /// Burst above the sustained rate per account (default 200).
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Sustained requests per second per client address, before anything else is checked
    /// (default 200: a provider sends the webhooks of all its accounts from a few addresses).
    #[serde(default = "default_per_client_requests_per_second")]
    pub per_client_requests_per_second: u32,
    /// Burst above it per client address (default 400).
    #[serde(default = "default_per_client_burst")]
    pub per_client_burst: u32,
    /// Proxies (exact addresses) whose `X-Forwarded-For` names the client; empty: the peer
    /// address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
    /// Accepted clock difference for signed timestamps, and how long an accepted body is
    /// remembered to refuse its exact replay, seconds (default 300).
    #[serde(default = "default_tolerance_secs")]
    pub timestamp_tolerance_secs: u64,
    /// Bodies remembered for replay detection at most (default 100000; the oldest go first).
    #[serde(default = "default_replay_cache_entries")]
    pub replay_cache_entries: usize,
    /// Longest wait for Kafka's acknowledgement before answering 503, seconds (default 10).
    #[serde(default = "default_produce_timeout_secs")]
    pub produce_timeout_secs: u64,
    /// The accounts that may post, each with its authentication.
    #[serde(default)]
    pub accounts: Vec<WebhookAccountConfig>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: default_listen(),
            limits: ListenerLimits::default(),
            max_body_bytes: default_max_body_bytes(),
            body_read_timeout_secs: default_body_read_timeout_secs(),
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
            per_client_requests_per_second: default_per_client_requests_per_second(),
            per_client_burst: default_per_client_burst(),
            trusted_proxies: Vec::new(),
            timestamp_tolerance_secs: default_tolerance_secs(),
            replay_cache_entries: default_replay_cache_entries(),
            produce_timeout_secs: default_produce_timeout_secs(),
            accounts: Vec::new(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body_bytes() -> usize {
    512 * 1024
}
fn default_body_read_timeout_secs() -> u64 {
    10
}
fn default_requests_per_second() -> u32 {
    100
}
fn default_burst() -> u32 {
    200
}
fn default_per_client_requests_per_second() -> u32 {
    200
}
fn default_per_client_burst() -> u32 {
    400
}
fn default_tolerance_secs() -> u64 {
    300
}
fn default_replay_cache_entries() -> usize {
    100_000
}
fn default_produce_timeout_secs() -> u64 {
    10
}

/// One account allowed to post webhooks.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookAccountConfig {
    pub provider: Provider,
    pub account_id: String,
    #[serde(flatten)]
    pub auth: WebhookAuth,
}

impl WebhookConfig {
    /// Every value out of range, as `(key under [webhooks], problem)`. `message_max_bytes` is
    /// the producer's `message.max.bytes`.
    pub fn problems(&self, message_max_bytes: usize) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .limits
            .problems()
            .into_iter()
            .map(|(k, p)| (format!("limits.{k}"), p))
            .collect();
        if self.max_body_bytes == 0 || self.max_body_bytes > message_max_bytes {
            out.push((
                "max_body_bytes".into(),
                format!(
                    "must be 1 to Kafka's message.max.bytes ({message_max_bytes}; raise it in \
                     [kafka.client_properties] and on the topic to take larger bodies), not {}",
                    self.max_body_bytes
                ),
            ));
        }
        let secs = [
            ("body_read_timeout_secs", self.body_read_timeout_secs, 3600),
            (
                "timestamp_tolerance_secs",
                self.timestamp_tolerance_secs,
                86_400,
            ),
            ("produce_timeout_secs", self.produce_timeout_secs, 3600),
        ];
        for (key, value, max) in secs {
            if !(1..=max).contains(&value) {
                out.push((
                    key.into(),
                    format!("must be 1 to {max} seconds, not {value}"),
                ));
            }
        }
        let needed = self
            .body_read_timeout_secs
            .saturating_add(self.produce_timeout_secs);
        if self.limits.request_timeout_secs <= needed {
            out.push((
                "limits.request_timeout_secs".into(),
                format!(
                    "must exceed body_read_timeout_secs + produce_timeout_secs ({needed}), \
                     so a webhook is answered before the request times out"
                ),
            ));
        }
        let rates = [
            ("requests_per_second", self.requests_per_second),
            ("burst", self.burst),
            (
                "per_client_requests_per_second",
                self.per_client_requests_per_second,
            ),
            ("per_client_burst", self.per_client_burst),
        ];
        for (key, value) in rates {
            if value == 0 {
                out.push((key.into(), "must be at least 1".into()));
            }
        }
        if self.replay_cache_entries == 0 || self.replay_cache_entries > 10_000_000 {
            out.push((
                "replay_cache_entries".into(),
                format!("must be 1 to 10000000, not {}", self.replay_cache_entries),
            ));
        }
        let mut seen = HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let at = format!("accounts[{i}]");
            if account.account_id.trim().is_empty() {
                out.push((format!("{at}.account_id"), "must not be empty".into()));
            }
            if !seen.insert((account.provider, account.account_id.clone())) {
                out.push((
                    format!("{at}.account_id"),
                    format!(
                        "{} account {:?} is listed twice",
                        account.provider, account.account_id
                    ),
                ));
            }
            let (field, secret) = account.auth.secret();
            let len = secret.expose().trim().chars().count();
            if len < MIN_SECRET_LEN {
                out.push((
                    format!("{at}.{field}"),
                    format!(
                        "must be at least {MIN_SECRET_LEN} characters (it is {len}): anyone could \
                         guess a short one; generate one with `openssl rand -hex 32`"
                    ),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> WebhookConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(WebhookConfig::default()
            .problems(KAFKA_DEFAULT_MESSAGE_MAX_BYTES)
            .is_empty());
    }

    #[test]
    fn short_and_empty_secrets_and_duplicates_are_named() {
        let c = config(
            r#"
            [[accounts]]
            provider = "callrail"
            account_id = "A"
            method = "callrail_signature"
            signing_key = ""
            [[accounts]]
            provider = "ringba"
            account_id = "B"
            method = "token"
            token = "short"
            [[accounts]]
            provider = "ringba"
            account_id = "B"
            method = "hmac_sha256"
            secret = "0123456789abcdef"
            "#,
        );
        let keys: Vec<String> = c
            .problems(KAFKA_DEFAULT_MESSAGE_MAX_BYTES)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "accounts[0].signing_key",
                "accounts[1].token",
                "accounts[2].account_id"
            ]
        );
    }

    #[test]
    fn bodies_kafka_would_refuse_and_unanswerable_timeouts_are_named() {
        let c = config("max_body_bytes = 2000000\nbody_read_timeout_secs = 25\n");
        let problems = c.problems(KAFKA_DEFAULT_MESSAGE_MAX_BYTES);
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["max_body_bytes", "limits.request_timeout_secs"]);
        assert!(problems[0].1.contains("message.max.bytes"), "{problems:?}");
        assert!(c.problems(4_000_000).len() == 1);
    }
}
