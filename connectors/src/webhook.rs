//! Webhook payloads: pure parsers to [`CallRecord`] (the HTTP receiver
//! `POST /webhooks/{provider}/{account}` lives in the root crate and calls these).
//!
//! Signatures are checked on the raw body *before* these parsers run, by the receiver
//! (`callsync::webhooks::signature`): CallRail's base64 HMAC-SHA1 `Signature`, an HMAC-SHA256
//! over `{timestamp}.{body}` with a tolerance window, or a per-account token.
//!
//! Templated payloads ([`parse_templated_webhook`]): configure the provider's webhook to POST
//! a JSON object that uses the provider's own API field names, e.g. for Retreaver
//! `{"uuid": "[call_uuid]", "caller": "[caller_number]", "start_time": "...", "revenue": "..."}`,
//! for Ringba `{"inboundCallId": "[Call:InboundCallId]", "callDt": ..., "conversionAmount":
//! "[Call:ConversionAmount]"}`; the same mapping as the poller then applies.

use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::mapping::{MapContext, MappingError};

/// A webhook body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{provider} account {account}: body is not JSON: {detail}")]
    Malformed {
        provider: Provider,
        account: String,
        detail: String,
    },
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

fn body_raw<'a>(
    provider: Provider,
    account: &str,
    body: &'a [u8],
) -> Result<&'a RawValue, WebhookError> {
    serde_json::from_slice::<&RawValue>(body).map_err(|e| WebhookError::Malformed {
        provider,
        account: account.to_string(),
        detail: e.to_string(),
    })
}

fn webhook_ctx(provider: Provider, account: &str, observed_at: DateTime<Utc>) -> MapContext {
    let mut ctx = MapContext::new(provider, account, RecordSource::Webhook);
    ctx.observed_at = observed_at;
    ctx
}

/// A CallRail Post-Call or Call Modified webhook body (the single-call object; Call Modified
/// adds a `changes` array, kept in `raw`) to a CallRecord.
pub fn parse_callrail_webhook(
    account: &str,
    body: &[u8],
    observed_at: DateTime<Utc>,
) -> Result<CallRecord, WebhookError> {
    let raw = body_raw(Provider::CallRail, account, body)?;
    let ctx = webhook_ctx(Provider::CallRail, account, observed_at);
    // some senders wrap the call: {"call": {...}}
    let fields = crate::mapping::Fields::parse(raw, &ctx)?;
    if let Some(inner) = fields
        .raw("call")
        .filter(|r| crate::mapping::kind_of(r) == crate::mapping::JsonKind::Object)
    {
        let mut rec = crate::providers::callrail::map_call(inner, &ctx)?;
        rec.raw = Some(body.to_vec());
        return Ok(rec);
    }
    Ok(crate::providers::callrail::map_call(raw, &ctx)?)
}

/// A templated JSON webhook of Retreaver, Ringba, Invoca or TrackDrive (field names as in
/// the provider's API record) to a CallRecord. CallRail bodies go through
/// [`parse_callrail_webhook`] (this function delegates to it).
pub fn parse_templated_webhook(
    provider: Provider,
    account: &str,
    body: &[u8],
    observed_at: DateTime<Utc>,
) -> Result<CallRecord, WebhookError> {
    if provider == Provider::CallRail {
        return parse_callrail_webhook(account, body, observed_at);
    }
    let raw = body_raw(provider, account, body)?;
    let ctx = webhook_ctx(provider, account, observed_at);
    let rec = match provider {
        Provider::Retreaver => crate::providers::retreaver::map_call(raw, &ctx)?,
        Provider::Ringba => crate::providers::ringba::map_call(raw, &ctx)?,
        Provider::Invoca => crate::providers::invoca::map_transaction(raw, &ctx)?,
        Provider::TrackDrive => crate::providers::trackdrive::map_call(raw, &ctx)?,
        Provider::CallRail => unreachable!("handled above"),
    };
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callrail_post_call_and_call_modified() {
        let now = Utc::now();
        let post = br#"{"id":"CAL1","answered":true,"voicemail":false,"start_time":"2024-01-02T10:00:00-05:00","duration":60,"customer_phone_number":"+14045550100","tracking_phone_number":"+14045550101","value":"10.00"}"#;
        let rec = parse_callrail_webhook("ACC1", post, now).unwrap();
        assert_eq!(rec.call_id, "CAL1");
        assert_eq!(rec.source, RecordSource::Webhook);
        assert_eq!(rec.revenue.unwrap().to_string(), "10.00");
        let modified = br#"{"id":"CAL1","answered":true,"start_time":"2024-01-02T10:00:00-05:00","duration":60,"value":"12.00","tags":["Sale"],"changes":["value","tags"]}"#;
        let rec2 =
            parse_callrail_webhook("ACC1", modified, now + chrono::Duration::seconds(5)).unwrap();
        assert_eq!(rec2.key(), rec.key());
        assert!(rec2.version > rec.version);
        assert_eq!(rec2.raw.as_deref(), Some(&modified[..]));
        assert!(matches!(
            parse_callrail_webhook("ACC1", b"{oops", now),
            Err(WebhookError::Malformed { .. })
        ));
    }

    #[test]
    fn templated_payloads_use_the_api_mapping() {
        let now = Utc::now();
        let body = br#"{"uuid":"u-1","caller":"(301) 523-6555","start_time":"2024-11-04T16:52:18Z","updated_at":"2024-11-04T16:53:00Z","status":"finished","revenue":"5.00"}"#;
        let rec = parse_templated_webhook(Provider::Retreaver, "2", body, now).unwrap();
        assert_eq!(rec.caller_number.as_deref(), Some("+13015236555"));
        assert_eq!(rec.source, RecordSource::Webhook);
        let ringba = br#"{"inboundCallId":"RG1","callDt":"1612368427115","conversionAmount":"3.5","hasConnected":"true"}"#;
        let rec = parse_templated_webhook(Provider::Ringba, "RA1", ringba, now).unwrap();
        assert_eq!(rec.started_at.timestamp_millis(), 1612368427115);
        assert_eq!(rec.revenue.unwrap().to_string(), "3.5");
        let bad = br#"{"uuid":"u-1"}"#;
        assert!(matches!(
            parse_templated_webhook(Provider::Retreaver, "2", bad, now),
            Err(WebhookError::Mapping(_))
        ));
    }
}
