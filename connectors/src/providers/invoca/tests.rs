use callsync_schemas::{CallStatus, Provider, RecordSource};

use super::map_transaction;
use crate::mapping::MapContext;
use crate::providers::split_array;

#[test]
fn maps_a_call_and_its_correction_onto_one_call_with_a_higher_version() {
    let ctx = MapContext::new(Provider::Invoca, "net1", RecordSource::Poll);
    let rows = split_array(include_bytes!("fixtures/transactions.json")).unwrap();
    let original = map_transaction(&rows[0], &ctx).unwrap();
    let correction = map_transaction(&rows[1], &ctx).unwrap();
    assert_eq!(original.call_id, "C624DA2C-CF3367C3");
    assert_eq!(
        correction.call_id, original.call_id,
        "a correction lands on the same call"
    );
    assert!(correction.version > original.version, "the correction wins");
    assert_eq!(original.version, 1_709_313_300_000_000);
    assert_eq!(
        original.caller_number.as_deref(),
        Some("+18665551234"),
        "dashed number to E.164"
    );
    assert_eq!(original.destination_number.as_deref(), Some("+18005550199"));
    assert_eq!(original.started_at.timestamp_millis(), 1_709_313_300_000);
    assert_eq!(original.revenue.unwrap().to_string(), "25.00");
    assert_eq!(original.payout.unwrap().to_string(), "10.50");
    assert_eq!(correction.revenue.unwrap().to_string(), "0.00");
    assert_eq!(original.status, CallStatus::Completed);
    assert_eq!(original.provider_status.as_deref(), Some("Transferred"));
    assert_eq!(original.campaign_id.as_deref(), Some("501"));
    assert_eq!(
        correction
            .tags
            .get("corrects_transaction_id")
            .map(String::as_str),
        Some("C624DA2C-CF3367C3")
    );
}

#[test]
fn a_row_without_complete_call_id_goes_to_the_dlq() {
    let ctx = MapContext::new(Provider::Invoca, "net1", RecordSource::Poll);
    let rows = split_array(include_bytes!("fixtures/transactions.json")).unwrap();
    let e = map_transaction(&rows[2], &ctx).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.reason),
        ("complete_call_id", "missing")
    );
}
