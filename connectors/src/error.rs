//! Errors of the connectors, each naming what failed and with which input.

use std::time::Duration;

use callsync_schemas::Provider;

/// A request to a provider failed for good (after the retries its kind allows).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 401/403: credentials rejected. Never retried; the sync fails at once.
    #[error("{provider} account {account}: credentials rejected (HTTP {status}) by {url}: {body}")]
    Auth {
        provider: Provider,
        account: String,
        url: String,
        status: u16,
        body: String,
    },
    /// Still rate limited (429) after the allowed retries.
    #[error("{provider} account {account}: still rate limited (HTTP 429) after {attempts} attempts at {url}")]
    RateLimited {
        provider: Provider,
        account: String,
        url: String,
        attempts: u32,
    },
    /// 5xx after the allowed retries.
    #[error("{provider} account {account}: server error HTTP {status} after {attempts} attempts at {url}: {body}")]
    Server {
        provider: Provider,
        account: String,
        url: String,
        status: u16,
        attempts: u32,
        body: String,
    },
    /// Connection errors and timeouts after the allowed retries.
    #[error("{provider} account {account}: request to {url} failed after {attempts} attempts: {message}")]
    Transport {
        provider: Provider,
        account: String,
        url: String,
        attempts: u32,
        message: String,
    },
    /// The body could not be read as the page it should be, after the allowed retries.
    #[error("{provider} account {account}: malformed page from {url} after {attempts} attempts: {detail}")]
    Malformed {
        provider: Provider,
        account: String,
        url: String,
        attempts: u32,
        detail: String,
    },
    /// Another 4xx: a request the provider will never accept.
    #[error("{provider} account {account}: request rejected with HTTP {status} by {url}: {body}")]
    Rejected {
        provider: Provider,
        account: String,
        url: String,
        status: u16,
        body: String,
    },
    /// The provider's circuit is open (it failed repeatedly); no request was sent.
    #[error("{provider} account {account}: provider unhealthy (circuit open), next probe in {retry_in:?}")]
    CircuitOpen {
        provider: Provider,
        account: String,
        retry_in: Duration,
    },
    /// The sync was asked to stop while waiting.
    #[error("{provider} account {account}: cancelled by shutdown")]
    Cancelled { provider: Provider, account: String },
}

impl ClientError {
    pub fn is_auth(&self) -> bool {
        matches!(self, ClientError::Auth { .. })
    }

    /// A short label for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Auth { .. } => "auth",
            ClientError::RateLimited { .. } => "rate_limited",
            ClientError::Server { .. } => "server",
            ClientError::Transport { .. } => "transport",
            ClientError::Malformed { .. } => "malformed",
            ClientError::Rejected { .. } => "rejected",
            ClientError::CircuitOpen { .. } => "circuit_open",
            ClientError::Cancelled { .. } => "cancelled",
        }
    }
}

/// Kafka side of a sync (cursor store, transactional produce).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating Kafka client: {0}")]
    Client(#[from] callsync_runtime::ClientError),
    #[error("Kafka {operation} for {scope}: {source}")]
    Kafka {
        operation: &'static str,
        scope: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cursor {key:?} in {topic} is not valid JSON: {detail}")]
    BadCursor {
        topic: String,
        key: String,
        detail: String,
    },
    #[error("encoding {what} for {scope}: {detail}")]
    Encode {
        what: &'static str,
        scope: String,
        detail: String,
    },
    #[error("reading {topic} to its end timed out after {waited:?}")]
    ReadTimeout { topic: String, waited: Duration },
    /// A transactional call into librdkafka ran past its bound (twice its timeout) and was
    /// given up: its producer is abandoned, and the connector must restart so that a new
    /// producer with the same transactional id fences the transaction.
    #[error("Kafka {step} for {scope} (transactional id {transactional_id}) has not returned after {secs} s; its producer is abandoned, restart the connector to fence it")]
    Stuck {
        step: &'static str,
        scope: String,
        transactional_id: String,
        secs: u64,
    },
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// A transactional call did not return: the store's session is unusable and the process
    /// must restart (see [`StoreError::Stuck`]).
    pub fn is_stuck(&self) -> bool {
        matches!(self, StoreError::Stuck { .. })
    }
}

/// A sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{provider} account {account}: {source}")]
    Store {
        provider: Provider,
        account: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("no {provider} account {account:?} is configured")]
    UnknownAccount { provider: Provider, account: String },
    #[error("sync {sync_id} ({provider} account {account}): invalid request: {detail}")]
    InvalidRequest {
        sync_id: String,
        provider: Provider,
        account: String,
        detail: String,
    },
    #[error("sync {sync_id} ({provider} account {account}) cancelled by shutdown")]
    Cancelled {
        sync_id: String,
        provider: Provider,
        account: String,
    },
    #[error("sync {sync_id}: a backfill window task failed: {detail}")]
    Task { sync_id: String, detail: String },
}

impl SyncError {
    pub fn is_auth(&self) -> bool {
        matches!(self, SyncError::Client(c) if c.is_auth())
    }

    /// The sync's Kafka transaction got stuck ([`StoreError::Stuck`]): the worker that ran it
    /// must end, so that its restart fences the transaction.
    pub fn is_stuck(&self) -> bool {
        matches!(self, SyncError::Store { source, .. } if source.is_stuck())
    }
}

/// The connectors' configuration is invalid.
#[derive(Debug, thiserror::Error)]
#[error("connectors config: {provider} account {account:?}: {detail}")]
pub struct ConfigError {
    pub provider: Provider,
    pub account: String,
    pub detail: String,
}
