//! Ringba: `POST /v2/{accountId}/calllogs` with `Authorization: Token …` and a JSON body
//! (`reportStart`, `reportEnd`, `offset`, `size`, `orderByColumns`, `valueColumns`); the
//! answer is `{"isSuccessful", "transactionId", "report": {"partialResult", "totalCount",
//! "records"}}` with epoch-millisecond dates and empty strings for absent ids.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::response::Response;
use callsync_schemas::{CallStatus, Provider};
use serde::{Deserialize, Serialize};

use super::{parse_rfc3339_ms, slice_range, ApiError};
use crate::dataset::{Account, CallFacts, CallState, Outcome, Stage};
use crate::format::{e164, garbled, iso_utc_millis, money_number, prefixed_hex, push_hex};
use crate::http::{
    admit, page_size, reject_for_account, reject_unattributed, Page, SharedState, SimState,
};
use crate::names::{BUYERS, CAMPAIGNS, PUBLISHERS};
use crate::rng::mix;
use crate::BadRecordKind;

pub(crate) fn inbound_call_id(facts: &CallFacts) -> String {
    prefixed_hex("RGB", facts.id_words[0], facts.id_words[1])
}

/// Ringba has no status column; `incompleteCallReason` is `""` for connected calls.
pub(crate) fn incomplete_reason(facts: &CallFacts) -> &'static str {
    match facts.outcome {
        Outcome::Answered => "",
        Outcome::NoAnswer => "No Answer",
        Outcome::Busy => "Busy",
        Outcome::Failed => "Failed",
    }
}

/// The normalized status a connector derives from `isLive`, `hasConnected` and
/// `incompleteCallReason`.
pub(crate) fn normalized_status(is_live: bool, has_connected: bool, reason: &str) -> CallStatus {
    if is_live {
        return CallStatus::InProgress;
    }
    if has_connected {
        return CallStatus::Completed;
    }
    match reason {
        "No Answer" => CallStatus::NoAnswer,
        "Busy" => CallStatus::Busy,
        "Failed" => CallStatus::Failed,
        _ => CallStatus::Unknown,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallLogsRequest {
    report_start: Option<String>,
    report_end: Option<String>,
    offset: Option<u64>,
    size: Option<u64>,
    #[serde(default)]
    order_by_columns: Vec<OrderByColumn>,
    #[serde(default)]
    value_columns: Vec<ValueColumn>,
}

#[derive(Debug, Deserialize)]
struct OrderByColumn {
    column: String,
    #[serde(default)]
    direction: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ValueColumn {
    column: String,
}

pub(crate) async fn list_calls(
    State(state): State<SharedState>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider = Provider::Ringba;
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Token "))
        .map(str::trim);
    let Some(token) = token else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized("Authorization: Token {apiToken} is required".into()),
        );
    };
    let Some(token_account) = state.dataset.account_by_key(provider, token) else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized("the API token is not valid".into()),
        );
    };
    if token_account.id != account_id {
        return reject_for_account(
            &state,
            token_account,
            ApiError::Forbidden(format!("the token has no access to account {account_id}")),
        );
    }
    let account = token_account;
    let admitted = match admit(&state, account).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let page = serde_json::from_slice::<CallLogsRequest>(&body)
        .map_err(|error| ApiError::BadRequest(format!("invalid request body: {error}")))
        .and_then(|request| build_page(&state, account, &request));
    admitted.respond(page)
}

fn build_page(
    state: &SimState,
    account: &Account,
    request: &CallLogsRequest,
) -> Result<Page, ApiError> {
    let now_ms = state.clock.now_ms();
    let required = |value: &Option<String>, name: &str| {
        value
            .as_deref()
            .ok_or_else(|| ApiError::BadRequest(format!("{name} is required")))
            .and_then(|text| {
                parse_rfc3339_ms(text).ok_or_else(|| {
                    ApiError::BadRequest(format!("{name} must be an ISO 8601 UTC time"))
                })
            })
    };
    let start_ms = required(&request.report_start, "reportStart")?;
    let end_ms = required(&request.report_end, "reportEnd")?;
    let size = page_size(state, Provider::Ringba, "size", request.size)?;
    let offset = request.offset.unwrap_or(0);
    let descending = match request.order_by_columns.first() {
        Some(order) if order.column == "callDt" => !matches!(
            order
                .direction
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("asc")
        ),
        _ => true,
    };
    let range = account.index_range(start_ms, end_ms, now_ms);
    let total = range.end - range.start;
    let records: Vec<RingbaRecord> = slice_range(range, descending, offset, size)
        .into_iter()
        .filter_map(|index| {
            let facts = account.facts(index);
            let state = facts.state_at(now_ms)?;
            Some(record(&facts, &state))
        })
        .collect();
    let mut transaction_id = String::from("TR");
    push_hex(
        &mut transaction_id,
        mix(account.key, now_ms as u64 ^ offset),
        16,
        false,
    );
    let count = records.len();
    if request.value_columns.is_empty() {
        return Page::json(
            &Envelope {
                is_successful: true,
                transaction_id,
                report: Report {
                    partial_result: false,
                    total_count: total,
                    records,
                },
            },
            count,
        );
    }
    // Only the requested columns.
    let wanted: Vec<&str> = request
        .value_columns
        .iter()
        .map(|column| column.column.as_str())
        .collect();
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|record| {
            let mut value = serde_json::to_value(record).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.retain(|key, _| wanted.contains(&key.as_str()));
            }
            value
        })
        .collect();
    Page::json(
        &Envelope {
            is_successful: true,
            transaction_id,
            report: Report {
                partial_result: false,
                total_count: total,
                records,
            },
        },
        count,
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<R> {
    is_successful: bool,
    transaction_id: String,
    report: Report<R>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<R> {
    partial_result: bool,
    total_count: u64,
    records: Vec<R>,
}

/// A number, or (for a deliberately bad record) text where a number belongs.
#[derive(Serialize)]
#[serde(untagged)]
enum EpochMillis {
    Number(i64),
    Text(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RingbaRecord {
    inbound_call_id: String,
    call_dt: EpochMillis,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_connection_dt: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_completed_dt: Option<i64>,
    inbound_phone_number: String,
    number: String,
    number_id: String,
    is_from_number_pool: bool,
    number_pool_id: &'static str,
    number_pool_name: &'static str,
    campaign_id: String,
    campaign_name: &'static str,
    publisher_id: String,
    publisher_name: &'static str,
    publisher_sub_id: &'static str,
    target_id: String,
    target_name: &'static str,
    target_number: String,
    buyer: &'static str,
    buyer_id: String,
    target_group_name: &'static str,
    call_length_in_seconds: u32,
    connected_call_length_in_seconds: u32,
    time_to_call_in_seconds: u32,
    time_to_connect_in_seconds: u32,
    end_call_source: &'static str,
    has_connected: bool,
    has_payout: bool,
    has_converted: bool,
    has_recording: bool,
    has_previously_connected: bool,
    is_live: bool,
    is_duplicate: bool,
    incomplete_call_reason: &'static str,
    no_conversion_reason: &'static str,
    was_conversion_adjusted: bool,
    was_payout_adjusted: bool,
    conversion_amount: f64,
    payout_amount: f64,
    profit_net: f64,
    profit_gross: f64,
    total_cost: f64,
    telco_cost: f64,
    recording_url: String,
}

fn short_id(prefix: &str, word: u64) -> String {
    prefixed_hex(prefix, word, mix(word, 0x5151))
}

/// The call as the call-logs API serves it, for webhooks.
pub(crate) fn record_json(facts: &CallFacts, state: &CallState) -> serde_json::Value {
    serde_json::to_value(record(facts, state)).unwrap_or_default()
}

fn record(facts: &CallFacts, state: &CallState) -> RingbaRecord {
    let ended = state.stage != Stage::Created;
    let connected = ended && facts.answered();
    let routed = facts.outcome != Outcome::Failed;
    let (campaign_name, tracking_number) = CAMPAIGNS[facts.campaign];
    let (buyer_name, buyer_number) = BUYERS[facts.buyer];
    let call_dt = if facts.bad == Some(BadRecordKind::UnparseableStartTime) {
        EpochMillis::Text(garbled(iso_utc_millis(facts.created_ms)))
    } else {
        EpochMillis::Number(facts.created_ms)
    };
    let has_recording = connected && facts.id_words[1] & 0x8 == 0;
    let adjusted = state.stage >= Stage::RevenueAdjusted;
    let profit_gross = state.revenue_cents - state.payout_cents;
    RingbaRecord {
        inbound_call_id: if facts.bad == Some(BadRecordKind::MissingId) {
            String::new()
        } else {
            inbound_call_id(facts)
        },
        call_dt,
        call_connection_dt: connected
            .then_some(facts.created_ms + i64::from(facts.ivr_secs + facts.ring_secs) * 1000),
        call_completed_dt: ended.then_some(facts.ended_ms()),
        inbound_phone_number: e164(facts.caller_national),
        number: e164(tracking_number),
        number_id: format!("PV1{tracking_number}"),
        is_from_number_pool: false,
        number_pool_id: "",
        number_pool_name: "",
        campaign_id: short_id("CA", 0xCA00 + facts.campaign as u64),
        campaign_name,
        publisher_id: short_id("PI", 0xAF00 + facts.publisher as u64),
        publisher_name: PUBLISHERS[facts.publisher],
        publisher_sub_id: "",
        target_id: if routed {
            short_id("TA", 0x7A00 + facts.buyer as u64)
        } else {
            String::new()
        },
        target_name: if routed { buyer_name } else { "" },
        target_number: if routed {
            e164(buyer_number)
        } else {
            String::new()
        },
        buyer: if routed { buyer_name } else { "" },
        buyer_id: if routed {
            short_id("BU", 0xB000 + facts.buyer as u64)
        } else {
            String::new()
        },
        target_group_name: "",
        call_length_in_seconds: if ended { facts.total_secs } else { 0 },
        connected_call_length_in_seconds: if connected { facts.talk_secs } else { 0 },
        time_to_call_in_seconds: 0,
        time_to_connect_in_seconds: if connected { facts.ring_secs } else { 0 },
        end_call_source: if !ended {
            ""
        } else if facts.id_words[1] & 1 == 0 {
            "Caller"
        } else {
            "Target"
        },
        has_connected: connected,
        has_payout: state.payout_cents > 0,
        has_converted: state.converted,
        has_recording,
        has_previously_connected: false,
        is_live: !ended,
        is_duplicate: false,
        incomplete_call_reason: if ended { incomplete_reason(facts) } else { "" },
        no_conversion_reason: if ended && !state.converted {
            "NoConversionEvent"
        } else {
            ""
        },
        was_conversion_adjusted: adjusted,
        was_payout_adjusted: adjusted && facts.adjusted_payout_cents != facts.payout_cents,
        conversion_amount: money_number(state.revenue_cents),
        payout_amount: money_number(state.payout_cents),
        profit_net: money_number(profit_gross - facts.cost_cents),
        profit_gross: money_number(profit_gross),
        total_cost: money_number(facts.cost_cents),
        telco_cost: money_number(facts.cost_cents),
        recording_url: if has_recording {
            format!(
                "https://media.ringba.example/recording-public?v=v1&k={}",
                inbound_call_id(facts)
            )
        } else {
            String::new()
        },
    }
}
