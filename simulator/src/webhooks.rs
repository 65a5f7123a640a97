//! Webhooks as the providers send them.
//!
//! - **CallRail** posts its own call object: Pre-Call when the call arrives (no `answered`,
//!   duration 0), Post-Call when it ended, Call Modified (with `changes`) for every later
//!   change; each with a `timestamp` and, for odd call indices, the ids in the post-2021 style
//!   (`resource_id`, `tracker_resource_id`). CallRail never retries.
//! - **Retreaver, Ringba, Invoca, TrackDrive** post the JSON template the user pasted
//!   (docs/webhooks.md; [`default_template`] holds the same text), with each token replaced
//!   as the provider renders it: Retreaver and TrackDrive times at whole seconds, Ringba's
//!   `[Call:CallDateTime]` as `11/26/2025 9:48:06 PM` in the account's zone, Invoca's money
//!   in the account's locale. Ringba, Retreaver and TrackDrive send one at the end of the
//!   call and one per later change (Converted/Payout pixels, call changed); Invoca's
//!   post-call webhook fires once.
//!
//! A share of calls ([`crate::WebhookSenderConfig::share`]) sends webhooks; a failed delivery
//! is retried `retries` times (0 for CallRail, unknown elsewhere: the harder case, duplicate
//! deliveries, by default).

use std::time::Duration;

use callsync_schemas::Provider;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::dataset::{Account, CallFacts, Stage};
use crate::error::SimulatorError;
use crate::format::Civil;
use crate::providers::{callrail, invoca, retreaver, ringba, trackdrive};
use crate::rng::{mix, unit};

/// Retreaver's template in docs/webhooks.md.
pub const RETREAVER_TEMPLATE: &str = r#"{
  "call_id": "[call_uuid]",
  "started_at": "[start_time]",
  "ended_at": "[end_time]",
  "duration_secs": "[total_duration]",
  "caller_number": "[caller]",
  "tracking_number": "[number]",
  "campaign_id": "[system_campaign_id]",
  "campaign_name": "[campaign_name]",
  "publisher_id": "[system_affiliate_id]",
  "buyer_id": "[system_target_id]",
  "buyer_name": "[target_name]",
  "status": "[status]",
  "converted": "[converted]",
  "revenue": "[revenue]",
  "payout": "[payout]",
  "updated_at": "[updated_at]"
}"#;

/// Ringba's template in docs/webhooks.md.
pub const RINGBA_TEMPLATE: &str = r#"{
  "call_id": "[Call:InboundCallId]",
  "started_at": "[Call:CallDateTime]",
  "duration_secs": "[Call:CallLengthInSeconds]",
  "caller_number": "[tag:InboundNumber:Number]",
  "campaign_id": "[tag:Campaign:Id]",
  "campaign_name": "[tag:Campaign:Name]",
  "publisher_id": "[tag:Publisher:Id]",
  "publisher_name": "[tag:Publisher:Name]",
  "converted": "[Call:IsConversion]",
  "revenue": "[Call:ConversionAmount]",
  "payout": "[Call:ConversionPayout]"
}"#;

/// Invoca's template in docs/webhooks.md.
pub const INVOCA_TEMPLATE: &str = r#"{
  "call_id": "{complete_call_id}",
  "started_at": "{start_time_local}",
  "duration_secs": "{duration}",
  "caller_number": "{calling_phone_number}",
  "destination_number": "{destination_phone_number}",
  "campaign_id": "{advertiser_campaign_id}",
  "campaign_name": "{advertiser_campaign_name}",
  "publisher_id": "{affiliate_id}",
  "publisher_name": "{affiliate_name}",
  "status": "{call_result_description_detail}"
}"#;

/// TrackDrive's template in docs/webhooks.md.
pub const TRACKDRIVE_TEMPLATE: &str = r#"{
  "call_id": "[call_uuid]",
  "started_at": "[created_at]",
  "ended_at": "[ended_at]",
  "duration_secs": "[total_duration]",
  "caller_number": "[caller_number]",
  "tracking_number": "[number_called]",
  "campaign_id": "[offer_id]",
  "publisher_id": "[traffic_source_id]",
  "buyer_id": "[buyer_id]",
  "status": "[status]",
  "converted": "[buyer_converted]",
  "revenue": "[revenue]",
  "payout": "[payout]",
  "updated_at": "[updated_at]"
}"#;

/// The documented template of a templated provider (`None` for CallRail, which sends its
/// own JSON).
pub fn default_template(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::Retreaver => Some(RETREAVER_TEMPLATE),
        Provider::Ringba => Some(RINGBA_TEMPLATE),
        Provider::Invoca => Some(INVOCA_TEMPLATE),
        Provider::TrackDrive => Some(TRACKDRIVE_TEMPLATE),
        Provider::CallRail => None,
    }
}

/// One webhook a provider sends.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookEvent {
    pub provider: Provider,
    pub account_id: String,
    /// The call's position in the account.
    pub index: u64,
    /// The stage of the call the webhook reports.
    pub stage: Stage,
    /// When the provider sends it.
    pub at: DateTime<Utc>,
    /// `pre_call`, `post_call`, `call_modified` (CallRail), else `call_ended`, `call_changed`.
    pub kind: &'static str,
    pub body: Vec<u8>,
}

/// Where and how a simulator delivers webhooks.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// The full URL to POST to (e.g. `https://host/webhooks/ringba/RA…`).
    pub url: String,
    pub auth: WebhookTargetAuth,
}

/// The authentication a delivery carries.
#[derive(Debug, Clone)]
pub enum WebhookTargetAuth {
    None,
    /// Header `X-Callsync-Token: <token>` (what users put in the provider's header field).
    Token(String),
    /// CallRail's `Signature: base64(HMAC-SHA1(key, body))`.
    CallRailSignature(String),
}

/// What a delivery run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WebhookReport {
    /// Webhooks due in the period.
    pub events: usize,
    /// Answered 2xx (at some attempt).
    pub delivered: usize,
    /// Given up (CallRail at the first failure).
    pub failed: usize,
    /// POSTs sent, retries included.
    pub attempts: usize,
}

/// Every token of `template` in the provider's syntax (`[...]`, Invoca `{...}`).
pub fn template_tokens(provider: Provider, template: &str) -> Vec<String> {
    let (open, close) = token_delimiters(provider);
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + 1..];
        match after.find(close) {
            Some(end) if is_token_name(&after[..end]) => {
                out.push(after[..end].to_string());
                rest = &after[end + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

fn token_delimiters(provider: Provider) -> (char, char) {
    if provider == Provider::Invoca {
        ('{', '}')
    } else {
        ('[', ']')
    }
}

fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | ' ' | '.'))
}

/// JSON scalars as the text a token renders to (`null` renders empty).
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// `2024-11-04T16:52:18.034Z` at whole seconds: `2024-11-04T16:52:18Z`.
fn whole_seconds_utc(ms: i64) -> String {
    let c = Civil::from_millis(ms, 0);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `2016-01-01 12:25:15 -0500` in the account's zone.
fn spaced_seconds(ms: i64, offset_minutes: i32) -> String {
    crate::format::spaced_local(ms, offset_minutes)
}

/// Ringba's token date: `11/26/2025 9:48:06 PM`, in the account's zone, no offset.
fn ringba_date(ms: i64, offset_minutes: i32) -> String {
    let c = Civil::from_millis(ms, offset_minutes);
    let (hour, half) = match c.hour {
        0 => (12, "AM"),
        h @ 1..=11 => (h, "AM"),
        12 => (12, "PM"),
        h => (h - 12, "PM"),
    };
    format!(
        "{}/{}/{} {}:{:02}:{:02} {}",
        c.month, c.day, c.year, hour, c.minute, c.second, half
    )
}

fn ms_of(value: &serde_json::Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}

/// A token's rendered value for a call as of `stage` (`None`: the provider has no such
/// token).
fn token_value(account: &Account, facts: &CallFacts, stage: Stage, token: &str) -> Option<String> {
    let state = facts.state_at_stage(stage);
    let offset = account.utc_offset_minutes;
    match account.provider {
        Provider::Retreaver => {
            let json = retreaver::record_json(account, facts, &state);
            match token {
                "call_uuid" => Some(text(&json["uuid"])),
                "start_time" | "end_time" | "updated_at" | "created_at" => Some(
                    ms_of(&json[token])
                        .map(whole_seconds_utc)
                        .unwrap_or_default(),
                ),
                other => json.get(other).map(text),
            }
        }
        Provider::Ringba => {
            let json = ringba::record_json(facts, &state);
            let field = match token {
                "Call:InboundCallId" => "inboundCallId",
                "Call:CallDateTime" => {
                    return Some(
                        json["callDt"]
                            .as_i64()
                            .map(|ms| ringba_date(ms, offset))
                            .unwrap_or_default(),
                    )
                }
                "Call:CallLengthInSeconds" => "callLengthInSeconds",
                "tag:InboundNumber:Number" => "inboundPhoneNumber",
                "tag:Campaign:Id" => "campaignId",
                "tag:Campaign:Name" => "campaignName",
                "tag:Publisher:Id" => "publisherId",
                "tag:Publisher:Name" => "publisherName",
                "tag:Target:Id" => "targetId",
                "tag:Target:Name" => "targetName",
                "Call:ConversionAmount" => "conversionAmount",
                "Call:ConversionPayout" => "payoutAmount",
                "Call:IsConversion" | "tag:CallInfo:IsDuplicate" => {
                    let field = if token == "Call:IsConversion" {
                        "hasConverted"
                    } else {
                        "isDuplicate"
                    };
                    // Ringba renders booleans capitalized
                    return Some(if json[field].as_bool() == Some(true) {
                        "True".to_string()
                    } else {
                        "False".to_string()
                    });
                }
                _ => return None,
            };
            Some(text(&json[field]))
        }
        Provider::Invoca => {
            // the post-call webhook: the call's own row
            let json = invoca::row_json(account, facts, Stage::Completed);
            json.get(token).map(text)
        }
        Provider::TrackDrive => {
            let json = trackdrive::record_json(account, facts, &state);
            match token {
                "call_uuid" => Some(text(&json["uuid"])),
                "created_at" | "ended_at" | "updated_at" => Some(
                    ms_of(&json[token])
                        .map(|ms| spaced_seconds(ms, offset))
                        .unwrap_or_default(),
                ),
                other => json.get(other).map(text),
            }
        }
        Provider::CallRail => None,
    }
}

/// Renders `template` for call `facts` as of `stage`, as the provider does: every token
/// replaced by its value (escaped for the JSON string it stands in). A token the provider
/// does not know is an error naming it (the docs and the simulator must agree).
pub(crate) fn render(
    account: &Account,
    facts: &CallFacts,
    stage: Stage,
    template: &str,
) -> Result<String, SimulatorError> {
    let (open, close) = token_delimiters(account.provider);
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find(open) {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(close) {
            Some(end) if is_token_name(&after[..end]) => {
                let token = &after[..end];
                let value = token_value(account, facts, stage, token).ok_or_else(|| {
                    SimulatorError::InvalidConfig(format!(
                        "{}: the template's token {open}{token}{close} is not one the simulator renders",
                        account.provider
                    ))
                })?;
                let escaped = serde_json::to_string(&value).unwrap_or_default();
                out.push_str(&escaped[1..escaped.len().saturating_sub(1)]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push(open);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// CallRail's body for a call as of `stage`.
fn callrail_body(account: &Account, facts: &CallFacts, stage: Stage, at_ms: i64) -> Vec<u8> {
    let state = facts.state_at_stage(stage);
    let mut json = callrail::record_json(account, facts, &state);
    if let Some(object) = json.as_object_mut() {
        if stage == Stage::Created {
            // Pre-Call: a subset, no outcome yet
            object.remove("answered");
            object.remove("recording");
            object.remove("recording_duration");
            object.remove("recording_player");
            object.insert("duration".into(), serde_json::json!(0));
        }
        if stage > Stage::Completed {
            object.insert("changes".into(), serde_json::json!(["value", "tags"]));
        }
        object.insert(
            "timestamp".into(),
            serde_json::json!(crate::format::iso_local(
                at_ms,
                account.utc_offset_minutes,
                true
            )),
        );
        // since 2021 webhooks name the ids resource_id / tracker_resource_id
        if facts.index % 2 == 1 {
            if let Some(id) = object.remove("id") {
                object.insert("resource_id".into(), id);
            }
            if let Some(tracker) = object.remove("tracker_id") {
                object.insert("tracker_resource_id".into(), tracker);
            }
        }
    }
    serde_json::to_vec(&json).unwrap_or_default()
}

/// Whether call `index` of the account sends webhooks.
fn sends(account: &Account, index: u64, share: f64) -> bool {
    share > 0.0 && unit(mix(account.key ^ 0x3E8B_400C, index)) < share
}

/// The webhooks the account sends for changes in `[from_ms, to_ms)`, in sending order.
pub(crate) fn events_between(
    account: &Account,
    from_ms: i64,
    to_ms: i64,
    share: f64,
    template: Option<&str>,
) -> Result<Vec<WebhookEvent>, SimulatorError> {
    let provider = account.provider;
    let stages: &[Stage] = match provider {
        Provider::CallRail => &Stage::ALL,
        Provider::Invoca => &[Stage::Completed],
        _ => &[
            Stage::Completed,
            Stage::ConversionPosted,
            Stage::RevenueAdjusted,
            Stage::LateAdjusted,
        ],
    };
    let mut changes = Vec::new();
    account.for_each_change_in(from_ms, to_ms, stages, |change, _| {
        if sends(account, change.index, share) {
            changes.push(change);
        }
    });
    changes.sort();
    let template = template.or(default_template(provider));
    let mut events = Vec::with_capacity(changes.len());
    for change in changes {
        let facts = account.facts(change.index);
        let (kind, body) = match (provider, template) {
            (Provider::CallRail, _) => (
                match change.stage {
                    Stage::Created => "pre_call",
                    Stage::Completed => "post_call",
                    _ => "call_modified",
                },
                callrail_body(account, &facts, change.stage, change.at_ms),
            ),
            (_, Some(template)) => (
                if change.stage == Stage::Completed {
                    "call_ended"
                } else {
                    "call_changed"
                },
                render(account, &facts, change.stage, template)?.into_bytes(),
            ),
            (_, None) => continue,
        };
        events.push(WebhookEvent {
            provider,
            account_id: account.id.clone(),
            index: change.index,
            stage: change.stage,
            at: crate::clock::millis_to_datetime(change.at_ms),
            kind,
            body,
        });
    }
    Ok(events)
}

fn callrail_signature(key: &str, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// POSTs `events` to `target`, retrying a failed delivery `retries` times.
pub(crate) async fn deliver(
    events: &[WebhookEvent],
    target: &WebhookTarget,
    retries: u32,
) -> WebhookReport {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(_) => {
            return WebhookReport {
                events: events.len(),
                failed: events.len(),
                ..WebhookReport::default()
            }
        }
    };
    let mut report = WebhookReport {
        events: events.len(),
        ..WebhookReport::default()
    };
    for event in events {
        let mut delivered = false;
        for attempt in 0..=retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            let mut request = client
                .post(&target.url)
                .header("content-type", "application/json")
                .body(event.body.clone());
            match &target.auth {
                WebhookTargetAuth::None => {}
                WebhookTargetAuth::Token(token) => {
                    request = request.header("X-Callsync-Token", token)
                }
                WebhookTargetAuth::CallRailSignature(key) => {
                    request = request.header("Signature", callrail_signature(key, &event.body))
                }
            }
            report.attempts += 1;
            if let Ok(response) = request.send().await {
                if response.status().is_success() {
                    delivered = true;
                    break;
                }
            }
        }
        if delivered {
            report.delivered += 1;
        } else {
            report.failed += 1;
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringba_dates_render_like_its_tokens() {
        // 2025-11-27T02:48:06Z in UTC-5
        assert_eq!(
            ringba_date(1_764_211_686_000, -300),
            "11/26/2025 9:48:06 PM"
        );
        assert_eq!(ringba_date(1_764_201_600_000, 0), "11/27/2025 12:00:00 AM");
    }

    #[test]
    fn tokens_are_found_in_each_syntax() {
        assert_eq!(
            template_tokens(Provider::Ringba, RINGBA_TEMPLATE)
                .first()
                .map(String::as_str),
            Some("Call:InboundCallId")
        );
        assert_eq!(
            template_tokens(Provider::Invoca, INVOCA_TEMPLATE).len(),
            10,
            "JSON braces are not tokens"
        );
    }
}
