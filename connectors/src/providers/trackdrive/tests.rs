use callsync_schemas::{CallStatus, Provider, RecordSource};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::map_call;
use crate::mapping::MapContext;

#[derive(Deserialize)]
struct Env {
    calls: Vec<Box<RawValue>>,
}

fn calls() -> Vec<Box<RawValue>> {
    serde_json::from_slice::<Env>(include_bytes!("fixtures/calls.json"))
        .unwrap()
        .calls
}

#[test]
fn maps_the_documented_fields_with_local_offsets() {
    let ctx = MapContext::new(Provider::TrackDrive, "acme", RecordSource::Poll);
    let r = map_call(&calls()[0], &ctx).unwrap();
    assert_eq!(r.call_id, "9c3b0f1e-7d3c-4e8e-9a51-2b7f1c0d0a01");
    assert_eq!(r.started_at.to_rfc3339(), "2023-12-11T16:49:32.495+00:00");
    assert_eq!(r.version, r.provider_updated_at.unwrap().timestamp_micros());
    assert_eq!(
        r.provider_updated_at.unwrap().to_rfc3339(),
        "2023-12-11T17:10:00.123+00:00"
    );
    assert_eq!(r.duration_secs, Some(328));
    assert_eq!(r.billable_secs, Some(300));
    assert_eq!(r.revenue.unwrap().to_string(), "45.00");
    assert_eq!(r.payout.unwrap().to_string(), "30");
    assert_eq!(r.campaign_id.as_deref(), Some("12"));
    assert_eq!(r.publisher_name.as_deref(), Some("Pub A"));
    assert_eq!(r.buyer_id.as_deref(), Some("56"));
    assert_eq!(r.status, CallStatus::Completed);
    assert_eq!(r.tags.get("zip").map(String::as_str), Some("33101"));
    assert_eq!(r.tags.get("age").map(String::as_str), Some("67"));
    assert_eq!(r.tags.get("interests").map(String::as_str), Some("a,b"));
}

#[test]
fn missing_uuid_and_bad_duration_go_to_the_dlq() {
    let ctx = MapContext::new(Provider::TrackDrive, "acme", RecordSource::Poll);
    let e = map_call(&calls()[1], &ctx).unwrap_err();
    assert_eq!((e.field.as_str(), e.reason), ("uuid", "missing"));
    let e = map_call(&calls()[2], &ctx).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.reason),
        ("total_duration", "invalid_value")
    );
}
