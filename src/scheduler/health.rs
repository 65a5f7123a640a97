//! Provider health: a periodic cheap authenticated call per provider account.
//!
//! `failures_to_disable` failed probes in a row disable the account: the scheduler skips its
//! slots and `/api/providers` shows why. The next successful probe enables it again.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use callsync_runtime::Shutdown;
use callsync_schemas::Provider;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// 1 when a provider account is enabled, 0 when health checks disabled it; labelled
/// `provider`, `account`.
pub const PROVIDER_ENABLED: &str = "callsync_provider_enabled";
/// Health probes, labelled `provider`, `outcome` (ok, failed).
pub const HEALTH_PROBES_TOTAL: &str = "callsync_health_probes_total";

/// A health probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

/// A cheap authenticated call to a provider account (e.g. one page of one call). Implemented
/// with the connectors' clients.
#[async_trait]
pub trait HealthProbe: Send + Sync + 'static {
    async fn probe(&self, provider: Provider, account_id: &str) -> Result<(), ProbeError>;
}

/// The health of one provider account, as `/api/providers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderHealth {
    pub provider: Provider,
    pub account_id: String,
    pub enabled: bool,
    /// Why it is disabled (the latest probe error), when it is.
    pub disabled_reason: Option<String>,
    pub disabled_since: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub last_ok_at: Option<DateTime<Utc>>,
}

/// The health of every provider account; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ProviderRegistry {
    accounts: Arc<RwLock<BTreeMap<(Provider, String), ProviderHealth>>>,
}

impl ProviderRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an account (enabled) if it is not known yet.
    pub fn register(&self, provider: Provider, account_id: &str) {
        if let Ok(mut accounts) = self.accounts.write() {
            accounts
                .entry((provider, account_id.to_string()))
                .or_insert_with(|| ProviderHealth {
                    provider,
                    account_id: account_id.to_string(),
                    enabled: true,
                    disabled_reason: None,
                    disabled_since: None,
                    consecutive_failures: 0,
                    last_error: None,
                    last_checked_at: None,
                    last_ok_at: None,
                });
        }
        metrics::gauge!(PROVIDER_ENABLED, "provider" => provider.as_str(), "account" => account_id.to_string()).set(1.0);
    }

    pub fn contains(&self, provider: Provider, account_id: &str) -> bool {
        self.accounts
            .read()
            .map(|a| a.contains_key(&(provider, account_id.to_string())))
            .unwrap_or(false)
    }

    /// Every account, sorted by provider and account.
    pub fn snapshot(&self) -> Vec<ProviderHealth> {
        self.accounts
            .read()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, provider: Provider, account_id: &str) -> Option<ProviderHealth> {
        self.accounts
            .read()
            .ok()?
            .get(&(provider, account_id.to_string()))
            .cloned()
    }

    /// Why the account is disabled; `None` when it is enabled or unknown.
    pub fn disabled_reason(&self, provider: Provider, account_id: &str) -> Option<String> {
        let health = self.get(provider, account_id)?;
        if health.enabled {
            None
        } else {
            Some(
                health
                    .disabled_reason
                    .unwrap_or_else(|| "disabled".to_string()),
            )
        }
    }

    pub fn is_enabled(&self, provider: Provider, account_id: &str) -> bool {
        self.disabled_reason(provider, account_id).is_none()
    }

    /// Records a successful probe; enables the account if it was disabled.
    pub fn record_success(&self, provider: Provider, account_id: &str, at: DateTime<Utc>) {
        self.register(provider, account_id);
        if let Ok(mut accounts) = self.accounts.write() {
            if let Some(h) = accounts.get_mut(&(provider, account_id.to_string())) {
                if !h.enabled {
                    tracing::info!(%provider, account = account_id, "provider recovered: enabled again");
                }
                h.enabled = true;
                h.disabled_reason = None;
                h.disabled_since = None;
                h.consecutive_failures = 0;
                h.last_checked_at = Some(at);
                h.last_ok_at = Some(at);
            }
        }
    }

    /// Records a failed probe; disables the account at `failures_to_disable` in a row.
    pub fn record_failure(
        &self,
        provider: Provider,
        account_id: &str,
        error: &str,
        failures_to_disable: u32,
        at: DateTime<Utc>,
    ) {
        self.register(provider, account_id);
        let mut disabled_now = false;
        if let Ok(mut accounts) = self.accounts.write() {
            if let Some(h) = accounts.get_mut(&(provider, account_id.to_string())) {
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                h.last_error = Some(error.to_string());
                h.last_checked_at = Some(at);
                if h.consecutive_failures >= failures_to_disable.max(1) {
                    if h.enabled {
                        disabled_now = true;
                        h.disabled_since = Some(at);
                    }
                    h.enabled = false;
                    h.disabled_reason = Some(format!(
                        "{} health checks failed in a row; latest: {error}",
                        h.consecutive_failures
                    ));
                }
            }
        }
        if disabled_now {
            tracing::warn!(%provider, account = account_id, %error, "provider disabled after repeated health check failures");
        }
        let enabled = self.is_enabled(provider, account_id);
        metrics::gauge!(PROVIDER_ENABLED, "provider" => provider.as_str(), "account" => account_id.to_string())
            .set(if enabled { 1.0 } else { 0.0 });
    }
}

/// Settings of the health checks.
#[derive(Debug, Clone, Copy)]
pub struct HealthSettings {
    /// Between rounds (default 60 s).
    pub interval: Duration,
    /// A probe taking longer fails (default 15 s).
    pub probe_timeout: Duration,
    /// Failures in a row that disable an account (default 3).
    pub failures_to_disable: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            interval: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(15),
            failures_to_disable: 3,
        }
    }
}

/// Probes every account once, concurrently, and records the results.
pub async fn probe_all(
    probe: &dyn HealthProbe,
    registry: &ProviderRegistry,
    accounts: &[(Provider, String)],
    settings: &HealthSettings,
) {
    let rounds = accounts.iter().map(|(provider, account)| async move {
        let result = match tokio::time::timeout(settings.probe_timeout, probe.probe(*provider, account)).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError(format!("no answer within {:?}", settings.probe_timeout))),
        };
        let now = Utc::now();
        match result {
            Ok(()) => {
                metrics::counter!(HEALTH_PROBES_TOTAL, "provider" => provider.as_str(), "outcome" => "ok").increment(1);
                registry.record_success(*provider, account, now);
            }
            Err(e) => {
                metrics::counter!(HEALTH_PROBES_TOTAL, "provider" => provider.as_str(), "outcome" => "failed").increment(1);
                tracing::warn!(provider = %provider, account = %account, error = %e, "health check failed");
                registry.record_failure(*provider, account, &e.0, settings.failures_to_disable, now);
            }
        }
    });
    futures::future::join_all(rounds).await;
}

/// Probes every account each `interval` until shutdown.
pub async fn run_health_checks(
    probe: Arc<dyn HealthProbe>,
    registry: ProviderRegistry,
    accounts: Vec<(Provider, String)>,
    settings: HealthSettings,
    shutdown: Shutdown,
) {
    for (provider, account) in &accounts {
        registry.register(*provider, account);
    }
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => probe_all(probe.as_ref(), &registry, &accounts, &settings).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct FlakyProbe {
        up: AtomicBool,
    }

    #[async_trait]
    impl HealthProbe for FlakyProbe {
        async fn probe(&self, provider: Provider, _account: &str) -> Result<(), ProbeError> {
            if provider == Provider::Invoca || self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(ProbeError("401 Unauthorized".into()))
            }
        }
    }

    #[tokio::test]
    async fn repeated_failures_disable_and_a_success_re_enables() {
        let probe = FlakyProbe {
            up: AtomicBool::new(false),
        };
        let registry = ProviderRegistry::new();
        let accounts = vec![
            (Provider::Ringba, "r1".to_string()),
            (Provider::Invoca, "i1".to_string()),
        ];
        let settings = HealthSettings {
            failures_to_disable: 3,
            ..HealthSettings::default()
        };
        for round in 1..=3 {
            probe_all(&probe, &registry, &accounts, &settings).await;
            assert_eq!(
                registry.is_enabled(Provider::Ringba, "r1"),
                round < 3,
                "round {round}"
            );
        }
        let reason = registry.disabled_reason(Provider::Ringba, "r1").unwrap();
        assert!(
            reason.contains("3 health checks failed") && reason.contains("401"),
            "{reason}"
        );
        assert!(registry.is_enabled(Provider::Invoca, "i1"));
        let health = registry.get(Provider::Ringba, "r1").unwrap();
        assert!(health.disabled_since.is_some());

        probe.up.store(true, Ordering::SeqCst);
        probe_all(&probe, &registry, &accounts, &settings).await;
        assert!(registry.is_enabled(Provider::Ringba, "r1"));
        let health = registry.get(Provider::Ringba, "r1").unwrap();
        assert_eq!(health.consecutive_failures, 0);
        assert_eq!(health.last_error.as_deref(), Some("401 Unauthorized"));
    }

    struct SlowProbe;

    #[async_trait]
    impl HealthProbe for SlowProbe {
        async fn probe(&self, _: Provider, _: &str) -> Result<(), ProbeError> {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_probe_that_hangs_counts_as_a_failure() {
        let registry = ProviderRegistry::new();
        let settings = HealthSettings {
            probe_timeout: Duration::from_millis(20),
            failures_to_disable: 1,
            ..HealthSettings::default()
        };
        probe_all(
            &SlowProbe,
            &registry,
            &[(Provider::CallRail, "c".into())],
            &settings,
        )
        .await;
        let reason = registry.disabled_reason(Provider::CallRail, "c").unwrap();
        assert!(reason.contains("no answer"), "{reason}");
    }
}
