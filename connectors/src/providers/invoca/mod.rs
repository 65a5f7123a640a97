//! Invoca Transactions API (`GET /api/2020-10-01/{role}/transactions/{id}.json`, raw-token
//! `Authorization` header, `start_after_transaction_id` cursor, last page when fewer rows than
//! `limit`; corrections arrive as new rows with `corrects_transaction_id`). See
//! shared/providers.md section 3.

mod client;
mod config;
mod mapping;
#[cfg(test)]
mod tests;

pub(crate) use client::read_page;
pub use client::InvocaClient;
pub use config::{InvocaAccount, InvocaRole};
pub use mapping::map_transaction;
