//! Runtime controls: per-account rate limiters, fault settings and request statistics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use callsync_schemas::Provider;
use serde::{Deserialize, Serialize};

use crate::config::{FaultConfig, RateLimitRule, SimulatorConfig};
use crate::dataset::Dataset;
use crate::rng::{hash_str, mix, unit};

/// Rate limits of one provider, changeable at runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitSettings {
    pub rules: Vec<RateLimitRule>,
    pub retry_after: bool,
    /// Share of each window another consumer spends (see
    /// [`crate::ProviderConfig::shared_consumer_share`]).
    #[serde(default)]
    pub shared_consumer_share: f64,
}

/// Faults for a provider (`account_id = None`) or one account: the admin endpoint's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSetting {
    pub provider: Provider,
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub faults: FaultConfig,
}

/// Which fault a request draws (at most one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultDraw {
    None,
    RateLimited,
    Timeout,
    ServerError(u16),
    Truncated,
    Malformed,
}

/// A request over a rate-limit rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throttle {
    pub rule: RateLimitRule,
    pub current_count: u32,
    pub retry_after_secs: u64,
}

#[derive(Debug, Default)]
struct WindowState {
    window_number: u64,
    admitted: u32,
    seen: u32,
    peak_admitted: u32,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    succeeded: AtomicU64,
    rate_limited: AtomicU64,
    injected_rate_limited: AtomicU64,
    server_errors: AtomicU64,
    timeouts: AtomicU64,
    truncated: AtomicU64,
    malformed: AtomicU64,
    auth_rejected: AtomicU64,
    injected_auth_rejected: AtomicU64,
    bad_requests: AtomicU64,
    records_served: AtomicU64,
    first_request_ms: AtomicU64,
    last_request_ms: AtomicU64,
}

/// What is counted, per account.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Succeeded,
    RateLimited,
    InjectedRateLimited,
    ServerErrors,
    Timeouts,
    Truncated,
    Malformed,
    AuthRejected,
    InjectedAuthRejected,
    BadRequests,
}

impl Counters {
    fn counter(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Succeeded => &self.succeeded,
            Counter::RateLimited => &self.rate_limited,
            Counter::InjectedRateLimited => &self.injected_rate_limited,
            Counter::ServerErrors => &self.server_errors,
            Counter::Timeouts => &self.timeouts,
            Counter::Truncated => &self.truncated,
            Counter::Malformed => &self.malformed,
            Counter::AuthRejected => &self.auth_rejected,
            Counter::InjectedAuthRejected => &self.injected_auth_rejected,
            Counter::BadRequests => &self.bad_requests,
        }
    }

    fn reset(&self) {
        for counter in [
            &self.requests,
            &self.succeeded,
            &self.rate_limited,
            &self.injected_rate_limited,
            &self.server_errors,
            &self.timeouts,
            &self.truncated,
            &self.malformed,
            &self.auth_rejected,
            &self.injected_auth_rejected,
            &self.bad_requests,
            &self.records_served,
            &self.first_request_ms,
            &self.last_request_ms,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Live state of one account (or of a provider's unattributable requests).
#[derive(Debug)]
pub(crate) struct AccountRuntime {
    provider: Provider,
    account_id: String,
    fault_key: u64,
    request_number: AtomicU64,
    windows: Mutex<Vec<WindowState>>,
    counters: Counters,
}

/// Counters of one account since the start or the last reset. Times are wall-clock
/// milliseconds since the simulator started (0 when no request was seen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStats {
    pub provider: Provider,
    /// The account, or `""` for requests whose credentials named no account.
    pub account_id: String,
    /// Every request that reached a list endpoint, whatever its answer.
    pub requests: u64,
    /// Answered 200 with a valid page (not counting truncated or malformed ones).
    pub succeeded: u64,
    /// 429s because the account went over its configured rate limit ("caused by the client").
    pub rate_limited: u64,
    /// 429s injected by `FaultConfig::rate_limited_share`.
    pub injected_rate_limited: u64,
    pub server_errors: u64,
    pub timeouts: u64,
    pub truncated: u64,
    pub malformed: u64,
    /// 401/403 for wrong or missing credentials.
    pub auth_rejected: u64,
    /// 401s injected by `FaultConfig::reject_credentials`.
    pub injected_auth_rejected: u64,
    /// 400/403/404/406 for invalid parameters.
    pub bad_requests: u64,
    /// Records in successful pages.
    pub records_served: u64,
    pub first_request_ms: u64,
    pub last_request_ms: u64,
    /// Per configured rule, the most requests admitted in one window so far.
    pub window_peaks: Vec<WindowPeak>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowPeak {
    pub max_requests: u32,
    pub per_secs: u64,
    pub peak_admitted: u32,
}

impl AccountRuntime {
    fn new(seed: u64, provider: Provider, account_id: &str) -> Self {
        AccountRuntime {
            provider,
            account_id: account_id.to_string(),
            fault_key: mix(
                seed ^ 0xFA17,
                hash_str(provider.as_str()) ^ hash_str(account_id),
            ),
            request_number: AtomicU64::new(0),
            windows: Mutex::new(Vec::new()),
            counters: Counters::default(),
        }
    }

    pub(crate) fn count(&self, counter: Counter) {
        self.counters
            .counter(counter)
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_records(&self, records: u64) {
        self.counters
            .records_served
            .fetch_add(records, Ordering::Relaxed);
    }

    fn note_request(&self, elapsed_ms: u64) {
        let elapsed_ms = elapsed_ms.max(1);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let _ = self.counters.first_request_ms.compare_exchange(
            0,
            elapsed_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.counters
            .last_request_ms
            .fetch_max(elapsed_ms, Ordering::Relaxed);
    }

    /// Admits the request under every rule or answers which rule it broke. Another consumer
    /// of the budget spends `shared` of each window, evenly: by the middle of a window it has
    /// used half its share.
    fn check_rate(
        &self,
        rules: &[RateLimitRule],
        elapsed_ms: u64,
        shared: f64,
    ) -> Result<(), Throttle> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() != rules.len() {
            windows.clear();
            windows.resize_with(rules.len(), WindowState::default);
        }
        let mut throttle = None;
        for (rule, window) in rules.iter().zip(windows.iter_mut()) {
            let window_ms = rule.per_secs.saturating_mul(1000);
            let window_number = elapsed_ms / window_ms;
            if window.window_number != window_number {
                window.window_number = window_number;
                window.admitted = 0;
                window.seen = 0;
            }
            window.seen = window.seen.saturating_add(1);
            let into_window = (elapsed_ms % window_ms) as f64 / window_ms as f64;
            let others = (f64::from(rule.max_requests) * shared * into_window).floor() as u32;
            if window.admitted.saturating_add(others) >= rule.max_requests && throttle.is_none() {
                let reset_in_ms = (window_number + 1) * window_ms - elapsed_ms;
                throttle = Some(Throttle {
                    rule: *rule,
                    current_count: window.seen,
                    retry_after_secs: reset_in_ms.div_ceil(1000).max(1),
                });
            }
        }
        if let Some(throttle) = throttle {
            return Err(throttle);
        }
        for window in windows.iter_mut() {
            window.admitted += 1;
            window.peak_admitted = window.peak_admitted.max(window.admitted);
        }
        Ok(())
    }

    fn stats(&self, rules: &[RateLimitRule]) -> AccountStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window_peaks = rules
            .iter()
            .enumerate()
            .map(|(position, rule)| WindowPeak {
                max_requests: rule.max_requests,
                per_secs: rule.per_secs,
                peak_admitted: windows.get(position).map_or(0, |w| w.peak_admitted),
            })
            .collect();
        AccountStats {
            provider: self.provider,
            account_id: self.account_id.clone(),
            requests: load(&counters.requests),
            succeeded: load(&counters.succeeded),
            rate_limited: load(&counters.rate_limited),
            injected_rate_limited: load(&counters.injected_rate_limited),
            server_errors: load(&counters.server_errors),
            timeouts: load(&counters.timeouts),
            truncated: load(&counters.truncated),
            malformed: load(&counters.malformed),
            auth_rejected: load(&counters.auth_rejected),
            injected_auth_rejected: load(&counters.injected_auth_rejected),
            bad_requests: load(&counters.bad_requests),
            records_served: load(&counters.records_served),
            first_request_ms: load(&counters.first_request_ms),
            last_request_ms: load(&counters.last_request_ms),
            window_peaks,
        }
    }

    fn reset(&self) {
        self.counters.reset();
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[derive(Debug, Clone, Default)]
struct ProviderFaults {
    default: FaultConfig,
    per_account: HashMap<String, FaultConfig>,
}

/// All runtime controls.
#[derive(Debug)]
pub(crate) struct Controls {
    started: Instant,
    accounts: HashMap<(Provider, String), AccountRuntime>,
    unattributed: Vec<AccountRuntime>,
    faults: RwLock<HashMap<Provider, ProviderFaults>>,
    initial_faults: HashMap<Provider, ProviderFaults>,
    rate_limits: RwLock<HashMap<Provider, RateLimitSettings>>,
}

impl Controls {
    pub(crate) fn new(config: &SimulatorConfig, dataset: &Dataset) -> Self {
        let mut accounts = HashMap::new();
        let mut faults = HashMap::new();
        let mut rate_limits = HashMap::new();
        for provider in Provider::ALL {
            for account in dataset.accounts(provider) {
                accounts.insert(
                    (provider, account.id.clone()),
                    AccountRuntime::new(config.seed, provider, &account.id),
                );
            }
            let provider_config = config.provider(provider);
            faults.insert(
                provider,
                ProviderFaults {
                    default: provider_config.faults.clone(),
                    per_account: HashMap::new(),
                },
            );
            rate_limits.insert(
                provider,
                RateLimitSettings {
                    rules: provider_config.rate_limits.clone(),
                    retry_after: provider_config.retry_after,
                    shared_consumer_share: provider_config.shared_consumer_share,
                },
            );
        }
        let unattributed = Provider::ALL
            .iter()
            .map(|&provider| AccountRuntime::new(config.seed, provider, ""))
            .collect();
        Controls {
            started: Instant::now(),
            accounts,
            unattributed,
            initial_faults: faults.clone(),
            faults: RwLock::new(faults),
            rate_limits: RwLock::new(rate_limits),
        }
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn runtime(&self, provider: Provider, account_id: &str) -> Option<&AccountRuntime> {
        self.accounts.get(&(provider, account_id.to_string()))
    }

    pub(crate) fn unattributed(&self, provider: Provider) -> &AccountRuntime {
        let position = Provider::ALL
            .iter()
            .position(|&p| p == provider)
            .unwrap_or(0);
        &self.unattributed[position]
    }

    /// Counts the request; returns its number (for deterministic fault draws).
    pub(crate) fn note_request(&self, runtime: &AccountRuntime) -> u64 {
        runtime.note_request(self.elapsed_ms());
        runtime.request_number.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn check_rate(&self, runtime: &AccountRuntime) -> Result<(), Throttle> {
        let settings = self.rate_limits(runtime.provider);
        if settings.rules.is_empty() {
            return Ok(());
        }
        runtime.check_rate(
            &settings.rules,
            self.elapsed_ms(),
            settings.shared_consumer_share,
        )
    }

    pub(crate) fn rate_limits(&self, provider: Provider) -> RateLimitSettings {
        self.rate_limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&provider)
            .cloned()
            .unwrap_or(RateLimitSettings {
                rules: Vec::new(),
                retry_after: false,
                shared_consumer_share: 0.0,
            })
    }

    pub(crate) fn set_rate_limits(&self, provider: Provider, settings: RateLimitSettings) {
        self.rate_limits
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(provider, settings);
        for ((account_provider, _), runtime) in &self.accounts {
            if *account_provider == provider {
                runtime
                    .windows
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
        }
    }

    /// The faults in force for an account: its own override, else the provider's.
    pub(crate) fn faults_for(&self, provider: Provider, account_id: &str) -> FaultConfig {
        let faults = self.faults.read().unwrap_or_else(|e| e.into_inner());
        faults
            .get(&provider)
            .map(|provider_faults| {
                provider_faults
                    .per_account
                    .get(account_id)
                    .unwrap_or(&provider_faults.default)
                    .clone()
            })
            .unwrap_or_default()
    }

    /// Sets the provider's faults (`account_id = None`, replacing every account override)
    /// or one account's override.
    pub(crate) fn set_faults(
        &self,
        provider: Provider,
        account_id: Option<&str>,
        config: FaultConfig,
    ) {
        let mut faults = self.faults.write().unwrap_or_else(|e| e.into_inner());
        let entry = faults.entry(provider).or_default();
        match account_id {
            Some(account_id) => {
                entry.per_account.insert(account_id.to_string(), config);
            }
            None => {
                entry.default = config;
                entry.per_account.clear();
            }
        }
    }

    /// The faults in force: each provider's default and every account override.
    pub(crate) fn faults_snapshot(&self) -> Vec<FaultSetting> {
        let faults = self.faults.read().unwrap_or_else(|e| e.into_inner());
        let mut settings = Vec::new();
        for provider in Provider::ALL {
            if let Some(provider_faults) = faults.get(&provider) {
                settings.push(FaultSetting {
                    provider,
                    account_id: None,
                    faults: provider_faults.default.clone(),
                });
                let mut overrides: Vec<_> = provider_faults.per_account.iter().collect();
                overrides.sort_by(|a, b| a.0.cmp(b.0));
                for (account_id, config) in overrides {
                    settings.push(FaultSetting {
                        provider,
                        account_id: Some(account_id.clone()),
                        faults: config.clone(),
                    });
                }
            }
        }
        settings
    }

    /// Back to the configured faults.
    pub(crate) fn reset_faults(&self) {
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = self.initial_faults.clone();
    }

    /// Draws the fault of request `request_number` of this account.
    pub(crate) fn draw_fault(
        &self,
        runtime: &AccountRuntime,
        request_number: u64,
        faults: &FaultConfig,
    ) -> FaultDraw {
        let word = mix(runtime.fault_key, request_number);
        let roll = |salt: u64| unit(mix(word, salt));
        if roll(1) < faults.rate_limited_share {
            FaultDraw::RateLimited
        } else if roll(2) < faults.timeout_share {
            FaultDraw::Timeout
        } else if roll(3) < faults.server_error_share {
            FaultDraw::ServerError([500, 502, 503][(word % 3) as usize])
        } else if roll(4) < faults.truncated_share {
            FaultDraw::Truncated
        } else if roll(5) < faults.malformed_share {
            FaultDraw::Malformed
        } else {
            FaultDraw::None
        }
    }

    pub(crate) fn fault_word(&self, runtime: &AccountRuntime, request_number: u64) -> u64 {
        mix(runtime.fault_key ^ 0xB0D7, request_number)
    }

    pub(crate) fn stats(&self, provider: Provider, account_id: &str) -> Option<AccountStats> {
        let rules = self.rate_limits(provider).rules;
        if account_id.is_empty() {
            return Some(self.unattributed(provider).stats(&rules));
        }
        self.runtime(provider, account_id)
            .map(|runtime| runtime.stats(&rules))
    }

    /// Stats of every account (and of each provider's unattributed requests), sorted.
    pub(crate) fn all_stats(&self) -> Vec<AccountStats> {
        let mut all: Vec<AccountStats> = self
            .accounts
            .values()
            .chain(self.unattributed.iter())
            .map(|runtime| runtime.stats(&self.rate_limits(runtime.provider).rules))
            .collect();
        all.sort_by(|a, b| (a.provider, &a.account_id).cmp(&(b.provider, &b.account_id)));
        all
    }

    pub(crate) fn reset_stats(&self) {
        for runtime in self.accounts.values().chain(self.unattributed.iter()) {
            runtime.reset();
        }
    }
}
