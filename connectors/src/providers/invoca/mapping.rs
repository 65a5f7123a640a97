use callsync_schemas::{CallField, CallRecord, CallStatus, FieldSet};
use chrono::{TimeZone, Utc};
use serde_json::value::RawValue;

use crate::mapping::{micros, normalize_status, raw_bytes, Fields, MapContext, MappingError};

/// What kind of transaction a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// The call itself (or a correction of it).
    Call,
    /// A conversion: Signal, Sale (Reported Conversion) or Post Call Event, or a correction
    /// of one (updating a signal makes a new signal row).
    Conversion,
}

/// The kind of a row from its `transaction_type` (a row without one is a Call row).
pub fn row_kind(transaction_type: Option<&str>) -> RowKind {
    match transaction_type.map(|t| t.trim().to_ascii_lowercase()) {
        None => RowKind::Call,
        Some(t) if t.is_empty() || t == "call" => RowKind::Call,
        Some(_) => RowKind::Conversion,
    }
}

/// Maps one Invoca transaction row (flat object) of any type onto its call.
///
/// call_id = `complete_call_id` (the same on the call's row, its conversions and every
/// correction, so all of them land on the same call; `transaction_id` and
/// `corrects_transaction_id` are kept as tags).
///
/// Version = the row's place in the call's history: `corrected_at` on a correction, the
/// signal's `signal_occurred_at` (Unix seconds) on a conversion row (never before the call
/// started), else the call start; each row of a call outranks the ones before it.
///
/// Conversions (Signal, Sale, Post Call Event rows) are not in the Call row: a conversion row
/// sets `converted` (its `signal_value`, true when absent), and its money columns are the
/// call's totals (`advertiser_payin_localized`, else the signal's `revenue`). Signal names
/// (`signal_name`, a comma-separated list where Invoca merges them) become tags
/// `signal:{name}`. A Call row says nothing about conversions unless it names a signal.
/// The advertiser role's status column is `call_result_description_detail_managed_advertiser`.
/// The Transactions API has no tracking phone number: the promo number's id
/// (`virtual_line_id`) is kept as a tag. Money strings may use a decimal comma (the
/// `*_localized` columns follow the user's locale).
pub fn map_transaction(raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
    let f = Fields::parse(raw, ctx)?;
    let transaction_id = f.required_string("transaction_id")?;
    let corrects = f.string("corrects_transaction_id")?;
    let kind_text = f.string("transaction_type")?;
    let kind = row_kind(kind_text.as_deref());
    // complete_call_id is the same on every row of a call (required: a fallback to
    // transaction ids would put a conversion or a correction on another key)
    let call_id = f.required_string("complete_call_id")?;
    let started_at = match f.epoch_millis("start_time_utc")? {
        Some(t) => t,
        None => f.timestamp("start_time_xml")?.ok_or_else(|| {
            ctx.error(
                "start_time_utc",
                "missing",
                "neither start_time_utc nor start_time_xml is set",
            )
        })?,
    };
    let corrected_at = match f.epoch_millis("corrected_at") {
        Ok(t) => t,
        Err(_) => f.timestamp("corrected_at")?,
    };
    let occurred_at = match f.int("signal_occurred_at")? {
        Some(secs) if secs > 0 => Utc.timestamp_opt(secs, 0).single(),
        _ => None,
    };
    let start_micros = micros(started_at);
    let (version, updated_at) = match (&corrects, corrected_at, kind, occurred_at) {
        (Some(_), Some(t), _, _) => (micros(t), Some(t)),
        (Some(_), None, _, _) => (ctx.observed_micros(), None),
        (None, _, RowKind::Conversion, Some(t)) => (micros(t).max(start_micros + 1), Some(t)),
        (None, _, RowKind::Conversion, None) => (start_micros + 1, None),
        (None, _, RowKind::Call, _) => (start_micros, None),
    };
    let duration = f.seconds("duration")?;
    let provider_status = f.first_string(&[
        "call_result_description_detail",
        "call_result_description_detail_managed_advertiser",
    ])?;
    // Invoca's "Connected" is a finished, connected call
    let status = match provider_status.as_deref() {
        Some(w) if w.eq_ignore_ascii_case("connected") => CallStatus::Completed,
        Some(w) => normalize_status(w),
        None => CallStatus::Unknown,
    };
    let signal_names: Vec<String> = f
        .string("signal_name")?
        .map(|names| {
            names
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let converted = match kind {
        RowKind::Conversion => Some(f.boolean("signal_value")?.unwrap_or(true)),
        RowKind::Call if !signal_names.is_empty() => Some(true),
        RowKind::Call => None,
    };
    let revenue = match f.decimal("advertiser_payin_localized")? {
        Some(d) => Some(d),
        None if kind == RowKind::Conversion => f.decimal("revenue")?,
        None => None,
    };
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("transaction_id".to_string(), transaction_id);
    if let Some(c) = &corrects {
        tags.insert("corrects_transaction_id".to_string(), c.clone());
    }
    for name in &signal_names {
        tags.insert(format!("signal:{name}"), "true".to_string());
    }
    for (field, tag) in [
        ("transaction_type", "transaction_type"),
        ("virtual_line_id", "promo_number_id"),
        (
            "advertiser_promo_line_description",
            "promo_line_description",
        ),
        ("media_type", "media_type"),
        ("hangup_cause", "hangup_cause"),
        ("call_source_description", "call_source_description"),
        ("region", "region"),
        ("city", "city"),
    ] {
        if let Some(v) = f.string(field)? {
            tags.insert(tag.to_string(), v);
        }
    }
    let record = CallRecord {
        provider: ctx.provider,
        account_id: ctx.account_id.clone(),
        call_id,
        version,
        started_at,
        answered_at: None,
        ended_at: duration
            .and_then(|d| started_at.checked_add_signed(chrono::Duration::seconds(d.into()))),
        duration_secs: duration,
        billable_secs: f.seconds("connect_duration")?,
        caller_number: f.phone("calling_phone_number")?,
        tracking_number: None,
        destination_number: f.phone("destination_phone_number")?,
        campaign_id: f.string("advertiser_campaign_id")?,
        campaign_name: f.string("advertiser_campaign_name")?,
        publisher_id: f.string("affiliate_id")?,
        publisher_name: f.string("affiliate_name")?,
        buyer_id: f.string("advertiser_id")?,
        buyer_name: f.string("advertiser_name")?,
        status,
        provider_status,
        converted,
        revenue,
        payout: f.decimal("affiliate_payout_localized")?,
        currency: ctx.currency.clone(),
        recording_url: f.string("recording")?,
        tags,
        source: ctx.source,
        observed_at: ctx.observed_at,
        provider_updated_at: updated_at,
        raw: Some(raw_bytes(raw)),
        present_fields: None,
    };
    // a Call row that names no signal says nothing about conversions: it must not clear the
    // `converted` a Signal row set (a correction of the call comes after its signals)
    Ok(match converted {
        Some(_) => record,
        None => {
            let mut carried = FieldSet::ALL;
            carried.remove(CallField::Converted);
            record.into_partial(carried)
        }
    })
}
