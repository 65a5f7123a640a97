use callsync_schemas::{CallField, CallStatus, Precedence, Provider, RecordSource};
use chrono::{DateTime, TimeZone, Utc};

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn ctx(provider: Provider) -> MapContext {
    default_context(provider, "A1")
}

fn carried(record: &CallRecord) -> Vec<&'static str> {
    record
        .present_fields
        .map(|set| set.iter().map(CallField::as_str).collect())
        .unwrap_or_default()
}

/// The old parser expected the providers' API field names (`uuid`, `inboundCallId` with
/// epoch ms): the documented Retreaver template answered 400 `field "uuid": missing`.
#[test]
fn a_rendered_retreaver_template_is_a_partial_record_of_exactly_its_fields() {
    let body = br#"{
      "call_id": "f1abfb78-0000-4000-8000-000000000001",
      "started_at": "2024-11-04T16:52:18Z",
      "ended_at": "2024-11-04T16:53:00Z",
      "duration_secs": "42",
      "caller_number": "+13015236555",
      "campaign_id": "9872",
      "status": "finished",
      "converted": "true",
      "revenue": "25,50",
      "updated_at": "2024-11-04T16:53:01Z",
      "payout": ""
    }"#;
    let received = at("2024-11-04T16:54:00Z");
    let r = parse_webhook(body, &ctx(Provider::Retreaver), received).unwrap();
    assert_eq!(r.call_id, "f1abfb78-0000-4000-8000-000000000001");
    assert_eq!(r.source, RecordSource::Webhook);
    assert_eq!(r.status, CallStatus::Completed);
    assert_eq!(r.revenue.unwrap().to_string(), "25.50");
    assert_eq!(r.payout, None, "an empty token is not carried");
    assert_eq!(
        carried(&r),
        [
            "started_at",
            "ended_at",
            "duration_secs",
            "caller_number",
            "campaign_id",
            "status",
            "provider_status",
            "converted",
            "revenue",
            "currency",
            "provider_updated_at",
            "raw"
        ]
    );
    assert_eq!(
        r.version,
        at("2024-11-04T16:53:01Z").timestamp_micros(),
        "updated_at"
    );
}

#[test]
fn ringba_dates_are_read_in_the_accounts_zone() {
    let body =
        br#"{"call_id": "RGB1", "started_at": "11/26/2025 9:48:06 PM", "duration_secs": "60",
                    "converted": "True", "revenue": "12.5", "payout": "[Call:ConversionPayout]"}"#;
    let mut c = ctx(Provider::Ringba);
    c.time_zone = chrono_tz::America::New_York;
    let r = parse_webhook(body, &c, at("2025-11-27T03:00:00Z")).unwrap();
    assert_eq!(r.started_at, at("2025-11-27T02:48:06Z"));
    assert_eq!(
        r.ended_at,
        Some(at("2025-11-27T02:49:06Z")),
        "start + duration"
    );
    assert_eq!(r.converted, Some(true));
    assert!(
        !r.carries(CallField::Payout),
        "a token left in place is not carried"
    );
    assert_eq!(
        r.version,
        at("2025-11-27T02:49:06Z").timestamp_micros(),
        "the payload's end, not the receipt"
    );
}

#[test]
fn template_errors_name_the_field() {
    let c = ctx(Provider::TrackDrive);
    let now = Utc::now();
    let typo = br#"{"call_id": "u1", "revnue": "1.00"}"#;
    match parse_webhook(typo, &c, now) {
        Err(WebhookError::Field { field, .. }) => assert_eq!(field, "revnue"),
        other => panic!("{other:?}"),
    }
    let no_id = br#"{"call_id": "", "status": "completed"}"#;
    match parse_webhook(no_id, &c, now) {
        Err(WebhookError::Field { field, .. }) => assert_eq!(field, "call_id"),
        other => panic!("{other:?}"),
    }
    let bad_time = br#"{"call_id": "u1", "started_at": "tomorrow"}"#;
    assert!(matches!(
        parse_webhook(bad_time, &c, now),
        Err(WebhookError::Field { field, .. }) if field == "started_at"
    ));
    assert!(matches!(
        parse_webhook(b"{oops", &c, now),
        Err(WebhookError::Malformed { .. })
    ));
}

/// A payload time ahead of callsync's clock is capped at the receipt time; a payload with no
/// time at all is versioned by its receipt.
#[test]
fn webhook_versions_never_pass_the_receipt_time() {
    let c = ctx(Provider::TrackDrive);
    let received = at("2026-01-02T00:00:00Z");
    let future = br#"{"call_id": "u1", "updated_at": "2026-01-02 00:05:00 +0000"}"#;
    let r = parse_webhook(future, &c, received).unwrap();
    assert_eq!(r.version, received.timestamp_micros());
    let timeless = br#"{"call_id": "u1", "status": "completed"}"#;
    let r = parse_webhook(timeless, &c, received).unwrap();
    assert_eq!(r.version, received.timestamp_micros());
    assert_eq!(carried(&r), ["status", "provider_status", "raw"]);
}

const CALLRAIL_POST_CALL: &[u8] = br#"{"id":"CAL1","answered":true,"voicemail":false,"start_time":"2024-01-02T10:00:00.000-05:00","duration":60,"customer_phone_number":"+14045550100","tracking_phone_number":"+14045550101","tracker_id":"TRK1","value":"10.00","timestamp":"2024-01-02T10:21:00.000-05:00"}"#;

#[test]
fn callrail_post_call_and_call_modified_in_both_id_styles() {
    let c = ctx(Provider::CallRail);
    let post = parse_webhook(CALLRAIL_POST_CALL, &c, at("2024-01-02T15:21:01Z")).unwrap();
    assert_eq!(post.call_id, "CAL1");
    assert_eq!(post.campaign_id.as_deref(), Some("TRK1"));
    assert_eq!(post.status, CallStatus::Completed);
    assert_eq!(post.duration_secs, Some(60));
    assert_eq!(
        post.version,
        at("2024-01-02T15:21:00Z").timestamp_micros(),
        "timestamp"
    );
    assert!(post.carries(CallField::Revenue) && !post.carries(CallField::Tags));
    // since 2021: resource_id / tracker_resource_id
    let modified = br#"{"resource_id":"CAL1","tracker_resource_id":"TRK1","answered":true,"start_time":"2024-01-02T10:00:00.000-05:00","duration":60,"value":"12.00","tags":["Sale"],"changes":["value","tags"],"timestamp":"2024-01-03T09:00:00.000-05:00"}"#;
    let m = parse_webhook(modified, &c, at("2024-01-03T14:00:01Z")).unwrap();
    assert_eq!(m.key(), post.key());
    assert_eq!(m.campaign_id.as_deref(), Some("TRK1"));
    assert!(m.version > post.version);
    assert_eq!(m.revenue.unwrap().to_string(), "12.00");
    assert_eq!(m.tags.get("tag:Sale").map(String::as_str), Some("true"));
    assert_eq!(m.raw.as_deref(), Some(&modified[..]));
}

/// A Pre-Call body has no `answered` and a duration of 0: before, the call was recorded as
/// completed in 0 seconds (or, once complete, wiped back to that).
#[test]
fn callrail_pre_call_is_in_progress_and_carries_no_duration() {
    let c = ctx(Provider::CallRail);
    let pre = br#"{"resource_id":"CAL2","start_time":"2024-01-02T10:00:00.000-05:00","duration":0,"customer_phone_number":"+14045550100","tracking_phone_number":"+14045550101","timestamp":"2024-01-02T10:00:01.000-05:00"}"#;
    let r = parse_webhook(pre, &c, at("2024-01-02T15:00:02Z")).unwrap();
    assert_eq!(r.call_id, "CAL2");
    assert_eq!(r.status, CallStatus::InProgress);
    assert!(!r.carries(CallField::DurationSecs) && !r.carries(CallField::EndedAt));
    assert!(!r.carries(CallField::Revenue));
}

/// A relay forwarding the provider's API record (as the receiver's tests and benchmark do)
/// still maps as the poller maps it.
#[test]
fn a_forwarded_api_record_maps_like_a_poll() {
    let body = br#"{"uuid":"u-1","caller":"(301) 523-6555","start_time":"2024-11-04T16:52:18Z","updated_at":"2024-11-04T16:53:00Z","status":"finished","revenue":"5.00"}"#;
    let r = parse_webhook(body, &ctx(Provider::Retreaver), Utc::now()).unwrap();
    assert_eq!(r.caller_number.as_deref(), Some("+13015236555"));
    assert_eq!(r.source, RecordSource::Webhook);
    assert!(!r.is_partial());
}

fn poll_record() -> CallRecord {
    let raw = br#"{"call":{"uuid":"u-9","caller":"+13015236555","number":"+18886064349","start_time":"2024-11-04T16:52:18.034Z","end_time":"2024-11-04T16:53:00.000Z","total_duration":42,"status":"finished","revenue":5.0,"payout":2.0,"campaign_id":9872,"updated_at":"2024-11-04T16:53:00.756Z"}}"#;
    let raw: &serde_json::value::RawValue = serde_json::from_slice(raw).unwrap();
    let c = MapContext::new(Provider::Retreaver, "A1", RecordSource::Poll);
    crate::providers::retreaver::map_call(raw, &c).unwrap()
}

fn newest_wins(current: &mut Option<CallRecord>, incoming: &CallRecord) {
    match current {
        None => *current = Some(incoming.clone()),
        Some(row) => {
            if Precedence::of(incoming) > Precedence::of(row) {
                row.apply(incoming);
            }
        }
    }
}

/// The interleavings of bullet 2, with the merge rule the processor and the sink apply
/// (highest (version, content) wins; a partial record updates only its fields). Before,
/// a webhook mapped missing fields to NULL with status Unknown and a receipt-time version,
/// which outranked the later poll and wiped the row.
#[test]
fn webhook_and_poll_interleavings_keep_every_field() {
    let poll = poll_record();
    // Retreaver's end-of-call webhook, sent before the call's last update
    let webhook = parse_webhook(
        br#"{"call_id":"u-9","status":"finished","revenue":"5.00","updated_at":"2024-11-04T16:53:00Z"}"#,
        &ctx(Provider::Retreaver),
        at("2024-11-04T16:53:05Z"),
    )
    .unwrap();
    // a conversion reported later, carrying only its revenue
    let conversion = parse_webhook(
        br#"{"call_id":"u-9","converted":"true","revenue":"30.00","updated_at":"2024-11-04T18:00:00Z"}"#,
        &ctx(Provider::Retreaver),
        at("2024-11-04T18:00:02Z"),
    )
    .unwrap();
    assert!(
        webhook.version < poll.version,
        "the webhook is older than the poll"
    );

    // webhook then poll: the poll (complete, newer) wins as it is
    let mut row = None;
    newest_wins(&mut row, &webhook);
    newest_wins(&mut row, &poll);
    assert_eq!(row.as_ref(), Some(&poll));

    // poll then webhook: the older webhook changes nothing
    let mut row = None;
    newest_wins(&mut row, &poll);
    newest_wins(&mut row, &webhook);
    assert_eq!(row.as_ref(), Some(&poll));

    // duplicate webhook: the same (version, content) is not newer
    let mut row = None;
    newest_wins(&mut row, &poll);
    newest_wins(&mut row, &conversion);
    let once = row.clone();
    newest_wins(&mut row, &conversion);
    assert_eq!(row, once);

    // partial webhook on a full row: only revenue and converted change
    let merged = row.unwrap();
    assert_eq!(merged.revenue.unwrap().to_string(), "30.00");
    assert_eq!(merged.converted, Some(true));
    assert_eq!(merged.caller_number, poll.caller_number);
    assert_eq!(merged.tracking_number, poll.tracking_number);
    assert_eq!(merged.started_at, poll.started_at);
    assert_eq!(merged.duration_secs, poll.duration_secs);
    assert_eq!(merged.payout, poll.payout);
    assert_eq!(merged.campaign_id, poll.campaign_id);
    assert_eq!(merged.status, CallStatus::Completed);
    assert!(!merged.is_partial());

    // a later poll with the provider's updated_at is never shadowed by the webhook
    let later_poll = CallRecord {
        version: at("2024-11-04T18:30:00Z").timestamp_micros(),
        revenue: Some("28.00".parse().unwrap()),
        ..poll.clone()
    };
    let mut row = Some(merged);
    newest_wins(&mut row, &later_poll);
    assert_eq!(row.unwrap().revenue.unwrap().to_string(), "28.00");
}

#[test]
fn epoch_zero_is_not_a_start_time() {
    // an unparseable-looking 1970 start must not sneak in as a carried field
    let r = parse_webhook(
        br#"{"call_id":"u1","status":"busy"}"#,
        &ctx(Provider::Retreaver),
        Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
    )
    .unwrap();
    assert!(!r.carries(CallField::StartedAt));
}

/// Invoca versions a call by its place in the call's history (the Call transaction: its
/// start; conversion rows and corrections after it). An end-of-call webhook versioned by its
/// end time outranked the Call transaction polled after it: the processor dropped the poll
/// as stale and the row kept only what the webhook carries (no buyer, billable time, money,
/// recording; found by the chaos test: 206 of 100k rows). The webhook reports what the Call
/// transaction reports, so it ranks just below it: the poll completes the row in either
/// order, and conversions and corrections outrank both. Fails before the change.
#[test]
fn an_invoca_webhook_never_outranks_the_call_transaction_it_reports() {
    let poll_ctx = MapContext::new(Provider::Invoca, "A1", RecordSource::Poll);
    let rows = crate::providers::split_array(include_bytes!(
        "../providers/invoca/fixtures/transactions.json"
    ))
    .unwrap();
    let call = crate::providers::invoca::map_transaction(&rows[0], &poll_ctx).unwrap();
    let body = br#"{
      "call_id": "C624DA2C-CF3367C3",
      "started_at": "2024-03-01 09:15:00 -0800",
      "duration_secs": "125",
      "caller_number": "866-555-1234",
      "destination_number": "800-555-0199",
      "campaign_id": "501",
      "status": "Transferred"
    }"#;
    let hook = parse_webhook(body, &ctx(Provider::Invoca), at("2024-03-01T17:17:10Z")).unwrap();
    assert!(
        Precedence::of(&hook) < Precedence::of(&call),
        "webhook version {} outranks the Call transaction's {}",
        hook.version,
        call.version
    );
    for (name, order) in [
        ("webhook first", [&hook, &call]),
        ("poll first", [&call, &hook]),
    ] {
        let mut row = None;
        for record in order {
            newest_wins(&mut row, record);
        }
        let row = row.unwrap();
        assert_eq!(
            (
                &row.revenue,
                &row.payout,
                &row.recording_url,
                row.started_at
            ),
            (
                &call.revenue,
                &call.payout,
                &call.recording_url,
                call.started_at
            ),
            "{name}"
        );
    }
}
