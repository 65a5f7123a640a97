//! The admin API under `/_sim/` (never rate limited, never faulted, no credentials).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use callsync_schemas::Provider;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::RateLimitRule;
use crate::control::{FaultSetting, RateLimitSettings};
use crate::dataset::AccountCredentials;
use crate::http::{base_path, SharedState};
use crate::providers::parse_rfc3339_ms;
use crate::truth::TruthIter;

pub(crate) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/_sim/accounts", get(accounts))
        .route("/_sim/clock", get(clock).post(set_clock))
        .route(
            "/_sim/faults",
            get(faults).post(set_faults).delete(reset_faults),
        )
        .route("/_sim/rate-limits", get(rate_limits).post(set_rate_limits))
        .route("/_sim/stats", get(all_stats))
        .route("/_sim/stats/reset", post(reset_stats))
        .route("/_sim/stats/{provider}/{account_id}", get(account_stats))
        .route("/_sim/truth/{provider}/{account_id}", get(truth))
        .route(
            "/_sim/truth/{provider}/{account_id}/summary",
            get(truth_summary),
        )
}

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// An admin request that cannot be answered: status and message.
struct AdminFailure(StatusCode, String);

impl IntoResponse for AdminFailure {
    fn into_response(self) -> Response {
        admin_error(self.0, self.1)
    }
}

fn provider_of(text: &str) -> Result<Provider, AdminFailure> {
    text.parse::<Provider>()
        .map_err(|error| AdminFailure(StatusCode::NOT_FOUND, error.to_string()))
}

#[derive(Serialize)]
struct AccountListing {
    provider: Provider,
    account_id: String,
    /// Path prefix of the provider's API on this server (prepend `http://host:port`).
    base_path: &'static str,
    credentials: AccountCredentials,
    calls_total: u64,
    calls_created_now: u64,
    utc_offset_minutes: i32,
}

async fn accounts(State(state): State<SharedState>) -> Response {
    let now_ms = state.clock.now_ms();
    let listing: Vec<AccountListing> = Provider::ALL
        .iter()
        .flat_map(|&provider| state.dataset.accounts(provider).iter())
        .map(|account| AccountListing {
            provider: account.provider,
            account_id: account.id.clone(),
            base_path: base_path(account.provider),
            credentials: account.credentials.clone(),
            calls_total: account.calls,
            calls_created_now: account.calls_created_by(now_ms),
            utc_offset_minutes: account.utc_offset_minutes,
        })
        .collect();
    Json(listing).into_response()
}

#[derive(Serialize)]
struct ClockView {
    now: DateTime<Utc>,
    speed: f64,
}

/// `{"advance_secs": 600}`, `{"set": "2026-01-16T00:00:00Z"}` and/or `{"speed": 60}`.
#[derive(Deserialize)]
struct ClockChange {
    advance_secs: Option<f64>,
    set: Option<String>,
    speed: Option<f64>,
}

async fn clock(State(state): State<SharedState>) -> Response {
    Json(ClockView {
        now: state.clock.now(),
        speed: state.clock.speed(),
    })
    .into_response()
}

async fn set_clock(State(state): State<SharedState>, Json(change): Json<ClockChange>) -> Response {
    if let Some(set) = change.set.as_deref() {
        let Some(ms) = parse_rfc3339_ms(set) else {
            return admin_error(StatusCode::BAD_REQUEST, "set must be an RFC 3339 time");
        };
        state.clock.set(crate::clock::millis_to_datetime(ms));
    }
    if let Some(seconds) = change.advance_secs {
        if !seconds.is_finite() || seconds < 0.0 {
            return admin_error(StatusCode::BAD_REQUEST, "advance_secs must be >= 0");
        }
        state.clock.advance(Duration::from_secs_f64(seconds));
    }
    if let Some(speed) = change.speed {
        state.clock.set_speed(speed);
    }
    clock(State(state)).await
}

async fn faults(State(state): State<SharedState>) -> Response {
    Json(state.controls.faults_snapshot()).into_response()
}

async fn set_faults(
    State(state): State<SharedState>,
    Json(setting): Json<FaultSetting>,
) -> Response {
    if let Err(error) = setting.faults.validate(setting.provider) {
        return admin_error(StatusCode::BAD_REQUEST, error.to_string());
    }
    if let Some(account_id) = setting.account_id.as_deref() {
        if state
            .dataset
            .account(setting.provider, account_id)
            .is_none()
        {
            return admin_error(StatusCode::NOT_FOUND, "no such account");
        }
    }
    state.controls.set_faults(
        setting.provider,
        setting.account_id.as_deref(),
        setting.faults,
    );
    faults(State(state)).await
}

async fn reset_faults(State(state): State<SharedState>) -> Response {
    state.controls.reset_faults();
    faults(State(state)).await
}

#[derive(Serialize, Deserialize)]
struct RateLimitView {
    provider: Provider,
    rules: Vec<RateLimitRule>,
    retry_after: bool,
    #[serde(default)]
    shared_consumer_share: f64,
}

async fn rate_limits(State(state): State<SharedState>) -> Response {
    let views: Vec<RateLimitView> = Provider::ALL
        .iter()
        .map(|&provider| {
            let settings = state.controls.rate_limits(provider);
            RateLimitView {
                provider,
                rules: settings.rules,
                retry_after: settings.retry_after,
                shared_consumer_share: settings.shared_consumer_share,
            }
        })
        .collect();
    Json(views).into_response()
}

async fn set_rate_limits(
    State(state): State<SharedState>,
    Json(view): Json<RateLimitView>,
) -> Response {
    if view
        .rules
        .iter()
        .any(|rule| rule.max_requests == 0 || rule.per_secs == 0)
    {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "rules need max_requests >= 1 and per_secs >= 1",
        );
    }
    state.controls.set_rate_limits(
        view.provider,
        RateLimitSettings {
            rules: view.rules,
            retry_after: view.retry_after,
            shared_consumer_share: view.shared_consumer_share.clamp(0.0, 0.99),
        },
    );
    rate_limits(State(state)).await
}

async fn all_stats(State(state): State<SharedState>) -> Response {
    Json(state.controls.all_stats()).into_response()
}

async fn reset_stats(State(state): State<SharedState>) -> Response {
    state.controls.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

async fn account_stats(
    State(state): State<SharedState>,
    Path((provider, account_id)): Path<(String, String)>,
) -> Response {
    let provider = match provider_of(&provider) {
        Ok(provider) => provider,
        Err(failure) => return failure.into_response(),
    };
    match state.controls.stats(provider, &account_id) {
        Some(stats) => Json(stats).into_response(),
        None => admin_error(StatusCode::NOT_FOUND, "no such account"),
    }
}

#[derive(Deserialize)]
struct AsOf {
    as_of: Option<String>,
}

fn truth_iter(
    state: &SharedState,
    provider: &str,
    account_id: &str,
    as_of: &AsOf,
) -> Result<TruthIter, AdminFailure> {
    let provider = provider_of(provider)?;
    let Some(account) = state.dataset.account(provider, account_id) else {
        return Err(AdminFailure(
            StatusCode::NOT_FOUND,
            "no such account".into(),
        ));
    };
    let as_of_ms = match as_of.as_of.as_deref() {
        None => state.clock.now_ms(),
        Some(text) => parse_rfc3339_ms(text).ok_or_else(|| {
            AdminFailure(
                StatusCode::BAD_REQUEST,
                "as_of must be an RFC 3339 time".into(),
            )
        })?,
    };
    Ok(TruthIter::new(account.clone(), as_of_ms))
}

/// NDJSON chunks of up to 1000 truth records, generated as the client reads.
struct NdjsonChunks {
    records: TruthIter,
}

impl Iterator for NdjsonChunks {
    type Item = Result<Bytes, Infallible>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut chunk = Vec::with_capacity(64 * 1024);
        for record in self.records.by_ref().take(1000) {
            if serde_json::to_writer(&mut chunk, &record).is_ok() {
                chunk.push(b'\n');
            }
        }
        (!chunk.is_empty()).then(|| Ok(Bytes::from(chunk)))
    }
}

async fn truth(
    State(state): State<SharedState>,
    Path((provider, account_id)): Path<(String, String)>,
    Query(as_of): Query<AsOf>,
) -> Response {
    let records = match truth_iter(&state, &provider, &account_id, &as_of) {
        Ok(records) => records,
        Err(failure) => return failure.into_response(),
    };
    let body = Body::from_stream(futures::stream::iter(NdjsonChunks { records }));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

async fn truth_summary(
    State(state): State<SharedState>,
    Path((provider, account_id)): Path<(String, String)>,
    Query(as_of): Query<AsOf>,
) -> Response {
    match truth_iter(&state, &provider, &account_id, &as_of) {
        Ok(records) => {
            let summary = tokio::task::spawn_blocking(move || records.summary()).await;
            match summary {
                Ok(summary) => Json(summary).into_response(),
                Err(error) => admin_error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
            }
        }
        Err(failure) => failure.into_response(),
    }
}
