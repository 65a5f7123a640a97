//! CallRail API v3 (`GET /v3/a/{account_id}/calls.json`, `Authorization: Token token="…"`,
//! offset pagination `page`/`per_page` ending at `page >= total_pages`, or relative
//! pagination ending at `has_next_page: false`; times with offsets). See shared/providers.md
//! section 4.

mod client;
mod config;
mod mapping;
#[cfg(test)]
mod tests;

pub use client::CallRailClient;
pub(crate) use client::{read_page, CallRailPosition};
pub use config::CallRailAccount;
pub use mapping::map_call;
