//! A faithful fake of the five providers' list-calls APIs (shared/providers.md), with a
//! lazily generated, deterministic data set, late changes, per-account rate limits, fault
//! injection, request statistics and ground truth.
//!
//! # Starting it
//!
//! ```no_run
//! # async fn demo() -> Result<(), callsync_simulator::SimulatorError> {
//! use callsync_schemas::Provider;
//! use callsync_simulator::{Simulator, SimulatorConfig};
//!
//! let sim = Simulator::start(SimulatorConfig::for_tests(7)).await?; // 127.0.0.1:0
//! let base = sim.base_url(Provider::Ringba);        // "http://127.0.0.1:PORT/ringba/v2"
//! let account = &sim.accounts(Provider::Ringba)[0];
//! let credentials = sim.credentials(Provider::Ringba, account).expect("known account");
//! // POST {base}/{account}/calllogs with "Authorization: Token {credentials.api_key}"
//! sim.clock().advance(std::time::Duration::from_secs(3600)); // late changes appear
//! let truth: Vec<_> = sim.truth(Provider::Ringba, account, None)?.collect();
//! sim.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! `callsync simulate` runs [`serve`] with a [`SimulatorConfig`] (TOML-deserialisable).
//!
//! # Base URLs (what replaces each real host)
//!
//! | provider | real base | simulator base (`base_url`) | list call |
//! |---|---|---|---|
//! | Retreaver | `https://api.retreaver.com` | `{root}/retreaver` | `GET /api/v2/calls.json` (v1, v3, v4 too) |
//! | Ringba | `https://api.ringba.com/v2` | `{root}/ringba/v2` | `POST /{accountId}/calllogs` |
//! | Invoca | `https://{vanity}.invoca.net` | `{root}/invoca` | `GET /api/2020-10-01/networks/transactions/{id}.json` (also `advertisers`, `affiliates`) |
//! | CallRail | `https://api.callrail.com/v3` | `{root}/callrail/v3` | `GET /a/{account_id}/calls.json` |
//! | TrackDrive | `https://{sub}.trackdrive.com/api/v1` | `{root}/trackdrive/api/v1` | `GET /calls` (the account comes from the keys) |
//!
//! # Credentials ([`AccountCredentials`]) and auth failures
//!
//! - Retreaver: `?api_key={api_key}` (+ optional `company_id={account_id}`). Missing or
//!   unknown key → 401; `company_id` not the key's company → 403.
//! - Ringba: `Authorization: Token {api_key}`. Missing/unknown → 401; token of another
//!   account → 403.
//! - Invoca: `Authorization: {api_key}` (no scheme word) or `?oauth_token={api_key}`.
//!   Missing/unknown → 401; token of another id → 403. Validation errors are 403 too
//!   (Invoca's documented style, body `{"errors": {...}}`).
//! - CallRail: `Authorization: Token token="{api_key}"` (quotes optional). Missing/unknown
//!   → 401 `{"error": "HTTP Token: Access denied."}`; other account → 403.
//! - TrackDrive: `Authorization: Basic base64({api_key}:{api_secret})`. Wrong → 401.
//! - [`FaultConfig::reject_credentials`] makes valid credentials answer 401 (revoked).
//!
//! # Paging, filters and last pages
//!
//! - **Retreaver**: `page` (from 1), `per_page` (default 25, max 100 configurable); bare
//!   array of `{"call": {...}}`; `Link` header with `rel="next"` (absent on the last
//!   page), `rel="last"`, and `rel="first"`/`rel="prev"` after page 1.
//!   `created_at_start`/`created_at_end` (RFC 3339, both inclusive) filter `created_at`;
//!   `updated_at_start`/`updated_at_end` (inclusive) filter `updated_at`; `sort_by`
//!   `created_at` (default) or `updated_at`; `order` asc/desc (default desc), **ignored
//!   for `sort_by=updated_at`, which is always newest first**. Page N of
//!   `sort_by=updated_at` costs O(N·per_page) (fine for incremental syncs; backfill by
//!   `created_at` ranges, which cost O(per_page) anywhere). Money: `revenue`, `payout`,
//!   `profit_net` numbers; `charge_total`, `total_cost`, `profit_gross` strings.
//! - **Ringba**: body `{"reportStart", "reportEnd", "offset", "size", "orderByColumns":
//!   [{"column": "callDt", "direction": "asc|desc"}], "valueColumns": [{"column"}]}`;
//!   `reportStart` inclusive, `reportEnd` exclusive on `callDt`; default order `callDt`
//!   desc; `size` max 1000; `report.totalCount` = matching calls; last page when
//!   `offset + records.len() >= totalCount`. Dates are epoch ms; absent ids are `""`;
//!   no update time exists (`isLive`, `wasConversionAdjusted` hint at changes).
//! - **Invoca**: `limit` (default 1000, max 4000), `start_after_transaction_id`; last page
//!   when fewer rows than `limit`. Without `from`/`to` the rows come in creation order (a
//!   stream: new rows, including corrections, always come after every earlier cursor);
//!   with `from`/`to` (`YYYY-MM-DD`, account zone, inclusive, both or neither) the rows of
//!   calls started in the range come in call-start order. A call's `Call` row appears when
//!   it completes, without conversion money; a conversion is a `Signal` row (`signal_name`
//!   "Sale", `signal_occurred_at` in Unix seconds, `revenue`, the call's totals); later
//!   adjustments correct the signal (new `transaction_id`, `corrects_transaction_id` = the
//!   signal's id, `corrected_at` RFC 3339 with ms and the account's offset).
//!   `transaction_type=` filters by type. The advertiser role's rows name their status
//!   `call_result_description_detail_managed_advertiser`. Phone numbers are `866-555-1234`;
//!   `start_time_utc` is epoch ms; money fields are strings in the account's locale (a
//!   decimal comma by default). Validation errors (an unknown cursor, a bad type) answer 403.
//! - **CallRail**: offset style `page`/`per_page` (default 100, max 250) with `page`,
//!   `per_page`, `total_pages`, `total_records` (last page: `page >= total_pages`), or
//!   `relative_pagination=true` with `has_next_page`/`next_page` (absolute URL carrying an
//!   opaque `offset`; stable while new calls arrive). Both send `Link: <…>; rel="next"`
//!   when there is a next page. `start_date`/`end_date` as dates (account zone, inclusive)
//!   or ISO times; `order` asc/desc (default desc) on `start_time`. `value` (string), `tags`,
//!   `lead_status`, `company_*`, `created_at`, … only when named in `fields=`.
//!   `start_time` is ISO 8601 with ms and the account's offset.
//! - **TrackDrive**: `cursor=-1` (default) → `metadata.next_cursor`; send it back as
//!   `cursor`; `next_cursor == 0` on the last page. `page`/`per_page` (default 25, max 100
//!   configurable) work too. `created_at_from`/`created_at_to` as `YYYY-MM-DD HH:MM:SS
//!   ±ZZZZ` (inclusive; no offset = account zone; an unencoded `+` is tolerated).
//!   `order` takes a column name: `created_at` (oldest first), `-created_at` (default,
//!   newest first); `asc`/`desc` answer 400. Envelope `{"status": 200, "errors": {}, "calls": [...],
//!   "metadata": {"next_cursor", "per_page", "total_count"}}`; times ISO 8601 with ms
//!   and the account's offset; money fields are decimal strings.
//!
//! # call_id and version per provider (what the connector must map)
//!
//! | provider | `call_id` | version (µs) | statuses (provider → normalized) |
//! |---|---|---|---|
//! | Retreaver | `uuid` | `updated_at` | `in-progress`, `finished`→completed, `no-answer`, `busy`, `failed` |
//! | Ringba | `inboundCallId` | none (observed_at) | `isLive`→in_progress; `hasConnected`→completed; else `incompleteCallReason` `No Answer`/`Busy`/`Failed` |
//! | Invoca | `complete_call_id` (the same on the original and every correction row) | `corrected_at` of a correction, else `start_time_utc` | `call_result_description_detail`: `Connected`→completed, `No Answer`, `Busy`, `Failed` |
//! | CallRail | `id` | none (observed_at) | `duration` null→in_progress; `answered`→completed; else no_answer |
//! | TrackDrive | `uuid` | `updated_at` | `in-progress`, `completed`, `no-answer`, `busy`, `failed` |
//!
//! Revenue/payout: Retreaver `revenue`/`payout`, Ringba `conversionAmount`/`payoutAmount`,
//! Invoca `advertiser_payin_localized`/`affiliate_payout_localized`, CallRail `value`
//! (no payout), TrackDrive `revenue`/`payout`. All amounts have at most 2 decimals, so
//! they are exact as decimals. Started at: Retreaver `start_time`, Ringba `callDt`,
//! Invoca `start_time_utc`, CallRail `start_time`, TrackDrive `created_at`.
//!
//! # Data set and simulated time
//!
//! Call `i` of an account is a pure function of (seed, provider, account id, i); calls are
//! created in index order over `history_secs` before [`ClockConfig::start`], and
//! `future_calls` more keep arriving afterwards at the same rate. Each call has up to five
//! [`Stage`]s: created (in progress) → completed (seconds to ~27 min later) → conversion
//! posted later (10 min – 3 h after completion, for a share of converting calls) → revenue
//! adjusted (1 day – 1 day 6 h after the start: a chargeback to 0 or a change) → adjusted
//! again 14-30 days after the start (10% of converted calls by default). The API
//! serves every call as of simulated now; [`SimulatorHandle::truth`] gives it as of any
//! instant. Simulated now = `clock.start` + `clock.speed` × wall time elapsed + manual
//! advances ([`SimClock`]); `speed = 0` (as in [`SimulatorConfig::for_tests`]) freezes it.
//!
//! # Rate limits, faults, stats
//!
//! Per account, fixed windows aligned to the simulator's start (wall clock): a request
//! over any [`RateLimitRule`] answers 429 (Ringba: its JSON throttle body with status 200 by
//! default, [`ProviderConfig::rate_limited_status`]), with `Retry-After` (seconds to the
//! window end) when `retry_after` is on. A second consumer may spend a share of every window
//! ([`ProviderConfig::shared_consumer_share`]; Ringba 0.3: its UI users).
//!
//! # Webhooks
//!
//! [`SimulatorHandle::webhook_events`] gives the webhooks an account sends for the changes in
//! a period (CallRail's own bodies; the documented templates of the others, rendered as each
//! provider renders its tokens), [`SimulatorHandle::send_webhooks`] posts them with the
//! provider's retry behaviour (CallRail never retries), [`SimulatorHandle::render_webhook`]
//! renders any template for one call. Faults
//! ([`FaultConfig`]) are drawn per request, deterministically from (seed, account, request
//! number): injected 429, hang (then 504), 500/502/503, truncated JSON, malformed body,
//! plus fixed latency and revoked credentials. [`AccountStats`] counts them apart from
//! genuine 429s.
//!
//! # Admin HTTP API (`/_sim/…`, no auth, never faulted)
//!
//! - `GET /_sim/accounts`: accounts, credentials, base paths, call counts.
//! - `GET /_sim/clock`, `POST /_sim/clock` `{"advance_secs": 600}` / `{"set": "…"}` /
//!   `{"speed": 60}`.
//! - `GET /_sim/faults`, `POST /_sim/faults` `{"provider": "ringba", "account_id": null,
//!   "faults": {"server_error_share": 0.2, …}}` (no account = the provider and all its
//!   accounts), `DELETE /_sim/faults` (back to the configuration).
//! - `GET /_sim/rate-limits`, `POST /_sim/rate-limits` `{"provider": "ringba", "rules":
//!   [{"max_requests": 600, "per_secs": 60}], "retry_after": true}`.
//! - `GET /_sim/stats`, `GET /_sim/stats/{provider}/{account}` (account `""` is not
//!   routable; unattributed requests appear in `GET /_sim/stats` with `account_id: ""`),
//!   `POST /_sim/stats/reset`.
//! - `GET /_sim/truth/{provider}/{account}[?as_of=RFC3339]`: NDJSON of [`TruthRecord`]s,
//!   streamed lazily; `GET /_sim/truth/{provider}/{account}/summary[?as_of=…]`:
//!   [`TruthSummary`].

mod admin;
mod clock;
mod config;
mod control;
mod dataset;
mod error;
mod format;
mod http;
mod names;
mod providers;
mod rng;
mod truth;
mod webhooks;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;

use callsync_schemas::Provider;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use clock::SimClock;
pub use config::{
    AccountConfig, ClockConfig, FaultConfig, LifecycleConfig, ProviderConfig, RateLimitRule,
    SimulatorConfig, WebhookSenderConfig,
};
pub use control::{AccountStats, FaultSetting, RateLimitSettings, WindowPeak};
pub use dataset::{AccountCredentials, BadRecordKind, Stage};
pub use error::SimulatorError;
pub use truth::{provider_has_versions, record_checksum, TruthIter, TruthRecord, TruthSummary};
pub use webhooks::{
    default_template, template_tokens, WebhookEvent, WebhookReport, WebhookTarget,
    WebhookTargetAuth, INVOCA_TEMPLATE, RETREAVER_TEMPLATE, RINGBA_TEMPLATE, TRACKDRIVE_TEMPLATE,
};

use crate::control::Controls;
use crate::dataset::Dataset;
use crate::http::SimState;

/// Entry point for tests and tools.
pub struct Simulator;

impl Simulator {
    /// Starts a simulator on `127.0.0.1` with an ephemeral port.
    pub async fn start(config: SimulatorConfig) -> Result<RunningSimulator, SimulatorError> {
        Simulator::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a simulator on `addr`.
    pub async fn start_on(
        config: SimulatorConfig,
        addr: SocketAddr,
    ) -> Result<RunningSimulator, SimulatorError> {
        let handle = SimulatorHandle::new(config)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimulatorError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| SimulatorError::Bind { addr, source })?;
        let state = handle.state.clone();
        let token = state.shutdown.clone();
        let task = tokio::spawn(run(listener, state, async move { token.cancelled().await }));
        Ok(RunningSimulator {
            handle,
            addr: local_addr,
            task: Some(task),
        })
    }
}

/// Serves the simulator on `addr` until `shutdown` completes (for `callsync simulate`).
pub async fn serve(
    config: SimulatorConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimulatorError> {
    let handle = SimulatorHandle::new(config)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SimulatorError::Bind { addr, source })?;
    tracing::info!(%addr, "provider simulator listening");
    run(listener, handle.state, shutdown).await
}

async fn run(
    listener: TcpListener,
    state: Arc<SimState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimulatorError> {
    let token = state.shutdown.clone();
    let app = http::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Hung (timeout-fault) requests end now instead of holding the shutdown.
            token.cancel();
        })
        .await
        .map_err(SimulatorError::Serve)
}

/// The base URL of a provider's API on a simulator at `addr` (see the table above).
pub fn base_url(addr: SocketAddr, provider: Provider) -> String {
    format!("http://{addr}{}", http::base_path(provider))
}

/// A running simulator; derefs to its [`SimulatorHandle`]. Dropping it stops the server.
pub struct RunningSimulator {
    handle: SimulatorHandle,
    addr: SocketAddr,
    task: Option<JoinHandle<Result<(), SimulatorError>>>,
}

impl RunningSimulator {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The provider's base URL, standing in for its real host (see the crate docs).
    pub fn base_url(&self, provider: Provider) -> String {
        base_url(self.addr, provider)
    }

    /// A cloneable handle that outlives nothing: it stays valid after shutdown, but the
    /// server is gone.
    pub fn handle(&self) -> SimulatorHandle {
        self.handle.clone()
    }

    /// Stops the server (in-flight hung requests are released) and waits for it.
    pub async fn shutdown(mut self) -> Result<(), SimulatorError> {
        self.handle.state.shutdown.cancel();
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|error| SimulatorError::Serve(std::io::Error::other(error)))?,
            None => Ok(()),
        }
    }
}

impl Deref for RunningSimulator {
    type Target = SimulatorHandle;

    fn deref(&self) -> &SimulatorHandle {
        &self.handle
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.handle.state.shutdown.cancel();
    }
}

/// Static facts about one account.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AccountInfo {
    pub provider: Provider,
    pub account_id: String,
    pub credentials: AccountCredentials,
    /// Calls in the data set, including those not yet created at the clock start.
    pub calls_total: u64,
    pub first_call_at: DateTime<Utc>,
    /// Calls are created one per interval on average.
    pub call_interval_ms: i64,
    pub utc_offset_minutes: i32,
    pub time_zone: &'static str,
}

/// Control and inspection of a simulator, for tests in any crate.
#[derive(Clone)]
pub struct SimulatorHandle {
    state: Arc<SimState>,
}

impl SimulatorHandle {
    /// A handle over a data set without a server (truth and data only).
    pub fn new(config: SimulatorConfig) -> Result<Self, SimulatorError> {
        config.validate()?;
        let dataset = Dataset::new(&config);
        let controls = Controls::new(&config, &dataset);
        let clock = SimClock::new(&config.clock);
        Ok(SimulatorHandle {
            state: Arc::new(SimState {
                config,
                dataset,
                clock,
                controls,
                shutdown: CancellationToken::new(),
            }),
        })
    }

    pub fn config(&self) -> &SimulatorConfig {
        &self.state.config
    }

    /// Account ids of a provider, in configuration order.
    pub fn accounts(&self, provider: Provider) -> Vec<String> {
        self.state
            .dataset
            .accounts(provider)
            .iter()
            .map(|account| account.id.clone())
            .collect()
    }

    pub fn credentials(&self, provider: Provider, account_id: &str) -> Option<AccountCredentials> {
        self.state
            .dataset
            .account(provider, account_id)
            .map(|account| account.credentials.clone())
    }

    pub fn account_info(&self, provider: Provider, account_id: &str) -> Option<AccountInfo> {
        self.state
            .dataset
            .account(provider, account_id)
            .map(|account| AccountInfo {
                provider,
                account_id: account.id.clone(),
                credentials: account.credentials.clone(),
                calls_total: account.calls,
                first_call_at: clock::millis_to_datetime(account.first_ms),
                call_interval_ms: account.interval_ms,
                utc_offset_minutes: account.utc_offset_minutes,
                time_zone: account.zone_name,
            })
    }

    /// The simulated clock (advance it to make late changes and new calls appear).
    pub fn clock(&self) -> &SimClock {
        &self.state.clock
    }

    /// Simulated now.
    pub fn now(&self) -> DateTime<Utc> {
        self.state.clock.now()
    }

    /// Sets the faults of a provider (`account_id = None`: the provider and all its
    /// accounts, dropping account overrides) or of one account.
    pub fn set_faults(
        &self,
        provider: Provider,
        account_id: Option<&str>,
        faults: FaultConfig,
    ) -> Result<(), SimulatorError> {
        faults.validate(provider)?;
        if let Some(account_id) = account_id {
            self.require_account(provider, account_id)?;
        }
        self.state.controls.set_faults(provider, account_id, faults);
        Ok(())
    }

    /// The faults in force for an account.
    pub fn faults(&self, provider: Provider, account_id: &str) -> FaultConfig {
        self.state.controls.faults_for(provider, account_id)
    }

    /// Back to the configured faults everywhere.
    pub fn reset_faults(&self) {
        self.state.controls.reset_faults();
    }

    /// Replaces a provider's rate limits (windows restart).
    pub fn set_rate_limits(
        &self,
        provider: Provider,
        rules: Vec<RateLimitRule>,
        retry_after: bool,
    ) -> Result<(), SimulatorError> {
        if rules
            .iter()
            .any(|rule| rule.max_requests == 0 || rule.per_secs == 0)
        {
            return Err(SimulatorError::InvalidConfig(
                "rate limit rules need max_requests >= 1 and per_secs >= 1".into(),
            ));
        }
        let shared_consumer_share = self
            .state
            .controls
            .rate_limits(provider)
            .shared_consumer_share;
        self.state.controls.set_rate_limits(
            provider,
            RateLimitSettings {
                rules,
                retry_after,
                shared_consumer_share,
            },
        );
        Ok(())
    }

    /// Sets the share of each rate-limit window that another consumer of the provider's
    /// budget spends (0 = nobody else).
    pub fn set_shared_consumer(
        &self,
        provider: Provider,
        share: f64,
    ) -> Result<(), SimulatorError> {
        if !(0.0..1.0).contains(&share) {
            return Err(SimulatorError::InvalidConfig(format!(
                "shared consumer share must be in [0, 1), got {share}"
            )));
        }
        let mut settings = self.state.controls.rate_limits(provider);
        settings.shared_consumer_share = share;
        self.state.controls.set_rate_limits(provider, settings);
        Ok(())
    }

    pub fn rate_limits(&self, provider: Provider) -> RateLimitSettings {
        self.state.controls.rate_limits(provider)
    }

    /// Request counters of an account (`""`: requests whose credentials named none).
    pub fn stats(&self, provider: Provider, account_id: &str) -> Option<AccountStats> {
        self.state.controls.stats(provider, account_id)
    }

    pub fn all_stats(&self) -> Vec<AccountStats> {
        self.state.controls.all_stats()
    }

    pub fn reset_stats(&self) {
        self.state.controls.reset_stats();
    }

    /// The newest version of every call of the account as of `as_of` (default: simulated
    /// now), lazily, in creation order. Includes bad records (flagged).
    pub fn truth(
        &self,
        provider: Provider,
        account_id: &str,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<TruthIter, SimulatorError> {
        let account = self.require_account(provider, account_id)?;
        let as_of_ms = as_of.map_or_else(|| self.state.clock.now_ms(), |t| t.timestamp_millis());
        Ok(TruthIter::new(account.clone(), as_of_ms))
    }

    /// Count, bad count, checksum and revenue total of the truth (O(calls) time, O(1)
    /// memory; call it from `spawn_blocking` for millions of calls).
    pub fn truth_summary(
        &self,
        provider: Provider,
        account_id: &str,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<TruthSummary, SimulatorError> {
        Ok(self.truth(provider, account_id, as_of)?.summary())
    }

    /// The truth of one call by its position in the account (for spot checks).
    pub fn truth_of_call(
        &self,
        provider: Provider,
        account_id: &str,
        index: u64,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<TruthRecord>, SimulatorError> {
        let account = self.require_account(provider, account_id)?;
        if index >= account.calls {
            return Ok(None);
        }
        let as_of_ms = as_of.map_or_else(|| self.state.clock.now_ms(), |t| t.timestamp_millis());
        let facts = account.facts(index);
        Ok(facts.state_at(as_of_ms).and_then(|state| {
            (provider != Provider::Invoca || state.stage != Stage::Created)
                .then(|| truth::truth_record(account, &facts, &state))
        }))
    }

    /// Renders `template` (in the provider's token syntax) for call `index` as of `stage`,
    /// as the provider would send it. A token the simulator does not render is an error.
    pub fn render_webhook(
        &self,
        provider: Provider,
        account_id: &str,
        index: u64,
        stage: Stage,
        template: &str,
    ) -> Result<String, SimulatorError> {
        let account = self.require_account(provider, account_id)?;
        if index >= account.calls {
            return Err(SimulatorError::InvalidConfig(format!(
                "{provider} account {account_id} has no call {index}"
            )));
        }
        webhooks::render(account, &account.facts(index), stage, template)
    }

    /// The webhooks the account sends for the changes in `[from, to)` (simulated time), in
    /// sending order, for the configured share of calls.
    pub fn webhook_events(
        &self,
        provider: Provider,
        account_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<WebhookEvent>, SimulatorError> {
        let account = self.require_account(provider, account_id)?;
        let config = &self.state.config.provider(provider).webhooks;
        webhooks::events_between(
            account,
            from.timestamp_millis(),
            to.timestamp_millis(),
            config.share,
            config.template.as_deref(),
        )
    }

    /// Sends the webhooks of [`SimulatorHandle::webhook_events`] to `target`, retrying a
    /// failed delivery as the provider does (CallRail never).
    pub async fn send_webhooks(
        &self,
        provider: Provider,
        account_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        target: &WebhookTarget,
    ) -> Result<WebhookReport, SimulatorError> {
        let events = self.webhook_events(provider, account_id, from, to)?;
        let retries = self.state.config.provider(provider).webhooks.retries;
        Ok(webhooks::deliver(&events, target, retries).await)
    }

    fn require_account(
        &self,
        provider: Provider,
        account_id: &str,
    ) -> Result<&dataset::Account, SimulatorError> {
        self.state
            .dataset
            .account(provider, account_id)
            .ok_or_else(|| SimulatorError::UnknownAccount {
                provider,
                account_id: account_id.to_string(),
            })
    }
}
