//! Errors of the simulator's Rust API.

use callsync_schemas::Provider;

#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("invalid simulator configuration: {0}")]
    InvalidConfig(String),
    #[error("{provider} has no account {account_id:?}")]
    UnknownAccount {
        provider: Provider,
        account_id: String,
    },
    #[error("cannot bind the simulator to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the simulator's server failed: {0}")]
    Serve(#[source] std::io::Error),
}
