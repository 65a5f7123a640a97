//! The five providers' list-calls APIs. Each module owns its routes' parsing, paging, record
//! shape and error bodies; this module holds what they share.

pub(crate) mod callrail;
pub(crate) mod invoca;
pub(crate) mod retreaver;
pub(crate) mod ringba;
pub(crate) mod trackdrive;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use callsync_schemas::Provider;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone};
use serde_json::json;

use crate::control::Throttle;
use crate::dataset::{Account, CallFacts};

/// Why a request is answered with an error.
#[derive(Debug)]
pub(crate) enum ApiError {
    Unauthorized(String),
    Forbidden(String),
    BadRequest(String),
    NotFound(String),
    NotAcceptable(String),
    /// Over a rate limit (`None`: injected by a fault).
    RateLimited(Option<Throttle>),
    ServerError(u16),
    GatewayTimeout,
    Internal(String),
}

impl ApiError {
    fn status(&self, provider: Provider) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            // Invoca answers validation errors with 403.
            ApiError::BadRequest(_) if provider == Provider::Invoca => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ServerError(status) => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ApiError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::Unauthorized(message)
            | ApiError::Forbidden(message)
            | ApiError::BadRequest(message)
            | ApiError::NotFound(message)
            | ApiError::NotAcceptable(message)
            | ApiError::Internal(message) => message.clone(),
            ApiError::RateLimited(_) => "Too many requests".into(),
            ApiError::ServerError(_) => "Internal server error".into(),
            ApiError::GatewayTimeout => "Gateway timeout".into(),
        }
    }
}

fn window_name(per_secs: u64) -> (String, String) {
    match per_secs {
        1 => ("Second".into(), "perSecond".into()),
        60 => ("Minute".into(), "perMinute".into()),
        3600 => ("Hour".into(), "perHour".into()),
        86_400 => ("Day".into(), "perDay".into()),
        other => (format!("{other}Seconds"), format!("per{other}Seconds")),
    }
}

/// The error answer in the provider's style.
pub(crate) fn error_response(provider: Provider, error: ApiError) -> Response {
    let status = error.status(provider);
    if matches!(status.as_u16(), 502..=504) {
        let body = format!(
            "<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>"
        );
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        return response;
    }
    let message = error.message();
    let body = match (provider, &error) {
        (Provider::Ringba, ApiError::RateLimited(throttle)) => {
            let (max_requests, per_secs, current_count) = throttle
                .map(|t| (t.rule.max_requests, t.rule.per_secs, t.current_count))
                .unwrap_or((80, 60, 81));
            let (window, window_key) = window_name(per_secs);
            json!({
                "transactionId": "TR00000000000000000000000000000000",
                "isRateLimited": true,
                "exceedingRateLimit": window,
                "rateLimitedResource": "GetCallLogs",
                "message": format!("Your account has been rate limited at the '{window}' for the resource 'GetCallLogs'"),
                "rateLimit": { window_key: { "limit": max_requests, "currentCount": current_count } }
            })
        }
        (Provider::Ringba, _) => json!({ "isSuccessful": false, "message": message }),
        (Provider::Invoca, _) => {
            let class = match error {
                ApiError::Unauthorized(_) | ApiError::Forbidden(_) => "unauthorized",
                ApiError::BadRequest(_) => "invalid_data",
                ApiError::NotFound(_) => "not_found",
                _ => "error",
            };
            json!({ "errors": { "class": class, "invalid_data": message } })
        }
        (Provider::TrackDrive, _) => {
            json!({ "status": status.as_u16(), "errors": { "base": [message] } })
        }
        (Provider::Retreaver | Provider::CallRail, _) => json!({ "error": message }),
    };
    (status, axum::Json(body)).into_response()
}

/// RFC 3339 to epoch ms; lenient about a `+` that arrived unencoded (as a space).
pub(crate) fn parse_rfc3339_ms(value: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(value.trim())
        .or_else(|_| DateTime::parse_from_rfc3339(&value.trim().replace(' ', "+")))
        .ok()
        .map(|instant| instant.timestamp_millis())
}

/// `YYYY-MM-DD`.
pub(crate) fn parse_date(value: &str) -> Option<(i64, u32, u32)> {
    use chrono::Datelike;
    let date = NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d").ok()?;
    Some((i64::from(date.year()), date.month(), date.day()))
}

/// `YYYY-MM-DD HH:MM:SS ±ZZZZ` (TrackDrive); without an offset, the account's zone. A `+`
/// that arrived unencoded (as a space) is accepted.
pub(crate) fn parse_spaced_time_ms(value: &str, default_offset_minutes: i32) -> Option<i64> {
    let value = value.trim();
    if let Ok(instant) = DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S %z") {
        return Some(instant.timestamp_millis());
    }
    if let Some(position) = value.rfind(' ') {
        let (head, tail) = value.split_at(position);
        let repaired = format!("{} +{}", head.trim_end(), &tail[1..]);
        if let Ok(instant) = DateTime::parse_from_str(&repaired, "%Y-%m-%d %H:%M:%S %z") {
            return Some(instant.timestamp_millis());
        }
    }
    let naive = NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").ok()?;
    let zone = chrono::FixedOffset::east_opt(default_offset_minutes * 60)?;
    zone.from_local_datetime(&naive)
        .single()
        .map(|instant| instant.timestamp_millis())
}

/// The `call_id` the connector maps each provider's record to (see the crate docs).
pub(crate) fn call_id(account: &Account, facts: &CallFacts) -> String {
    match account.provider {
        Provider::Retreaver => retreaver::call_uuid(facts),
        Provider::Ringba => ringba::inbound_call_id(facts),
        Provider::Invoca => invoca::complete_call_id(facts),
        Provider::CallRail => callrail::call_id(facts),
        Provider::TrackDrive => trackdrive::call_uuid(facts),
    }
}

/// Takes `size` items after skipping `offset` from an index range, ascending or descending.
pub(crate) fn slice_range(
    range: std::ops::Range<u64>,
    descending: bool,
    offset: u64,
    size: usize,
) -> Vec<u64> {
    let total = range.end.saturating_sub(range.start);
    if offset >= total {
        return Vec::new();
    }
    let take = (total - offset).min(size as u64);
    if descending {
        let top = range.end - 1 - offset;
        (0..take).map(|step| top - step).collect()
    } else {
        let bottom = range.start + offset;
        (0..take).map(|step| bottom + step).collect()
    }
}
