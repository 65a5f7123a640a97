//! Benchmark support for `callsync-bench -- connector`: run a backfill against a provider
//! (the simulator) whose rate limit is known, and report the request rate reached against
//! that ceiling. Records are counted and dropped ([`CountingSyncStore`]), so memory stays flat
//! however large the backfill (the bench measures the connector role's RSS around it).
//!
//! ```no_run
//! # async fn demo(config: callsync_connectors::ConnectorsConfig, request: callsync_schemas::SyncRequest)
//! #     -> Result<(), callsync_connectors::SyncError> {
//! // the lead's bench: start the simulator with e.g. RateLimitRule::new(600, 60) on the
//! // provider, point `config`'s account base_url at it with rate_limit.per_minute = 600,
//! // then:
//! let report = callsync_connectors::bench::connector_benchmark(&config, &request, 600.0, 100).await?;
//! println!("{report}");
//! assert!(report.target_share >= 0.95 && report.rate_limited == 0);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use callsync_runtime::Shutdown;
use callsync_schemas::{SyncRequest, WireFormat};

use crate::config::ConnectorsConfig;
use crate::cursor::SourceCursor;
use crate::error::{StoreError, SyncError};
use crate::progress::NoProgress;
use crate::registry::Connectors;
use crate::runner::{run_sync, SyncDeps};
use crate::store::{CommitBatch, SyncSession, SyncStore};

/// A store that counts what it is given and keeps only cursors.
#[derive(Debug, Default, Clone)]
pub struct CountingSyncStore {
    pub records: Arc<AtomicU64>,
    pub dlq: Arc<AtomicU64>,
    pub commits: Arc<AtomicU64>,
    cursors: Arc<Mutex<HashMap<String, SourceCursor>>>,
}

#[async_trait]
impl SyncStore for CountingSyncStore {
    async fn open(&self, _scope: &str) -> Result<Arc<dyn SyncSession>, StoreError> {
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait]
impl SyncSession for CountingSyncStore {
    async fn cursors(&self, prefix: &str) -> Result<HashMap<String, SourceCursor>, StoreError> {
        let c = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        Ok(c.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn commit(&self, batch: CommitBatch) -> Result<(), StoreError> {
        self.records
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        self.dlq
            .fetch_add(batch.dlq.len() as u64, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = batch.cursor {
            self.cursors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(c.key(), c);
        }
        Ok(())
    }
}

/// What one benchmark run reached.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorBenchReport {
    pub provider: callsync_schemas::Provider,
    pub records: u64,
    pub dlq: u64,
    pub requests: u64,
    /// 429s the provider answered (with no injected 429s, all caused by us).
    pub rate_limited: u64,
    pub elapsed: Duration,
    pub requests_per_minute: f64,
    /// The provider's limit, requests/min.
    pub ceiling_per_minute: f64,
    /// `requests_per_minute / ceiling_per_minute`.
    pub ceiling_share: f64,
    /// The share of the ceiling the account is configured to aim at.
    pub configured_share: f64,
    /// `ceiling_per_minute × configured_share`: the rate the account should reach.
    pub target_per_minute: f64,
    /// `requests_per_minute / target_per_minute`.
    pub target_share: f64,
    pub records_per_minute: f64,
    /// `ceiling_per_minute × page_size`.
    pub records_ceiling_per_minute: f64,
}

impl std::fmt::Display for ConnectorBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connector backfill: {} records, {} requests in {:.1}s = {:.1} req/min of {:.1} ceiling ({:.1}%; {:.1}% of the configured share's {:.1}), {:.0} records/min of {:.0} ceiling, {} 429s, {} DLQ",
            self.records,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.requests_per_minute,
            self.ceiling_per_minute,
            self.ceiling_share * 100.0,
            self.target_share * 100.0,
            self.target_per_minute,
            self.records_per_minute,
            self.records_ceiling_per_minute,
            self.rate_limited,
            self.dlq
        )
    }
}

/// Runs `request` (a backfill) with `config`'s account, counting records, and reports the
/// request rate reached against `ceiling_per_minute` (the provider's limit) and records/min
/// against `ceiling_per_minute × page_size`.
pub async fn connector_benchmark(
    config: &ConnectorsConfig,
    request: &SyncRequest,
    ceiling_per_minute: f64,
    page_size: u32,
) -> Result<ConnectorBenchReport, SyncError> {
    let shutdown = Shutdown::new();
    let connectors =
        Connectors::from_config(config, &shutdown).map_err(|e| SyncError::InvalidRequest {
            sync_id: request.id.clone(),
            provider: request.provider,
            account: request.account_id.clone(),
            detail: e.to_string(),
        })?;
    let store = CountingSyncStore::default();
    let deps = SyncDeps {
        connectors: Arc::new(connectors),
        store: Arc::new(store.clone()),
        settings: config.sync.clone(),
        wire_format: WireFormat::SingleObject,
        shutdown,
    };
    let configured_share = deps
        .connectors
        .get(request.provider, &request.account_id)
        .map(|h| h.client.http().limiter.policy().share)
        .unwrap_or(1.0);
    let out = run_sync(request, &deps, NoProgress).await?;
    let minutes = out.elapsed.as_secs_f64() / 60.0;
    let rpm = if minutes > 0.0 {
        out.requests as f64 / minutes
    } else {
        0.0
    };
    Ok(ConnectorBenchReport {
        provider: request.provider,
        records: out.records,
        dlq: out.dlq,
        requests: out.requests,
        rate_limited: out.rate_limited,
        elapsed: out.elapsed,
        requests_per_minute: rpm,
        ceiling_per_minute,
        ceiling_share: if ceiling_per_minute > 0.0 {
            rpm / ceiling_per_minute
        } else {
            0.0
        },
        configured_share,
        target_per_minute: ceiling_per_minute * configured_share,
        target_share: if ceiling_per_minute * configured_share > 0.0 {
            rpm / (ceiling_per_minute * configured_share)
        } else {
            0.0
        },
        records_per_minute: if minutes > 0.0 {
            out.records as f64 / minutes
        } else {
            0.0
        },
        records_ceiling_per_minute: ceiling_per_minute * f64::from(page_size),
    })
}
