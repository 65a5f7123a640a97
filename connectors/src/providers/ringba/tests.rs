use callsync_schemas::{CallStatus, Provider, RecordSource};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::map_call;
use crate::mapping::MapContext;

#[derive(Deserialize)]
struct Env {
    report: Rep,
}
#[derive(Deserialize)]
struct Rep {
    records: Vec<Box<RawValue>>,
}

fn records() -> Vec<Box<RawValue>> {
    serde_json::from_slice::<Env>(include_bytes!("fixtures/calllogs.json"))
        .unwrap()
        .report
        .records
}

#[test]
fn maps_the_documented_example() {
    let ctx = MapContext::new(Provider::Ringba, "RA1", RecordSource::Poll);
    let r = map_call(&records()[0], &ctx).unwrap();
    assert_eq!(r.call_id, "v2cd7lW_KVB9aaaa");
    assert_eq!(r.started_at.timestamp_millis(), 1612368427115, "epoch ms");
    assert_eq!(r.answered_at.unwrap().timestamp_millis(), 1612368429090);
    assert_eq!(
        r.version,
        ctx.observed_at.timestamp_micros(),
        "no update time: observed_at"
    );
    assert_eq!(r.caller_number.as_deref(), Some("+17813364178"));
    assert_eq!(r.destination_number.as_deref(), Some("+16317918378"));
    assert_eq!(r.status, CallStatus::Completed);
    assert_eq!(r.revenue.unwrap().to_string(), "12.5");
    assert_eq!(r.payout.unwrap().to_string(), "0");
    assert_eq!(r.buyer_id.as_deref(), Some("TA2f69aaaa"));
    assert!(
        !r.tags.contains_key("publisher_sub_id"),
        "empty strings are absent"
    );
}

#[test]
fn live_calls_empty_ids_and_zero_times() {
    let ctx = MapContext::new(Provider::Ringba, "RA1", RecordSource::Poll);
    let r = map_call(&records()[1], &ctx).unwrap();
    assert_eq!(r.status, CallStatus::InProgress);
    assert_eq!(r.publisher_id, None);
    assert_eq!(r.answered_at, None, "0 ms means not set");
    assert_eq!(r.recording_url, None);
    let e = map_call(&records()[2], &ctx).unwrap_err();
    assert_eq!(e.field, "callDt");
}
