use std::path::PathBuf;

use rdkafka::error::KafkaError;

/// Everything the harness can fail at, each naming what failed and with which input.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// `DATABASE_URL` is unset and no PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in {searched}; install PostgreSQL \
         (Debian: apt-get install -y postgresql), set CALLSYNC_PG_BIN, or set DATABASE_URL"
    )]
    PostgresNotInstalled {
        /// Where we looked.
        searched: String,
    },

    /// A command could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr and stdout (trimmed), plus a log tail where useful.
        output: String,
    },

    /// A file system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What we tried (e.g. "create directory").
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A database URL could not be parsed or rewritten.
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl {
        /// The URL (password redacted).
        url: String,
        /// Why.
        reason: String,
    },

    /// A Postgres operation failed.
    #[error("postgres {url}: {operation}: {source}")]
    Postgres {
        /// The URL (password redacted).
        url: String,
        /// What we tried.
        operation: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },

    /// A Kafka client operation failed.
    #[error("kafka {bootstrap}: {operation}: {source}")]
    Kafka {
        /// The bootstrap servers.
        bootstrap: String,
        /// What we tried.
        operation: String,
        /// The client error (boxed: it is large).
        #[source]
        source: Box<KafkaError>,
    },

    /// The broker refused to create a topic.
    #[error("kafka {bootstrap}: create topic {topic:?}: {error}")]
    TopicCreation {
        /// The bootstrap servers.
        bootstrap: String,
        /// The topic.
        topic: String,
        /// The broker's error.
        error: String,
    },

    /// Waiting for something took too long.
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        seconds: u64,
    },

    /// A helper task panicked or was cancelled.
    #[error("harness task failed: {0}")]
    Task(String),

    /// A start/stop was asked of a service the harness does not control.
    #[error("cannot control {service}: {reason}")]
    NotControllable {
        /// Which service.
        service: &'static str,
        /// Why not, and what would make it work.
        reason: String,
    },
}

impl TestkitError {
    /// True when the error means "this service is not available here" (so a test may be skipped
    /// outside CI), rather than "the service is there but broken".
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TestkitError::PostgresNotInstalled { .. })
    }
}
