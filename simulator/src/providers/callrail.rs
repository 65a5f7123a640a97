//! CallRail v3: `GET /v3/a/{account_id}/calls.json` with `Authorization: Token
//! token="…"` (quotes optional). Offset pagination (`page`, `per_page` ≤ 250, answer
//! `page`, `per_page`, `total_pages`, `total_records`) or relative pagination
//! (`relative_pagination=true`, answer `has_next_page`, `next_page`); a `Link` header with
//! `rel="next"` in both. Optional fields (`value`, `tags`, …) only with `fields=`.

use axum::extract::{Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, LINK};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use callsync_schemas::{CallStatus, Provider};
use serde::Serialize;

use super::{parse_date, parse_rfc3339_ms, slice_range, ApiError};
use crate::dataset::{Account, CallFacts, CallState, Stage};
use crate::format::{e164, garbled, iso_local, money_string, prefixed_hex};
use crate::http::{
    absolute_url, admit, page_size, reject_for_account, reject_unattributed, Page, QueryParams,
    SharedState, SimState,
};
use crate::names::{BUYERS, CAMPAIGNS, CITIES, PUBLISHERS};
use crate::BadRecordKind;

/// Communication records are kept for 25 months.
const RETENTION_MS: i64 = 761 * 86_400_000;

pub(crate) fn call_id(facts: &CallFacts) -> String {
    prefixed_hex("CAL", facts.id_words[0], facts.id_words[1])
}

/// The normalized status a connector derives: `duration` null → in progress, else
/// `answered` → completed, else no answer (CallRail does not tell busy from failed).
pub(crate) fn normalized_status(duration: Option<u32>, answered: bool) -> CallStatus {
    match (duration, answered) {
        (None, _) => CallStatus::InProgress,
        (Some(_), true) => CallStatus::Completed,
        (Some(_), false) => CallStatus::NoAnswer,
    }
}

/// `value` once the call converted (revenue as a string), else null.
pub(crate) fn value_cents(state: &CallState) -> Option<i64> {
    state.converted.then_some(state.revenue_cents)
}

/// Parses the token from `Token token="KEY"` or `Token token=KEY`.
fn token_from(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let rest = value.strip_prefix("Token")?.trim_start();
    let token = rest.strip_prefix("token=")?.trim();
    let token = token
        .strip_prefix('"')
        .map_or(token, |t| t.strip_suffix('"').unwrap_or(t));
    (!token.is_empty()).then_some(token)
}

pub(crate) async fn list_calls(
    State(state): State<SharedState>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw_query): RawQuery,
) -> Response {
    let provider = Provider::CallRail;
    let Some(token) = token_from(&headers) else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized("HTTP Token: Access denied.".into()),
        );
    };
    let Some(token_account) = state.dataset.account_by_key(provider, token) else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized("HTTP Token: Access denied.".into()),
        );
    };
    if token_account.id != account_id {
        return reject_for_account(
            &state,
            token_account,
            ApiError::Forbidden(format!("You do not have access to account {account_id}")),
        );
    }
    let account = token_account;
    let admitted = match admit(&state, account).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let params = QueryParams::parse(raw_query.as_deref());
    let page = build_page(&state, account, &params, &headers, &uri);
    admitted.respond(page)
}

/// A start or end bound: a date (zone-local midnight; `end` takes the whole day) or an
/// ISO 8601 time.
fn bound(
    account: &Account,
    params: &QueryParams,
    name: &str,
    end: bool,
) -> Result<Option<i64>, ApiError> {
    let Some(value) = params.get(name) else {
        return Ok(None);
    };
    if let Some((year, month, day)) = parse_date(value) {
        let midnight = account.local_midnight_ms(year, month, day);
        return Ok(Some(if end { midnight + 86_400_000 } else { midnight }));
    }
    parse_rfc3339_ms(value)
        .map(|ms| Some(if end { ms + 1 } else { ms }))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} must be a date (YYYY-MM-DD) or an ISO 8601 time"
            ))
        })
}

/// Which optional fields `fields=` asked for.
#[derive(Default)]
struct OptionalFields {
    company: bool,
    created_at: bool,
    tracker_id: bool,
    source: bool,
    campaign: bool,
    value: bool,
    lead_status: bool,
    tags: bool,
    note: bool,
    first_call: bool,
    call_type: bool,
    landing_page_url: bool,
}

impl OptionalFields {
    fn parse(params: &QueryParams) -> Self {
        let mut fields = OptionalFields::default();
        for name in params.get("fields").unwrap_or("").split(',').map(str::trim) {
            match name {
                "company_id" | "company_name" | "company_time_zone" => fields.company = true,
                "created_at" => fields.created_at = true,
                "tracker_id" => fields.tracker_id = true,
                "source" | "source_name" => fields.source = true,
                "campaign" | "medium" => fields.campaign = true,
                "value" => fields.value = true,
                "lead_status" => fields.lead_status = true,
                "tags" => fields.tags = true,
                "note" => fields.note = true,
                "first_call" => fields.first_call = true,
                "call_type" => fields.call_type = true,
                "landing_page_url" => fields.landing_page_url = true,
                _ => {}
            }
        }
        fields
    }
}

fn build_page(
    state: &SimState,
    account: &Account,
    params: &QueryParams,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Page, ApiError> {
    let now_ms = state.clock.now_ms();
    let per_page = page_size(
        state,
        Provider::CallRail,
        "per_page",
        params.number("per_page")?,
    )?;
    let start_ms = bound(account, params, "start_date", false)?;
    let end_ms = bound(account, params, "end_date", true)?;
    if start_ms.is_some_and(|start| start < now_ms - RETENTION_MS) {
        return Err(ApiError::BadRequest(
            "start_date is outside the 25-month retention window".into(),
        ));
    }
    let descending = match params.get("order") {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "order must be asc or desc, not {other}"
            )))
        }
    };
    if let Some(sort) = params.get("sort") {
        if sort != "start_time" {
            return Err(ApiError::BadRequest(format!(
                "sorting by {sort} is not supported"
            )));
        }
    }
    let fields = OptionalFields::parse(params);
    let range = account.index_range(
        start_ms.unwrap_or(i64::MIN),
        end_ms.unwrap_or(i64::MAX),
        now_ms,
    );
    let relative = params.get("relative_pagination") == Some("true");

    let (indices, next_query): (Vec<u64>, Option<String>) = if relative {
        // `offset` is the opaque position the previous page's next_page carried: the index
        // of the next call, so calls arriving meanwhile never shift the pages.
        let position = params.number("offset")?;
        let remaining = match (position, descending) {
            (None, _) => range.clone(),
            (Some(next), true) => range.start..(next.saturating_add(1)).min(range.end),
            (Some(next), false) => next.max(range.start)..range.end,
        };
        let indices = slice_range(remaining.clone(), descending, 0, per_page);
        let has_next = (indices.len() as u64) < remaining.end.saturating_sub(remaining.start);
        let next = indices.last().filter(|_| has_next).map(|&last| {
            let next_position = if descending { last - 1 } else { last + 1 };
            params.with("offset", &next_position.to_string())
        });
        (indices, next)
    } else {
        let page_number = params.number("page")?.unwrap_or(1).max(1);
        let offset = (page_number - 1).saturating_mul(per_page as u64);
        let total_pages = (range.end - range.start).div_ceil(per_page as u64);
        let next = (page_number < total_pages)
            .then(|| params.with("page", &(page_number + 1).to_string()));
        (
            slice_range(range.clone(), descending, offset, per_page),
            next,
        )
    };
    let calls: Vec<CallRailCall> = indices
        .into_iter()
        .filter_map(|index| {
            let facts = account.facts(index);
            let state = facts.state_at(now_ms)?;
            Some(record(account, &facts, &state, &fields))
        })
        .collect();
    let count = calls.len();
    let next_url = next_query.map(|query| absolute_url(headers, uri, &query));
    let mut page = if relative {
        Page::json(
            &RelativeEnvelope {
                per_page,
                has_next_page: next_url.is_some(),
                next_page: next_url.clone(),
                calls,
            },
            count,
        )?
    } else {
        let total_records = range.end - range.start;
        Page::json(
            &OffsetEnvelope {
                page: params.number("page")?.unwrap_or(1).max(1),
                per_page,
                total_pages: total_records.div_ceil(per_page as u64),
                total_records,
                calls,
            },
            count,
        )?
    };
    if let Some(url) = next_url {
        page.headers.push((LINK, format!("<{url}>; rel=\"next\"")));
    }
    Ok(page)
}

#[derive(Serialize)]
struct OffsetEnvelope {
    page: u64,
    per_page: usize,
    total_pages: u64,
    total_records: u64,
    calls: Vec<CallRailCall>,
}

#[derive(Serialize)]
struct RelativeEnvelope {
    per_page: usize,
    has_next_page: bool,
    next_page: Option<String>,
    calls: Vec<CallRailCall>,
}

#[derive(Serialize)]
struct CallRailCall {
    id: Option<String>,
    answered: bool,
    business_phone_number: Option<String>,
    customer_city: &'static str,
    customer_country: &'static str,
    customer_name: String,
    customer_phone_number: String,
    customer_state: &'static str,
    direction: &'static str,
    duration: Option<u32>,
    recording: Option<String>,
    recording_duration: Option<u32>,
    recording_player: Option<String>,
    start_time: String,
    tracking_phone_number: String,
    voicemail: bool,
    #[serde(flatten)]
    optional: OptionalValues,
}

#[derive(Serialize, Default)]
struct OptionalValues {
    #[serde(skip_serializing_if = "Option::is_none")]
    company_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_time_zone: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracker_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    medium: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lead_status: Option<Option<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_call: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landing_page_url: Option<Option<String>>,
}

/// The call object as CallRail's webhooks send it: every field, the optional ones too.
pub(crate) fn record_json(
    account: &Account,
    facts: &CallFacts,
    state: &CallState,
) -> serde_json::Value {
    let all = OptionalFields {
        company: true,
        created_at: true,
        tracker_id: true,
        source: true,
        campaign: true,
        value: true,
        lead_status: true,
        tags: true,
        note: true,
        first_call: true,
        call_type: true,
        landing_page_url: true,
    };
    serde_json::to_value(record(account, facts, state, &all)).unwrap_or_default()
}

fn record(
    account: &Account,
    facts: &CallFacts,
    state: &CallState,
    fields: &OptionalFields,
) -> CallRailCall {
    let offset = account.utc_offset_minutes;
    let ended = state.stage != Stage::Created;
    let answered = ended && facts.answered();
    let city = &CITIES[facts.city];
    let (campaign_name, tracking_number) = CAMPAIGNS[facts.campaign];
    let (_, business_number) = BUYERS[facts.buyer];
    let start_time = iso_local(facts.created_ms, offset, true);
    let start_time = if facts.bad == Some(BadRecordKind::UnparseableStartTime) {
        garbled(start_time)
    } else {
        start_time
    };
    let has_recording = answered && facts.id_words[1] & 0x8 == 0;
    let mut optional = OptionalValues::default();
    if fields.company {
        optional.company_id = Some(prefixed_hex("COM", account.key, facts.campaign as u64));
        optional.company_name = Some(format!("{} Company", PUBLISHERS[facts.publisher]));
        optional.company_time_zone = Some(account.zone_name);
    }
    if fields.created_at {
        optional.created_at = Some(iso_local(facts.created_ms, offset, true));
    }
    if fields.tracker_id {
        optional.tracker_id = Some(prefixed_hex(
            "TRK",
            account.key,
            0x7000 + facts.campaign as u64,
        ));
    }
    if fields.source {
        optional.source = Some("Google Paid");
        optional.source_name = Some(campaign_name);
    }
    if fields.campaign {
        optional.campaign = Some(campaign_name);
        optional.medium = Some("cpc");
    }
    if fields.value {
        optional.value = Some(value_cents(state).map(money_string));
    }
    if fields.lead_status {
        optional.lead_status = Some(if state.converted {
            Some("good_lead")
        } else if ended && !answered {
            Some("not_a_lead")
        } else {
            None
        });
    }
    if fields.tags {
        optional.tags = Some(if state.converted {
            vec!["converted"]
        } else {
            Vec::new()
        });
    }
    if fields.note {
        optional.note = Some(None);
    }
    if fields.first_call {
        optional.first_call = Some(facts.id_words[0] & 0x10 == 0);
    }
    if fields.call_type {
        optional.call_type = Some(if !ended {
            "in_progress"
        } else if answered {
            "answered"
        } else {
            "missed"
        });
    }
    if fields.landing_page_url {
        optional.landing_page_url = Some(Some("https://www.example.com/landing".into()));
    }
    CallRailCall {
        id: (facts.bad != Some(BadRecordKind::MissingId)).then(|| call_id(facts)),
        answered,
        business_phone_number: (facts.outcome != crate::dataset::Outcome::Failed)
            .then(|| e164(business_number)),
        customer_city: city.name,
        customer_country: "US",
        customer_name: format!("{} Caller", city.name),
        customer_phone_number: e164(facts.caller_national),
        customer_state: city.state,
        direction: "inbound",
        duration: ended.then_some(facts.total_secs),
        recording: has_recording.then(|| {
            format!(
                "https://api.callrail.example/v3/a/{}/calls/{}/recording.json",
                account.id,
                call_id(facts)
            )
        }),
        recording_duration: has_recording.then_some(facts.talk_secs),
        recording_player: has_recording.then(|| {
            format!(
                "https://app.callrail.example/calls/{}/recording",
                call_id(facts)
            )
        }),
        start_time,
        tracking_phone_number: e164(tracking_number),
        voicemail: false,
        optional,
    }
}
