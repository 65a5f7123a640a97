//! The callsync service: configuration, role wiring, scheduler and HTTP API.

pub mod api;
pub mod cli;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod ops;
pub mod role_health;
pub mod roles;
pub mod scheduler;
pub mod secrets;
pub mod webhooks;
