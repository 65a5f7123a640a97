//! [`Connectors`]: one client per configured provider account, each with its own rate
//! limiter and circuit breaker; the breakers' states are the providers' health.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use callsync_runtime::Shutdown;
use callsync_schemas::{Provider, RecordSource};
use serde::Serialize;

use crate::circuit::{CircuitBreaker, CircuitState};
use crate::config::{ConnectorsConfig, RateLimitOverride};
use crate::error::ConfigError;
use crate::http::{ProviderHttp, RequestStats};
use crate::mapping::MapContext;
use crate::providers::callrail::CallRailClient;
use crate::providers::invoca::InvocaClient;
use crate::providers::retreaver::RetreaverClient;
use crate::providers::ringba::RingbaClient;
use crate::providers::trackdrive::TrackDriveClient;
use crate::providers::DynClient;
use crate::ratelimit::AccountRateLimiter;

/// One configured account.
#[derive(Clone)]
pub struct AccountHandle {
    pub client: DynClient,
    /// Incremental syncs closer together than this are skipped (Invoca: 5 minutes).
    pub min_incremental_interval: Duration,
}

impl std::fmt::Debug for AccountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountHandle")
            .field("provider", &self.client.provider())
            .field("account", &self.client.account_id())
            .finish()
    }
}

/// Health of one provider account, for `/api/providers` and the scheduler.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderHealth {
    pub provider: Provider,
    pub account: String,
    pub circuit: CircuitState,
    pub healthy: bool,
    /// Requests/min currently aimed at (adaptive accounts move it).
    pub rate_per_minute: f64,
    pub requests: u64,
    pub rate_limited: u64,
}

/// Every configured account's client.
#[derive(Debug, Clone, Default)]
pub struct Connectors {
    accounts: BTreeMap<(Provider, String), AccountHandle>,
}

impl Connectors {
    /// Builds a client per account of `config`. `shutdown` cancels requests in flight.
    pub fn from_config(
        config: &ConnectorsConfig,
        shutdown: &Shutdown,
    ) -> Result<Self, ConfigError> {
        let mut c = Connectors::default();
        let http = |provider: Provider,
                    account: &str,
                    rl: &RateLimitOverride|
         -> Result<ProviderHttp, ConfigError> {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(config.sync.request_timeout_secs.max(1)))
                .user_agent(concat!("callsync/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| ConfigError {
                    provider,
                    account: account.to_string(),
                    detail: format!("building the HTTP client: {e}"),
                })?;
            Ok(ProviderHttp {
                provider,
                account: account.to_string(),
                client,
                limiter: Arc::new(AccountRateLimiter::new(rl.policy(provider))),
                breaker: Arc::new(CircuitBreaker::new(
                    provider,
                    account,
                    config.circuit.failure_threshold,
                    config.circuit.open_for(),
                )),
                retry: config.retry.clone(),
                stats: Arc::new(RequestStats::default()),
                shutdown: shutdown.clone(),
            })
        };
        fn bad(provider: Provider, account: &str) -> impl Fn(String) -> ConfigError + '_ {
            move |detail: String| ConfigError {
                provider,
                account: account.to_string(),
                detail,
            }
        }
        for a in &config.retreaver {
            let h = http(Provider::Retreaver, &a.account, &a.rate_limit)?;
            c.insert(Arc::new(RetreaverClient::new(a.clone(), h)), &a.rate_limit)?;
        }
        for a in &config.ringba {
            let h = http(Provider::Ringba, &a.account, &a.rate_limit)?;
            let client =
                RingbaClient::new(a.clone(), h).map_err(bad(Provider::Ringba, &a.account))?;
            c.insert(Arc::new(client), &a.rate_limit)?;
        }
        for a in &config.invoca {
            let h = http(Provider::Invoca, &a.account, &a.rate_limit)?;
            let client =
                InvocaClient::new(a.clone(), h).map_err(bad(Provider::Invoca, &a.account))?;
            c.insert(Arc::new(client), &a.rate_limit)?;
        }
        for a in &config.callrail {
            let h = http(Provider::CallRail, &a.account, &a.rate_limit)?;
            let client =
                CallRailClient::new(a.clone(), h).map_err(bad(Provider::CallRail, &a.account))?;
            c.insert(Arc::new(client), &a.rate_limit)?;
        }
        for a in &config.trackdrive {
            let h = http(Provider::TrackDrive, &a.account, &a.rate_limit)?;
            let client = TrackDriveClient::new(a.clone(), h)
                .map_err(bad(Provider::TrackDrive, &a.account))?;
            c.insert(Arc::new(client), &a.rate_limit)?;
        }
        Ok(c)
    }

    fn insert(&mut self, client: DynClient, rl: &RateLimitOverride) -> Result<(), ConfigError> {
        let provider = client.provider();
        let key = (provider, client.account_id().to_string());
        if self.accounts.contains_key(&key) {
            return Err(ConfigError {
                provider,
                account: key.1,
                detail: "configured twice".to_string(),
            });
        }
        self.accounts.insert(
            key,
            AccountHandle {
                client,
                min_incremental_interval: rl.min_incremental_interval(provider),
            },
        );
        Ok(())
    }

    /// Adds a client built elsewhere (tests, custom providers).
    pub fn add(&mut self, client: DynClient, min_incremental_interval: Duration) {
        self.accounts.insert(
            (client.provider(), client.account_id().to_string()),
            AccountHandle {
                client,
                min_incremental_interval,
            },
        );
    }

    pub fn get(&self, provider: Provider, account: &str) -> Option<&AccountHandle> {
        self.accounts.get(&(provider, account.to_string()))
    }

    /// The mapping context of webhooks of an account: its time zone, currency and region
    /// when it is configured, else UTC and USD.
    pub fn webhook_context(&self, provider: Provider, account: &str) -> MapContext {
        match self.get(provider, account) {
            Some(handle) => handle.client.map_context(RecordSource::Webhook),
            None => crate::webhook::default_context(provider, account),
        }
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountHandle> {
        self.accounts.values()
    }

    /// Health of every account (circuit state, pacing, counters).
    pub fn health(&self) -> Vec<ProviderHealth> {
        self.accounts
            .values()
            .map(|h| {
                let http = h.client.http();
                let circuit = http.breaker.state();
                ProviderHealth {
                    provider: h.client.provider(),
                    account: h.client.account_id().to_string(),
                    circuit,
                    healthy: circuit.is_healthy(),
                    rate_per_minute: http.limiter.current_per_minute(),
                    requests: http.stats.requests(),
                    rate_limited: http.stats.rate_limited(),
                }
            })
            .collect()
    }
}
