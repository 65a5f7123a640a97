//! Simulator configuration: the data set, the clock, rate limits and faults per provider.
//!
//! Every type here is `serde`-(de)serialisable with defaults, so `callsync simulate` can
//! read it from TOML and the admin endpoints can take parts of it as JSON.

use callsync_schemas::Provider;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::SimulatorError;

/// The whole simulator configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SimulatorConfig {
    /// Everything generated (ids, calls, changes, fault draws) is a pure function of this.
    pub seed: u64,
    pub clock: ClockConfig,
    pub lifecycle: LifecycleConfig,
    pub retreaver: ProviderConfig,
    pub ringba: ProviderConfig,
    pub invoca: ProviderConfig,
    pub callrail: ProviderConfig,
    pub trackdrive: ProviderConfig,
}

impl Default for SimulatorConfig {
    /// The demo configuration: a clock that runs at wall-clock speed from a fixed instant,
    /// three accounts of 10,000 calls per provider, and the published rate limits.
    fn default() -> Self {
        SimulatorConfig {
            seed: 42,
            clock: ClockConfig::default(),
            lifecycle: LifecycleConfig::default(),
            retreaver: ProviderConfig::defaults_for(Provider::Retreaver),
            ringba: ProviderConfig::defaults_for(Provider::Ringba),
            invoca: ProviderConfig::defaults_for(Provider::Invoca),
            callrail: ProviderConfig::defaults_for(Provider::CallRail),
            trackdrive: ProviderConfig::defaults_for(Provider::TrackDrive),
        }
    }
}

impl SimulatorConfig {
    /// A configuration for tests: frozen clock (advance it by hand), two accounts of 2,000
    /// calls per provider, no rate limits, no faults.
    pub fn for_tests(seed: u64) -> Self {
        let mut config = SimulatorConfig {
            seed,
            clock: ClockConfig {
                speed: 0.0,
                ..ClockConfig::default()
            },
            ..SimulatorConfig::default()
        };
        for provider in Provider::ALL {
            let provider_config = config.provider_mut(provider);
            provider_config.rate_limits.clear();
            provider_config.accounts = vec![AccountConfig::with_calls(2_000); 2];
        }
        config
    }

    pub fn provider(&self, provider: Provider) -> &ProviderConfig {
        match provider {
            Provider::Retreaver => &self.retreaver,
            Provider::Ringba => &self.ringba,
            Provider::Invoca => &self.invoca,
            Provider::CallRail => &self.callrail,
            Provider::TrackDrive => &self.trackdrive,
        }
    }

    pub fn provider_mut(&mut self, provider: Provider) -> &mut ProviderConfig {
        match provider {
            Provider::Retreaver => &mut self.retreaver,
            Provider::Ringba => &mut self.ringba,
            Provider::Invoca => &mut self.invoca,
            Provider::CallRail => &mut self.callrail,
            Provider::TrackDrive => &mut self.trackdrive,
        }
    }

    /// Replaces a provider's accounts with `count` generated accounts of `calls` calls each.
    pub fn with_accounts(mut self, provider: Provider, count: usize, calls: u64) -> Self {
        self.provider_mut(provider).accounts = vec![AccountConfig::with_calls(calls); count];
        self
    }

    pub(crate) fn validate(&self) -> Result<(), SimulatorError> {
        let invalid = |reason: String| Err(SimulatorError::InvalidConfig(reason));
        if !self.clock.speed.is_finite() || self.clock.speed < 0.0 {
            return invalid(format!(
                "clock.speed must be >= 0, got {}",
                self.clock.speed
            ));
        }
        self.lifecycle.validate()?;
        for provider in Provider::ALL {
            let config = self.provider(provider);
            if !(0.0..1.0).contains(&config.shared_consumer_share) {
                return invalid(format!(
                    "{provider}: shared_consumer_share must be in [0, 1)"
                ));
            }
            if !matches!(config.rate_limited_status, 200 | 429) {
                return invalid(format!(
                    "{provider}: rate_limited_status must be 200 or 429"
                ));
            }
            if config.max_page_size == 0 || config.default_page_size == 0 {
                return invalid(format!("{provider}: page sizes must be at least 1"));
            }
            for rule in &config.rate_limits {
                if rule.max_requests == 0 || rule.per_secs == 0 {
                    return invalid(format!(
                        "{provider}: a rate limit needs max_requests >= 1 and per_secs >= 1"
                    ));
                }
            }
            config.faults.validate(provider)?;
            if !(0.0..=1.0).contains(&config.webhooks.share) {
                return invalid(format!("{provider}: webhooks.share must be in [0, 1]"));
            }
            for account in &config.accounts {
                if account.calls + account.future_calls > u64::from(u32::MAX) {
                    return invalid(format!(
                        "{provider}: at most {} calls per account",
                        u32::MAX
                    ));
                }
                if !(0.0..=1.0).contains(&account.bad_record_share) {
                    return invalid(format!("{provider}: bad_record_share must be in [0, 1]"));
                }
                if account.history_secs == 0 {
                    return invalid(format!("{provider}: history_secs must be at least 1"));
                }
                let first_call_secs = self.clock.start.timestamp()
                    - i64::try_from(account.history_secs).unwrap_or(i64::MAX);
                if first_call_secs <= 0 {
                    return invalid(format!(
                        "{provider}: history_secs reaches before 1970 (calls must start after the epoch)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How simulated time relates to wall-clock time.
///
/// Simulated now = `start` + `speed` × (wall time since the simulator started) + every
/// manual `advance`. `speed = 0` freezes the clock (tests advance it by hand);
/// `speed = 1` runs in real time (the demo); `speed = 60` makes a minute pass per second.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockConfig {
    pub start: DateTime<Utc>,
    pub speed: f64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            start: Utc
                .with_ymd_and_hms(2026, 1, 15, 12, 0, 0)
                .single()
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            speed: 1.0,
        }
    }
}

/// How calls change after they are created. Shares are probabilities drawn per call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LifecycleConfig {
    /// Share of calls that are answered (the rest are no-answer, busy or failed).
    pub answered_share: f64,
    /// Share of answered calls that convert.
    pub conversion_share: f64,
    /// Share of converting calls whose conversion is posted after the call ended.
    pub late_conversion_share: f64,
    /// Delay of a late conversion after the call ended, `[min, max]` seconds.
    pub late_conversion_delay_secs: [u64; 2],
    /// Share of converted calls whose revenue is adjusted later (chargebacks, corrections).
    pub adjustment_share: f64,
    /// Delay of a revenue adjustment after the call started, `[min, max]` seconds.
    ///
    /// Both delay spreads (max − min) are capped per account at 5,000 call intervals
    /// (e.g. 3.6 h for 1M calls over 30 days), which bounds the work of time-ordered scans
    /// (Retreaver `sort_by=updated_at`, Invoca's stream) on dense accounts.
    pub adjustment_delay_secs: [u64; 2],
    /// Share of converted calls adjusted a second time, weeks after the call (Ringba payout
    /// adjustments, TrackDrive buyer postbacks, CallRail changes that send no webhook).
    pub late_adjustment_share: f64,
    /// Delay of that second adjustment after the call started, `[min, max]` seconds (capped
    /// like the other spreads).
    pub late_adjustment_delay_secs: [u64; 2],
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            answered_share: 0.8,
            conversion_share: 0.4,
            late_conversion_share: 0.4,
            late_conversion_delay_secs: [600, 3 * 3600],
            adjustment_share: 0.2,
            adjustment_delay_secs: [86_400, 86_400 + 6 * 3600],
            late_adjustment_share: 0.1,
            late_adjustment_delay_secs: [14 * 86_400, 30 * 86_400],
        }
    }
}

impl LifecycleConfig {
    fn validate(&self) -> Result<(), SimulatorError> {
        let shares = [
            self.answered_share,
            self.conversion_share,
            self.late_conversion_share,
            self.adjustment_share,
            self.late_adjustment_share,
        ];
        if shares.iter().any(|share| !(0.0..=1.0).contains(share)) {
            return Err(SimulatorError::InvalidConfig(
                "lifecycle shares must be in [0, 1]".into(),
            ));
        }
        let [conv_min, conv_max] = self.late_conversion_delay_secs;
        let [adj_min, adj_max] = self.adjustment_delay_secs;
        let [late_min, late_max] = self.late_adjustment_delay_secs;
        if conv_min == 0 || conv_min > conv_max || adj_min > adj_max || late_min > late_max {
            return Err(SimulatorError::InvalidConfig(
                "lifecycle delays must be [min, max] with 1 <= min <= max".into(),
            ));
        }
        // An adjustment must come after the call completed and after a late conversion.
        let latest_conversion = crate::dataset::COMPLETION_MAX_MS / 1000 + conv_max;
        if adj_min <= latest_conversion {
            return Err(SimulatorError::InvalidConfig(format!(
                "lifecycle.adjustment_delay_secs min must exceed {latest_conversion} s (the latest possible conversion)"
            )));
        }
        if late_min <= adj_max {
            return Err(SimulatorError::InvalidConfig(format!(
                "lifecycle.late_adjustment_delay_secs min must exceed {adj_max} s (the latest first adjustment)"
            )));
        }
        Ok(())
    }
}

/// One provider's API, accounts, limits and faults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    pub accounts: Vec<AccountConfig>,
    /// Per-account request limits, all enforced at once (e.g. Ringba's 5/s and 80/min).
    /// Fixed windows of `per_secs` aligned to the simulator's start; a request over any
    /// rule answers 429.
    pub rate_limits: Vec<RateLimitRule>,
    /// Send `Retry-After` (whole seconds until the window resets) with 429s. No provider
    /// documents one, so it is off by default.
    pub retry_after: bool,
    /// The HTTP status of a rate-limited answer: 429, or 200 for a provider that throttles
    /// with a 2xx body (Ringba's `isRateLimited`; its default, the harder case).
    pub rate_limited_status: u16,
    /// Share of every rate-limit window that another consumer of the same budget spends,
    /// spread evenly over the window (Ringba's limit is shared with the account's UI users:
    /// 0.3 by default; 0 elsewhere).
    pub shared_consumer_share: f64,
    /// Page size when the request names none.
    pub default_page_size: u32,
    /// Largest page size served.
    pub max_page_size: u32,
    /// `true`: a larger page size answers 400; `false`: it is clamped to `max_page_size`.
    pub reject_oversized_pages: bool,
    /// Faults injected into every account of the provider (until changed at runtime).
    pub faults: FaultConfig,
    /// The webhooks the provider sends.
    pub webhooks: WebhookSenderConfig,
}

/// How a provider sends webhooks (see the crate docs, "Webhooks").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookSenderConfig {
    /// Share of calls whose changes are sent as webhooks (the rest only show in the API).
    pub share: f64,
    /// Attempts after a failed delivery (non-2xx or no answer). CallRail never retries; the
    /// others publish no policy, so they retry (duplicate deliveries, the harder case).
    pub retries: u32,
    /// The body template of a templated provider; unset: the documented one
    /// ([`crate::default_template`]).
    pub template: Option<String>,
}

impl Default for WebhookSenderConfig {
    fn default() -> Self {
        WebhookSenderConfig {
            share: 1.0,
            retries: 3,
            template: None,
        }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            accounts: vec![AccountConfig::default(); 3],
            rate_limits: Vec::new(),
            retry_after: false,
            rate_limited_status: 429,
            shared_consumer_share: 0.0,
            default_page_size: 25,
            max_page_size: 100,
            reject_oversized_pages: false,
            faults: FaultConfig::default(),
            webhooks: WebhookSenderConfig::default(),
        }
    }
}

impl ProviderConfig {
    /// Page sizes and rate limits as shared/providers.md documents them.
    pub fn defaults_for(provider: Provider) -> Self {
        let base = ProviderConfig::default();
        match provider {
            // Default 25; the maximum is unpublished, the official script uses 100.
            Provider::Retreaver => ProviderConfig {
                rate_limits: vec![RateLimitRule::new(100, 60)],
                ..base
            },
            // 5/s and 80/min for reporting; size max 1000.
            // Throttled answers may be a 2xx body with isRateLimited; the budget is shared
            // with the account's UI users.
            Provider::Ringba => ProviderConfig {
                rate_limits: vec![RateLimitRule::new(5, 1), RateLimitRule::new(80, 60)],
                rate_limited_status: 200,
                shared_consumer_share: 0.3,
                default_page_size: 100,
                max_page_size: 1000,
                ..base
            },
            // limit default 1000, max 4000; no published numbers (poll every 5 minutes).
            Provider::Invoca => ProviderConfig {
                default_page_size: 1000,
                max_page_size: 4000,
                ..base
            },
            // 1000/hour and 10000/day per account; per_page default 100, max 250; webhooks
            // are never retried.
            Provider::CallRail => ProviderConfig {
                webhooks: WebhookSenderConfig {
                    retries: 0,
                    ..WebhookSenderConfig::default()
                },
                rate_limits: vec![
                    RateLimitRule::new(1000, 3600),
                    RateLimitRule::new(10_000, 86_400),
                ],
                default_page_size: 100,
                max_page_size: 250,
                ..base
            },
            // per_page default 25; maximum and limits unpublished.
            Provider::TrackDrive => base,
        }
    }
}

/// One generated account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountConfig {
    /// The provider's account id; generated in the provider's style when absent.
    pub id: Option<String>,
    /// Calls that exist when the clock starts, spread evenly over `history_secs` before it.
    pub calls: u64,
    /// Further calls that arrive after the clock start at the same rate.
    pub future_calls: u64,
    pub history_secs: u64,
    /// The account's time zone as a fixed UTC offset (date filters, local timestamps).
    /// Chosen from US zones when absent.
    pub utc_offset_minutes: Option<i32>,
    /// Share of calls served deliberately broken (see [`crate::BadRecordKind`]).
    pub bad_record_share: f64,
    /// Localized money strings use a decimal comma (`"25,50"`). Unset: Invoca accounts do
    /// (its `*_localized` fields follow the user's locale; the harder case), others do not.
    pub decimal_comma: Option<bool>,
}

impl Default for AccountConfig {
    fn default() -> Self {
        AccountConfig {
            id: None,
            calls: 10_000,
            future_calls: 2_000,
            history_secs: 30 * 86_400,
            utc_offset_minutes: None,
            bad_record_share: 0.0,
            decimal_comma: None,
        }
    }
}

impl AccountConfig {
    /// `calls` calls over the 30 days before the clock start, and 10% more after it.
    pub fn with_calls(calls: u64) -> Self {
        AccountConfig {
            calls,
            future_calls: calls / 10,
            ..AccountConfig::default()
        }
    }
}

/// At most `max_requests` requests per account in each fixed window of `per_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitRule {
    pub max_requests: u32,
    pub per_secs: u64,
}

impl RateLimitRule {
    pub const fn new(max_requests: u32, per_secs: u64) -> Self {
        RateLimitRule {
            max_requests,
            per_secs,
        }
    }
}

/// Faults injected into requests. Shares are probabilities per request, drawn
/// deterministically from (seed, provider, account, request number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    /// Answer 500/502/503 (rotating) with an HTML-ish body.
    pub server_error_share: f64,
    /// Hang for `hang_secs` (past any sane client timeout), then answer 504.
    pub timeout_share: f64,
    pub hang_secs: u64,
    /// Added to every request before it is answered.
    pub latency_ms: u64,
    /// Answer 200 with the page's JSON cut short.
    pub truncated_share: f64,
    /// Answer 200 with a body that is not valid JSON.
    pub malformed_share: f64,
    /// Answer 429 although the account is within its rate limit (counted apart from real
    /// rate limiting, so a benchmark can tell "our" 429s from injected ones).
    pub rate_limited_share: f64,
    /// Reject every request's credentials as if they were revoked (401).
    pub reject_credentials: bool,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            server_error_share: 0.0,
            timeout_share: 0.0,
            hang_secs: 120,
            latency_ms: 0,
            truncated_share: 0.0,
            malformed_share: 0.0,
            rate_limited_share: 0.0,
            reject_credentials: false,
        }
    }
}

impl FaultConfig {
    pub(crate) fn validate(&self, provider: Provider) -> Result<(), SimulatorError> {
        let shares = [
            self.server_error_share,
            self.timeout_share,
            self.truncated_share,
            self.malformed_share,
            self.rate_limited_share,
        ];
        if shares.iter().any(|share| !(0.0..=1.0).contains(share)) {
            return Err(SimulatorError::InvalidConfig(format!(
                "{provider}: fault shares must be in [0, 1]"
            )));
        }
        Ok(())
    }

    pub fn is_quiet(&self) -> bool {
        *self == FaultConfig::default()
    }
}
