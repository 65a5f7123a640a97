//! The callsync service: configuration, role wiring, scheduler and HTTP API.

pub mod api;
pub mod config;
pub mod roles;
pub mod ops;
pub mod scheduler;
pub mod secrets;
pub mod webhooks;
