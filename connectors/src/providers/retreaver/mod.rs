//! Retreaver (`GET /api/v2/calls.json`, `api_key` query auth, page numbers with an RFC 5988
//! `Link` header whose missing `rel="next"` marks the last page, bare array of
//! `{"call": {...}}`). See shared/providers.md section 1.

mod client;
mod config;
mod mapping;
#[cfg(test)]
mod tests;

pub(crate) use client::read_page;
pub use client::RetreaverClient;
pub use config::RetreaverAccount;
pub use mapping::map_call;
