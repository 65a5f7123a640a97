//! Webhook payloads: signature checks and pure parsers to [`CallRecord`] (the HTTP receiver
//! `POST /webhooks/{provider}/{account}` lives in the root crate and calls these).
//!
//! Check the signature on the raw body *before* parsing:
//! - CallRail: [`verify_callrail_signature`] — header `Signature` =
//!   `base64(HMAC-SHA1(company signing key, raw body))`.
//! - Providers without a documented signature (Retreaver, Ringba, Invoca, TrackDrive): either
//!   [`verify_hmac_sha256`] — `HMAC-SHA256(secret, timestamp ‖ body)` sent as hex (optionally
//!   `sha256=`-prefixed) or base64, with the timestamp (unix seconds) inside a tolerance
//!   window — or a per-account secret token ([`verify_token`]).
//!
//! All comparisons are constant-time (`subtle`).
//!
//! Templated payloads ([`parse_templated_webhook`]): configure the provider's webhook to POST
//! a JSON object that uses the provider's own API field names, e.g. for Retreaver
//! `{"uuid": "[call_uuid]", "caller": "[caller_number]", "start_time": "...", "revenue": "..."}`,
//! for Ringba `{"inboundCallId": "[Call:InboundCallId]", "callDt": ..., "conversionAmount":
//! "[Call:ConversionAmount]"}`; the same mapping as the poller then applies.

use base64::Engine;
use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::mapping::{MapContext, MappingError};

/// A webhook was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{provider} account {account}: signature missing")]
    MissingSignature { provider: Provider, account: String },
    #[error("{provider} account {account}: signature does not match the body")]
    BadSignature { provider: Provider, account: String },
    #[error("{provider} account {account}: timestamp {timestamp:?} is outside the {tolerance_secs}s tolerance")]
    StaleTimestamp {
        provider: Provider,
        account: String,
        timestamp: String,
        tolerance_secs: u64,
    },
    #[error("{provider} account {account}: body is not JSON: {detail}")]
    Malformed {
        provider: Provider,
        account: String,
        detail: String,
    },
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

fn decode_signature(sig: &str) -> Option<Vec<u8>> {
    let s = sig.trim();
    let s = s
        .strip_prefix("sha256=")
        .or_else(|| s.strip_prefix("sha1="))
        .unwrap_or(s);
    if s.len() % 2 == 0 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        let bytes: Option<Vec<u8>> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect();
        if bytes.is_some() {
            return bytes;
        }
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .ok()
}

/// `base64(HMAC-SHA1(key, body))`, CallRail's `Signature`.
pub fn callrail_signature(signing_key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length
    let mut mac =
        <Hmac<sha1::Sha1> as Mac>::new_from_slice(signing_key).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks CallRail's `Signature` header against the raw body.
pub fn verify_callrail_signature(
    account: &str,
    signing_key: &[u8],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), WebhookError> {
    let sig = signature.ok_or_else(|| WebhookError::MissingSignature {
        provider: Provider::CallRail,
        account: account.to_string(),
    })?;
    let presented = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .unwrap_or_default();
    let mut mac =
        <Hmac<sha1::Sha1> as Mac>::new_from_slice(signing_key).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    if bool::from(expected.as_slice().ct_eq(&presented)) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature {
            provider: Provider::CallRail,
            account: account.to_string(),
        })
    }
}

/// `HMAC-SHA256(secret, timestamp ‖ body)` as lowercase hex.
pub fn hmac_sha256_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.as_bytes());
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks an HMAC-SHA256 over `timestamp ‖ body`; `timestamp` (unix seconds) must be within
/// `tolerance_secs` of `now` (replay protection).
#[allow(clippy::too_many_arguments)]
pub fn verify_hmac_sha256(
    provider: Provider,
    account: &str,
    secret: &[u8],
    timestamp: Option<&str>,
    body: &[u8],
    signature: Option<&str>,
    now: DateTime<Utc>,
    tolerance_secs: u64,
) -> Result<(), WebhookError> {
    let missing = || WebhookError::MissingSignature {
        provider,
        account: account.to_string(),
    };
    let (ts, sig) = (
        timestamp.ok_or_else(missing)?,
        signature.ok_or_else(missing)?,
    );
    let stale = || WebhookError::StaleTimestamp {
        provider,
        account: account.to_string(),
        timestamp: ts.to_string(),
        tolerance_secs,
    };
    let secs: i64 = ts.trim().parse().map_err(|_| stale())?;
    if now.timestamp().abs_diff(secs) > tolerance_secs {
        return Err(stale());
    }
    let presented = decode_signature(sig).unwrap_or_default();
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(ts.as_bytes());
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    if bool::from(expected.as_slice().ct_eq(&presented)) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature {
            provider,
            account: account.to_string(),
        })
    }
}

/// Compares a presented per-account secret token with the configured one in constant time.
pub fn verify_token(
    provider: Provider,
    account: &str,
    expected: &str,
    presented: Option<&str>,
) -> Result<(), WebhookError> {
    let presented = presented.ok_or_else(|| WebhookError::MissingSignature {
        provider,
        account: account.to_string(),
    })?;
    // equal lengths are compared in constant time; a length mismatch fails either way
    if bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature {
            provider,
            account: account.to_string(),
        })
    }
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
    fn hmac_sha1_known_vector() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?"
        let sig = callrail_signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "7/zfauXrL6LSdBbV8YTfnCWafHk="); // base64 of effcdf6ae5eb2fa2d27416d5f184df9c259a7c79
        assert!(verify_callrail_signature(
            "ACC1",
            b"Jefe",
            b"what do ya want for nothing?",
            Some(&sig)
        )
        .is_ok());
        assert!(matches!(
            verify_callrail_signature("ACC1", b"Jefe", b"what do ya want for nothing!", Some(&sig)),
            Err(WebhookError::BadSignature { .. })
        ));
        assert!(matches!(
            verify_callrail_signature("ACC1", b"Jefe", b"x", None),
            Err(WebhookError::MissingSignature { .. })
        ));
    }

    #[test]
    fn hmac_sha256_known_vector_and_tolerance() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?" split as ts + body
        let sig = hmac_sha256_signature(b"Jefe", "what do ya want ", b"for nothing?");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let body = br#"{"uuid":"u1"}"#;
        let sig = hmac_sha256_signature(b"k", &ts, body);
        let ok = verify_hmac_sha256(
            Provider::Retreaver,
            "a",
            b"k",
            Some(&ts),
            body,
            Some(&sig),
            now,
            300,
        );
        assert!(ok.is_ok());
        let prefixed = format!("sha256={sig}");
        assert!(verify_hmac_sha256(
            Provider::Retreaver,
            "a",
            b"k",
            Some(&ts),
            body,
            Some(&prefixed),
            now,
            300
        )
        .is_ok());
        let later = now + chrono::Duration::seconds(301);
        assert!(matches!(
            verify_hmac_sha256(
                Provider::Retreaver,
                "a",
                b"k",
                Some(&ts),
                body,
                Some(&sig),
                later,
                300
            ),
            Err(WebhookError::StaleTimestamp { .. })
        ));
        assert!(matches!(
            verify_hmac_sha256(
                Provider::Retreaver,
                "a",
                b"other",
                Some(&ts),
                body,
                Some(&sig),
                now,
                300
            ),
            Err(WebhookError::BadSignature { .. })
        ));
    }

    #[test]
    fn token_comparison() {
        assert!(verify_token(Provider::Ringba, "a", "s3cret", Some("s3cret")).is_ok());
        assert!(verify_token(Provider::Ringba, "a", "s3cret", Some("s3cre")).is_err());
        assert!(verify_token(Provider::Ringba, "a", "s3cret", None).is_err());
    }

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
