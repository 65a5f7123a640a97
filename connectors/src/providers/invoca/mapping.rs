use callsync_schemas::{CallRecord, CallStatus};
use serde_json::value::RawValue;

use crate::mapping::{micros, normalize_status, raw_bytes, Fields, MapContext, MappingError};

/// Maps one Invoca transaction row (flat object).
///
/// call_id = `complete_call_id` (the same on the original row and every correction, so every
/// correction lands on the same call; `corrects_transaction_id` and `transaction_id` are kept
/// as tags). version = the chain
/// order: `corrected_at` (micros) on a correction, else the call start (micros); a correction
/// is always made after the call started, so it wins. Numbers like `866-555-1234` become
/// E.164; `start_time_utc` is epoch milliseconds.
pub fn map_transaction(raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
    let f = Fields::parse(raw, ctx)?;
    let transaction_id = f.required_string("transaction_id")?;
    let corrects = f.string("corrects_transaction_id")?;
    // complete_call_id is the same on the original row and every correction (required: a
    // fallback to transaction ids would put a correction on another key)
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
    let version = match (&corrects, corrected_at) {
        (Some(_), Some(t)) => micros(t),
        (Some(_), None) => ctx.observed_micros(),
        (None, _) => micros(started_at),
    };
    let duration = f.seconds("duration")?;
    let provider_status = f.string("call_result_description_detail")?;
    // Invoca's "Connected" is a finished, connected call
    let status = match provider_status.as_deref() {
        Some(w) if w.eq_ignore_ascii_case("connected") => CallStatus::Completed,
        Some(w) => normalize_status(w),
        None => CallStatus::Unknown,
    };
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("transaction_id".to_string(), transaction_id);
    if let Some(c) = &corrects {
        tags.insert("corrects_transaction_id".to_string(), c.clone());
    }
    for (field, tag) in [
        ("transaction_type", "transaction_type"),
        ("virtual_line_id", "virtual_line_id"),
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
    Ok(CallRecord {
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
        tracking_number: f.phone("promo_number")?,
        destination_number: f.phone("destination_phone_number")?,
        campaign_id: f.string("advertiser_campaign_id")?,
        campaign_name: f.string("advertiser_campaign_name")?,
        publisher_id: f.string("affiliate_id")?,
        publisher_name: f.string("affiliate_name")?,
        buyer_id: f.string("advertiser_id")?,
        buyer_name: f.string("advertiser_name")?,
        status,
        provider_status,
        converted: None,
        revenue: f.decimal("advertiser_payin_localized")?,
        payout: f.decimal("affiliate_payout_localized")?,
        currency: ctx.currency.clone(),
        recording_url: f.string("recording")?,
        tags,
        source: ctx.source,
        observed_at: ctx.observed_at,
        provider_updated_at: corrected_at,
        raw: Some(raw_bytes(raw)),
        present_fields: None,
    })
}
