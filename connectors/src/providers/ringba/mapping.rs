use callsync_schemas::{CallRecord, CallStatus};
use serde_json::value::RawValue;

use crate::mapping::{normalize_status, raw_bytes, Fields, MapContext, MappingError};

/// Maps one Ringba `report.records[]` element.
///
/// call_id = `inboundCallId`; Ringba has no update time, so version = observed_at; times are
/// epoch milliseconds; empty strings are absent values; status is derived from `isLive`,
/// `wasBlocked`, `hasConnected` (Ringba has no status column) and the derived word is kept
/// as provider_status.
pub fn map_call(raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
    let f = Fields::parse(raw, ctx)?;
    let call_id = f.required_string("inboundCallId")?;
    let started_at = f.epoch_millis("callDt")?.ok_or_else(|| {
        ctx.error(
            "callDt",
            "missing",
            "required field is absent, null or zero",
        )
    })?;
    let ended_at = f.epoch_millis("callCompletedDt")?;
    let incomplete = f.string("incompleteCallReason")?;
    let (status, word) = if f.boolean("isLive")? == Some(true) {
        (CallStatus::InProgress, "live".to_string())
    } else if f.boolean("wasBlocked")? == Some(true) {
        (CallStatus::Failed, "blocked".to_string())
    } else if f.boolean("hasConnected")? == Some(true) {
        (CallStatus::Completed, "connected".to_string())
    } else if let Some(reason) = incomplete {
        // "No Answer", "Busy", "Failed", …
        let s = match normalize_status(&reason) {
            CallStatus::Unknown | CallStatus::Completed | CallStatus::InProgress => {
                CallStatus::NoAnswer
            }
            s => s,
        };
        (s, reason)
    } else if ended_at.is_some() || f.has("callLengthInSeconds") {
        (CallStatus::NoAnswer, "not_connected".to_string())
    } else {
        (CallStatus::Unknown, "unknown".to_string())
    };
    let mut tags = std::collections::BTreeMap::new();
    for (field, tag) in [
        ("publisherSubId", "publisher_sub_id"),
        ("targetId", "target_id"),
        ("targetName", "target_name"),
        ("targetGroupName", "target_group_name"),
        ("endCallSource", "end_call_source"),
        ("noConversionReason", "no_conversion_reason"),
        ("isDuplicate", "is_duplicate"),
    ] {
        if let Some(v) = f.string(field)? {
            tags.insert(tag.to_string(), v);
        }
    }
    Ok(CallRecord {
        provider: ctx.provider,
        account_id: ctx.account_id.clone(),
        call_id,
        version: ctx.observed_micros(),
        started_at,
        answered_at: f.epoch_millis("callConnectionDt")?,
        ended_at,
        duration_secs: f.seconds("callLengthInSeconds")?,
        billable_secs: f.seconds("connectedCallLengthInSeconds")?,
        caller_number: f.phone("inboundPhoneNumber")?,
        tracking_number: f.phone("number")?,
        destination_number: f.phone("targetNumber")?,
        campaign_id: f.string("campaignId")?,
        campaign_name: f.string("campaignName")?,
        publisher_id: f.string("publisherId")?,
        publisher_name: f.string("publisherName")?,
        buyer_id: f.first_string(&["buyerId", "targetId"])?,
        buyer_name: f.first_string(&["buyer", "targetName"])?,
        status,
        provider_status: Some(word),
        converted: f.boolean("hasConverted")?,
        revenue: f.decimal("conversionAmount")?,
        payout: f.decimal("payoutAmount")?,
        currency: ctx.currency.clone(),
        recording_url: f.string("recordingUrl")?,
        tags,
        source: ctx.source,
        observed_at: ctx.observed_at,
        provider_updated_at: None,
        raw: Some(raw_bytes(raw)),
        present_fields: None,
    })
}
