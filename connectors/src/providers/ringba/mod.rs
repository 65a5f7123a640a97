//! Ringba (`POST /v2/{accountId}/calllogs` with `reportStart`/`reportEnd`, `offset`/`size`
//! in the body, `Authorization: Token …`; last page when `offset + rows >= totalCount` or a
//! short page; epoch-millisecond times; `""` for absent ids). See shared/providers.md section 2.

mod client;
mod config;
mod mapping;
#[cfg(test)]
mod tests;

pub(crate) use client::read_page;
pub use client::RingbaClient;
pub use config::RingbaAccount;
pub use mapping::map_call;
