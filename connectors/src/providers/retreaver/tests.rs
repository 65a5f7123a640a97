use callsync_schemas::{CallStatus, Provider, RecordSource};
use rust_decimal::Decimal;
use std::str::FromStr;

use super::map_call;
use crate::mapping::MapContext;
use crate::providers::split_array;

fn records() -> Vec<Box<serde_json::value::RawValue>> {
    split_array(include_bytes!("fixtures/calls_v2.json")).unwrap()
}

#[test]
fn maps_the_documented_v2_example() {
    let ctx = MapContext::new(Provider::Retreaver, "2", RecordSource::Poll);
    let recs = records();
    let r = map_call(&recs[0], &ctx).unwrap();
    assert_eq!(r.call_id, "f1abfb78-9a57-4c4e-a3a2-6d3f0c0e5a11");
    assert_eq!(
        r.version, 1_730_739_180_756_000,
        "version = updated_at in micros"
    );
    assert_eq!(r.provider_updated_at.unwrap().timestamp_micros(), r.version);
    assert_eq!(r.started_at.to_rfc3339(), "2024-11-04T16:52:18.034+00:00");
    assert_eq!(r.duration_secs, Some(14));
    assert_eq!(r.billable_secs, Some(2));
    assert_eq!(r.caller_number.as_deref(), Some("+13015236555"));
    assert_eq!(r.tracking_number.as_deref(), Some("+18886064349"));
    assert_eq!(r.destination_number.as_deref(), Some("+12263399112"));
    assert_eq!(r.campaign_id.as_deref(), Some("9872"));
    assert_eq!(r.buyer_id.as_deref(), Some("27449"));
    assert_eq!(r.publisher_id, None);
    assert_eq!(r.status, CallStatus::Completed);
    assert_eq!(r.provider_status.as_deref(), Some("finished"));
    assert_eq!(r.converted, Some(true));
    assert_eq!(r.revenue, Some(Decimal::from_str("5.0").unwrap()));
    assert_eq!(
        r.tags.get("geo").map(String::as_str),
        Some("301,us,us-28379,us-nc")
    );
    assert_eq!(
        r.raw.as_deref(),
        Some(recs[0].get().as_bytes()),
        "raw JSON kept byte for byte"
    );
}

#[test]
fn v3_number_object_v4_campaign_object_and_string_money() {
    let ctx = MapContext::new(Provider::Retreaver, "2", RecordSource::Poll);
    let r = map_call(&records()[1], &ctx).unwrap();
    assert_eq!(r.tracking_number.as_deref(), Some("+18886064349"));
    assert_eq!(r.campaign_id.as_deref(), Some("9872"));
    assert_eq!(r.campaign_name.as_deref(), Some("Final Expense"));
    assert_eq!(r.revenue.unwrap().to_string(), "12.3400");
    assert_eq!(r.payout, Some(Decimal::ZERO));
    assert_eq!(r.status, CallStatus::NoAnswer);
    assert_eq!(r.destination_number, None);
}

#[test]
fn unmappable_records_name_the_field() {
    let ctx = MapContext::new(Provider::Retreaver, "2", RecordSource::Poll);
    let recs = records();
    let e = map_call(&recs[2], &ctx).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.reason),
        ("call.revenue", "invalid_value")
    );
    let e = map_call(&recs[3], &ctx).unwrap_err();
    assert_eq!((e.field.as_str(), e.reason), ("call.uuid", "missing"));
}

#[test]
fn link_header_next_detection() {
    use reqwest::header::{HeaderMap, HeaderValue, LINK};
    let mut h = HeaderMap::new();
    h.insert(LINK, HeaderValue::from_static("<https://x/calls.json?page=3>; rel=\"next\", <https://x/calls.json?page=9>; rel=\"last\""));
    assert!(super::client::link_has_next(&h));
    h.insert(
        LINK,
        HeaderValue::from_static("<https://x/calls.json?page=1>; rel=\"prev\""),
    );
    assert!(!super::client::link_has_next(&h));
}
