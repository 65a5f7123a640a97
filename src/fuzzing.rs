//! Entry points for the fuzz targets in `fuzz/` and their stable twins (the proptests in
//! `tests/service_fuzz.rs`). Each runs one outside input through the service's own code and
//! panics only when an invariant of that code breaks. Not an API.
//!
//! - [`webhook_request`]: a webhook request as the receiver sees it after reading the body:
//!   signature check ([`verify`]), the connectors' payload parser, the provider/account check
//!   and the Avro encoder; everything but the Kafka send.
//! - [`load_config`]: a TOML file plus `CALLSYNC__*`-style environment overrides through
//!   [`CallsyncConfig::load_with_env`].

use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use callsync_runtime::Secret;
use callsync_schemas::Provider;
use chrono::{DateTime, TimeZone, Utc};
use figment::providers::Env;

use crate::config::{CallsyncConfig, ConfigError};
use crate::roles::ConnectorsWebhookParser;
use crate::webhooks::signature::{
    callrail_signature, hmac_sha256_signature, verify, SignatureError, WebhookAuth,
    CALLRAIL_SIGNATURE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, TOKEN_HEADER,
};
use crate::webhooks::{AvroCallRecordEncoder, CallRecordEncoder, WebhookPayloadParser};

/// The account of every fuzzed webhook.
pub const ACCOUNT: &str = "FUZZ1";
/// The shared secret of every auth method.
pub const SECRET: &str = "fuzz-secret";

/// What the receiver would answer (before the Kafka send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookAnswer {
    /// 401.
    Unauthorized(SignatureError),
    /// 400.
    Malformed(String),
    /// Would be produced to `calls.raw`: this many records.
    Accepted(usize),
}

/// A fixed `now` (fuzzing must be deterministic).
fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600, 0)
        .single()
        .unwrap_or_default()
}

fn provider_of(byte: u8) -> Provider {
    match byte % 5 {
        0 => Provider::Retreaver,
        1 => Provider::Ringba,
        2 => Provider::Invoca,
        3 => Provider::CallRail,
        _ => Provider::TrackDrive,
    }
}

/// The request a fuzz input describes: byte 0 picks the auth method (`% 3`: CallRail
/// signature, HMAC-SHA256, token) and, with bit 7 set, signs the request correctly so the
/// parser is reached; byte 1 picks the provider; then `Name: value` header lines and an
/// optional `?query` line, a blank line, and the body.
struct Request<'a> {
    auth: WebhookAuth,
    sign: bool,
    provider: Provider,
    headers: HeaderMap,
    query: Option<&'a str>,
    body: &'a [u8],
}

fn request(input: &[u8]) -> Option<Request<'_>> {
    let [method, provider, rest @ ..] = input else {
        return None;
    };
    let secret = Secret::new(SECRET.to_string());
    let auth = match method % 3 {
        0 => WebhookAuth::CallrailSignature {
            signing_key: secret,
        },
        1 => WebhookAuth::HmacSha256 { secret },
        _ => WebhookAuth::Token { token: secret },
    };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&[][..], rest),
    };
    let mut headers = HeaderMap::new();
    let mut query = None;
    for line in head.split(|b| *b == b'\n') {
        if let Some(q) = line.strip_prefix(b"?") {
            query = std::str::from_utf8(q).ok();
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    Some(Request {
        auth,
        sign: method & 0x80 != 0,
        provider: provider_of(*provider),
        headers,
        query,
        body,
    })
}

/// Adds the headers a correct sender would, replacing the fuzzed ones.
fn sign(request: &mut Request<'_>) {
    let insert = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    match &request.auth {
        WebhookAuth::CallrailSignature { .. } => insert(
            &mut request.headers,
            CALLRAIL_SIGNATURE_HEADER,
            callrail_signature(SECRET.as_bytes(), request.body),
        ),
        WebhookAuth::HmacSha256 { .. } => {
            let ts = now().timestamp();
            insert(&mut request.headers, TIMESTAMP_HEADER, ts.to_string());
            insert(
                &mut request.headers,
                SIGNATURE_HEADER,
                hmac_sha256_signature(SECRET.as_bytes(), ts, request.body),
            );
        }
        WebhookAuth::Token { .. } => insert(&mut request.headers, TOKEN_HEADER, SECRET.to_string()),
    }
}

/// One webhook request (see the module doc for the input layout) through the receiver's
/// checks, parser and encoder; `None` when the input is too short to name a request.
pub fn webhook_request(input: &[u8]) -> Option<WebhookAnswer> {
    let mut request = request(input)?;
    if request.sign {
        sign(&mut request);
    }
    let verified = verify(
        &request.auth,
        &request.headers,
        request.query,
        request.body,
        now(),
        Duration::from_secs(300),
    );
    if request.sign {
        assert_eq!(verified, Ok(()), "a correctly signed request was refused");
    }
    if let Err(e) = verified {
        return Some(WebhookAnswer::Unauthorized(e));
    }
    let records =
        match ConnectorsWebhookParser.parse(request.provider, ACCOUNT, request.body, now()) {
            Ok(records) => records,
            Err(e) => return Some(WebhookAnswer::Malformed(e.0)),
        };
    let encoder = AvroCallRecordEncoder::single_object();
    for record in &records {
        if record.provider != request.provider || record.account_id != ACCOUNT {
            return Some(WebhookAnswer::Malformed(
                "the payload names another provider account".to_string(),
            ));
        }
        // a 500 for a record the parser accepted: the sender retries it for ever
        if let Err(e) = encoder.encode(record) {
            panic!("a parsed webhook record does not encode: {e}\n{record:?}");
        }
    }
    Some(WebhookAnswer::Accepted(records.len()))
}

/// The environment prefix of [`load_config`]'s overrides (its own, so the process's real
/// `CALLSYNC__*` variables never leak in).
pub const ENV_PREFIX: &str = "CALLSYNC_FUZZ__";

/// `toml NUL env`: the TOML text is written to a file and loaded with `env`'s lines
/// (`KAFKA__BOOTSTRAP_SERVERS=...`, set as [`ENV_PREFIX`] variables for the call) as
/// overrides. Calls are serialized (the environment is process-wide).
pub fn load_config(input: &[u8]) -> Result<CallsyncConfig, ConfigError> {
    static ENV_LOCK: Mutex<()> = Mutex::new(());
    let (toml, env) = match input.iter().position(|b| *b == 0) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let vars: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(k, v)| !k.is_empty() && !k.contains(['\0', '=']) && !v.contains('\0'))
        .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_string()))
        .collect();
    let path = std::env::temp_dir()
        .join(format!(
            "callsync-fuzz-config-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ))
        .to_string_lossy()
        .replace(['(', ')'], "");
    let path = std::path::PathBuf::from(path);
    if std::fs::write(&path, toml).is_err() {
        return Err(ConfigError::FileMissing { path });
    }
    let _env = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    for (k, v) in &vars {
        std::env::set_var(k, v);
    }
    let loaded = CallsyncConfig::load_with_env(Some(&path), Env::prefixed(ENV_PREFIX).split("__"));
    for (k, _) in &vars {
        std::env::remove_var(k);
    }
    let _ = std::fs::remove_file(&path);
    loaded
}

/// The stable twins of the `webhook_request` and `config_load` fuzz targets.
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BODIES: [&[u8]; 3] = [
        br#"{"id":"CAL1","answered":true,"voicemail":false,"start_time":"2024-01-02T10:00:00-05:00","duration":60,"customer_phone_number":"+14045550100","tracking_phone_number":"+14045550101","value":"10.00"}"#,
        br#"{"uuid":"u-1","caller":"(301) 523-6555","start_time":"2024-11-04T16:52:18Z","updated_at":"2024-11-04T16:53:00Z","status":"finished","revenue":"5.00"}"#,
        br#"{"inboundCallId":"RG1","callDt":"1612368427115","conversionAmount":"3.5","hasConnected":"true"}"#,
    ];

    /// Header and query lines a sender (or an attacker) might put in front of the body.
    fn head_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"Signature: ".to_vec()),
            Just(b"Signature: AAAA\xff".to_vec()),
            Just(b"X-Callsync-Timestamp: -9223372036854775808".to_vec()),
            Just(b"X-Callsync-Timestamp: 9223372036854775807".to_vec()),
            Just(b"X-Callsync-Timestamp: 1767225600".to_vec()),
            Just(b"X-Callsync-Signature: SHA256=00".to_vec()),
            Just(b"X-Callsync-Token: fuzz-secret ".to_vec()),
            Just(b"Authorization: Bearer ".to_vec()),
            Just(b"Authorization: Bearer fuzz-secret".to_vec()),
            Just(b"?token=fuzz%2".to_vec()),
            Just(b"?token=%ff%fe+&token=fuzz-secret".to_vec()),
            Just(b"?=&&token".to_vec()),
            "[A-Za-z-]{1,12}: [ -~]{0,24}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]
    }

    fn edits(max: usize) -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
        proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn webhook_requests_are_refused_or_accepted_never_a_panic(
            method in any::<u8>(),
            provider in any::<u8>(),
            head in proptest::collection::vec(head_line(), 0..4),
            body in 0usize..3,
            body_edits in edits(4),
        ) {
            let mut input = vec![method, provider];
            for line in head {
                input.extend_from_slice(&line);
                input.push(b'\n');
            }
            input.push(b'\n');
            input.extend_from_slice(&callsync_testkit::apply_byte_edits(BODIES[body].to_vec(), &body_edits));
            let answer = webhook_request(&input);
            prop_assert!(answer.is_some());
            if method & 0x80 == 0 && method % 3 != 2 {
                // unsigned, and no valid signature among the fuzzed headers
                prop_assert!(matches!(answer, Some(WebhookAnswer::Unauthorized(_))), "{answer:?}");
            }
        }

        #[test]
        fn arbitrary_webhook_requests_never_panic(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = webhook_request(&input);
        }
    }

    const EXAMPLE: &str = include_str!("../callsync.example.toml");

    /// Environment overrides, some well-formed, some not.
    fn env_line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092".to_string()),
            Just("TOPICS__CALL_PARTITIONS=-1".to_string()),
            Just("TOPICS__CALL_PARTITIONS=99999999999999999999".to_string()),
            Just("SINK__BATCH_SIZE=[1, {a = 2}]".to_string()),
            Just("WEBHOOKS__ACCOUNTS=[{provider=\"callrail\",account_id=\"A\",method=\"token\",token=\"t\"}]".to_string()),
            Just("WEBHOOKS__ACCOUNTS=[{provider=\"callrail\",method=\"hmac_sha256\"}]".to_string()),
            Just("API__LISTEN=[::1]:99999".to_string()),
            Just("KAFKA__SASL_PASSWORD=enc:AAAA".to_string()),
            Just("LOG__FORMAT={".to_string()),
            Just("__=x".to_string()),
            Just("KAFKA____X=\"".to_string()),
            "[A-Z_]{1,20}=[ -~]{0,20}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn config_files_and_overrides_load_or_fail_cleanly(
            cut in any::<prop::sample::Index>(),
            toml_edits in edits(6),
            env in proptest::collection::vec(env_line(), 0..4),
        ) {
            let mut toml = callsync_testkit::apply_byte_edits(EXAMPLE.as_bytes().to_vec(), &toml_edits);
            toml.truncate(cut.index(toml.len() + 1).max(toml.len() / 2));
            let mut input = toml;
            input.push(0);
            input.extend_from_slice(env.join("\n").as_bytes());
            let _ = load_config(&input);
        }

        #[test]
        fn arbitrary_config_bytes_fail_cleanly(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = load_config(&input);
        }
    }

    #[test]
    fn the_example_config_loads_with_overrides() {
        let mut input = EXAMPLE.as_bytes().to_vec();
        input.extend_from_slice(b"\0KAFKA__BOOTSTRAP_SERVERS=fuzz:9092\n");
        let config = load_config(&input).unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "fuzz:9092");
    }

    #[test]
    fn a_correctly_signed_webhook_is_accepted() {
        for method in [0x80u8, 0x81, 0x82] {
            let mut input = vec![method, 3, b'\n', b'\n'];
            input.extend_from_slice(BODIES[0]);
            assert_eq!(
                webhook_request(&input),
                Some(WebhookAnswer::Accepted(1)),
                "method {method:#x}"
            );
        }
    }
}
