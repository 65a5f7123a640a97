//! Store-level tests, run against both stores: Postgres (a fresh database from
//! the testkit) and SQLite (in memory).

use std::str::FromStr;

use callsync_schemas::{
    CallField, CallRecord, CallStatus, ContentFingerprint, FieldSet, Provider, RecordSource,
};
use callsync_sinks::testing::sample_call;
use callsync_sinks::{
    ApplyOutcome, CallStore, OffsetAdvance, OffsetCommit, PgStore, RowKey, SinkBatch, SinkRow,
    SourceRecord, SqliteStore, StoredCall,
};
use rust_decimal::Decimal;

fn row(call_id: &str, version: i64, partition: i32, offset: i64) -> SinkRow {
    SinkRow::new(
        sample_call(Provider::Invoca, "acct-7", call_id, version),
        SourceRecord {
            partition,
            offset,
            key: None,
            payload: None,
        },
    )
}

fn commit(batch: &SinkBatch, expected: &[(i32, Option<i64>)]) -> OffsetCommit {
    OffsetCommit {
        consumer_group: "g".into(),
        topic: "calls".into(),
        topic_id: None,
        advances: batch
            .next_offsets()
            .iter()
            .map(|(&partition, &next_offset)| OffsetAdvance {
                partition,
                expected: expected
                    .iter()
                    .find(|(p, _)| *p == partition)
                    .and_then(|(_, e)| *e),
                next_offset,
                backfill_until: None,
            })
            .collect(),
    }
}

async fn committed(
    store: &dyn CallStore,
    batch: &SinkBatch,
    expected: &[(i32, Option<i64>)],
) -> (u64, u64) {
    match store.apply(batch, &commit(batch, expected)).await.unwrap() {
        ApplyOutcome::Committed(c) => (c.written, c.stale),
        other => panic!("expected a commit, got {other:?}"),
    }
}

async fn version(store: &dyn CallStore, call_id: &str) -> i64 {
    store
        .get("invoca", "acct-7", call_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("call {call_id} missing"))
        .record
        .version
}

async fn version_guard_keeps_the_newest(store: &dyn CallStore) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent
    let b1 = SinkBatch::from_rows("calls", [row("a", 5, 0, 0), row("b", 1, 0, 1)]);
    assert_eq!(committed(store, &b1, &[]).await, (2, 0));
    // older a: left alone; the same b again: skipped (a replay writes nothing); newer b wins
    let b2 = SinkBatch::from_rows("calls", [row("a", 4, 0, 2), row("b", 1, 0, 3)]);
    assert_eq!(committed(store, &b2, &[(0, Some(2))]).await, (0, 2));
    assert_eq!(version(store, "a").await, 5);
    let b3 = SinkBatch::from_rows("calls", [row("b", 9, 0, 4)]);
    committed(store, &b3, &[(0, Some(4))]).await;
    assert_eq!(version(store, "b").await, 9);
    let stored = store.get("invoca", "acct-7", "b").await.unwrap().unwrap();
    assert_eq!(
        stored.record,
        sample_call(Provider::Invoca, "acct-7", "b", 9),
        "every field round-trips"
    );
    assert_eq!(
        (
            stored.kafka_topic.as_str(),
            stored.kafka_partition,
            stored.kafka_offset
        ),
        ("calls", 0, 4)
    );
    assert_eq!(
        store.load_offsets("g", "calls").await.unwrap().get(&0),
        Some(&5)
    );
}

async fn offsets_move_only_from_the_expected_value(store: &dyn CallStore) {
    store.migrate().await.unwrap();
    let b1 = SinkBatch::from_rows("calls", [row("a", 1, 3, 10)]);
    committed(store, &b1, &[]).await;
    // a zombie instance that still believes nothing is stored: refused, nothing written
    let stale = SinkBatch::from_rows("calls", [row("z", 1, 3, 10)]);
    match store.apply(&stale, &commit(&stale, &[])).await.unwrap() {
        ApplyOutcome::OffsetConflict(c) => {
            assert_eq!(
                (c[0].partition, c[0].expected, c[0].stored),
                (3, None, Some(11))
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let wrong = SinkBatch::from_rows("calls", [row("z", 1, 3, 11)]);
    assert!(matches!(
        store
            .apply(&wrong, &commit(&wrong, &[(3, Some(7))]))
            .await
            .unwrap(),
        ApplyOutcome::OffsetConflict(_)
    ));
    assert!(store.get("invoca", "acct-7", "z").await.unwrap().is_none());
    assert_eq!(
        store.load_offsets("g", "calls").await.unwrap().get(&3),
        Some(&11)
    );
}

async fn a_refused_row_is_named_and_the_rest_commits(store: &dyn CallStore) {
    store.migrate().await.unwrap();
    let mut rows: Vec<SinkRow> = (0..40).map(|i| row(&format!("c{i:02}"), 1, 1, i)).collect();
    // decimal(18,4) holds 14 integer digits; this does not fit
    rows[17].record.revenue = Some(Decimal::from_str("123456789012345678.5").unwrap());
    let mut batch = SinkBatch::from_rows("calls", rows);
    let rejected = match store.apply(&batch, &commit(&batch, &[])).await.unwrap() {
        ApplyOutcome::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].key.call_id, "c17");
    assert!(!rejected[0].reason.is_empty());
    assert!(
        store.all_calls().await.unwrap().is_empty(),
        "nothing committed with a refused row"
    );
    let rejected: Vec<(RowKey, String)> = rejected.into_iter().map(|r| (r.key, r.reason)).collect();
    batch.reject(&rejected);
    assert_eq!(batch.dead_letters().len(), 1);
    assert_eq!(committed(store, &batch, &[]).await, (39, 0));
    assert_eq!(
        store.load_offsets("g", "calls").await.unwrap().get(&1),
        Some(&40),
        "the offset moves past it"
    );
}

fn src(partition: i32, offset: i64) -> SourceRecord {
    SourceRecord {
        partition,
        offset,
        key: None,
        payload: None,
    }
}

/// One batch of `records` (offsets from `first_offset`, partition 0), committed.
async fn apply_records(
    store: &dyn CallStore,
    records: &[&CallRecord],
    first_offset: i64,
) -> (u64, u64) {
    let mut batch = SinkBatch::from_rows("calls", []);
    for (i, r) in records.iter().enumerate() {
        batch.push((*r).clone(), src(0, first_offset + i as i64));
    }
    let expected = (first_offset > 0).then_some(first_offset);
    committed(store, &batch, &[(0, expected)]).await
}

async fn stored(store: &dyn CallStore, call_id: &str) -> StoredCall {
    store
        .get("invoca", "acct-7", call_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("call {call_id} missing"))
}

/// A partial record of `call_id` at `version` carrying only `revenue`.
fn revenue_only(call_id: &str, version: i64, revenue: &str) -> CallRecord {
    let mut r = sample_call(Provider::Invoca, "acct-7", call_id, version);
    r.revenue = Some(Decimal::from_str(revenue).unwrap());
    r.source = RecordSource::Webhook;
    r.into_partial(FieldSet::EMPTY.with(CallField::Revenue))
}

/// `full` with the partial `update` applied: what the row must hold.
fn merged(full: &CallRecord, update: &CallRecord) -> CallRecord {
    let mut want = full.clone();
    want.apply(update);
    want
}

/// Issue 16: a record with the same version and different content is applied when its
/// fingerprint is greater (the processor's order), and only then, whichever comes first.
/// Failed before the fix (guard `calls.version <= EXCLUDED.version`): the record applied last
/// won, so the order decided.
async fn equal_versions_break_the_tie_by_fingerprint(store: &dyn CallStore) {
    store.migrate().await.unwrap();
    let a = sample_call(Provider::Invoca, "acct-7", "tie", 50);
    let mut b = a.clone();
    b.revenue = Some(Decimal::from_str("1234.5").unwrap());
    let (low, high) = if ContentFingerprint::of(&a) < ContentFingerprint::of(&b) {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(apply_records(store, &[&high], 0).await, (1, 0));
    assert_eq!(
        apply_records(store, &[&low], 1).await,
        (0, 1),
        "the lesser fingerprint of the same version is stale"
    );
    let row = stored(store, "tie").await;
    assert_eq!(row.record, high);
    assert_eq!(row.fingerprint, ContentFingerprint::of(&high));
    // the other order on another call (whose fingerprints differ): the same winner
    let (mut low2, mut high2) = (low.clone(), high.clone());
    low2.call_id = "tie2".into();
    high2.call_id = "tie2".into();
    if ContentFingerprint::of(&high2) < ContentFingerprint::of(&low2) {
        std::mem::swap(&mut low2, &mut high2);
    }
    assert_eq!(apply_records(store, &[&low2], 2).await, (1, 0));
    assert_eq!(apply_records(store, &[&high2], 3).await, (1, 0));
    assert_eq!(stored(store, "tie2").await.record, high2);
}

/// Issue 18: webhook (partial) then poll, poll then partial webhook, a duplicate partial, and
/// a partial carrying only revenue against a full row (every other column kept), each in
/// batches of its own. Failed before the fix: a partial record's uncarried fields overwrote
/// the row (NULLs, status unknown), and the duplicate was written again.
async fn partial_records_update_only_what_they_carry(store: &dyn CallStore) {
    store.migrate().await.unwrap();
    // poll then partial webhook: revenue changes, every other column is kept
    let full = sample_call(Provider::Invoca, "acct-7", "p1", 10);
    assert_eq!(apply_records(store, &[&full], 0).await, (1, 0));
    let update = revenue_only("p1", 20, "77.25");
    assert_eq!(apply_records(store, &[&update], 1).await, (1, 0));
    let row = stored(store, "p1").await;
    assert_eq!(row.record, merged(&full, &update));
    assert_eq!(
        row.record.revenue,
        Some(Decimal::from_str("77.25").unwrap())
    );
    assert_eq!(row.record.campaign_name, full.campaign_name);
    assert_eq!(row.record.version, 20);
    assert_eq!(row.fingerprint, ContentFingerprint::of(&update));
    assert_eq!(row.kafka_offset, 1);
    // the same partial again (a duplicate webhook): nothing written
    assert_eq!(apply_records(store, &[&update], 2).await, (0, 1));
    // an older partial: nothing written
    assert_eq!(
        apply_records(store, &[&revenue_only("p1", 15, "1")], 3).await,
        (0, 1)
    );
    assert_eq!(stored(store, "p1").await.record, merged(&full, &update));

    // webhook (partial) then poll: the partial creates the row, the poll fills it
    let first = revenue_only("p2", 10, "5");
    assert_eq!(apply_records(store, &[&first], 4).await, (1, 0));
    let row = stored(store, "p2").await;
    assert_eq!(row.record.revenue, first.revenue);
    assert_eq!(row.record.status, CallStatus::Unknown);
    assert_eq!(row.record.campaign_name, None);
    assert!(
        !row.record.carries(CallField::StartedAt),
        "started_at is NULL until a record carries it"
    );
    let poll = sample_call(Provider::Invoca, "acct-7", "p2", 30);
    assert_eq!(apply_records(store, &[&poll], 5).await, (1, 0));
    assert_eq!(stored(store, "p2").await.record, poll);
    // ... and a late partial older than the poll changes nothing
    assert_eq!(apply_records(store, &[&first], 6).await, (0, 1));
    assert_eq!(stored(store, "p2").await.record, poll);
}

/// Collapsing a batch: a newer partial on top of an older complete record keeps the complete
/// record's other fields; an older partial under a newer complete record is dropped; a row
/// whose version lies between a batch's complete record and its partial one takes only the
/// partial one.
async fn a_batch_merges_partial_records_like_one_by_one(store: &dyn CallStore) {
    store.migrate().await.unwrap();
    let full = sample_call(Provider::Invoca, "acct-7", "m1", 10);
    let update = revenue_only("m1", 20, "3.5");
    let late = revenue_only("m2", 5, "9");
    let newer = sample_call(Provider::Invoca, "acct-7", "m2", 10);
    // m3's row is at 15 before the batch holds [complete 10, partial 20]
    let row15 = sample_call(Provider::Invoca, "acct-7", "m3", 15);
    assert_eq!(apply_records(store, &[&row15], 0).await, (1, 0));
    let old10 = sample_call(Provider::Invoca, "acct-7", "m3", 10);
    let m3_update = revenue_only("m3", 20, "4.25");
    let (written, stale) = apply_records(
        store,
        &[&full, &newer, &update, &late, &old10, &m3_update],
        1,
    )
    .await;
    assert_eq!(
        (written, stale),
        (4, 1),
        "m1: complete + partial; m2: complete; m3: its complete 10 is stale, its partial applies"
    );
    assert_eq!(stored(store, "m1").await.record, merged(&full, &update));
    assert_eq!(stored(store, "m2").await.record, newer);
    assert_eq!(stored(store, "m3").await.record, merged(&row15, &m3_update));
}

async fn pg_store(copy_threshold: usize) -> Option<(PgStore, callsync_testkit::TestDatabase)> {
    let db = callsync_testkit::skip_unless_postgres!(None);
    let store = PgStore::connect(&db.url, 4, copy_threshold).await.unwrap();
    Some((store, db))
}

async fn sqlite_store() -> SqliteStore {
    SqliteStore::open(":memory:").await.unwrap()
}

macro_rules! both_stores {
    ($check:ident) => {
        mod $check {
            use super::*;

            #[tokio::test]
            async fn postgres_unnest() {
                let Some((store, _db)) = pg_store(usize::MAX).await else {
                    return;
                };
                $check(&store).await;
            }

            #[tokio::test]
            async fn postgres_binary_copy() {
                let Some((store, _db)) = pg_store(0).await else {
                    return;
                };
                $check(&store).await;
            }

            #[tokio::test]
            async fn sqlite() {
                $check(&sqlite_store().await).await;
            }
        }
    };
}

both_stores!(version_guard_keeps_the_newest);
both_stores!(offsets_move_only_from_the_expected_value);
both_stores!(a_refused_row_is_named_and_the_rest_commits);
both_stores!(equal_versions_break_the_tie_by_fingerprint);
both_stores!(partial_records_update_only_what_they_carry);
both_stores!(a_batch_merges_partial_records_like_one_by_one);

/// Issue 16: replaying a record identical to the row (a sink rewind, a redelivered batch)
/// writes no new row version: the same xmin and ctid. Failed before the fix:
/// the guard `calls.version <= EXCLUDED.version` let the equal version through, and every
/// replay rewrote the row (a dead tuple and index work per row).
#[tokio::test]
async fn postgres_identical_replay_writes_no_new_row_version() {
    for copy_threshold in [0, usize::MAX] {
        let Some((store, db)) = pg_store(copy_threshold).await else {
            return;
        };
        store.migrate().await.unwrap();
        let records: Vec<CallRecord> = (0..20)
            .map(|i| sample_call(Provider::Invoca, "acct-7", &format!("r{i}"), 5))
            .collect();
        let mut all = records.clone();
        all.push(revenue_only("r0", 6, "2.5"));
        apply_records(&store, &all.iter().collect::<Vec<_>>(), 0).await;
        let versions = |pool: sqlx::PgPool| async move {
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT call_id, xmin::text, ctid::text FROM calls ORDER BY call_id",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        };
        let before = versions(db.pool.clone()).await;
        let (written, stale) =
            apply_records(&store, &all.iter().collect::<Vec<_>>(), all.len() as i64).await;
        assert_eq!(
            (written, stale),
            (0, all.len() as u64),
            "threshold {copy_threshold}"
        );
        assert_eq!(
            versions(db.pool.clone()).await,
            before,
            "no new row version"
        );
    }
}

#[tokio::test]
async fn postgres_copy_and_unnest_store_identical_rows() {
    let Some((copy, db)) = pg_store(0).await else {
        return;
    };
    copy.migrate().await.unwrap();
    let mut odd = sample_call(Provider::CallRail, "a\"c,c\n", "null-ish", 3);
    odd.revenue = Some(Decimal::from_str("-0.0001").unwrap());
    odd.payout = Some(Decimal::from_str("99999999999999.9999").unwrap());
    odd.tags.clear();
    odd.raw = None;
    odd.answered_at = None;
    odd.converted = None;
    let rows = |topic: &str| {
        SinkBatch::from_rows(
            topic,
            [SinkRow::new(
                odd.clone(),
                SourceRecord {
                    partition: 0,
                    offset: 0,
                    key: None,
                    payload: None,
                },
            )],
        )
    };
    committed(&copy, &rows("calls"), &[]).await;
    let via_copy = copy.all_calls().await.unwrap();
    sqlx::query("TRUNCATE calls, callsync_offsets")
        .execute(&db.pool)
        .await
        .unwrap();
    let unnest = PgStore::from_pool(db.pool.clone(), usize::MAX);
    committed(&unnest, &rows("calls"), &[]).await;
    let via_unnest = unnest.all_calls().await.unwrap();
    assert_eq!(via_copy, via_unnest);
    assert_eq!(via_copy[0].record, odd);
}

#[tokio::test]
async fn postgres_refuses_a_nul_byte_through_copy_and_bisect_finds_it() {
    let Some((store, _db)) = pg_store(0).await else {
        return;
    };
    store.migrate().await.unwrap();
    let mut rows: Vec<SinkRow> = (0..10).map(|i| row(&format!("n{i}"), 1, 0, i)).collect();
    rows[3].record.campaign_name = Some("bad\0name".into());
    let batch = SinkBatch::from_rows("calls", rows);
    match store.apply(&batch, &commit(&batch, &[])).await.unwrap() {
        ApplyOutcome::Rejected(r) => {
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].key.call_id, "n3");
            assert!(r[0].reason.contains("22021"), "{}", r[0].reason);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn postgres_reader_role_sees_only_granted_accounts() {
    let Some((store, db)) = pg_store(usize::MAX).await else {
        return;
    };
    store.migrate().await.unwrap();
    let mine = sample_call(Provider::Ringba, "granted", "x1", 1);
    let other: CallRecord = sample_call(Provider::Ringba, "other", "x2", 1);
    let batch = SinkBatch::from_rows(
        "calls",
        [mine, other].into_iter().enumerate().map(|(i, record)| {
            SinkRow::new(
                record,
                SourceRecord {
                    partition: 0,
                    offset: i as i64,
                    key: None,
                    payload: None,
                },
            )
        }),
    );
    committed(&store, &batch, &[]).await;
    let role = format!("bi_{}", db.name.replace('-', "_"));
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query(&format!("CREATE ROLE \"{role}\" NOLOGIN"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let granted = [callsync_sinks::row_security::Account {
        provider: "ringba".into(),
        account_id: "granted".into(),
    }];
    // granting before row-level security is enforced would expose every account: refused
    let refused = callsync_sinks::row_security::grant_reader(store.pool(), &role, &granted)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            callsync_sinks::row_security::RowSecurityError::NotEnforced
        ),
        "{refused}"
    );
    store.enable_row_level_security().await.unwrap();
    let state = callsync_sinks::row_security::state(store.pool())
        .await
        .unwrap();
    assert!(state.enabled && state.forced, "{state:?}");
    let reads = callsync_sinks::row_security::grant_reader(store.pool(), &role, &granted)
        .await
        .unwrap();
    assert_eq!(reads, granted);
    // a superuser is never subject to row-level security: refused as a reader
    let superuser = callsync_sinks::row_security::grant_reader(store.pool(), "postgres", &granted)
        .await
        .unwrap_err();
    assert!(superuser.to_string().contains("superuser"), "{superuser}");
    sqlx::query(&format!("SET ROLE \"{role}\""))
        .execute(&mut *conn)
        .await
        .unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT account_id FROM calls ORDER BY 1")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    // the grants table is the owner's alone
    let grants = sqlx::query("SELECT * FROM callsync_account_grants")
        .fetch_all(&mut *conn)
        .await
        .unwrap_err();
    assert!(grants.to_string().contains("permission denied"), "{grants}");
    sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
    assert_eq!(seen, ["granted"]);
    // the owner (the sink) still sees and writes everything
    assert_eq!(store.all_calls().await.unwrap().len(), 2);
    drop(conn);
    let _ = sqlx::query(&format!("DROP OWNED BY \"{role}\""))
        .execute(&db.pool)
        .await;
    let _ = sqlx::query(&format!("DROP ROLE \"{role}\""))
        .execute(&db.pool)
        .await;
}
