//! Manual syncs: what `callsync sync`/`backfill` and `POST /api/syncs` call.

use callsync_schemas::{Provider, SyncMode, SyncRequest};
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use super::health::ProviderRegistry;
use super::publish::{PublishError, SyncPublisher};
use super::status::{SyncState, SyncStatusStore};

/// A manual sync, as the CLI or the API asks for it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    pub provider: Provider,
    pub account_id: String,
    pub mode: SyncMode,
    #[serde(default)]
    pub window_start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub window_end: Option<DateTime<Utc>>,
    /// Continue this (failed) sync id instead of starting a new one.
    #[serde(default)]
    pub resume: Option<String>,
}

/// A manual sync was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The request itself is wrong (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// No such provider account is configured (HTTP 404).
    #[error("no {provider} account {account:?} is configured")]
    UnknownAccount { provider: Provider, account: String },
    /// Kafka did not take it (HTTP 503).
    #[error("the sync request could not be written: {0}")]
    Unavailable(#[from] PublishError),
}

const MAX_ACCOUNT_ID_LEN: usize = 200;

/// The earliest time a sync window may start or end at.
pub const EARLIEST_WINDOW_YEAR: i32 = 2000;

/// How far past now a window may end (a provider's clock may run ahead of ours).
pub const MAX_WINDOW_END_AHEAD: chrono::Duration = chrono::Duration::days(1);

/// Checks a request's window against the bounds every sync runs within: both ends from
/// 2000-01-01 to one day past `now`, the start before the end. The runner does date
/// arithmetic on these (a full sync reads `end - full_window_days`), so nothing outside them
/// may reach it, whether it comes from the API, the CLI or the requests topic.
pub fn check_window(
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let earliest = Utc
        .with_ymd_and_hms(EARLIEST_WINDOW_YEAR, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let latest = now
        .checked_add_signed(MAX_WINDOW_END_AHEAD)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    for (name, value) in [("window_start", start), ("window_end", end)] {
        if let Some(t) = value {
            if t < earliest {
                return Err(format!(
                    "{name} {} is before {EARLIEST_WINDOW_YEAR}-01-01",
                    t.to_rfc3339()
                ));
            }
            if t > latest {
                return Err(format!(
                    "{name} {} is more than a day in the future",
                    t.to_rfc3339()
                ));
            }
        }
    }
    if let (Some(start), Some(end)) = (start, end) {
        if start >= end {
            return Err("window_start must be before window_end".to_string());
        }
    }
    Ok(())
}

/// Validates `trigger` and builds its SyncRequest: a new random id, or the resumed id with
/// the next attempt number.
pub fn build_request(
    trigger: &TriggerRequest,
    requested_by: &str,
    store: Option<&SyncStatusStore>,
    now: DateTime<Utc>,
) -> Result<SyncRequest, TriggerError> {
    let invalid = |m: &str| Err(TriggerError::Invalid(m.to_string()));
    let account = trigger.account_id.trim();
    if account.is_empty() {
        return invalid("account_id must not be empty");
    }
    if account.len() > MAX_ACCOUNT_ID_LEN
        || account.contains('/')
        || account.chars().any(char::is_control)
    {
        return invalid(
            "account_id must be at most 200 characters, without '/' or control characters",
        );
    }
    match (trigger.mode, trigger.window_start, trigger.window_end) {
        (SyncMode::Incremental, Some(_), _) | (SyncMode::Incremental, _, Some(_)) => {
            return invalid("an incremental sync reads from the stored cursor and takes no window; use mode full or backfill");
        }
        (SyncMode::Backfill, None, _) => return invalid("a backfill needs window_start"),
        _ => {}
    }
    if let Err(e) = check_window(trigger.window_start, trigger.window_end, now) {
        return Err(TriggerError::Invalid(e));
    }
    if trigger.window_start.is_some_and(|start| start > now) {
        return invalid("window_start is in the future");
    }
    let (id, attempt) = match &trigger.resume {
        Some(id) => {
            let id = id.trim();
            if id.is_empty() || id.len() > 200 {
                return invalid("resume must be a sync id");
            }
            let known = store.and_then(|s| s.get(id));
            if let Some(status) = &known {
                if status.provider != trigger.provider || status.account_id != account {
                    return invalid("the resumed sync belongs to another provider account");
                }
                if status.state == SyncState::Completed {
                    return invalid("the resumed sync has completed; start a new one");
                }
            }
            let attempt = known.and_then(|s| s.attempt).unwrap_or(1) + 1;
            (id.to_string(), attempt)
        }
        None => (uuid::Uuid::new_v4().to_string(), 1),
    };
    Ok(SyncRequest {
        id,
        provider: trigger.provider,
        account_id: account.to_string(),
        mode: trigger.mode,
        window_start: trigger.window_start,
        window_end: trigger.window_end,
        requested_at: now,
        requested_by: requested_by.to_string(),
        attempt,
        not_before: None,
    })
}

/// Validates and writes a manual sync request (acknowledged by Kafka before this returns).
///
/// `registry`, when it lists any account, limits triggers to the configured accounts.
/// `requested_by` is `cli` or `api`.
pub async fn trigger(
    publisher: &dyn SyncPublisher,
    registry: Option<&ProviderRegistry>,
    store: Option<&SyncStatusStore>,
    request: &TriggerRequest,
    requested_by: &str,
) -> Result<SyncRequest, TriggerError> {
    let sync = build_request(request, requested_by, store, Utc::now())?;
    if let Some(registry) = registry {
        if !registry.snapshot().is_empty() && !registry.contains(sync.provider, &sync.account_id) {
            return Err(TriggerError::UnknownAccount {
                provider: sync.provider,
                account: sync.account_id,
            });
        }
    }
    publisher.publish_request(&sync).await?;
    if let Some(store) = store {
        store.record_request(&sync);
    }
    tracing::info!(sync_id = %sync.id, provider = %sync.provider, account = %sync.account_id, mode = %sync.mode, requested_by, "manual sync requested");
    Ok(sync)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::publish::MemorySyncPublisher;
    use chrono::TimeZone;

    fn t(mode: SyncMode, start: Option<i64>, end: Option<i64>) -> TriggerRequest {
        TriggerRequest {
            provider: Provider::TrackDrive,
            account_id: "td1".into(),
            mode,
            // seconds after 2020-09-13, inside the bounds of check_window
            window_start: start.map(|s| Utc.timestamp_opt(1_600_000_000 + s, 0).unwrap()),
            window_end: end.map(|s| Utc.timestamp_opt(1_600_000_000 + s, 0).unwrap()),
            resume: None,
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_message() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let err = |tr: TriggerRequest| {
            build_request(&tr, "api", None, now)
                .unwrap_err()
                .to_string()
        };
        assert!(err(t(SyncMode::Incremental, Some(1), None)).contains("incremental"));
        assert!(err(t(SyncMode::Backfill, None, None)).contains("window_start"));
        assert!(err(t(SyncMode::Full, Some(10), Some(5))).contains("before"));
        assert!(err(t(SyncMode::Full, Some(200_000_000), None)).contains("future"));
        let mut bad = t(SyncMode::Full, None, None);
        bad.account_id = "a/b".into();
        assert!(err(bad).contains("'/'"));
        // absurd dates are refused before any arithmetic is done on them
        let far = |y: i32| Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).single();
        for (start, end) in [
            (None, Some(DateTime::<Utc>::MIN_UTC)),
            (None, far(1999)),
            (far(1969), None),
            (None, far(262_000)),
            (None, Some(now + chrono::Duration::days(2))),
        ] {
            let mut absurd = t(SyncMode::Full, None, None);
            absurd.window_start = start;
            absurd.window_end = end;
            let message = err(absurd);
            assert!(message.contains("window_"), "{message}");
        }
        let late_end = TriggerRequest {
            window_end: Some(now + chrono::Duration::hours(23)),
            ..t(SyncMode::Full, None, None)
        };
        assert!(build_request(&late_end, "api", None, now).is_ok());
        let ok = build_request(&t(SyncMode::Backfill, Some(1), Some(5)), "cli", None, now).unwrap();
        assert_eq!(ok.attempt, 1);
        assert_eq!(ok.requested_by, "cli");
    }

    #[tokio::test]
    async fn trigger_writes_the_request_and_checks_the_account() {
        let publisher = MemorySyncPublisher::default();
        let registry = ProviderRegistry::new();
        registry.register(Provider::TrackDrive, "td1");
        let store = SyncStatusStore::new(10);
        let sync = trigger(
            &publisher,
            Some(&registry),
            Some(&store),
            &t(SyncMode::Full, None, None),
            "api",
        )
        .await
        .unwrap();
        assert_eq!(publisher.requests(), vec![sync.clone()]);
        assert_eq!(store.get(&sync.id).unwrap().state, SyncState::Requested);
        let mut other = t(SyncMode::Full, None, None);
        other.account_id = "nope".into();
        let err = trigger(&publisher, Some(&registry), Some(&store), &other, "api")
            .await
            .unwrap_err();
        assert!(matches!(err, TriggerError::UnknownAccount { .. }));

        let mut resume = t(SyncMode::Full, None, None);
        resume.resume = Some(sync.id.clone());
        let resumed = trigger(&publisher, Some(&registry), Some(&store), &resume, "cli")
            .await
            .unwrap();
        assert_eq!(resumed.id, sync.id);
        assert_eq!(resumed.attempt, 2);
    }
}
