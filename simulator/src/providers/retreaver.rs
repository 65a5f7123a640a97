//! Retreaver: `GET /api/v{1..4}/calls.json?api_key=…&company_id=…`, page/per_page with an
//! RFC 5988 `Link` header, a bare array of `{"call": {…}}`.

use axum::extract::{Path, RawQuery, State};
use axum::http::header::LINK;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use callsync_schemas::{CallStatus, Provider};
use serde::Serialize;

use super::{parse_rfc3339_ms, slice_range, ApiError};
use crate::dataset::{Account, CallFacts, CallState, Outcome, Stage};
use crate::format::{e164, garbled, iso_utc_millis, money_number, money_string, uuid};
use crate::http::{
    absolute_url, admit, page_size, reject_for_account, reject_unattributed, Page, QueryParams,
    SharedState, SimState,
};
use crate::names::{BUYERS, CAMPAIGNS, CITIES, PUBLISHERS};
use crate::BadRecordKind;

/// Which API version shapes the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiVersion {
    V1,
    V2,
    /// `number` is an object.
    V3,
    /// `number` is an object and `campaign` replaces `campaign_id`.
    V4,
}

pub(crate) fn call_uuid(facts: &CallFacts) -> String {
    uuid(facts.id_words[0], facts.id_words[1])
}

/// Retreaver's status string for a call state.
pub(crate) fn status_text(facts: &CallFacts, state: &CallState) -> &'static str {
    if state.stage == Stage::Created {
        return "in-progress";
    }
    match facts.outcome {
        Outcome::Answered => "finished",
        Outcome::NoAnswer => "no-answer",
        Outcome::Busy => "busy",
        Outcome::Failed => "failed",
    }
}

/// The normalized status a connector derives from `status`.
pub(crate) fn normalized_status(status_text: &str) -> CallStatus {
    match status_text {
        "in-progress" => CallStatus::InProgress,
        "finished" => CallStatus::Completed,
        "no-answer" => CallStatus::NoAnswer,
        "busy" => CallStatus::Busy,
        "failed" => CallStatus::Failed,
        _ => CallStatus::Unknown,
    }
}

pub(crate) async fn list_calls(
    State(state): State<SharedState>,
    Path((version, resource)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw_query): RawQuery,
) -> Response {
    let provider = Provider::Retreaver;
    let version = match version.as_str() {
        "v1" => ApiVersion::V1,
        "v2" => ApiVersion::V2,
        "v3" => ApiVersion::V3,
        "v4" => ApiVersion::V4,
        _ => {
            return super::error_response(
                provider,
                ApiError::NotFound(format!("no API version {version}")),
            )
        }
    };
    match resource.split_once('.') {
        Some(("calls", "json")) => {}
        Some(("calls", format)) => {
            return super::error_response(
                provider,
                ApiError::NotAcceptable(format!("format {format} is not simulated, use .json")),
            )
        }
        _ => return super::error_response(provider, ApiError::NotFound("no such resource".into())),
    }
    let params = QueryParams::parse(raw_query.as_deref());
    let Some(api_key) = params.get("api_key") else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized("api_key is missing".into()),
        );
    };
    let Some(account) = state.dataset.account_by_key(provider, api_key) else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized("api_key is wrong".into()),
        );
    };
    if let Some(company_id) = params.get("company_id") {
        if company_id != account.id {
            return reject_for_account(
                &state,
                account,
                ApiError::Forbidden(format!("no access to company {company_id}")),
            );
        }
    }
    let admitted = match admit(&state, account).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let page = build_page(&state, account, version, &params, &headers, &uri);
    admitted.respond(page)
}

fn optional_time(params: &QueryParams, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|value| {
            parse_rfc3339_ms(value)
                .ok_or_else(|| ApiError::BadRequest(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

fn build_page(
    state: &SimState,
    account: &Account,
    version: ApiVersion,
    params: &QueryParams,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Page, ApiError> {
    let now_ms = state.clock.now_ms();
    let page_number = params.number("page")?.unwrap_or(1).max(1);
    let per_page = page_size(
        state,
        Provider::Retreaver,
        "per_page",
        params.number("per_page")?,
    )?;
    let created_start = optional_time(params, "created_at_start")?.unwrap_or(i64::MIN);
    let created_end = optional_time(params, "created_at_end")?.unwrap_or(i64::MAX);
    let updated_start = optional_time(params, "updated_at_start")?;
    let updated_end = optional_time(params, "updated_at_end")?;
    let sort_by_updated = match params.get("sort_by") {
        None | Some("created_at") => false,
        Some("updated_at") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "sort_by must be created_at or updated_at, not {other}"
            )))
        }
    };
    let descending = match params.get("order") {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "order must be asc or desc, not {other}"
            )))
        }
    };
    // The documented quirk: sort_by=updated_at always comes back newest first.
    let descending = descending || sort_by_updated;
    let created = account.index_range(created_start, created_end.saturating_add(1), now_ms);
    let offset = (page_number - 1).saturating_mul(per_page as u64);
    let updated_filter = (updated_start.is_some() || updated_end.is_some()).then(|| {
        (
            updated_start.unwrap_or(i64::MIN),
            updated_end.unwrap_or(i64::MAX),
        )
    });

    let (total, indices): (u64, Vec<u64>) = match (sort_by_updated, updated_filter) {
        (false, None) => (
            created.end - created.start,
            slice_range(created.clone(), descending, offset, per_page),
        ),
        (false, Some((lower, upper))) => {
            // Only calls created after `lower - longest delay` can have changed since `lower`.
            let earliest = account
                .first_index_at_or_after(lower.saturating_sub(account.max_change_delay_ms()));
            let latest = account.first_index_at_or_after(upper.saturating_add(1));
            let candidates = created.start.max(earliest)..created.end.min(latest).max(earliest);
            let in_window = |index: u64| {
                let facts = account.facts(index);
                facts
                    .state_at(now_ms)
                    .is_some_and(|state| (lower..=upper).contains(&state.updated_ms))
            };
            let mut total = 0u64;
            let mut page = Vec::with_capacity(per_page);
            let mut visit = |index: u64| {
                if in_window(index) {
                    if total >= offset && page.len() < per_page {
                        page.push(index);
                    }
                    total += 1;
                }
            };
            if descending {
                candidates.rev().for_each(&mut visit);
            } else {
                candidates.for_each(&mut visit);
            }
            (total, page)
        }
        (true, filter) => {
            let (lower, upper) = filter.unwrap_or((i64::MIN, i64::MAX));
            let total = if filter.is_some() {
                account.count_latest_changes(now_ms, lower, upper, &created)
            } else {
                created.end - created.start
            };
            let changes =
                account.latest_changes_descending(now_ms, lower, upper, &created, offset, per_page);
            (
                total,
                changes.into_iter().map(|change| change.index).collect(),
            )
        }
    };

    let records: Vec<CallWrapper> = indices
        .into_iter()
        .filter_map(|index| {
            let facts = account.facts(index);
            let state = facts.state_at(now_ms)?;
            Some(CallWrapper {
                call: record(account, &facts, &state, version),
            })
        })
        .collect();
    let mut page = Page::json(&records, records.len())?;
    let last_page = total.div_ceil(per_page as u64).max(1);
    let link = |number: u64, rel: &str| {
        format!(
            "<{}>; rel=\"{rel}\"",
            absolute_url(headers, uri, &params.with("page", &number.to_string()))
        )
    };
    let mut links = Vec::with_capacity(4);
    if page_number < last_page {
        links.push(link(page_number + 1, "next"));
    }
    links.push(link(last_page, "last"));
    if page_number > 1 {
        links.push(link(1, "first"));
        links.push(link((page_number - 1).min(last_page), "prev"));
    }
    page.headers.push((LINK, links.join(", ")));
    Ok(page)
}

#[derive(Serialize)]
struct CallWrapper {
    call: RetreaverCall,
}

#[derive(Serialize)]
#[serde(untagged)]
enum NumberField {
    Text(String),
    Object { number: String, name: &'static str },
}

#[derive(Serialize)]
struct IdName {
    id: u64,
    name: &'static str,
}

#[derive(Serialize)]
struct TargetGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'static str>,
}

#[derive(Serialize)]
struct Tags {
    geo: String,
    status: &'static str,
}

#[derive(Serialize)]
struct FiredPixel {
    url: &'static str,
    fire_order: u32,
    batch_uuid: String,
    created_at: String,
    fired_at: Option<String>,
    status: &'static str,
    webhook_name: Option<&'static str>,
}

#[derive(Serialize)]
struct FiredPixelWrapper {
    fired_pixel: FiredPixel,
}

/// The record; fields absent from v1 are `None` and skipped there.
#[derive(Serialize)]
struct RetreaverCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<String>,
    caller: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller_number_sent: Option<Option<String>>,
    caller_zip: &'static str,
    caller_state: &'static str,
    caller_city: &'static str,
    caller_country: &'static str,
    #[serde(flatten)]
    v2: Option<V2Fields>,
    dialed_call_duration: Option<u32>,
    total_duration: Option<u32>,
    status: &'static str,
    start_time: String,
    forwarded_time: Option<String>,
    end_time: Option<String>,
    cid: Option<String>,
    afid: Option<String>,
    sid: Option<String>,
    dialed_number: Option<String>,
    updated_at: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    recording_url: Option<String>,
}

/// Fields v2+ add to v1.
#[derive(Serialize)]
struct V2Fields {
    number: NumberField,
    number_id: u64,
    conversions_determined_at: Option<String>,
    ivr_duration: u32,
    hold_duration: u32,
    billable_minutes: u32,
    time_to_call_in_seconds: u32,
    time_to_connect_in_seconds: Option<u32>,
    tid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign: Option<IdName>,
    campaign_name: &'static str,
    system_campaign_id: u64,
    system_affiliate_id: Option<u64>,
    system_target_id: Option<u64>,
    callpixels_target_id: Option<u64>,
    target_id: Option<u64>,
    target_name: Option<&'static str>,
    affiliate_name: Option<&'static str>,
    target_group: TargetGroup,
    company_id: serde_json::Value,
    revenue: f64,
    payout: f64,
    postback_value: Option<f64>,
    charge_total: String,
    total_cost: String,
    profit_gross: String,
    profit_net: f64,
    converted: bool,
    payable: bool,
    receivable: bool,
    connected: bool,
    duplicate: bool,
    payable_duplicate: bool,
    receivable_duplicate: bool,
    repeat: bool,
    affiliate_repeat: bool,
    target_repeat: bool,
    number_repeat: bool,
    network_sale_timer_fired: Option<bool>,
    affiliate_sale_timer_fired: Option<bool>,
    target_sale_timer_fired: Option<bool>,
    conversion_seconds: Option<u32>,
    hung_up_by: Option<&'static str>,
    keys_pressed: &'static [&'static str],
    via: &'static str,
    rescued: bool,
    visitor_url: Option<String>,
    upstream_call_uuid: Option<String>,
    downstream_call_uuids: [String; 0],
    tags: Tags,
    fired_pixels_count: usize,
    fired_pixels: Vec<FiredPixelWrapper>,
}

const KEYS_PRESSED: [&[&str]; 5] = [&[], &["1"], &["1", "2"], &["2"], &["1", "1"]];

/// The call as the v2 API serves it (inside its `{"call": ...}` wrapper), for webhooks.
pub(crate) fn record_json(
    account: &Account,
    facts: &CallFacts,
    state: &CallState,
) -> serde_json::Value {
    serde_json::to_value(record(account, facts, state, ApiVersion::V2)).unwrap_or_default()
}

fn record(
    account: &Account,
    facts: &CallFacts,
    state: &CallState,
    version: ApiVersion,
) -> RetreaverCall {
    let ended = state.stage != Stage::Created;
    let answered = facts.answered();
    let city = &CITIES[facts.city];
    let (campaign_name, tracking_number) = CAMPAIGNS[facts.campaign];
    let (buyer_name, buyer_number) = BUYERS[facts.buyer];
    let routed = facts.outcome != Outcome::Failed;
    let start_time = iso_utc_millis(facts.start_ms);
    let start_time = if facts.bad == Some(BadRecordKind::UnparseableStartTime) {
        garbled(start_time)
    } else {
        start_time
    };
    let connected = ended && answered;
    let v2 = (version != ApiVersion::V1).then(|| {
        let campaign_id = 9_872 + facts.campaign as u64;
        let target_id = routed.then_some(27_449 + facts.buyer as u64);
        let profit_gross = state.revenue_cents - state.payout_cents - facts.cost_cents;
        let fired_pixels: Vec<FiredPixelWrapper> = if ended {
            vec![FiredPixelWrapper {
                fired_pixel: FiredPixel {
                    url: "https://hooks.example.com/retreaver/end-of-call",
                    fire_order: 0,
                    batch_uuid: uuid(facts.id_words[1], facts.id_words[0]),
                    created_at: iso_utc_millis(facts.completed_ms),
                    fired_at: Some(iso_utc_millis(facts.completed_ms + 850)),
                    status: "fired",
                    webhook_name: Some("End of call"),
                },
            }]
        } else {
            Vec::new()
        };
        V2Fields {
            number: if version == ApiVersion::V2 {
                NumberField::Text(e164(tracking_number))
            } else {
                NumberField::Object {
                    number: e164(tracking_number),
                    name: campaign_name,
                }
            },
            number_id: 4_906_092 + facts.campaign as u64,
            conversions_determined_at: ended.then(|| iso_utc_millis(facts.completed_ms)),
            ivr_duration: facts.ivr_secs,
            hold_duration: if ended { facts.hold_secs } else { 0 },
            billable_minutes: if ended {
                facts.total_secs.div_ceil(60)
            } else {
                0
            },
            time_to_call_in_seconds: (facts.id_words[0] % 200_000) as u32,
            time_to_connect_in_seconds: connected.then_some(facts.ring_secs),
            tid: None,
            campaign_id: (version != ApiVersion::V4).then_some(campaign_id),
            campaign: (version == ApiVersion::V4).then_some(IdName {
                id: campaign_id,
                name: campaign_name,
            }),
            campaign_name,
            system_campaign_id: campaign_id,
            system_affiliate_id: Some(5_100 + facts.publisher as u64),
            system_target_id: target_id,
            callpixels_target_id: target_id,
            target_id,
            target_name: routed.then_some(buyer_name),
            affiliate_name: Some(PUBLISHERS[facts.publisher]),
            target_group: if facts.buyer % 2 == 0 {
                TargetGroup {
                    id: Some(1_639 + facts.buyer as u64),
                    name: Some("Primary buyers"),
                }
            } else {
                TargetGroup {
                    id: None,
                    name: None,
                }
            },
            company_id: account
                .id
                .parse::<u64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| serde_json::Value::from(account.id.clone())),
            revenue: money_number(state.revenue_cents),
            payout: money_number(state.payout_cents),
            postback_value: None,
            charge_total: money_string(facts.cost_cents),
            total_cost: money_string(facts.cost_cents),
            profit_gross: money_string(profit_gross),
            profit_net: money_number(profit_gross),
            converted: state.converted,
            payable: state.converted && state.payout_cents > 0,
            receivable: state.converted && state.revenue_cents > 0,
            connected,
            duplicate: false,
            payable_duplicate: false,
            receivable_duplicate: false,
            repeat: facts.id_words[0] & 0x10 != 0,
            affiliate_repeat: false,
            target_repeat: facts.id_words[0] & 0x20 != 0,
            number_repeat: facts.id_words[0] & 0x10 != 0,
            network_sale_timer_fired: None,
            affiliate_sale_timer_fired: None,
            target_sale_timer_fired: None,
            conversion_seconds: state.converted.then_some(90),
            hung_up_by: connected.then_some(if facts.id_words[1] & 1 == 0 {
                "caller"
            } else {
                "target"
            }),
            keys_pressed: KEYS_PRESSED[usize::from(facts.keys_pressed) % KEYS_PRESSED.len()],
            via: "inbound-dial",
            rescued: false,
            visitor_url: None,
            upstream_call_uuid: None,
            downstream_call_uuids: [],
            tags: Tags {
                geo: format!(
                    "{},us,us-{},us-{}",
                    city.area_code,
                    city.zip,
                    city.state.to_ascii_lowercase()
                ),
                status: if state.converted {
                    "success"
                } else {
                    "pending"
                },
            },
            fired_pixels_count: fired_pixels.len(),
            fired_pixels,
        }
    });
    RetreaverCall {
        uuid: (facts.bad != Some(BadRecordKind::MissingId)).then(|| call_uuid(facts)),
        caller: e164(facts.caller_national),
        caller_number_sent: (version != ApiVersion::V1).then_some(None),
        caller_zip: city.zip,
        caller_state: city.state,
        caller_city: city.name,
        caller_country: "US",
        v2,
        dialed_call_duration: ended.then_some(if answered { facts.talk_secs } else { 0 }),
        total_duration: ended.then_some(facts.total_secs),
        status: status_text(facts, state),
        start_time,
        forwarded_time: connected.then(|| {
            iso_utc_millis(facts.created_ms + i64::from(facts.ivr_secs + facts.ring_secs) * 1000)
        }),
        end_time: ended.then(|| iso_utc_millis(facts.ended_ms())),
        cid: None,
        afid: Some(format!("{}", 100 + facts.publisher)),
        sid: None,
        dialed_number: routed.then(|| e164(buyer_number)),
        updated_at: iso_utc_millis(state.updated_ms),
        created_at: iso_utc_millis(facts.created_ms),
        recording_url: (connected && facts.id_words[1] & 0x8 == 0).then(|| {
            format!(
                "https://recordings.retreaver.example/{}.mp3",
                call_uuid(facts)
            )
        }),
    }
}
