//! The HTTP server: routes, the admission path every list request takes (credentials, rate
//! limit, faults), and small helpers shared by the provider modules.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header::{HeaderName, CONTENT_TYPE, HOST, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use callsync_schemas::Provider;
use tokio_util::sync::CancellationToken;

use crate::clock::SimClock;
use crate::config::SimulatorConfig;
use crate::control::{AccountRuntime, Controls, Counter, FaultDraw, Throttle};
use crate::dataset::{Account, Dataset};
use crate::providers::{self, ApiError};
use crate::{admin, rng};

/// Everything the server and the handles share.
#[derive(Debug)]
pub(crate) struct SimState {
    pub config: SimulatorConfig,
    pub dataset: Dataset,
    pub clock: SimClock,
    pub controls: Controls,
    pub shutdown: CancellationToken,
}

pub(crate) type SharedState = Arc<SimState>;

pub(crate) fn router(state: SharedState) -> Router {
    Router::new()
        .route(
            "/retreaver/api/{version}/{resource}",
            get(providers::retreaver::list_calls),
        )
        .route(
            "/ringba/v2/{account_id}/calllogs",
            post(providers::ringba::list_calls),
        )
        .route(
            "/invoca/api/{api_version}/{role}/transactions/{file}",
            get(providers::invoca::list_transactions),
        )
        .route(
            "/callrail/v3/a/{account_id}/calls.json",
            get(providers::callrail::list_calls),
        )
        .route(
            "/trackdrive/api/v1/calls",
            get(providers::trackdrive::list_calls),
        )
        .route(
            "/trackdrive/api/v1/calls.json",
            get(providers::trackdrive::list_calls),
        )
        .merge(admin::routes())
        .with_state(state)
}

/// The path prefix of each provider's API on the simulator (what replaces the real host).
pub(crate) fn base_path(provider: Provider) -> &'static str {
    match provider {
        Provider::Retreaver => "/retreaver",
        Provider::Ringba => "/ringba/v2",
        Provider::Invoca => "/invoca",
        Provider::CallRail => "/callrail/v3",
        Provider::TrackDrive => "/trackdrive/api/v1",
    }
}

/// A successful page before faults are applied.
pub(crate) struct Page {
    pub body: Vec<u8>,
    pub records: usize,
    pub headers: Vec<(HeaderName, String)>,
}

impl Page {
    pub(crate) fn json<T: serde::Serialize>(value: &T, records: usize) -> Result<Page, ApiError> {
        let mut body = Vec::with_capacity(256 + records * 1024);
        serde_json::to_writer(&mut body, value)
            .map_err(|error| ApiError::Internal(format!("cannot serialise the page: {error}")))?;
        Ok(Page {
            body,
            records,
            headers: Vec::new(),
        })
    }
}

/// A request that passed credentials, the rate limit and the pre-body faults.
pub(crate) struct Admitted<'a> {
    pub account: &'a Account,
    runtime: &'a AccountRuntime,
    fault: FaultDraw,
    fault_word: u64,
}

/// Counts a request whose credentials named no account and answers `error`.
pub(crate) fn reject_unattributed(
    state: &SimState,
    provider: Provider,
    error: ApiError,
) -> Response {
    let runtime = state.controls.unattributed(provider);
    state.controls.note_request(runtime);
    runtime.count(Counter::AuthRejected);
    providers::error_response(provider, error)
}

/// Counts a request against `account` and answers `error` (credentials of another account,
/// invalid parameters before admission).
pub(crate) fn reject_for_account(state: &SimState, account: &Account, error: ApiError) -> Response {
    if let Some(runtime) = state.controls.runtime(account.provider, &account.id) {
        state.controls.note_request(runtime);
        runtime.count(match error {
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) => Counter::AuthRejected,
            _ => Counter::BadRequests,
        });
    }
    providers::error_response(account.provider, error)
}

fn rate_limited_response(
    state: &SimState,
    provider: Provider,
    throttle: Option<Throttle>,
    retry_after: bool,
) -> Response {
    let retry_after_secs = throttle.map_or(1, |t| t.retry_after_secs);
    let mut response = providers::error_response(provider, ApiError::RateLimited(throttle));
    // a provider that throttles with a 2xx body (Ringba's isRateLimited)
    if state.config.provider(provider).rate_limited_status == 200 {
        *response.status_mut() = StatusCode::OK;
    }
    if retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    response
}

/// Sleeps, unless the simulator shuts down first (then answers `false`).
async fn pause(state: &SimState, duration: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = state.shutdown.cancelled() => false,
    }
}

/// The admission path of an authenticated request: count it, apply injected credential
/// rejection, the account's rate limit, injected 429s, latency, timeouts and 5xx.
pub(crate) async fn admit<'a>(
    state: &'a SimState,
    account: &'a Account,
) -> Result<Admitted<'a>, Response> {
    let provider = account.provider;
    let Some(runtime) = state.controls.runtime(provider, &account.id) else {
        return Err(providers::error_response(
            provider,
            ApiError::NotFound("no such account".into()),
        ));
    };
    let request_number = state.controls.note_request(runtime);
    let faults = state.controls.faults_for(provider, &account.id);
    let retry_after = state.controls.rate_limits(provider).retry_after;
    if faults.reject_credentials {
        runtime.count(Counter::InjectedAuthRejected);
        return Err(providers::error_response(
            provider,
            ApiError::Unauthorized("the credentials were revoked".into()),
        ));
    }
    if let Err(throttle) = state.controls.check_rate(runtime) {
        runtime.count(Counter::RateLimited);
        return Err(rate_limited_response(
            state,
            provider,
            Some(throttle),
            retry_after,
        ));
    }
    let fault = state.controls.draw_fault(runtime, request_number, &faults);
    if fault == FaultDraw::RateLimited {
        runtime.count(Counter::InjectedRateLimited);
        return Err(rate_limited_response(state, provider, None, retry_after));
    }
    if faults.latency_ms > 0 && !pause(state, Duration::from_millis(faults.latency_ms)).await {
        return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
    }
    match fault {
        FaultDraw::Timeout => {
            runtime.count(Counter::Timeouts);
            pause(state, Duration::from_secs(faults.hang_secs)).await;
            Err(providers::error_response(
                provider,
                ApiError::GatewayTimeout,
            ))
        }
        FaultDraw::ServerError(status) => {
            runtime.count(Counter::ServerErrors);
            Err(providers::error_response(
                provider,
                ApiError::ServerError(status),
            ))
        }
        _ => Ok(Admitted {
            account,
            runtime,
            fault,
            fault_word: state.controls.fault_word(runtime, request_number),
        }),
    }
}

impl Admitted<'_> {
    /// Answers a built page (applying a drawn truncation or corruption) or an error.
    pub(crate) fn respond(self, page: Result<Page, ApiError>) -> Response {
        let provider = self.account.provider;
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                self.runtime.count(Counter::BadRequests);
                return providers::error_response(provider, error);
            }
        };
        let Page {
            mut body,
            records,
            headers,
        } = page;
        match self.fault {
            FaultDraw::Truncated => {
                self.runtime.count(Counter::Truncated);
                let length = body.len();
                let keep =
                    length / 4 + rng::below(self.fault_word, (length / 2).max(1) as u64) as usize;
                body.truncate(keep.min(length.saturating_sub(1)));
            }
            FaultDraw::Malformed => {
                self.runtime.count(Counter::Malformed);
                body = corrupt(body, self.fault_word);
            }
            _ => {
                self.runtime.count(Counter::Succeeded);
                self.runtime.count_records(records as u64);
            }
        }
        let mut response = (StatusCode::OK, body).into_response();
        let response_headers = response.headers_mut();
        response_headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response_headers.insert(name, value);
            }
        }
        response
    }
}

/// Makes a body that no JSON parser accepts: either an HTML maintenance page served as
/// JSON, or the page with a raw NUL byte in the middle.
fn corrupt(mut body: Vec<u8>, word: u64) -> Vec<u8> {
    if word & 1 == 0 {
        return b"<html><head><title>Service Unavailable</title></head><body><h1>Maintenance</h1></body></html>"
            .to_vec();
    }
    let middle = body.len() / 2;
    body.insert(middle, 0);
    body
}

/// Query parameters in order, decoded (`a[]=1&a[]=2` keeps both).
pub(crate) struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .map(|raw| {
                url::form_urlencoded::parse(raw.as_bytes())
                    .map(|(name, value)| (name.into_owned(), value.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        QueryParams { pairs }
    }

    /// The last value of `name`, if present and non-empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The query string with `name` set to `value` (added when absent).
    pub(crate) fn with(&self, name: &str, value: &str) -> String {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        let mut replaced = false;
        for (key, existing) in &self.pairs {
            if key == name {
                if !replaced {
                    serializer.append_pair(key, value);
                    replaced = true;
                }
            } else {
                serializer.append_pair(key, existing);
            }
        }
        if !replaced {
            serializer.append_pair(name, value);
        }
        serializer.finish()
    }

    /// Parses an unsigned integer parameter (`None` when absent).
    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|value| {
                value.trim().parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(format!("{name} must be a non-negative integer"))
                })
            })
            .transpose()
    }
}

/// The page size a request asks for, defaulted and bounded by the provider's settings.
pub(crate) fn page_size(
    state: &SimState,
    provider: Provider,
    name: &str,
    requested: Option<u64>,
) -> Result<usize, ApiError> {
    let config = state.config.provider(provider);
    let size = match requested {
        None => u64::from(config.default_page_size),
        Some(0) => return Err(ApiError::BadRequest(format!("{name} must be at least 1"))),
        Some(size) => size,
    };
    if size > u64::from(config.max_page_size) {
        if config.reject_oversized_pages {
            return Err(ApiError::BadRequest(format!(
                "{name} must be at most {}",
                config.max_page_size
            )));
        }
        return Ok(config.max_page_size as usize);
    }
    Ok(size as usize)
}

/// `http://{Host}{path}?{query}` for absolute links in headers and bodies.
pub(crate) fn absolute_url(headers: &HeaderMap, uri: &Uri, query: &str) -> String {
    let host = headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}{}?{query}", uri.path())
}
