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

/// Conversions are separate rows (Signal, Sale, Post Call Event): before, only Call rows
/// were asked for, `converted` was always null and the conversion's revenue was lost.
#[test]
fn a_signal_row_and_its_correction_fold_into_the_call() {
    let ctx = MapContext::new(Provider::Invoca, "net1", RecordSource::Poll);
    let rows = split_array(include_bytes!("fixtures/transactions.json")).unwrap();
    let call = map_transaction(&rows[0], &ctx).unwrap();
    let signal = map_transaction(&rows[3], &ctx).unwrap();
    let corrected = map_transaction(&rows[4], &ctx).unwrap();
    assert_eq!(signal.call_id, call.call_id);
    assert_eq!(
        call.converted, None,
        "a Call row says nothing about conversions"
    );
    assert_eq!(signal.converted, Some(true));
    assert_eq!(
        signal.revenue.unwrap().to_string(),
        "125.50",
        "decimal comma"
    );
    assert_eq!(signal.payout.unwrap().to_string(), "1010.25");
    assert_eq!(signal.version, 1_709_316_000_000_000, "signal_occurred_at");
    assert!(signal.version > call.version);
    assert_eq!(
        signal.tags.get("signal:Sale").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        signal.tags.get("signal:Quote").map(String::as_str),
        Some("true")
    );
    assert!(
        corrected.version > signal.version,
        "a correction of the signal wins"
    );
    assert_eq!(corrected.converted, Some(false));
    assert_eq!(corrected.revenue.unwrap().to_string(), "0.00");
    assert_eq!(
        call.tags.get("promo_number_id").map(String::as_str),
        Some("9911")
    );
    assert_eq!(
        call.tracking_number, None,
        "the API has no tracking phone number"
    );
}

#[test]
fn the_advertiser_roles_status_column() {
    let ctx = MapContext::new(Provider::Invoca, "adv1", RecordSource::Poll);
    let rows = split_array(include_bytes!("fixtures/transactions.json")).unwrap();
    let r = map_transaction(&rows[5], &ctx).unwrap();
    assert_eq!(r.status, CallStatus::NoAnswer);
    assert_eq!(r.provider_status.as_deref(), Some("No Answer"));
    assert_eq!(r.revenue.unwrap().to_string(), "12.00");
}
