//! Webhook payloads: pure parsers of a verified body to a [`CallRecord`] (the HTTP receiver
//! `POST /webhooks/{provider}/{account}` lives in the root crate, checks the signature on the
//! raw body first, then calls [`parse_webhook`]).
//!
//! What each provider sends (docs/webhooks.md has the templates, tested as written):
//! - **CallRail** ([`callrail`]): its own call object (Pre-Call, Call Routing Complete,
//!   Post-Call, Call Modified), ids as `id`/`tracker_id` or `resource_id`/`tracker_resource_id`.
//! - **Retreaver, Ringba, Invoca, TrackDrive** ([`template`]): a JSON body the user pastes
//!   into the provider's webhook UI, keys = callsync field names, values = the provider's
//!   tokens (`[call_uuid]`, `[Call:InboundCallId]`, `{complete_call_id}`, …), rendered in the
//!   provider's own formats (e.g. Ringba's `11/26/2025 9:48:06 PM`).
//! - A relay may also forward the provider's own API record (`{"call": {...}}` of Retreaver,
//!   a Ringba call-log record, an Invoca transaction row, a TrackDrive call): it is mapped as
//!   the poller maps it, a complete record.
//!
//! Merge semantics: a templated or CallRail webhook makes a *partial* record
//! (`present_fields`) carrying exactly the fields its body has; the processor and the sink
//! update only those. Its version comes from the payload's own times (update, end, send
//! time), never later than the receipt time; the receipt time only when the payload has no
//! time at all ([`values::webhook_version`]); Invoca's just below the call's start, the
//! version of the Call transaction it reports. So a later poll versioned by the provider's
//! `updated_at`, or Invoca's Call transaction, is never shadowed by a webhook.

pub mod callrail;
pub mod template;
pub mod values;

use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::mapping::{MapContext, MappingError};

pub use template::TEMPLATE_KEYS;

/// A webhook body could not be read (answered 400 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{provider} account {account}: body is not JSON: {detail}")]
    Malformed {
        provider: Provider,
        account: String,
        detail: String,
    },
    #[error("{provider} account {account}: field {field:?}: {detail}")]
    Field {
        provider: Provider,
        account: String,
        field: String,
        detail: String,
    },
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

/// The context of a webhook of an account that is not configured under `[connectors]`:
/// UTC, USD, US numbers.
pub fn default_context(provider: Provider, account: &str) -> MapContext {
    MapContext::new(provider, account, RecordSource::Webhook)
}

/// The provider's own API record, when a relay forwards one instead of a template.
fn api_record_shape(provider: Provider, body: &[u8]) -> bool {
    let Ok(map) = serde_json::from_slice::<std::collections::HashMap<String, &RawValue>>(body)
    else {
        return false;
    };
    if map.contains_key("call_id") {
        return false;
    }
    match provider {
        Provider::Retreaver => map.contains_key("uuid") || map.contains_key("call"),
        Provider::Ringba => map.contains_key("inboundCallId"),
        Provider::Invoca => map.contains_key("complete_call_id"),
        Provider::TrackDrive => map.contains_key("uuid"),
        Provider::CallRail => false,
    }
}

/// Parses one verified webhook body of `ctx.provider` for account `ctx.account_id` (the
/// account's time zone, currency and region are in `ctx`: see
/// [`crate::Connectors::webhook_context`]).
pub fn parse_webhook(
    body: &[u8],
    ctx: &MapContext,
    received_at: DateTime<Utc>,
) -> Result<CallRecord, WebhookError> {
    let mut ctx = ctx.clone();
    ctx.source = RecordSource::Webhook;
    ctx.observed_at = received_at;
    let provider = ctx.provider;
    if provider == Provider::CallRail {
        return callrail::parse(body, &ctx, received_at);
    }
    if api_record_shape(provider, body) {
        let raw: &RawValue = serde_json::from_slice(body).map_err(|e| WebhookError::Malformed {
            provider,
            account: ctx.account_id.clone(),
            detail: e.to_string(),
        })?;
        let mut record = match provider {
            Provider::Retreaver => crate::providers::retreaver::map_call(raw, &ctx)?,
            Provider::Ringba => crate::providers::ringba::map_call(raw, &ctx)?,
            Provider::Invoca => crate::providers::invoca::map_transaction(raw, &ctx)?,
            Provider::TrackDrive => crate::providers::trackdrive::map_call(raw, &ctx)?,
            Provider::CallRail => unreachable!("handled above"),
        };
        // a record without the provider's update time: the payload's own times
        if record.provider_updated_at.is_none() && provider == Provider::Ringba {
            record.version = values::webhook_version(
                [Some(record.started_at), record.answered_at, record.ended_at]
                    .into_iter()
                    .flatten(),
                received_at,
            );
        }
        return Ok(record);
    }
    template::parse(body, &ctx, received_at)
}

#[cfg(test)]
mod tests;
