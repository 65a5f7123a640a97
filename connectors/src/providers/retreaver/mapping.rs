use callsync_schemas::{CallRecord, CallStatus};
use serde_json::value::RawValue;

use crate::mapping::{micros, normalize_status, raw_bytes, Fields, MapContext, MappingError};

/// Maps one Retreaver call (the `{"call": {...}}` wrapper of the list, or the bare object a
/// templated webhook may send) to a CallRecord.
///
/// call_id = `uuid`; version = `updated_at` in micros (else observed_at); money read exactly
/// whether Retreaver sent a number (`revenue: 5.0`) or a string (`"0.08"`); `number` is a
/// string in v1/v2 and an object in v3+; `campaign_id` is replaced by `campaign{}` in v4.
pub fn map_call(raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
    let outer = Fields::parse(raw, ctx)?;
    let f = match outer.object("call")? {
        Some(inner) => inner,
        None => outer,
    };
    let call_id = f.required_string("uuid")?;
    let updated = f.timestamp("updated_at")?;
    let started_at = match f.timestamp("start_time")? {
        Some(t) => t,
        None => f.timestamp("created_at")?.ok_or_else(|| {
            ctx.error(
                "call.start_time",
                "missing",
                "neither start_time nor created_at is set",
            )
        })?,
    };
    let tracking_number = match f.object("number") {
        Ok(Some(obj)) => obj.phone("number")?,
        _ => f.phone("number")?,
    };
    let (campaign_id, campaign_name) = match f.object("campaign") {
        Ok(Some(c)) => (c.string("id")?, c.string("name")?),
        _ => (f.string("campaign_id")?, f.string("campaign_name")?),
    };
    let provider_status = f.string("status")?;
    let connected = f.boolean("connected")?;
    let mut status = provider_status
        .as_deref()
        .map(normalize_status)
        .unwrap_or(CallStatus::Unknown);
    if status == CallStatus::Completed && connected == Some(false) {
        status = CallStatus::NoAnswer;
    }
    if status == CallStatus::Unknown && f.has("start_time") && !f.has("end_time") {
        status = CallStatus::InProgress;
    }
    Ok(CallRecord {
        provider: ctx.provider,
        account_id: ctx.account_id.clone(),
        call_id,
        version: updated.map(micros).unwrap_or_else(|| ctx.observed_micros()),
        started_at,
        answered_at: f.timestamp("forwarded_time")?,
        ended_at: f.timestamp("end_time")?,
        duration_secs: f.seconds("total_duration")?,
        billable_secs: f.seconds("dialed_call_duration")?,
        caller_number: f.phone("caller")?,
        tracking_number,
        destination_number: f.phone("dialed_number")?,
        campaign_id,
        campaign_name,
        publisher_id: f.first_string(&["system_affiliate_id", "afid"])?,
        publisher_name: f.string("affiliate_name")?,
        buyer_id: f.first_string(&["target_id", "system_target_id"])?,
        buyer_name: f.string("target_name")?,
        status,
        provider_status,
        converted: f.boolean("converted")?,
        revenue: f.decimal("revenue")?,
        payout: f.decimal("payout")?,
        currency: ctx.currency.clone(),
        recording_url: f.string("recording_url")?,
        tags: f.string_map("tags")?,
        source: ctx.source,
        observed_at: ctx.observed_at,
        provider_updated_at: updated,
        raw: Some(raw_bytes(raw)),
        present_fields: None,
    })
}
