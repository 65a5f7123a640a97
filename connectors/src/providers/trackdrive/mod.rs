//! TrackDrive (`GET https://{subdomain}.trackdrive.com/api/v1/calls`, Basic
//! `public_key:private_key`, cursor paging from `cursor=-1` to `metadata.next_cursor == 0`,
//! `created_at_from`/`created_at_to` as `YYYY-MM-DD HH:MM:SS ±ZZZZ`, times with local
//! offsets). See shared/providers.md section 5.

mod client;
mod config;
mod mapping;
#[cfg(test)]
mod tests;

pub(crate) use client::read_page;
pub use client::TrackDriveClient;
pub use config::TrackDriveAccount;
pub use mapping::map_call;
