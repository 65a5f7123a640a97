//! Store-level tests, run against both stores: Postgres (a fresh database from
//! the testkit) and SQLite (in memory).

use std::str::FromStr;

use callsync_schemas::{CallRecord, Provider};
use callsync_sinks::testing::sample_call;
use callsync_sinks::{
    ApplyOutcome, CallStore, OffsetAdvance, OffsetCommit, PgStore, RowKey, SinkBatch, SinkRow,
    SourceRecord, SqliteStore,
};
use rust_decimal::Decimal;

fn row(call_id: &str, version: i64, partition: i32, offset: i64) -> SinkRow {
    SinkRow {
        record: sample_call(Provider::Invoca, "acct-7", call_id, version),
        source: SourceRecord {
            partition,
            offset,
            key: None,
            payload: None,
        },
    }
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
    // older a: left alone; equal b: re-applied (harmless); newer b wins next time
    let b2 = SinkBatch::from_rows("calls", [row("a", 4, 0, 2), row("b", 1, 0, 3)]);
    assert_eq!(committed(store, &b2, &[(0, Some(2))]).await, (1, 1));
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
            [SinkRow {
                record: odd.clone(),
                source: SourceRecord {
                    partition: 0,
                    offset: 0,
                    key: None,
                    payload: None,
                },
            }],
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
        [mine, other]
            .into_iter()
            .enumerate()
            .map(|(i, record)| SinkRow {
                record,
                source: SourceRecord {
                    partition: 0,
                    offset: i as i64,
                    key: None,
                    payload: None,
                },
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
