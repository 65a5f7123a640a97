//! `ConnectorsConfig`: the `[connectors]` section of callsync's TOML config.
//!
//! ```toml
//! [connectors.sync]
//! lookback_secs = 3600
//! [[connectors.retreaver]]
//! account = "1234"           # callsync's account id (Retreaver company id)
//! api_key = "..."            # a callsync_runtime::Secret
//! company_id = "1234"
//! base_url = "http://127.0.0.1:8080"   # tests point this at the simulator
//! [connectors.retreaver.rate_limit]
//! per_minute = 100
//! ```
//! Every table denies unknown fields, so a typo is an error at start-up.

use std::time::Duration;

use callsync_schemas::Provider;
use serde::Deserialize;

use crate::providers::callrail::CallRailAccount;
use crate::providers::invoca::InvocaAccount;
use crate::providers::retreaver::RetreaverAccount;
use crate::providers::ringba::RingbaAccount;
use crate::providers::trackdrive::TrackDriveAccount;
use crate::ratelimit::{PeriodQuota, RatePolicy};

/// Everything the connectors need to know.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorsConfig {
    #[serde(default)]
    pub sync: SyncSettings,
    #[serde(default)]
    pub retry: RetrySettings,
    #[serde(default)]
    pub circuit: CircuitSettings,
    #[serde(default)]
    pub retreaver: Vec<RetreaverAccount>,
    #[serde(default)]
    pub ringba: Vec<RingbaAccount>,
    #[serde(default)]
    pub invoca: Vec<InvocaAccount>,
    #[serde(default)]
    pub callrail: Vec<CallRailAccount>,
    #[serde(default)]
    pub trackdrive: Vec<TrackDriveAccount>,
}

/// How syncs run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Incremental syncs re-read this much before the stored watermark (late changes).
    pub lookback_secs: u64,
    /// The lookback of incremental syncs of providers with no update filter (Ringba,
    /// CallRail, TrackDrive scan by call time): it must cover how long after a call its
    /// data still changes, or only the nightly `full` sync sees those changes.
    pub created_scan_lookback_secs: u64,
    /// The first incremental sync of an account reads this far back.
    pub initial_incremental_secs: u64,
    /// `full` re-reads this trailing window.
    pub full_window_days: u32,
    /// Reconcile: the nightly `full` sync of a provider scanned by call time (Ringba,
    /// CallRail, TrackDrive) also re-reads the older window back to this many days, once every
    /// `reconcile_every_days`, so changes made weeks after a call are caught. 0 turns it off.
    pub reconcile_window_days: u32,
    pub reconcile_every_days: u32,
    /// Requests a reconcile may use in one run (its cost is estimated first); the rest is
    /// read by the next runs, from where it stopped. 0: no cap.
    pub reconcile_max_requests: u64,
    /// A backfill range is split into windows, each resumable on its own. The first ones are
    /// this long (and all of them for a provider that never returns a full page); later ones
    /// are sized from the call density seen to hold `backfill_pages_per_window` pages.
    pub backfill_window_secs: u64,
    /// Full pages a backfill window aims at: its last page is partial, so this many pages
    /// waste about half a page (0.5% of the requests at 100).
    pub backfill_pages_per_window: u64,
    /// Backfill windows fetched at once (all inside the account's rate limit).
    pub backfill_concurrency: usize,
    /// A progress event every this many records.
    pub progress_every: u64,
    /// Timeout of one HTTP request.
    pub request_timeout_secs: u64,
    /// Kafka `transactional.id` prefix; the id is
    /// `{kafka.topic_prefix}{prefix}-{provider}-{account}-{mode}` (one per sync scope, shared
    /// by every connector process, so a zombie sync of the scope is fenced).
    pub transactional_id_prefix: String,
    /// Timeout for Kafka transaction calls and for reading the cursor topic to its end.
    pub kafka_timeout_secs: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            lookback_secs: 3600,
            created_scan_lookback_secs: 2 * 86_400,
            initial_incremental_secs: 24 * 3600,
            full_window_days: 7,
            reconcile_window_days: 35,
            reconcile_every_days: 7,
            reconcile_max_requests: 1000,
            backfill_window_secs: 24 * 3600,
            backfill_pages_per_window: 100,
            backfill_concurrency: 4,
            progress_every: 1000,
            request_timeout_secs: 30,
            transactional_id_prefix: "callsync-connector".to_string(),
            kafka_timeout_secs: 30,
        }
    }
}

/// Retries of failed requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Attempts for 5xx, timeouts, connection errors and malformed pages.
    pub max_attempts: u32,
    /// Retries after 429 (these do not use up `max_attempts`).
    pub max_rate_limited: u32,
    /// First backoff ceiling; it doubles per attempt (full jitter below it).
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 6,
            max_rate_limited: 20,
            base_delay_ms: 250,
            max_delay_ms: 30_000,
        }
    }
}

/// The circuit breaker per provider account.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitSettings {
    /// Failed requests in a row that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before a probe.
    pub open_secs: f64,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failure_threshold: 8,
            open_secs: 30.0,
        }
    }
}

impl CircuitSettings {
    pub fn open_for(&self) -> Duration {
        Duration::from_secs_f64(self.open_secs.max(0.0))
    }
}

/// Rate-limit overrides of one account; unset fields take the provider's defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitOverride {
    /// Requests per minute (the provider's ceiling).
    pub per_minute: Option<f64>,
    /// Requests per hour, for providers that count per hour (CallRail): paced as per minute,
    /// and enforced as an hourly budget too.
    pub per_hour: Option<f64>,
    /// Requests per day (CallRail: 10,000): a daily budget; when it is used up the sync
    /// pauses until requests of the last 24 hours leave the window.
    pub per_day: Option<f64>,
    /// Share of every ceiling callsync aims at (Ringba's is shared with the account's UI
    /// users, so its default is well below 1). `headroom` is the old name.
    #[serde(alias = "headroom")]
    pub share: Option<f64>,
    /// Halve the rate on a rate-limited answer and step back up (AIMD). On by default.
    pub adaptive: Option<bool>,
    /// Requests in flight at once.
    pub max_concurrency: Option<u32>,
    /// Minimum seconds between incremental syncs (Invoca: 300).
    pub min_incremental_interval_secs: Option<u64>,
    /// Further budgets of `max_requests` per `per_secs` (all enforced, after the share).
    #[serde(default)]
    pub quotas: Vec<QuotaConfig>,
}

/// A budget of requests per period.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub max_requests: f64,
    pub per_secs: u64,
}

/// A provider's published (or chosen) defaults.
#[derive(Debug, Clone, Copy)]
pub struct ProviderDefaults {
    pub per_minute: f64,
    /// Share of the ceilings aimed at.
    pub share: f64,
    /// Published budgets per longer period: (requests, seconds).
    pub quotas: &'static [(f64, u64)],
    pub adaptive: bool,
    pub max_concurrency: u32,
    pub min_incremental_interval: Duration,
}

/// Defaults per provider, from shared/providers.md. Every provider adapts (AIMD) to
/// rate-limited answers: none publishes limits that are exactly what it enforces.
pub fn provider_defaults(provider: Provider) -> ProviderDefaults {
    match provider {
        // nothing published; the team default is 100/min; docs suggest 4 threads
        Provider::Retreaver => ProviderDefaults {
            per_minute: 100.0,
            share: 0.97,
            quotas: &[],
            adaptive: true,
            max_concurrency: 4,
            min_incremental_interval: Duration::ZERO,
        },
        // 5/s and 80/min for reporting, per account, shared with the account's UI users
        Provider::Ringba => ProviderDefaults {
            per_minute: 80.0,
            share: 0.5,
            quotas: &[],
            adaptive: true,
            max_concurrency: 4,
            min_incremental_interval: Duration::ZERO,
        },
        // no numbers; poll incrementally at intervals over 5 minutes
        Provider::Invoca => ProviderDefaults {
            per_minute: 60.0,
            share: 0.97,
            quotas: &[],
            adaptive: true,
            max_concurrency: 2,
            min_incremental_interval: Duration::from_secs(300),
        },
        // 1000/hour and 10,000/day per account (for every API key of the account)
        Provider::CallRail => ProviderDefaults {
            per_minute: 1000.0 / 60.0,
            share: 0.9,
            quotas: &[(1000.0, 3600), (10_000.0, 86_400)],
            adaptive: true,
            max_concurrency: 4,
            min_incremental_interval: Duration::ZERO,
        },
        // nothing published: configurable, adaptive
        Provider::TrackDrive => ProviderDefaults {
            per_minute: 60.0,
            share: 0.97,
            quotas: &[],
            adaptive: true,
            max_concurrency: 4,
            min_incremental_interval: Duration::ZERO,
        },
    }
}

impl RateLimitOverride {
    /// The pacing policy of an account of `provider` with these overrides.
    pub fn policy(&self, provider: Provider) -> RatePolicy {
        let d = provider_defaults(provider);
        let per_minute = self
            .per_minute
            .or(self.per_hour.map(|h| h / 60.0))
            .unwrap_or(d.per_minute);
        let mut quotas: Vec<PeriodQuota> = Vec::new();
        let mut add = |max_requests: f64, secs: u64| {
            if max_requests > 0.0 && secs > 0 {
                quotas.retain(|q| q.period != Duration::from_secs(secs));
                quotas.push(PeriodQuota {
                    max_requests,
                    period: Duration::from_secs(secs),
                });
            }
        };
        // an explicit per-minute ceiling replaces the provider's published budgets too
        if self.per_minute.is_none() {
            for (max, secs) in d.quotas {
                add(*max, *secs);
            }
        }
        if let Some(h) = self.per_hour {
            add(h, 3600);
        }
        if let Some(day) = self.per_day {
            add(day, 86_400);
        }
        for q in &self.quotas {
            add(q.max_requests, q.per_secs);
        }
        RatePolicy {
            per_minute,
            share: self.share.unwrap_or(d.share).clamp(0.05, 1.0),
            adaptive: self.adaptive.unwrap_or(d.adaptive),
            max_concurrency: self.max_concurrency.unwrap_or(d.max_concurrency).max(1),
            quotas,
        }
    }

    pub fn min_incremental_interval(&self, provider: Provider) -> Duration {
        self.min_incremental_interval_secs
            .map(Duration::from_secs)
            .unwrap_or(provider_defaults(provider).min_incremental_interval)
    }
}
