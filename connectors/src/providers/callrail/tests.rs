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
fn maps_the_documented_example_with_offset_times() {
    let ctx = MapContext::new(Provider::CallRail, "ACC1", RecordSource::Poll);
    let r = map_call(&calls()[0], &ctx).unwrap();
    assert_eq!(r.call_id, "CAL8154748ae6bd4e278a7cddd38a662f4f");
    assert_eq!(
        r.started_at.to_rfc3339(),
        "2018-02-19T18:41:00.236+00:00",
        "offset -05:00 to UTC"
    );
    assert_eq!(
        r.ended_at.unwrap().to_rfc3339(),
        "2018-02-19T18:41:37.236+00:00"
    );
    assert_eq!(r.duration_secs, Some(37));
    assert_eq!(r.status, CallStatus::Completed);
    assert_eq!(r.provider_status.as_deref(), Some("first_call"));
    assert_eq!(
        r.revenue.unwrap().to_string(),
        "125.50",
        "value is a string"
    );
    assert_eq!(r.converted, Some(true));
    assert_eq!(r.tags.get("tag:Booked").map(String::as_str), Some("true"));
    assert_eq!(
        r.campaign_id.as_deref(),
        Some("TRK8154748ae6bd4e278a7cddd38a662f4f")
    );
    assert_eq!(r.version, ctx.observed_at.timestamp_micros());
}

#[test]
fn numeric_ids_voicemail_and_tag_objects() {
    let ctx = MapContext::new(Provider::CallRail, "ACC1", RecordSource::Poll);
    let r = map_call(&calls()[1], &ctx).unwrap();
    assert_eq!(r.call_id, "123456789");
    assert_eq!(r.status, CallStatus::NoAnswer);
    assert_eq!(r.revenue, None);
    assert!(r.tags.contains_key("tag:Spam"));
    let e = map_call(&calls()[2], &ctx).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.reason),
        ("start_time", "invalid_value")
    );
}
