//! Entry points for the fuzz targets in `fuzz/` and for their stable twins, the proptests in
//! `connectors/tests/parsers_fuzz.rs`: each function runs one outside input through the code
//! a real provider response or webhook takes, and panics only when an invariant of that code
//! breaks (a panic, overflow or mis-encoding inside is the finding). Not an API.
//!
//! - [`provider_page`]: a list-calls response body (Retreaver: optional `Name: value` header
//!   lines, a blank line, then the body) -> the client's page reader (window filter, next
//!   token) -> each record mapped, Avro-encoded and decoded back, or its DLQ key built, as
//!   the sync runner does.
//! - [`webhook`]: a webhook body -> CallRail's post-call/call-modified parser or the templated
//!   parser of the other providers -> Avro, as the receiver does after the signature check.

use std::sync::OnceLock;

use callsync_runtime::Shutdown;
use callsync_schemas::WireFormat;
use callsync_schemas::{decode_call_record, encode_to_vec, CallRecord, Provider, RecordSource};
use chrono::{DateTime, TimeZone, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::ConnectorsConfig;
use crate::http::HttpResponse;
use crate::providers::callrail::CallRailPosition;
use crate::providers::{PageRequest, PageToken, Scan};
use crate::registry::Connectors;
use crate::webhook::WebhookError;

/// The account every fuzzed page and webhook belongs to.
pub const ACCOUNT: &str = "FUZZ1";

/// What one page came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageOutcome {
    /// Rows the provider returned.
    pub fetched: usize,
    /// Records mapped and encoded for `calls.raw`.
    pub mapped: usize,
    /// Records sent to the DLQ (each with its key).
    pub dead_letters: Vec<String>,
    pub next: Option<PageToken>,
}

fn accounts() -> &'static (ConnectorsConfig, Connectors) {
    static ACCOUNTS: OnceLock<(ConnectorsConfig, Connectors)> = OnceLock::new();
    ACCOUNTS.get_or_init(|| {
        let config: ConnectorsConfig = serde_json::from_value(serde_json::json!({
            "retreaver": [{"account": ACCOUNT, "api_key": "k"}],
            "ringba": [{"account": ACCOUNT, "token": "t"}],
            "invoca": [{"account": ACCOUNT, "role_id": "1", "token": "t"}],
            "callrail": [{"account": ACCOUNT, "api_key": "k"}],
            "trackdrive": [{"account": ACCOUNT, "subdomain": "fuzz", "public_key": "p", "private_key": "s"}],
        }))
        .expect("the fuzzing accounts are valid config");
        let connectors = Connectors::from_config(&config, &Shutdown::new())
            .expect("the fuzzing accounts build clients");
        (config, connectors)
    })
}

/// A fixed instant (fuzzing must be deterministic): the records' `observed_at`.
fn observed_at() -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600, 0)
        .single()
        .unwrap_or_default()
}

/// A window that keeps every record with a plausible time, so the mapping is reached.
fn request(scan: Scan) -> PageRequest {
    PageRequest {
        scan,
        start: Utc
            .timestamp_opt(946_684_800, 0)
            .single()
            .unwrap_or_default(), // 2000-01-01
        end: Utc
            .timestamp_opt(4_102_444_800, 0)
            .single()
            .unwrap_or_default(), // 2100-01-01
        token: None,
    }
}

/// Splits `Name: value` header lines from the body at the first blank line; input without
/// one (or whose first line is not a header) is all body.
fn split_headers(input: &[u8]) -> (HeaderMap, &[u8]) {
    let mut headers = HeaderMap::new();
    let Some(at) = input.windows(2).position(|w| w == b"\n\n") else {
        return (headers, input);
    };
    let head = &input[..at];
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return (HeaderMap::new(), input);
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            return (HeaderMap::new(), input);
        };
        headers.append(name, value);
    }
    (headers, &input[at + 2..])
}

fn response(headers: HeaderMap, body: &[u8]) -> HttpResponse {
    HttpResponse {
        status: 200,
        headers,
        body: bytes::Bytes::copy_from_slice(body),
        url: "http://fuzz.invalid/calls".to_string(),
    }
}

/// A mapped record must survive the wire: encoded (or refused with an error, which the
/// runner sends to the DLQ) and decoded back unchanged.
fn encode_round_trip(record: &CallRecord) -> Result<(), String> {
    let bytes = encode_to_vec(record, WireFormat::SingleObject).map_err(|e| e.to_string())?;
    match decode_call_record(&bytes) {
        Ok(back) if &back == record => Ok(()),
        Ok(back) => panic!("a mapped record changed through Avro:\n{record:?}\n{back:?}"),
        Err(e) => panic!("a record we encoded does not decode: {e}\n{record:?}"),
    }
}

/// One list-calls response of `provider` through the page reader and the mapping. `Err` is
/// a malformed page (the client retries it, then fails the window).
pub fn provider_page(provider: Provider, input: &[u8]) -> Result<PageOutcome, String> {
    let (config, connectors) = accounts();
    let handle = connectors
        .get(provider, ACCOUNT)
        .expect("every provider has a fuzzing account");
    let client = &handle.client;
    let (headers, body) = match provider {
        Provider::Retreaver => split_headers(input),
        _ => (HeaderMap::new(), input),
    };
    let resp = response(headers, body);
    let created = request(Scan::Created);
    let page = match provider {
        Provider::Retreaver => {
            // both scans: newest-first by update (incremental) and by creation (backfill)
            let updated =
                crate::providers::retreaver::read_page(&resp, &request(Scan::Updated), 1)?;
            let page = crate::providers::retreaver::read_page(&resp, &created, 1)?;
            assert_eq!(updated.fetched, page.fetched);
            page
        }
        Provider::Ringba => {
            let size = u64::from(config.ringba[0].page_size.clamp(1, 1000));
            crate::providers::ringba::read_page(&resp, &created, 0, size)
                .map_err(|e| format!("{e:?}"))?
        }
        Provider::Invoca => {
            let limit = config.invoca[0].limit.clamp(1, 4000);
            crate::providers::invoca::read_page(&resp, &request(Scan::Transactions), limit)?;
            crate::providers::invoca::read_page(&resp, &created, limit)?
        }
        Provider::CallRail => {
            let per_page = config.callrail[0].per_page.clamp(1, 250);
            let relative = CallRailPosition {
                per_page,
                relative: true,
                position: 0,
            };
            let base = &config.callrail[0].base_url;
            crate::providers::callrail::read_page(&resp, &created, relative, base)?;
            let numbered = CallRailPosition {
                per_page,
                relative: false,
                position: 1,
            };
            crate::providers::callrail::read_page(&resp, &created, numbered, base)?
        }
        Provider::TrackDrive => crate::providers::trackdrive::read_page(&resp, &created)?,
    };
    assert!(
        page.records.len() <= page.fetched,
        "the window filter added rows"
    );
    let mut ctx = client.map_context(RecordSource::Poll);
    ctx.observed_at = observed_at();
    let mut outcome = PageOutcome {
        fetched: page.fetched,
        mapped: 0,
        dead_letters: Vec::new(),
        next: page.next,
    };
    for raw in &page.records {
        let mapped = client.map_record(raw, &ctx).and_then(|record| {
            assert_eq!(record.provider, provider);
            assert_eq!(record.account_id, ACCOUNT);
            encode_round_trip(&record).map_err(|e| ctx.error("$", "encode", e))
        });
        match mapped {
            Ok(()) => outcome.mapped += 1,
            Err(e) => {
                // what the runner keys the DLQ record by
                let hint = client.call_id_hint(raw).unwrap_or_default();
                assert!(!e.reason.is_empty());
                outcome
                    .dead_letters
                    .push(format!("{provider}:{ACCOUNT}:{hint}"));
            }
        }
    }
    Ok(outcome)
}

/// One webhook body of `provider` through its parser and the Avro encoding. `Err` is a body
/// the receiver answers 400.
pub fn webhook(provider: Provider, body: &[u8]) -> Result<CallRecord, WebhookError> {
    let ctx = crate::webhook::default_context(provider, ACCOUNT);
    let record = crate::webhook::parse_webhook(body, &ctx, observed_at())?;
    assert_eq!(record.provider, provider);
    assert_eq!(record.account_id, ACCOUNT);
    assert_eq!(record.source, RecordSource::Webhook);
    // an accepted record that cannot be encoded is answered 500 and retried by the sender
    // for ever: the parser must refuse it instead
    if let Err(e) = encode_round_trip(&record) {
        panic!("a parsed webhook record does not encode: {e}\n{record:?}");
    }
    Ok(record)
}

/// The provider a fuzz input's first byte selects (templated webhook target).
pub fn provider_of(byte: u8) -> Provider {
    match byte % 5 {
        0 => Provider::Retreaver,
        1 => Provider::Ringba,
        2 => Provider::Invoca,
        3 => Provider::CallRail,
        _ => Provider::TrackDrive,
    }
}

/// The stable twins of the fuzz targets: arbitrary bytes and mutations of real pages and
/// webhook bodies through the same functions, a few thousand cases each.
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGES: [(Provider, &[u8]); 5] = [
        (
            Provider::Retreaver,
            include_bytes!("providers/retreaver/fixtures/calls_v2.json"),
        ),
        (
            Provider::Ringba,
            include_bytes!("providers/ringba/fixtures/calllogs.json"),
        ),
        (
            Provider::Invoca,
            include_bytes!("providers/invoca/fixtures/transactions.json"),
        ),
        (
            Provider::CallRail,
            include_bytes!("providers/callrail/fixtures/calls.json"),
        ),
        (
            Provider::TrackDrive,
            include_bytes!("providers/trackdrive/fixtures/calls.json"),
        ),
    ];

    /// Values providers have been seen to send, and values they must not break us with.
    fn odd_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::json;
        prop_oneof![
            Just(json!(null)),
            Just(json!("")),
            Just(json!(true)),
            Just(json!([])),
            Just(json!({})),
            Just(json!(0)),
            Just(json!(-1)),
            Just(json!(i64::MIN)),
            Just(json!(u64::MAX)),
            Just(json!(1.0e308)),
            Just(json!(-0.00001)),
            Just(json!("-1")),
            Just(json!("1e400")),
            Just(json!("99999999999999999999999999999")),
            Just(json!("0.000000000000000000000000001")),
            Just(json!("12.34567")),
            Just(json!("9223372036854775807")),
            Just(json!("-9223372036854775808")),
            Just(json!("9999-12-31T23:59:59Z")),
            Just(json!("+275760-09-13T00:00:00Z")),
            Just(json!("0000-01-01T00:00:00+14:00")),
            Just(json!("2024-02-30 25:61:61")),
            Just(json!("2024-03-10 02:30:00")),
            Just(json!("+1 (301) 523-6555 ext. 12345678901234567890")),
            Just(json!("\u{0}\u{feff}é")),
            Just(json!({"name": "x", "value": {"deep": [1, "2"]}})),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            "\\PC{0,24}".prop_map(|s| json!(s)),
            "[0-9]{1,22}".prop_map(|s| json!(s)),
        ]
    }

    /// Replaces the `pick`-th leaf (in document order, modulo their count) of `value`.
    fn replace_leaf(value: &mut serde_json::Value, pick: usize, with: serde_json::Value) {
        fn count(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::Object(m) if !m.is_empty() => m.values().map(count).sum(),
                serde_json::Value::Array(a) if !a.is_empty() => a.iter().map(count).sum(),
                _ => 1,
            }
        }
        /// Descends to leaf `n` (< count(v)) and replaces it.
        fn replace(v: &mut serde_json::Value, mut n: usize, with: serde_json::Value) {
            let children: Vec<&mut serde_json::Value> = match v {
                serde_json::Value::Object(m) if !m.is_empty() => m.values_mut().collect(),
                serde_json::Value::Array(a) if !a.is_empty() => a.iter_mut().collect(),
                _ => {
                    *v = with;
                    return;
                }
            };
            for child in children {
                let c = count(child);
                if n < c {
                    return replace(child, n, with);
                }
                n -= c;
            }
        }
        let total = count(value);
        replace(value, pick % total, with);
    }

    fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
        proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)
    }

    fn provider() -> impl Strategy<Value = usize> {
        0usize..5
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn pages_with_odd_field_values_map_or_go_to_the_dlq(
            which in provider(),
            changes in proptest::collection::vec((any::<usize>(), odd_value()), 1..4),
        ) {
            let (provider, page) = PAGES[which];
            let mut value: serde_json::Value = serde_json::from_slice(page).unwrap();
            for (pick, with) in changes {
                replace_leaf(&mut value, pick, with);
            }
            let body = serde_json::to_vec(&value).unwrap();
            if let Ok(outcome) = provider_page(provider, &body) {
                prop_assert!(outcome.mapped + outcome.dead_letters.len() <= outcome.fetched);
            }
        }

        #[test]
        fn pages_with_byte_edits_never_panic(which in provider(), edits in edits()) {
            let (provider, page) = PAGES[which];
            let _ = provider_page(provider, &callsync_testkit::apply_byte_edits(page.to_vec(), &edits));
        }

        #[test]
        fn arbitrary_page_bodies_are_malformed_not_panics(
            which in provider(),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = provider_page(PAGES[which].0, &body);
        }

        #[test]
        fn webhook_records_with_odd_values_parse_or_are_refused(
            which in provider(),
            record in 0usize..3,
            changes in proptest::collection::vec((any::<usize>(), odd_value()), 1..4),
        ) {
            let (provider, page) = PAGES[which];
            let value: serde_json::Value = serde_json::from_slice(page).unwrap();
            let records = match provider {
                Provider::Retreaver | Provider::Invoca => value.as_array().cloned(),
                Provider::Ringba => value["report"]["records"].as_array().cloned(),
                _ => value["calls"].as_array().cloned(),
            }
            .unwrap();
            let mut body = records[record % records.len()].clone();
            for (pick, with) in changes {
                replace_leaf(&mut body, pick, with);
            }
            let _ = webhook(provider, &serde_json::to_vec(&body).unwrap());
        }

        #[test]
        fn arbitrary_webhook_bodies_never_panic(
            which in provider(),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = webhook(PAGES[which].0, &body);
        }
    }

    #[test]
    fn the_fixture_pages_map_cleanly() {
        for (provider, page) in PAGES {
            let outcome = provider_page(provider, page).unwrap();
            assert!(outcome.mapped > 0, "{provider}: {outcome:?}");
        }
    }
}

/// Crashes the fuzzing found, each with its exact input.
#[cfg(test)]
mod regressions {
    use super::*;

    /// A Retreaver webhook whose `payout` has 27 decimal places was parsed, then the Avro
    /// encoder refused it (the receiver answered 500 and the sender would retry for ever).
    /// Now the mapping refuses it: a 400 naming the field.
    #[test]
    fn webhook_money_beyond_four_decimal_places_is_refused() {
        let fixture: serde_json::Value =
            serde_json::from_slice(include_bytes!("providers/retreaver/fixtures/calls_v2.json"))
                .unwrap();
        let mut body = fixture[1].clone();
        body["call"]["payout"] = serde_json::json!("0.000000000000000000000000001");
        let body = serde_json::to_vec(&body).unwrap();
        match webhook(Provider::Retreaver, &body) {
            Err(WebhookError::Mapping(e)) => {
                assert_eq!(
                    (e.field.as_str(), e.reason),
                    ("call.payout", "invalid_value"),
                    "{e}"
                )
            }
            other => panic!("expected a mapping error, got {other:?}"),
        }
    }
}
