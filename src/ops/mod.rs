//! Operations commands: `replay`, `sink rewind`, `status`, `dlq list|redrive` and `tail`.
//! [`sink_db`] reads the sink's database for `status` and `dlq`.
//!
//! Each command is a clap `Args` struct and an async `run_*` function that writes its
//! human output (or JSON) to a writer and returns a typed report, so the CLI prints and the
//! tests assert on the same thing. See `docs/operations.md` for how ops use them.
//!
//! Kafka calls here are librdkafka's blocking ones (metadata, watermarks, committed offsets,
//! `offsets_for_times`, group descriptions); they run on tokio's blocking pool.

pub mod dlq;
pub mod error;
pub mod group;
pub mod offsets;
pub mod remap;
pub mod replay;
pub mod scan;
pub mod sink_db;
pub mod sink_rewind;
pub mod status;
pub mod table;
pub mod tail;
pub mod time;
pub mod topic_name;

pub use dlq::{
    run_dlq_list, run_dlq_list_with, run_dlq_redrive, run_dlq_redrive_with, DlqListArgs,
    DlqRedriveArgs, RedriveReport, RedriveTargets,
};
pub use error::OpsError;
pub use group::{describe_group, GroupDescription};
pub use replay::{run_replay, ReplayArgs, ReplayReport};
pub use sink_db::{SinkDatabase, SinkPartitionStatus, SinkStatus};
pub use sink_rewind::{run_sink_rewind, SinkRewindArgs, SinkRewindReport};
pub use status::{run_status, run_status_with, StatusArgs, StatusReport};
pub use tail::{run_tail, TailArgs, TailReport};
pub use topic_name::TopicName;

use std::time::Duration;

/// How long one Kafka metadata/offsets request may take before the command fails.
pub const DEFAULT_KAFKA_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs a blocking librdkafka call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(what: &'static str, f: F) -> Result<T, OpsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, OpsError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpsError::Task {
            what,
            message: e.to_string(),
        })?
}

/// How long a bounded scan waits without any record before it fails.
pub(crate) fn scan_idle() -> Duration {
    Duration::from_secs(20)
}
