//! Templated webhooks (Retreaver, Ringba, Invoca, TrackDrive): the provider renders a JSON
//! body the user pasted into its webhook UI (docs/webhooks.md), each value one of the
//! provider's tokens. The keys are callsync's field names; a record carries exactly the
//! fields the body has values for (a token the provider could not fill renders empty, or is
//! left in place, and is not carried).

use std::collections::BTreeMap;

use callsync_schemas::{CallField, CallRecord, CallStatus, FieldSet, Provider};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;

use super::values::{is_unrendered_token, parse_bool, parse_duration, parse_time, webhook_version};
use super::WebhookError;
use crate::mapping::{normalize_status, parse_decimal, to_e164, MapContext};

/// The keys a template may have (besides `tags`, an object of string values).
pub const TEMPLATE_KEYS: [&str; 21] = [
    "call_id",
    "started_at",
    "answered_at",
    "ended_at",
    "updated_at",
    "duration_secs",
    "billable_secs",
    "caller_number",
    "tracking_number",
    "destination_number",
    "campaign_id",
    "campaign_name",
    "publisher_id",
    "publisher_name",
    "buyer_id",
    "buyer_name",
    "status",
    "converted",
    "revenue",
    "payout",
    "recording_url",
];

/// The rendered body: each key's text (absent keys, empty values and tokens left in place
/// are not there), and the `tags` object.
struct Rendered {
    values: BTreeMap<String, String>,
    tags: Option<BTreeMap<String, String>>,
}

fn text_of(raw: &RawValue) -> Option<String> {
    let text = match crate::mapping::kind_of(raw) {
        crate::mapping::JsonKind::Null => return None,
        crate::mapping::JsonKind::String => serde_json::from_str::<String>(raw.get()).ok()?,
        crate::mapping::JsonKind::Number | crate::mapping::JsonKind::Bool => {
            raw.get().trim().to_string()
        }
        _ => return None,
    };
    let text = text.trim().to_string();
    (!text.is_empty() && !is_unrendered_token(&text)).then_some(text)
}

fn render(body: &[u8], ctx: &MapContext) -> Result<Rendered, WebhookError> {
    let bad = |field: &str, detail: String| WebhookError::Field {
        provider: ctx.provider,
        account: ctx.account_id.clone(),
        field: field.to_string(),
        detail,
    };
    let object: BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed {
            provider: ctx.provider,
            account: ctx.account_id.clone(),
            detail: format!("expected a JSON object: {e}"),
        })?;
    let mut values = BTreeMap::new();
    let mut tags = None;
    for (key, raw) in object {
        if key == "tags" {
            let map: BTreeMap<String, &RawValue> = match crate::mapping::kind_of(raw) {
                crate::mapping::JsonKind::Null => continue,
                crate::mapping::JsonKind::Object => serde_json::from_str(raw.get())
                    .map_err(|e| bad("tags", format!("expected an object: {e}")))?,
                _ => return Err(bad("tags", "expected an object of strings".to_string())),
            };
            tags = Some(
                map.into_iter()
                    .filter_map(|(k, v)| text_of(v).map(|t| (k, t)))
                    .collect(),
            );
            continue;
        }
        if !TEMPLATE_KEYS.contains(&key.as_str()) {
            return Err(bad(
                &key,
                format!(
                    "not a template field (known: {}, tags)",
                    TEMPLATE_KEYS.join(", ")
                ),
            ));
        }
        match crate::mapping::kind_of(raw) {
            crate::mapping::JsonKind::Object | crate::mapping::JsonKind::Array => {
                return Err(bad(
                    &key,
                    "expected a string, number or boolean".to_string(),
                ))
            }
            _ => {}
        }
        if let Some(text) = text_of(raw) {
            values.insert(key, text);
        }
    }
    Ok(Rendered { values, tags })
}

/// A provider's status word to the normalized status (Invoca's "Connected" is a finished,
/// connected call).
fn status_of(provider: Provider, word: &str) -> CallStatus {
    if provider == Provider::Invoca && word.eq_ignore_ascii_case("connected") {
        return CallStatus::Completed;
    }
    normalize_status(word)
}

/// Parses a templated webhook of `ctx.provider` into a partial record carrying exactly the
/// fields the body has values for.
pub fn parse(
    body: &[u8],
    ctx: &MapContext,
    received_at: DateTime<Utc>,
) -> Result<CallRecord, WebhookError> {
    let provider = ctx.provider;
    let rendered = render(body, ctx)?;
    let v = &rendered.values;
    let bad = |field: &str, detail: String| WebhookError::Field {
        provider,
        account: ctx.account_id.clone(),
        field: field.to_string(),
        detail,
    };
    let call_id = v.get("call_id").cloned().ok_or_else(|| {
        bad(
            "call_id",
            "missing: the template must render the call's id".to_string(),
        )
    })?;
    let mut carried = FieldSet::EMPTY;
    let time = |key: &str| -> Result<Option<DateTime<Utc>>, WebhookError> {
        v.get(key)
            .map(|t| {
                parse_time(t, ctx.time_zone)
                    .ok_or_else(|| bad(key, format!("{t:?} is not a time in a known format")))
            })
            .transpose()
    };
    let seconds = |key: &str| -> Result<Option<i32>, WebhookError> {
        v.get(key)
            .map(|t| {
                parse_duration(t)
                    .ok_or_else(|| bad(key, format!("{t:?} is not a number of seconds")))
            })
            .transpose()
    };
    let money = |key: &str| -> Result<Option<Decimal>, WebhookError> {
        v.get(key)
            .map(|t| {
                let amount =
                    parse_decimal(t).ok_or_else(|| bad(key, format!("{t:?} is not an amount")))?;
                callsync_schemas::binary::decimal_unscaled(&amount)
                    .map_err(|p| bad(key, format!("{t:?} does not fit decimal(18,4): {p}")))?;
                Ok(amount)
            })
            .transpose()
    };
    let text = |key: &str| v.get(key).cloned();
    let phone = |key: &str| v.get(key).map(|t| to_e164(t, ctx.default_region));

    let started_at = time("started_at")?;
    let answered_at = time("answered_at")?;
    let updated_at = time("updated_at")?;
    let duration_secs = seconds("duration_secs")?;
    let ended_at = match time("ended_at")? {
        Some(t) => Some(t),
        // the end the payload implies
        None => match (started_at, duration_secs) {
            (Some(s), Some(d)) if d >= 0 => {
                s.checked_add_signed(chrono::Duration::seconds(d.into()))
            }
            _ => None,
        },
    };
    let converted = v
        .get("converted")
        .map(|t| {
            parse_bool(t).ok_or_else(|| bad("converted", format!("{t:?} is not true or false")))
        })
        .transpose()?;
    let provider_status = text("status");
    let status = provider_status
        .as_deref()
        .map(|w| status_of(provider, w))
        .unwrap_or(CallStatus::Unknown);
    let revenue = money("revenue")?;
    let payout = money("payout")?;

    for (present, field) in [
        (started_at.is_some(), CallField::StartedAt),
        (answered_at.is_some(), CallField::AnsweredAt),
        (ended_at.is_some(), CallField::EndedAt),
        (duration_secs.is_some(), CallField::DurationSecs),
        (v.contains_key("billable_secs"), CallField::BillableSecs),
        (v.contains_key("caller_number"), CallField::CallerNumber),
        (v.contains_key("tracking_number"), CallField::TrackingNumber),
        (
            v.contains_key("destination_number"),
            CallField::DestinationNumber,
        ),
        (v.contains_key("campaign_id"), CallField::CampaignId),
        (v.contains_key("campaign_name"), CallField::CampaignName),
        (v.contains_key("publisher_id"), CallField::PublisherId),
        (v.contains_key("publisher_name"), CallField::PublisherName),
        (v.contains_key("buyer_id"), CallField::BuyerId),
        (v.contains_key("buyer_name"), CallField::BuyerName),
        (provider_status.is_some(), CallField::Status),
        (provider_status.is_some(), CallField::ProviderStatus),
        (converted.is_some(), CallField::Converted),
        (revenue.is_some(), CallField::Revenue),
        (payout.is_some(), CallField::Payout),
        (revenue.is_some() || payout.is_some(), CallField::Currency),
        (v.contains_key("recording_url"), CallField::RecordingUrl),
        (rendered.tags.is_some(), CallField::Tags),
        (updated_at.is_some(), CallField::ProviderUpdatedAt),
        (true, CallField::Raw),
    ] {
        if present {
            carried.insert(field);
        }
    }
    let version = match (provider, started_at) {
        // Invoca versions a call by its place in the call's history (the Call transaction
        // at its start, conversions and corrections after): the webhook reports what the
        // Call transaction reports, so it ranks just below it and never shadows it
        (Provider::Invoca, Some(start)) => webhook_version([start], received_at).saturating_sub(1),
        _ => webhook_version(
            [updated_at, ended_at, answered_at, started_at]
                .into_iter()
                .flatten(),
            received_at,
        ),
    };
    let record = CallRecord {
        provider,
        account_id: ctx.account_id.clone(),
        call_id,
        version,
        started_at: started_at.unwrap_or(DateTime::UNIX_EPOCH),
        answered_at,
        ended_at,
        duration_secs,
        billable_secs: seconds("billable_secs")?,
        caller_number: phone("caller_number"),
        tracking_number: phone("tracking_number"),
        destination_number: phone("destination_number"),
        campaign_id: text("campaign_id"),
        campaign_name: text("campaign_name"),
        publisher_id: text("publisher_id"),
        publisher_name: text("publisher_name"),
        buyer_id: text("buyer_id"),
        buyer_name: text("buyer_name"),
        status,
        provider_status,
        converted,
        revenue,
        payout,
        currency: ctx.currency.clone(),
        recording_url: text("recording_url"),
        tags: rendered.tags.unwrap_or_default(),
        source: ctx.source,
        observed_at: received_at,
        provider_updated_at: updated_at,
        raw: Some(body.to_vec()),
        present_fields: None,
    };
    Ok(record.into_partial(carried))
}
