//! Provider clients, the sync runner and webhook parsing for callsync.
//!
//! # Entry points
//! - [`run_sync`]`(&SyncRequest, &SyncDeps, impl ProgressSink) -> Result<SyncOutcome, SyncError>`
//!   runs one incremental, full or backfill sync of one provider account; every page's
//!   records, DLQ records, cursor and progress event are committed in one Kafka transaction
//!   ([`KafkaSyncStore`]), and a restarted sync resumes from the committed cursor.
//! - [`ConnectorsConfig`] (serde, `deny_unknown_fields`): accounts per provider with
//!   credentials as [`callsync_runtime::Secret`], overridable base URLs (tests point them at
//!   the simulator), rate-limit overrides, retry and circuit settings.
//! - [`Connectors::from_config`] builds one client per account; [`Connectors::health`] gives
//!   each account's circuit state (its health), pacing and counters.
//! - [`webhook`]: pure parsers of webhook bodies to `CallRecord` (the receiver in the root
//!   crate checks signatures first).
//! - [`bench::connector_benchmark`]: a backfill against the simulator with a known rate limit,
//!   reporting requests/min reached against the ceiling.
//!
//! # Layout
//! `providers/{retreaver,ringba,invoca,callrail,trackdrive}/{client,config,mapping}.rs`, one
//! folder per provider with its fixtures and tests; [`http`] is the request loop (rate limit,
//! retries, circuit breaker); [`mapping`] the shared field readers (exact decimals, E.164,
//! time zones, status words).
//!
//! # Example
//! ```no_run
//! # async fn demo(config: callsync_connectors::ConnectorsConfig, factory: callsync_runtime::KafkaClientFactory,
//! #               request: callsync_schemas::SyncRequest) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use callsync_connectors::*;
//! let shutdown = callsync_runtime::Shutdown::new();
//! let deps = SyncDeps {
//!     connectors: Arc::new(Connectors::from_config(&config, &shutdown)?),
//!     store: Arc::new(KafkaSyncStore::new(factory, &config.sync.transactional_id_prefix,
//!                                         std::time::Duration::from_secs(config.sync.kafka_timeout_secs))),
//!     settings: config.sync.clone(),
//!     wire_format: callsync_schemas::WireFormat::SingleObject,
//!     shutdown,
//! };
//! let outcome = run_sync(&request, &deps, |p: &Progress| println!("{} records", p.records)).await?;
//! println!("{} records in {:?}", outcome.records, outcome.elapsed);
//! # Ok(()) }
//! ```

mod backfill;
pub mod bench;
pub mod circuit;
pub mod config;
pub mod cursor;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod mapping;
pub mod progress;
pub mod providers;
pub mod ratelimit;
pub mod registry;
pub mod runner;
pub mod store;
pub mod webhook;

pub use circuit::{CircuitBreaker, CircuitState};
pub use config::{
    CircuitSettings, ConnectorsConfig, RateLimitOverride, RetrySettings, SyncSettings,
};
pub use cursor::{cursor_key, SourceCursor};
pub use error::{ClientError, ConfigError, StoreError, SyncError};
pub use mapping::{MapContext, MappingError};
pub use progress::{NoProgress, Progress, ProgressSink};
pub use providers::{Page, PageRequest, PageToken, ProviderClient, Scan};
pub use registry::{AccountHandle, Connectors, ProviderHealth};
pub use runner::{run_sync, SyncDeps, SyncOutcome};
pub use store::{
    CommitBatch, KafkaSyncStore, MemorySyncStore, StoreFaults, SyncSession, SyncStore,
};
