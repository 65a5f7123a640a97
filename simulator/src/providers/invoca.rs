//! Invoca Transactions API: `GET /api/{version}/{networks|advertisers|affiliates}/
//! transactions/{id}.json`, token in `Authorization: <token>` (no scheme word) or
//! `?oauth_token=`; a bare array of flat rows; cursor `start_after_transaction_id`; the last
//! page has fewer rows than `limit`. Changes arrive as new correction rows.
//!
//! Rows (shared/providers.md: conversions are not in the Call transaction):
//! - a `Call` row when the call completes, with no conversion money (`advertiser_payin` and
//!   `affiliate_payout` 0);
//! - a `Signal` row (`signal_name` "Sale", `signal_occurred_at` in Unix seconds, `revenue`)
//!   when the call converts: right after the Call row for a conversion during the call, later
//!   for a conversion posted after it; its money columns are the call's rolled-up totals;
//! - each later revenue adjustment corrects the signal: a new `Signal` row with
//!   `corrects_transaction_id` = the signal's id, `corrected_at`, and the corrected values.
//!
//! Every row of a call carries the same `complete_call_id`. `transaction_type=` filters by
//! type (`Call`, `Signal`, `Sale`, `PostCallEvent`; several allowed). Money strings follow the
//! account's locale (a decimal comma by default for Invoca accounts). The advertiser role
//! names its status column `call_result_description_detail_managed_advertiser` and has no
//! network-only columns (advertiser ids and names, affiliate payout, margin, fees).
//!
//! Without `from`/`to`, rows come in the order they were created (the cursor stream); with
//! them, rows of calls started in the range come in call start order.

use axum::extract::{Path, RawQuery, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::response::Response;
use callsync_schemas::{CallStatus, Provider};
use serde::Serialize;

use super::{parse_date, ApiError};
use crate::dataset::{Account, CallFacts, CallState, ChangeRef, Outcome, Stage};
use crate::format::{
    dashed, garbled, iso_local, iso_utc_millis, money_localized, money_string, push_hex,
    spaced_local,
};
use crate::http::{
    admit, page_size, reject_for_account, reject_unattributed, Page, QueryParams, SharedState,
    SimState,
};
use crate::names::{BUYERS, CAMPAIGNS, CITIES, PUBLISHERS};
use crate::BadRecordKind;

const ROW_STAGES: [Stage; 4] = [
    Stage::Completed,
    Stage::ConversionPosted,
    Stage::RevenueAdjusted,
    Stage::LateAdjusted,
];

/// When a call's row of `stage` was created: the Call row at completion, the Signal row at
/// the conversion (at completion for a conversion during the call), corrections when made.
pub(crate) fn row_ms(facts: &CallFacts, stage: Stage) -> Option<i64> {
    match stage {
        Stage::Created => None,
        Stage::Completed => Some(facts.completed_ms),
        Stage::ConversionPosted => facts
            .late_conversion_ms
            .or((facts.converts).then_some(facts.completed_ms)),
        Stage::RevenueAdjusted | Stage::LateAdjusted => facts.stage_ms(stage),
    }
}

/// The row a connector applies last for a call in `state`: the Call row, or (once
/// converted) the conversion's Signal row or its newest correction.
pub(crate) fn newest_row_stage(state: &CallState) -> Stage {
    match state.stage {
        Stage::Completed if state.converted => Stage::ConversionPosted,
        other => other,
    }
}

/// `{created-ms:011X}-{index:08X}{stage:X}`: unique per account, ordered like the stream.
pub(crate) fn transaction_id(at_ms: i64, index: u64, stage: Stage) -> String {
    let mut id = String::with_capacity(21);
    push_hex(&mut id, at_ms as u64, 11, true);
    id.push('-');
    push_hex(&mut id, index, 8, true);
    push_hex(&mut id, stage as u64, 1, true);
    id
}

fn decode_transaction_id(id: &str) -> Option<ChangeRef> {
    let (time_part, rest) = id.split_once('-')?;
    if time_part.len() != 11 || rest.len() != 9 || !id.is_ascii() {
        return None;
    }
    let at_ms = i64::from_str_radix(time_part, 16).ok()?;
    let index = u64::from_str_radix(&rest[..8], 16).ok()?;
    let stage = Stage::from_number(u64::from_str_radix(&rest[8..], 16).ok()?)?;
    Some(ChangeRef {
        at_ms,
        index,
        stage,
    })
}

pub(crate) fn complete_call_id(facts: &CallFacts) -> String {
    let mut id = String::with_capacity(17);
    push_hex(&mut id, facts.id_words[0] >> 32, 8, true);
    id.push('-');
    push_hex(&mut id, facts.id_words[1], 8, true);
    id
}

pub(crate) fn result_description(facts: &CallFacts) -> &'static str {
    match facts.outcome {
        Outcome::Answered => "Connected",
        Outcome::NoAnswer => "No Answer",
        Outcome::Busy => "Busy",
        Outcome::Failed => "Failed",
    }
}

/// The normalized status a connector derives from `call_result_description_detail`.
pub(crate) fn normalized_status(description: &str) -> CallStatus {
    match description {
        "Connected" => CallStatus::Completed,
        "No Answer" => CallStatus::NoAnswer,
        "Busy" => CallStatus::Busy,
        "Failed" => CallStatus::Failed,
        _ => CallStatus::Unknown,
    }
}

/// The version a connector derives from a row: `corrected_at` in epoch µs for corrections,
/// `signal_occurred_at` (whole seconds) for a signal, else `start_time_utc` in µs; each row
/// of a call outranks the ones before it.
pub(crate) fn row_version_micros(facts: &CallFacts, stage: Stage) -> i64 {
    match stage {
        Stage::Created | Stage::Completed => facts.created_ms * 1000,
        Stage::ConversionPosted => {
            row_ms(facts, stage)
                .unwrap_or(facts.completed_ms)
                .div_euclid(1000)
                * 1_000_000
        }
        _ => facts.stage_ms(stage).unwrap_or(facts.created_ms) * 1000,
    }
}

/// Which row types a request asked for (`transaction_type=`/`transaction_type[]=`; none:
/// every type).
#[derive(Debug, Clone, Copy)]
struct RowTypes {
    calls: bool,
    signals: bool,
}

impl RowTypes {
    fn parse(params: &QueryParams) -> Result<Self, ApiError> {
        let named: Vec<&str> = params
            .all("transaction_type")
            .chain(params.all("transaction_type[]"))
            .filter(|t| !t.is_empty())
            .collect();
        if named.is_empty() {
            return Ok(RowTypes {
                calls: true,
                signals: true,
            });
        }
        let mut types = RowTypes {
            calls: false,
            signals: false,
        };
        for name in named {
            match name {
                "Call" => types.calls = true,
                "Signal" => types.signals = true,
                "Sale" | "PostCallEvent" => {}
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "transaction_type {other} is not one of Call, PostCallEvent, Sale, Signal"
                    )))
                }
            }
        }
        Ok(types)
    }

    fn wants(self, stage: Stage) -> bool {
        if stage == Stage::Completed {
            self.calls
        } else {
            self.signals
        }
    }
}

pub(crate) async fn list_transactions(
    State(state): State<SharedState>,
    Path((api_version, role, file)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Response {
    let provider = Provider::Invoca;
    if parse_date(&api_version).is_none() {
        return super::error_response(
            provider,
            ApiError::NotFound(format!("no API version {api_version}")),
        );
    }
    if !matches!(role.as_str(), "networks" | "advertisers" | "affiliates") {
        return super::error_response(provider, ApiError::NotFound(format!("no role {role}")));
    }
    let account_id = match file.split_once('.') {
        Some((id, "json")) => id.to_string(),
        Some((_, format)) => {
            return super::error_response(
                provider,
                ApiError::NotAcceptable(format!("format {format} is not simulated, use .json")),
            )
        }
        None => {
            return super::error_response(provider, ApiError::NotFound("no such resource".into()))
        }
    };
    let params = QueryParams::parse(raw_query.as_deref());
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .or_else(|| params.get("oauth_token"));
    let Some(token) = token else {
        return reject_unattributed(
            &state,
            provider,
            ApiError::Unauthorized(
                "an API token is required (Authorization header or oauth_token)".into(),
            ),
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
            ApiError::Forbidden(format!("the token has no access to {role}/{account_id}")),
        );
    }
    let account = token_account;
    let admitted = match admit(&state, account).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let page = build_page(&state, account, &role, &params);
    admitted.respond(page)
}

fn build_page(
    state: &SimState,
    account: &Account,
    role: &str,
    params: &QueryParams,
) -> Result<Page, ApiError> {
    let now_ms = state.clock.now_ms();
    let limit = page_size(state, Provider::Invoca, "limit", params.number("limit")?)?;
    let types = RowTypes::parse(params)?;
    let cursor = match params.get("start_after_transaction_id") {
        None => None,
        Some(id) => {
            let cursor = decode_transaction_id(id)
                .filter(|cursor| cursor.index < account.calls && cursor.stage != Stage::Created)
                .filter(|cursor| {
                    row_ms(&account.facts(cursor.index), cursor.stage) == Some(cursor.at_ms)
                })
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "start_after_transaction_id {id} is not a transaction"
                    ))
                })?;
            Some(cursor)
        }
    };
    let dates = match (params.get("from"), params.get("to")) {
        (None, None) => None,
        (Some(from), Some(to)) => {
            let invalid = || ApiError::BadRequest("from and to must be dates (YYYY-MM-DD)".into());
            let (from_year, from_month, from_day) = parse_date(from).ok_or_else(invalid)?;
            let (to_year, to_month, to_day) = parse_date(to).ok_or_else(invalid)?;
            let from_ms = account.local_midnight_ms(from_year, from_month, from_day);
            let to_ms = account.local_midnight_ms(to_year, to_month, to_day) + 86_400_000;
            Some((from_ms, to_ms))
        }
        _ => {
            return Err(ApiError::BadRequest(
                "send both from and to, or neither".into(),
            ))
        }
    };
    let rows = match dates {
        Some((from_ms, to_ms)) => {
            rows_by_call_start(account, now_ms, from_ms, to_ms, cursor, limit, types)
        }
        None => rows_by_creation(account, now_ms, cursor, limit, types),
    };
    let advertiser = role == "advertisers";
    let records: Vec<RoleRow> = rows
        .into_iter()
        .map(|change| {
            let facts = account.facts(change.index);
            let state = facts.state_at_stage(change.stage);
            let row = row(account, &facts, &state, change.stage);
            if advertiser {
                RoleRow::Advertiser(advertiser_view(
                    serde_json::to_value(row).unwrap_or_default(),
                ))
            } else {
                RoleRow::Network(Box::new(row))
            }
        })
        .collect();
    Page::json(&records, records.len())
}

/// A row as the role sees it (the network's is serialized as built: pages stay fast).
#[derive(Serialize)]
#[serde(untagged)]
enum RoleRow {
    Network(Box<InvocaRow>),
    Advertiser(serde_json::Value),
}

/// The advertiser role's row: its own status column, none of the network's columns.
fn advertiser_view(mut row: serde_json::Value) -> serde_json::Value {
    if let Some(object) = row.as_object_mut() {
        if let Some(status) = object.remove("call_result_description_detail") {
            object.insert(
                "call_result_description_detail_managed_advertiser".to_string(),
                status,
            );
        }
        for network_only in [
            "advertiser_id",
            "advertiser_id_from_network",
            "advertiser_name",
            "affiliate_payout_localized",
            "margin_localized",
            "call_fee_localized",
            "advertiser_call_fee_localized",
            "payout_conditions",
            "start_time_network_timezone",
            "start_time_network_timezone_xml",
        ] {
            object.remove(network_only);
        }
    }
    row
}

/// Rows of calls started in `[from_ms, to_ms)`, in (call start, row) order, after `cursor`.
fn rows_by_call_start(
    account: &Account,
    now_ms: i64,
    from_ms: i64,
    to_ms: i64,
    cursor: Option<ChangeRef>,
    limit: usize,
    types: RowTypes,
) -> Vec<ChangeRef> {
    let range = account.index_range(from_ms, to_ms, now_ms);
    let start = cursor.map_or(range.start, |cursor| cursor.index.max(range.start));
    let mut rows = Vec::with_capacity(limit);
    for index in start..range.end {
        let facts = account.facts(index);
        for stage in ROW_STAGES {
            if !types.wants(stage) {
                continue;
            }
            let Some(at_ms) = row_ms(&facts, stage).filter(|&at| at <= now_ms) else {
                continue;
            };
            if cursor.is_some_and(|cursor| index == cursor.index && stage <= cursor.stage) {
                continue;
            }
            rows.push(ChangeRef {
                at_ms,
                index,
                stage,
            });
            if rows.len() == limit {
                return rows;
            }
        }
    }
    rows
}

/// Rows in creation order (the cursor stream), after `cursor`.
fn rows_by_creation(
    account: &Account,
    now_ms: i64,
    cursor: Option<ChangeRef>,
    limit: usize,
    types: RowTypes,
) -> Vec<ChangeRef> {
    let end = now_ms.saturating_add(1);
    let mut low = cursor.map_or(account.first_ms, |cursor| cursor.at_ms);
    let mut window = account.window_for(limit as u64);
    let mut rows = Vec::with_capacity(limit);
    let mut batch = Vec::new();
    while low < end && rows.len() < limit {
        let high = low.saturating_add(window).min(end);
        batch.clear();
        account.for_each_change_in(low, high, &ROW_STAGES, |change, facts| {
            // a conversion during the call has its Signal row right after the Call row
            let immediate_signal = (change.stage == Stage::Completed
                && facts.converts
                && facts.late_conversion_ms.is_none())
            .then_some(ChangeRef {
                stage: Stage::ConversionPosted,
                ..change
            });
            for row in std::iter::once(change).chain(immediate_signal) {
                if types.wants(row.stage) && cursor.is_none_or(|cursor| row > cursor) {
                    batch.push(row);
                }
            }
        });
        if batch.is_empty() {
            window = window.saturating_mul(2).min(30 * 86_400_000);
        }
        batch.sort_unstable();
        let room = limit - rows.len();
        rows.extend(batch.drain(..).take(room));
        low = high;
    }
    rows
}

/// A number, or (for a deliberately bad record) text where a number belongs.
#[derive(Serialize)]
#[serde(untagged)]
enum EpochMillis {
    Number(i64),
    Text(String),
}

#[derive(Serialize)]
struct InvocaRow {
    transaction_id: String,
    transaction_type: &'static str,
    /// Signal rows: the signal's name ("" on Call rows).
    signal_name: &'static str,
    signal_occurred_at: Option<i64>,
    signal_partner_unique_id: Option<String>,
    /// Signal rows: the revenue the conversion applied to the call.
    revenue: Option<String>,
    complete_call_id: Option<String>,
    corrects_transaction_id: Option<String>,
    corrected_at: Option<String>,
    calling_phone_number: String,
    destination_phone_number: Option<String>,
    virtual_line_id: u64,
    advertiser_promo_line_description: &'static str,
    promo_line_description: &'static str,
    start_time_local: String,
    start_time_utc: EpochMillis,
    start_time_xml: String,
    start_time_network_timezone: String,
    start_time_network_timezone_xml: String,
    duration: u32,
    connect_duration: u32,
    ivr_duration: u32,
    advertiser_id: u64,
    advertiser_id_from_network: String,
    advertiser_name: &'static str,
    advertiser_campaign_id: u64,
    advertiser_campaign_id_from_network: String,
    advertiser_campaign_name: &'static str,
    affiliate_id: u64,
    affiliate_id_from_network: String,
    affiliate_name: &'static str,
    advertiser_payin_localized: String,
    affiliate_payout_localized: String,
    margin_localized: String,
    call_fee_localized: String,
    advertiser_call_fee_localized: String,
    call_result_description_detail: &'static str,
    hangup_cause: &'static str,
    payin_conditions: &'static str,
    payout_conditions: &'static str,
    recording: Option<String>,
    media_type: &'static str,
    call_source_description: &'static str,
    city: &'static str,
    region: &'static str,
    mobile: &'static str,
    repeat_calling_phone_number: &'static str,
    keypresses: String,
    notes: Option<String>,
}

/// The call's row of `stage` (Call row at completion, Signal rows later), for webhooks.
pub(crate) fn row_json(account: &Account, facts: &CallFacts, stage: Stage) -> serde_json::Value {
    let state = facts.state_at_stage(stage);
    serde_json::to_value(row(account, facts, &state, stage)).unwrap_or_default()
}

fn row(account: &Account, facts: &CallFacts, state: &CallState, stage: Stage) -> InvocaRow {
    let offset = account.utc_offset_minutes;
    let at_ms = row_ms(facts, stage).unwrap_or(facts.completed_ms);
    let signal = stage != Stage::Completed;
    let signal_id = || {
        transaction_id(
            row_ms(facts, Stage::ConversionPosted).unwrap_or(facts.completed_ms),
            facts.index,
            Stage::ConversionPosted,
        )
    };
    let correction = stage > Stage::ConversionPosted;
    let (campaign_name, _) = CAMPAIGNS[facts.campaign];
    let (buyer_name, buyer_number) = BUYERS[facts.buyer];
    let city = &CITIES[facts.city];
    let answered = facts.answered();
    let routed = facts.outcome != Outcome::Failed;
    let start_time_utc = if facts.bad == Some(BadRecordKind::UnparseableStartTime) {
        EpochMillis::Text(garbled(iso_utc_millis(facts.created_ms)))
    } else {
        EpochMillis::Number(facts.created_ms)
    };
    let fee_cents = facts.cost_cents;
    let comma = account.decimal_comma;
    // the Call row carries no conversion money; signal rows the call's rolled-up totals
    let (revenue_cents, payout_cents) = if signal {
        (state.revenue_cents, state.payout_cents)
    } else {
        (0, 0)
    };
    InvocaRow {
        transaction_id: if correction {
            transaction_id(at_ms, facts.index, stage)
        } else if signal {
            signal_id()
        } else {
            transaction_id(facts.completed_ms, facts.index, Stage::Completed)
        },
        transaction_type: if signal { "Signal" } else { "Call" },
        signal_name: if signal { "Sale" } else { "" },
        signal_occurred_at: signal.then(|| {
            row_ms(facts, Stage::ConversionPosted)
                .unwrap_or(facts.completed_ms)
                .div_euclid(1000)
        }),
        signal_partner_unique_id: signal.then(|| format!("sale-{}", facts.index)),
        revenue: signal.then(|| money_string(revenue_cents)),
        complete_call_id: (facts.bad != Some(BadRecordKind::MissingId))
            .then(|| complete_call_id(facts)),
        corrects_transaction_id: correction.then(signal_id),
        corrected_at: correction.then(|| iso_local(at_ms, offset, true)),
        calling_phone_number: dashed(facts.caller_national),
        destination_phone_number: routed.then(|| dashed(buyer_number)),
        virtual_line_id: 70_000 + facts.campaign as u64,
        advertiser_promo_line_description: campaign_name,
        promo_line_description: campaign_name,
        start_time_local: spaced_local(facts.created_ms, offset),
        start_time_utc,
        start_time_xml: iso_local(facts.created_ms, offset, false),
        start_time_network_timezone: spaced_local(facts.created_ms, offset),
        start_time_network_timezone_xml: iso_local(facts.created_ms, offset, false),
        duration: facts.total_secs,
        connect_duration: if answered { facts.talk_secs } else { 0 },
        ivr_duration: facts.ivr_secs,
        advertiser_id: 3_000 + facts.buyer as u64,
        advertiser_id_from_network: format!("ADV-{}", facts.buyer + 1),
        advertiser_name: buyer_name,
        advertiser_campaign_id: 40_000 + facts.campaign as u64,
        advertiser_campaign_id_from_network: format!("CMP-{}", facts.campaign + 1),
        advertiser_campaign_name: campaign_name,
        affiliate_id: 5_000 + facts.publisher as u64,
        affiliate_id_from_network: format!("AFF-{}", facts.publisher + 1),
        affiliate_name: PUBLISHERS[facts.publisher],
        advertiser_payin_localized: money_localized(revenue_cents, comma),
        affiliate_payout_localized: money_localized(payout_cents, comma),
        margin_localized: money_localized(revenue_cents - payout_cents, comma),
        call_fee_localized: money_localized(fee_cents, comma),
        advertiser_call_fee_localized: money_localized(0, comma),
        call_result_description_detail: result_description(facts),
        hangup_cause: if answered {
            "Caller Hang Up"
        } else {
            "Not Answered"
        },
        payin_conditions: if signal && state.converted {
            "Converted"
        } else {
            ""
        },
        payout_conditions: if payout_cents > 0 { "Paid" } else { "" },
        recording: (answered && facts.id_words[1] & 0x8 == 0).then(|| {
            format!(
                "https://invoca.example/recordings/{}",
                complete_call_id(facts)
            )
        }),
        media_type: "Online: Search",
        call_source_description: "Paid Search",
        city: city.name,
        region: city.state,
        mobile: if facts.id_words[0] & 0x40 == 0 {
            "Mobile"
        } else {
            "Landline"
        },
        repeat_calling_phone_number: if facts.id_words[0] & 0x10 == 0 {
            "No"
        } else {
            "Yes"
        },
        keypresses: facts.keys_pressed.to_string(),
        notes: None,
    }
}
