use callsync_schemas::{CallRecord, CallStatus};
use serde_json::value::RawValue;

use crate::mapping::{normalize_status, raw_bytes, Fields, MapContext, MappingError};

/// Maps one CallRail call (list element, single-call GET, Post-Call or Call Modified webhook
/// body: they share the shape).
///
/// call_id = `id` (opaque string; older numeric ids are taken as text); CallRail keeps no
/// update time, so version = observed_at; `value` (a string) is the revenue; status from
/// `answered`/`voicemail`, with `call_type` (or the derived word) kept as provider_status.
pub fn map_call(raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
    let f = Fields::parse(raw, ctx)?;
    let call_id = f
        .first_string(&["id", "resource_id"])?
        .ok_or_else(|| ctx.error("id", "missing", "required field is absent, null or empty"))?;
    let started_at = f.timestamp("start_time")?.ok_or_else(|| {
        ctx.error(
            "start_time",
            "missing",
            "required field is absent, null or empty",
        )
    })?;
    let duration = f.seconds("duration")?;
    let answered = f.boolean("answered")?;
    let voicemail = f.boolean("voicemail")?;
    let call_type = f.string("call_type")?;
    let (status, word) = match (answered, voicemail) {
        // no duration yet: the call is still going (or not finalized)
        _ if duration.is_none() => (CallStatus::InProgress, "in_progress"),
        (_, Some(true)) => (CallStatus::NoAnswer, "voicemail"),
        (Some(true), _) => (CallStatus::Completed, "answered"),
        (Some(false), _) => (CallStatus::NoAnswer, "missed"),
        (None, _) => (
            call_type
                .as_deref()
                .map(normalize_status)
                .unwrap_or(CallStatus::Unknown),
            "unknown",
        ),
    };
    let converted = match f.string("lead_status")?.as_deref() {
        Some("good_lead") => Some(true),
        Some("not_a_lead") => Some(false),
        _ => None,
    };
    let mut tags = std::collections::BTreeMap::new();
    if let Some(r) = f.raw("tags") {
        // a list of names, or of objects {"name": …, "color": …}
        let items: Vec<serde_json::Value> = serde_json::from_str(r.get())
            .map_err(|e| ctx.error("tags", "invalid_type", format!("expected an array: {e}")))?;
        for item in items {
            let name = match item {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Object(mut o) => match o.remove("name") {
                    Some(serde_json::Value::String(s)) => Some(s),
                    _ => None,
                },
                _ => None,
            };
            if let Some(name) = name {
                tags.insert(format!("tag:{name}"), "true".to_string());
            }
        }
    }
    for (field, tag) in [
        ("direction", "direction"),
        ("lead_status", "lead_status"),
        ("source", "source"),
        ("source_name", "source_name"),
        ("medium", "medium"),
        ("keywords", "keywords"),
        ("company_id", "company_id"),
        ("company_name", "company_name"),
        ("customer_name", "customer_name"),
        ("gclid", "gclid"),
        ("utm_source", "utm_source"),
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
        answered_at: None,
        ended_at: duration
            .and_then(|d| started_at.checked_add_signed(chrono::Duration::seconds(d.into()))),
        duration_secs: duration,
        billable_secs: None,
        caller_number: f.phone("customer_phone_number")?,
        tracking_number: f.phone("tracking_phone_number")?,
        destination_number: f.phone("business_phone_number")?,
        campaign_id: f.string("tracker_id")?,
        campaign_name: f.first_string(&["campaign", "source_name"])?,
        publisher_id: None,
        publisher_name: None,
        buyer_id: None,
        buyer_name: None,
        status,
        provider_status: call_type.or_else(|| Some(word.to_string())),
        converted,
        revenue: f.decimal("value")?,
        payout: None,
        currency: ctx.currency.clone(),
        recording_url: f.string("recording")?,
        tags,
        source: ctx.source,
        observed_at: ctx.observed_at,
        provider_updated_at: None,
        raw: Some(raw_bytes(raw)),
        present_fields: None,
    })
}
