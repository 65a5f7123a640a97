//! CallRail's own webhook bodies: Pre-Call, Call Routing Complete, Post-Call and Call
//! Modified all send the single-call object (Call Modified adds `changes`), with the ids
//! either as `id` / `tracker_id` or, since 2021, as `resource_id` / `tracker_resource_id`.
//! A Pre-Call body is a subset with no `answered` and a `duration` of 0 (or none): the call
//! is in progress, and its duration is not known yet.
//!
//! Every body makes a partial record carrying the fields the body has; its version is the
//! body's `timestamp` (when CallRail sent it), else the call's start or end.

use callsync_schemas::{CallField, CallRecord, CallStatus, FieldSet};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::values::{parse_time, webhook_version};
use super::WebhookError;
use crate::mapping::{Fields, MapContext};

/// Parses one CallRail webhook body (the call object, or `{"call": {...}}`).
pub fn parse(
    body: &[u8],
    ctx: &MapContext,
    received_at: DateTime<Utc>,
) -> Result<CallRecord, WebhookError> {
    let outer: &RawValue = serde_json::from_slice(body).map_err(|e| WebhookError::Malformed {
        provider: ctx.provider,
        account: ctx.account_id.clone(),
        detail: e.to_string(),
    })?;
    let wrapper = Fields::parse(outer, ctx)?;
    let call: &RawValue = match wrapper
        .raw("call")
        .filter(|r| crate::mapping::kind_of(r) == crate::mapping::JsonKind::Object)
    {
        Some(inner) => inner,
        None => outer,
    };
    let f = Fields::parse(call, ctx)?;
    let mut record = crate::providers::callrail::map_call(call, ctx)?;
    record.raw = Some(body.to_vec());
    record.observed_at = received_at;
    record.source = ctx.source;
    if record.campaign_id.is_none() {
        record.campaign_id = f.string("tracker_resource_id")?;
    }

    let duration = f.seconds("duration")?;
    let answered = f.boolean("answered")?;
    // Pre-Call (and Call Routing Complete): nothing about the outcome yet
    let in_progress = answered.is_none() && duration.unwrap_or(0) == 0;
    let mut carried = FieldSet::EMPTY;
    let mut carry = |present: bool, field: CallField| {
        if present {
            carried.insert(field);
        }
    };
    carry(f.has("start_time"), CallField::StartedAt);
    if in_progress {
        record.status = CallStatus::InProgress;
        record.provider_status = Some("in_progress".to_string());
        record.duration_secs = None;
        record.ended_at = None;
        carry(true, CallField::Status);
        carry(true, CallField::ProviderStatus);
    } else {
        carry(duration.is_some(), CallField::DurationSecs);
        carry(
            duration.is_some() && f.has("start_time"),
            CallField::EndedAt,
        );
        carry(true, CallField::Status);
        carry(true, CallField::ProviderStatus);
    }
    carry(f.has("customer_phone_number"), CallField::CallerNumber);
    carry(f.has("tracking_phone_number"), CallField::TrackingNumber);
    carry(f.has("business_phone_number"), CallField::DestinationNumber);
    carry(
        f.has("tracker_id") || f.has("tracker_resource_id"),
        CallField::CampaignId,
    );
    carry(
        f.has("campaign") || f.has("source_name"),
        CallField::CampaignName,
    );
    carry(f.has("lead_status"), CallField::Converted);
    carry(f.has("value"), CallField::Revenue);
    carry(f.has("value"), CallField::Currency);
    carry(f.has("recording"), CallField::RecordingUrl);
    // the tags map is replaced whole: only when the body has the call's tags
    carry(f.has("tags"), CallField::Tags);
    carry(true, CallField::Raw);

    let sent_at = f
        .string("timestamp")?
        .and_then(|t| parse_time(&t, ctx.time_zone));
    let started = f.has("start_time").then_some(record.started_at);
    record.version = match sent_at {
        Some(t) => webhook_version([t], received_at),
        None => webhook_version(started.into_iter().chain(record.ended_at), received_at),
    };
    Ok(record.into_partial(carried))
}
