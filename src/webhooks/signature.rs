//! Webhook authentication, checked on the raw body before anything parses it.
//!
//! - CallRail: header `Signature` = base64(HMAC-SHA1(company signing key, raw body)).
//! - Generic HMAC (any sender able to sign, e.g. a relay): headers `X-Callsync-Timestamp`
//!   (unix seconds) and `X-Callsync-Signature` = `sha256=` + hex(HMAC-SHA256(secret,
//!   `{timestamp}.{raw body}`)); the timestamp must be within the tolerance of now, so a
//!   captured request cannot be replayed later.
//! - Token (the providers whose pixel/webhook UIs cannot sign: Retreaver, Ringba, Invoca,
//!   TrackDrive): a per-account secret in `X-Callsync-Token`, `Authorization: Bearer`, or the
//!   `token` query parameter.
//!
//! Every comparison is constant-time.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use callsync_runtime::Secret;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// CallRail's signature header.
pub const CALLRAIL_SIGNATURE_HEADER: &str = "signature";
/// Unix seconds the generic HMAC signature covers.
pub const TIMESTAMP_HEADER: &str = "x-callsync-timestamp";
/// `sha256=<hex>` of the generic HMAC.
pub const SIGNATURE_HEADER: &str = "x-callsync-signature";
/// The per-account token.
pub const TOKEN_HEADER: &str = "x-callsync-token";
/// The query parameter alternative to the token header.
pub const TOKEN_QUERY_PARAM: &str = "token";

/// How one provider account's webhooks prove where they come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookAuth {
    /// CallRail's base64 HMAC-SHA1 `Signature` header, with the company's signing key.
    CallrailSignature { signing_key: Secret },
    /// HMAC-SHA256 over `{timestamp}.{body}` with a shared secret.
    HmacSha256 { secret: Secret },
    /// A shared secret token.
    Token { token: Secret },
}

impl WebhookAuth {
    /// The config key of the account's secret and the secret.
    pub fn secret(&self) -> (&'static str, &Secret) {
        match self {
            WebhookAuth::CallrailSignature { signing_key } => ("signing_key", signing_key),
            WebhookAuth::HmacSha256 { secret } => ("secret", secret),
            WebhookAuth::Token { token } => ("token", token),
        }
    }

    /// Whether the method signs a timestamp (so a replay outside the window fails the check).
    pub fn signs_timestamp(&self) -> bool {
        matches!(self, WebhookAuth::HmacSha256 { .. })
    }
}

/// Why a webhook was refused (answered 401; the message is safe to return).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("missing token")]
    MissingToken,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("timestamp outside the accepted window (replayed or clock skew)")]
    StaleTimestamp,
    #[error("signature does not match")]
    Mismatch,
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// base64(HMAC-SHA1(key, body)), CallRail's signature.
pub fn callrail_signature(signing_key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: this never fails; an empty result never matches
    let Ok(mut mac) = <Hmac<sha1::Sha1> as Mac>::new_from_slice(signing_key) else {
        return String::new();
    };
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// `sha256=` + hex(HMAC-SHA256(secret, `{timestamp}.{body}`)).
pub fn hmac_sha256_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex_lower(&mac.finalize().into_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'+' => Some((b' ', 1)),
            b'%' => bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|b| (b, 3)),
            _ => None,
        };
        match decoded {
            Some((b, width)) => {
                out.push(b);
                i += width;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Checks a webhook against its account's [`WebhookAuth`]; `query` is the raw query string.
pub fn verify(
    auth: &WebhookAuth,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    match auth {
        WebhookAuth::CallrailSignature { signing_key } => {
            let given = header(headers, CALLRAIL_SIGNATURE_HEADER)
                .ok_or(SignatureError::MissingHeader("Signature"))?;
            let expected = callrail_signature(signing_key.expose().as_bytes(), body);
            if !expected.is_empty() && constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(SignatureError::Mismatch)
            }
        }
        WebhookAuth::HmacSha256 { secret } => {
            let timestamp = header(headers, TIMESTAMP_HEADER)
                .ok_or(SignatureError::MissingHeader("X-Callsync-Timestamp"))?;
            let given = header(headers, SIGNATURE_HEADER)
                .ok_or(SignatureError::MissingHeader("X-Callsync-Signature"))?;
            let ts: i64 = timestamp
                .parse()
                .map_err(|_| SignatureError::Malformed("X-Callsync-Timestamp"))?;
            let age = now.timestamp().saturating_sub(ts).unsigned_abs();
            if age > tolerance.as_secs() {
                return Err(SignatureError::StaleTimestamp);
            }
            let expected = hmac_sha256_signature(secret.expose().as_bytes(), ts, body);
            let given = given.to_ascii_lowercase();
            if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(SignatureError::Mismatch)
            }
        }
        WebhookAuth::Token { token } => {
            let bearer = header(headers, "authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let given = header(headers, TOKEN_HEADER)
                .map(std::borrow::Cow::Borrowed)
                .or_else(|| bearer.map(std::borrow::Cow::Borrowed))
                .or_else(|| query_param(query, TOKEN_QUERY_PARAM))
                .ok_or(SignatureError::MissingToken)?;
            if !token.is_empty() && constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
                Ok(())
            } else {
                Err(SignatureError::Mismatch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn callrail_hmac_sha1_matches_a_known_vector() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?")
        assert_eq!(
            callrail_signature(b"Jefe", b"what do ya want for nothing?"),
            STANDARD.encode(hex_decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"))
        );
        let auth = WebhookAuth::CallrailSignature {
            signing_key: Secret::new("Jefe"),
        };
        let body = b"what do ya want for nothing?";
        let good = headers(&[("signature", &callrail_signature(b"Jefe", body))]);
        assert_eq!(verify(&auth, &good, None, body, Utc::now(), TOL), Ok(()));
        assert_eq!(
            verify(&auth, &good, None, b"tampered", Utc::now(), TOL),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&auth, &HeaderMap::new(), None, body, Utc::now(), TOL),
            Err(SignatureError::MissingHeader("Signature"))
        );
    }

    fn hex_decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn hmac_sha256_checks_the_timestamp_window() {
        let auth = WebhookAuth::HmacSha256 {
            secret: Secret::new("s3"),
        };
        let now = Utc::now();
        let ts = now.timestamp();
        let body = br#"{"call_id":"1"}"#;
        let sig = hmac_sha256_signature(b"s3", ts, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        let ok = headers(&[
            ("x-callsync-timestamp", &ts.to_string()),
            ("x-callsync-signature", &sig),
        ]);
        assert_eq!(verify(&auth, &ok, None, body, now, TOL), Ok(()));
        // the same request ten minutes later is a replay
        let later = now + chrono::Duration::minutes(10);
        assert_eq!(
            verify(&auth, &ok, None, body, later, TOL),
            Err(SignatureError::StaleTimestamp)
        );
        // moving the timestamp breaks the signature
        let moved = headers(&[
            ("x-callsync-timestamp", &(ts + 1).to_string()),
            ("x-callsync-signature", &sig),
        ]);
        assert_eq!(
            verify(&auth, &moved, None, body, now, TOL),
            Err(SignatureError::Mismatch)
        );
        let junk = headers(&[
            ("x-callsync-timestamp", "yesterday"),
            ("x-callsync-signature", &sig),
        ]);
        assert_eq!(
            verify(&auth, &junk, None, body, now, TOL),
            Err(SignatureError::Malformed("X-Callsync-Timestamp"))
        );
    }

    #[test]
    fn tokens_come_from_a_header_bearer_or_query() {
        let auth = WebhookAuth::Token {
            token: Secret::new("t0k+en/="),
        };
        let now = Utc::now();
        assert_eq!(
            verify(
                &auth,
                &headers(&[("x-callsync-token", "t0k+en/=")]),
                None,
                b"",
                now,
                TOL
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &auth,
                &headers(&[("authorization", "Bearer t0k+en/=")]),
                None,
                b"",
                now,
                TOL
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &auth,
                &HeaderMap::new(),
                Some("a=1&token=t0k%2Ben%2F%3D"),
                b"",
                now,
                TOL
            ),
            Ok(())
        );
        assert_eq!(
            verify(&auth, &HeaderMap::new(), Some("token=wrong"), b"", now, TOL),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&auth, &HeaderMap::new(), None, b"", now, TOL),
            Err(SignatureError::MissingToken)
        );
        let empty = WebhookAuth::Token {
            token: Secret::new(""),
        };
        assert_eq!(
            verify(
                &empty,
                &headers(&[("x-callsync-token", "")]),
                None,
                b"",
                now,
                TOL
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn auth_config_deserializes_and_hides_secrets() {
        let auth: WebhookAuth =
            toml::from_str("method = \"callrail_signature\"\nsigning_key = \"k3y\"").unwrap();
        assert!(!format!("{auth:?}").contains("k3y"));
        let auth: WebhookAuth = toml::from_str("method = \"token\"\ntoken = \"abc\"").unwrap();
        assert!(matches!(auth, WebhookAuth::Token { .. }));
    }
}
