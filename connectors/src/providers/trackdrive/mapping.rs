use callsync_schemas::{CallRecord, CallStatus};
use serde_json::value::RawValue;

use crate::mapping::{micros, normalize_status, raw_bytes, Fields, MapContext, MappingError};

/// Maps one TrackDrive `calls[]` element (default `call` serializer).
///
/// call_id = `uuid` (required; the numeric `id` is kept as a tag); version = `updated_at` in micros (else observed_at); times
/// carry local offsets (`2023-12-11T11:49:32.495-05:00`); money and durations are read
/// whether numbers or strings (their JSON types are undocumented).
pub fn map_call(raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
    let f = Fields::parse(raw, ctx)?;
    // uuid, never the numeric id: webhooks and polls must agree on the key
    let call_id = f.required_string("uuid")?;
    let started_at = f.timestamp("created_at")?.ok_or_else(|| {
        ctx.error(
            "created_at",
            "missing",
            "required field is absent, null or empty",
        )
    })?;
    let updated = f.timestamp("updated_at")?;
    let ended_at = f.timestamp("ended_at")?;
    let provider_status = f.string("status")?;
    let mut status = provider_status
        .as_deref()
        .map(normalize_status)
        .unwrap_or(CallStatus::Unknown);
    if status == CallStatus::Unknown && provider_status.is_none() {
        status = if ended_at.is_none() {
            CallStatus::InProgress
        } else {
            CallStatus::Completed
        };
    }
    let mut tags = f.string_map("token_values")?;
    for (field, tag) in [
        ("disposition_key", "disposition_key"),
        ("disposition_name", "disposition_name"),
        ("hangup_cause", "hangup_cause"),
        ("sub_id", "sub_id"),
        ("deleted_at", "deleted_at"),
        ("id", "id"),
    ] {
        if let Some(v) = f.string(field)? {
            tags.insert(tag.to_string(), v);
        }
    }
    Ok(CallRecord {
        provider: ctx.provider,
        account_id: ctx.account_id.clone(),
        call_id,
        version: updated.map(micros).unwrap_or_else(|| ctx.observed_micros()),
        started_at,
        answered_at: None,
        ended_at,
        duration_secs: f.seconds("total_duration")?,
        billable_secs: f.seconds("answered_duration")?,
        caller_number: f.phone("caller_number")?,
        tracking_number: f.phone("number_called")?,
        destination_number: f.phone("connected_to")?,
        campaign_id: f.first_string(&["offer_id", "user_offer_id"])?,
        campaign_name: f.string("offer")?,
        publisher_id: f.first_string(&["traffic_source_id", "user_traffic_source_id"])?,
        publisher_name: f.string("traffic_source")?,
        buyer_id: f.first_string(&["buyer_id", "user_buyer_id"])?,
        buyer_name: f.string("buyer")?,
        status,
        provider_status,
        converted: match f.boolean("buyer_converted")? {
            Some(b) => Some(b),
            None => f.boolean("traffic_source_converted")?,
        },
        revenue: match f.decimal("revenue")? {
            Some(d) => Some(d),
            None => f.decimal("buyer_revenue")?,
        },
        payout: match f.decimal("payout")? {
            Some(d) => Some(d),
            None => f.decimal("traffic_source_payout")?,
        },
        currency: ctx.currency.clone(),
        recording_url: f.string("recording_url")?,
        tags,
        source: ctx.source,
        observed_at: ctx.observed_at,
        provider_updated_at: updated,
        raw: Some(raw_bytes(raw)),
        present_fields: None,
    })
}
