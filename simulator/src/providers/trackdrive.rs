//! TrackDrive: `GET /api/v1/calls` with `Authorization: Basic base64(public:private)`;
//! `cursor=-1` first, then `metadata.next_cursor`, and `next_cursor == 0` marks the last
//! page; `page` is accepted too. `created_at_from`/`created_at_to` as `YYYY-MM-DD HH:MM:SS
//! ±ZZZZ`. Answer `{"status": 200, "errors": {}, "calls": […], "metadata": {…}}`.

use axum::extract::{RawQuery, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use callsync_schemas::{CallStatus, Provider};
use serde::Serialize;

use super::{parse_spaced_time_ms, slice_range, ApiError};
use crate::dataset::{Account, CallFacts, CallState, Outcome, Stage};
use crate::format::{e164, garbled, iso_local, money_string, uuid};
use crate::http::{
    admit, page_size, reject_unattributed, Page, QueryParams, SharedState, SimState,
};
use crate::names::{BUYERS, CAMPAIGNS, CITIES, PUBLISHERS};
use crate::BadRecordKind;

/// Numeric ids grow with the call index: `base + 3·index + (0..3)`.
const ID_STRIDE: u64 = 3;

fn id_base(account: &Account) -> u64 {
    100_000_000 + account.key % 400_000_000
}

pub(crate) fn numeric_id(account: &Account, facts: &CallFacts) -> u64 {
    id_base(account) + ID_STRIDE * facts.index + facts.id_words[0] % ID_STRIDE
}

fn index_of_id(account: &Account, id: u64) -> Option<u64> {
    id.checked_sub(id_base(account))
        .map(|offset| offset / ID_STRIDE)
}

pub(crate) fn call_uuid(facts: &CallFacts) -> String {
    uuid(facts.id_words[1].rotate_left(7), facts.id_words[0])
}

pub(crate) fn status_text(facts: &CallFacts, state: &CallState) -> &'static str {
    if state.stage == Stage::Created {
        return "in-progress";
    }
    match facts.outcome {
        Outcome::Answered => "completed",
        Outcome::NoAnswer => "no-answer",
        Outcome::Busy => "busy",
        Outcome::Failed => "failed",
    }
}

/// The normalized status a connector derives from `status`.
pub(crate) fn normalized_status(status_text: &str) -> CallStatus {
    match status_text {
        "in-progress" => CallStatus::InProgress,
        "completed" => CallStatus::Completed,
        "no-answer" => CallStatus::NoAnswer,
        "busy" => CallStatus::Busy,
        "failed" => CallStatus::Failed,
        _ => CallStatus::Unknown,
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let encoded = value.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (public_key, private_key) = text.split_once(':')?;
    Some((public_key.to_string(), private_key.to_string()))
}

pub(crate) async fn list_calls(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Response {
    let provider = Provider::TrackDrive;
    let Some((public_key, private_key)) = basic_credentials(&headers) else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized(
                "HTTP Basic authentication with public_key:private_key is required".into(),
            ),
        );
    };
    let account = state
        .dataset
        .account_by_key(provider, &public_key)
        .filter(|account| account.credentials.api_secret.as_deref() == Some(private_key.as_str()));
    let Some(account) = account else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized("Invalid API credentials".into()),
        );
    };
    let admitted = match admit(&state, account).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let params = QueryParams::parse(raw_query.as_deref());
    let page = build_page(&state, account, &params);
    admitted.respond(page)
}

fn build_page(state: &SimState, account: &Account, params: &QueryParams) -> Result<Page, ApiError> {
    let now_ms = state.clock.now_ms();
    let per_page = page_size(
        state,
        Provider::TrackDrive,
        "per_page",
        params.number("per_page")?,
    )?;
    let time = |name: &str| {
        params
            .get(name)
            .map(|value| {
                parse_spaced_time_ms(value, account.utc_offset_minutes).ok_or_else(|| {
                    ApiError::BadRequest(format!("{name} must look like 2016-01-01 12:25:15 -0500"))
                })
            })
            .transpose()
    };
    let from_ms = time("created_at_from")?.unwrap_or(i64::MIN);
    let to_ms = time("created_at_to")?.map_or(i64::MAX, |to| to.saturating_add(1));
    // documented values are column names (`order=created_at`); `asc`/`desc` are not
    let descending = match params.get("order") {
        None | Some("-created_at") => true,
        Some("created_at") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "order {other:?} is not a column to sort by (e.g. order=created_at)"
            )))
        }
    };
    let range = account.index_range(from_ms, to_ms, now_ms);
    let total = range.end - range.start;
    let cursor: i64 = match params.get("cursor") {
        None => -1,
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| ApiError::BadRequest("cursor must be an integer".into()))?,
    };
    let page_number = params.number("page")?;
    let (indices, remaining) = if cursor == -1 {
        match page_number {
            Some(page) if page > 1 => {
                let offset = (page - 1).saturating_mul(per_page as u64);
                (
                    slice_range(range.clone(), descending, offset, per_page),
                    total.saturating_sub(offset),
                )
            }
            _ => (slice_range(range.clone(), descending, 0, per_page), total),
        }
    } else if cursor <= 0 {
        return Err(ApiError::BadRequest(
            "cursor must be -1 or a next_cursor value".into(),
        ));
    } else {
        let position = index_of_id(account, cursor as u64)
            .ok_or_else(|| ApiError::BadRequest("cursor is not valid".into()))?;
        let rest = if descending {
            range.start..position.min(range.end)
        } else {
            position.saturating_add(1).max(range.start)..range.end
        };
        let rest_len = rest.end.saturating_sub(rest.start);
        (
            slice_range(rest.start..rest.start + rest_len, descending, 0, per_page),
            rest_len,
        )
    };
    let more = (indices.len() as u64) < remaining;
    let mut next_cursor = 0u64;
    let calls: Vec<TrackDriveCall> = indices
        .into_iter()
        .filter_map(|index| {
            let facts = account.facts(index);
            let state = facts.state_at(now_ms)?;
            next_cursor = numeric_id(account, &facts);
            Some(record(account, &facts, &state))
        })
        .collect();
    let count = calls.len();
    Page::json(
        &Envelope {
            status: 200,
            errors: Empty {},
            calls,
            metadata: Metadata {
                next_cursor: if more { next_cursor } else { 0 },
                per_page,
                total_count: total,
                page: page_number,
            },
        },
        count,
    )
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Envelope {
    status: u16,
    errors: Empty,
    calls: Vec<TrackDriveCall>,
    metadata: Metadata,
}

#[derive(Serialize)]
struct Metadata {
    next_cursor: u64,
    per_page: usize,
    total_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<u64>,
}

#[derive(Serialize)]
struct TokenValues {
    caller_zip: &'static str,
    campaign: &'static str,
}

#[derive(Serialize)]
struct TrackDriveCall {
    id: u64,
    uuid: Option<String>,
    legacy_id: Option<u64>,
    #[serde(rename = "type")]
    kind: &'static str,
    created_at: String,
    updated_at: String,
    user_updated_at: Option<String>,
    ended_at: Option<String>,
    deleted_at: Option<String>,
    caller_number: String,
    obfuscated_caller_number: String,
    caller_city: &'static str,
    caller_country: &'static str,
    number_called: String,
    number_id: u64,
    connected_to: Option<String>,
    offer: &'static str,
    offer_id: u64,
    user_offer_id: String,
    traffic_source: &'static str,
    traffic_source_id: u64,
    user_traffic_source_id: String,
    sub_id: Option<String>,
    buyer: Option<&'static str>,
    buyer_id: Option<u64>,
    user_buyer_id: Option<String>,
    status: &'static str,
    hangup_cause: Option<&'static str>,
    disposition_id: Option<u64>,
    disposition_key: Option<&'static str>,
    disposition_name: Option<&'static str>,
    disposition_notes: Option<String>,
    total_duration: u32,
    answered_duration: u32,
    attempted_duration: u32,
    hold_duration: u32,
    ivr_duration: u32,
    agent_duration: u32,
    buyer_converted: bool,
    buyer_revenue: String,
    revenue: String,
    traffic_source_converted: bool,
    traffic_source_payout: String,
    payout: String,
    trackdrive_cost: String,
    provider_cost: String,
    recording_url: Option<String>,
    token_values: TokenValues,
    schedule_id: Option<u64>,
    ring_pool_id: Option<u64>,
    call_sid: String,
    provider: &'static str,
    outgoing_webhooks_count: u32,
}

/// The call as the calls API serves it, for webhooks.
pub(crate) fn record_json(
    account: &Account,
    facts: &CallFacts,
    state: &CallState,
) -> serde_json::Value {
    serde_json::to_value(record(account, facts, state)).unwrap_or_default()
}

fn record(account: &Account, facts: &CallFacts, state: &CallState) -> TrackDriveCall {
    let offset = account.utc_offset_minutes;
    let ended = state.stage != Stage::Created;
    let answered = ended && facts.answered();
    let routed = facts.outcome != Outcome::Failed;
    let city = &CITIES[facts.city];
    let (campaign_name, tracking_number) = CAMPAIGNS[facts.campaign];
    let (buyer_name, buyer_number) = BUYERS[facts.buyer];
    let created_at = iso_local(facts.created_ms, offset, true);
    let created_at = if facts.bad == Some(BadRecordKind::UnparseableStartTime) {
        garbled(created_at)
    } else {
        created_at
    };
    let caller = e164(facts.caller_national);
    let obfuscated = format!("{}****", &caller[..caller.len().saturating_sub(4)]);
    let user_updated = state.stage >= Stage::ConversionPosted;
    TrackDriveCall {
        id: numeric_id(account, facts),
        uuid: (facts.bad != Some(BadRecordKind::MissingId)).then(|| call_uuid(facts)),
        legacy_id: None,
        kind: "Call",
        created_at,
        updated_at: iso_local(state.updated_ms, offset, true),
        user_updated_at: user_updated.then(|| iso_local(state.updated_ms, offset, true)),
        ended_at: ended.then(|| iso_local(facts.ended_ms(), offset, true)),
        deleted_at: None,
        caller_number: caller,
        obfuscated_caller_number: obfuscated,
        caller_city: city.name,
        caller_country: "US",
        number_called: e164(tracking_number),
        number_id: 880_000 + facts.campaign as u64,
        connected_to: (answered && routed).then(|| e164(buyer_number)),
        offer: campaign_name,
        offer_id: 21_000 + facts.campaign as u64,
        user_offer_id: format!("offer-{}", facts.campaign + 1),
        traffic_source: PUBLISHERS[facts.publisher],
        traffic_source_id: 31_000 + facts.publisher as u64,
        user_traffic_source_id: format!("ts-{}", facts.publisher + 1),
        sub_id: None,
        buyer: routed.then_some(buyer_name),
        buyer_id: routed.then_some(41_000 + facts.buyer as u64),
        user_buyer_id: routed.then(|| format!("buyer-{}", facts.buyer + 1)),
        status: status_text(facts, state),
        hangup_cause: ended.then_some(match facts.outcome {
            Outcome::Answered => "NORMAL_CLEARING",
            Outcome::NoAnswer => "NO_ANSWER",
            Outcome::Busy => "USER_BUSY",
            Outcome::Failed => "CALL_REJECTED",
        }),
        disposition_id: state.converted.then_some(7),
        disposition_key: state.converted.then_some("sale"),
        disposition_name: state.converted.then_some("Sale"),
        disposition_notes: None,
        total_duration: if ended { facts.total_secs } else { 0 },
        answered_duration: if answered { facts.talk_secs } else { 0 },
        attempted_duration: if ended { facts.ring_secs } else { 0 },
        hold_duration: if answered { facts.hold_secs } else { 0 },
        ivr_duration: facts.ivr_secs,
        agent_duration: if answered {
            facts.talk_secs.saturating_sub(facts.hold_secs)
        } else {
            0
        },
        buyer_converted: state.converted,
        buyer_revenue: money_string(state.revenue_cents),
        revenue: money_string(state.revenue_cents),
        traffic_source_converted: state.converted,
        traffic_source_payout: money_string(state.payout_cents),
        payout: money_string(state.payout_cents),
        trackdrive_cost: money_string(facts.cost_cents),
        provider_cost: money_string(facts.cost_cents / 2),
        recording_url: (answered && facts.id_words[1] & 0x8 == 0).then(|| {
            format!(
                "https://recordings.trackdrive.example/{}.mp3",
                call_uuid(facts)
            )
        }),
        token_values: TokenValues {
            caller_zip: city.zip,
            campaign: campaign_name,
        },
        schedule_id: None,
        ring_pool_id: None,
        call_sid: format!("CA{:016x}{:016x}", facts.id_words[0], facts.id_words[1]),
        provider: "telnyx",
        outgoing_webhooks_count: u32::from(ended),
    }
}
