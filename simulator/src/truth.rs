//! Ground truth: the newest version of every call as of a simulated instant, in the terms a
//! connector maps it to (call key parts, version, status, exact money).

use std::ops::Range;

use callsync_schemas::{CallKey, CallStatus, Provider};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::clock::millis_to_datetime;
use crate::dataset::{Account, BadRecordKind, CallFacts, CallState, Stage};
use crate::format::{e164, money_decimal};
use crate::names::{BUYERS, CAMPAIGNS, PUBLISHERS};
use crate::providers::{self, callrail, invoca, retreaver, ringba, trackdrive};

/// The newest version of one call as of the requested instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthRecord {
    pub provider: Provider,
    pub account_id: String,
    /// The provider field that becomes `call_id` (see the crate docs). Given even for a
    /// record served without it (`bad = missing_id`).
    pub call_id: String,
    /// `{provider}:{account_id}:{call_id}`.
    pub call_key: String,
    /// The call's position in the account's data set (0-based, creation order).
    pub index: u64,
    /// The version a connector derives (epoch µs): Retreaver and TrackDrive `updated_at`;
    /// Invoca `corrected_at` of the newest correction, else `start_time_utc`. `None` for
    /// Ringba and CallRail, which carry no update time (their version is `observed_at`).
    pub version: Option<i64>,
    /// The provider's own update time, where the record carries one.
    pub provider_updated_at: Option<DateTime<Utc>>,
    /// The instant of the stage this version reflects (exists for every provider).
    pub changed_at: DateTime<Utc>,
    pub stage: Stage,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_secs: Option<u32>,
    /// The normalized status derivable from the provider's fields.
    pub status: CallStatus,
    pub provider_status: Option<String>,
    pub converted: bool,
    /// Exact revenue and payout (scale 2) as the provider reports them; `None` where the
    /// provider has no such field (CallRail payout; CallRail `value` before conversion).
    pub revenue: Option<Decimal>,
    pub payout: Option<Decimal>,
    pub currency: Option<String>,
    pub caller_number: String,
    pub tracking_number: String,
    pub destination_number: Option<String>,
    pub campaign_name: String,
    pub publisher_name: Option<String>,
    pub buyer_name: Option<String>,
    /// Set when the record is served broken on purpose; a connector must send it to the
    /// DLQ rather than to `calls`.
    pub bad: Option<BadRecordKind>,
}

impl TruthRecord {
    /// This record's contribution to [`TruthSummary::checksum`].
    pub fn checksum(&self) -> u64 {
        record_checksum(
            self.provider,
            &self.call_key,
            self.version,
            self.status.as_str(),
            self.revenue,
        )
    }
}

/// FNV-1a 64 of `call_key ␟ version ␟ status ␟ revenue`, where version is dropped
/// (empty) for Ringba and CallRail (their versions are observation times), and revenue is
/// the normalized decimal (`12.5`, not `12.5000`) or empty. Sum it (wrapping) over the
/// rows of `calls` to compare with [`TruthSummary::checksum`].
pub fn record_checksum(
    provider: Provider,
    call_key: &str,
    version: Option<i64>,
    status: &str,
    revenue: Option<Decimal>,
) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        }
    };
    feed(call_key.as_bytes());
    feed(&[0x1F]);
    if provider_has_versions(provider) {
        if let Some(version) = version {
            feed(version.to_string().as_bytes());
        }
    }
    feed(&[0x1F]);
    feed(status.as_bytes());
    feed(&[0x1F]);
    if let Some(revenue) = revenue {
        feed(revenue.normalize().to_string().as_bytes());
    }
    hash
}

/// Whether the provider's records carry a deterministic version (an update time or a
/// correction order): Retreaver, Invoca and TrackDrive do; Ringba and CallRail do not.
pub fn provider_has_versions(provider: Provider) -> bool {
    matches!(
        provider,
        Provider::Retreaver | Provider::Invoca | Provider::TrackDrive
    )
}

/// Count and checksum of the truth, to compare with Postgres without listing rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthSummary {
    pub provider: Provider,
    pub account_id: String,
    pub as_of: DateTime<Utc>,
    /// Good calls (what `calls` must hold).
    pub calls: u64,
    /// Calls served broken on purpose (what the DLQ must hold).
    pub bad: u64,
    /// Wrapping sum of [`record_checksum`] over the good calls.
    pub checksum: u64,
    /// Sum of revenue over the good calls.
    pub revenue_total: Decimal,
}

/// Lazily yields the truth of one account, in creation order. O(1) memory.
#[derive(Debug, Clone)]
pub struct TruthIter {
    account: Account,
    as_of_ms: i64,
    indices: Range<u64>,
}

impl TruthIter {
    pub(crate) fn new(account: Account, as_of_ms: i64) -> Self {
        let indices = 0..account.calls_created_by(as_of_ms);
        TruthIter {
            account,
            as_of_ms,
            indices,
        }
    }

    /// Folds the rest of the iterator into a summary.
    pub fn summary(self) -> TruthSummary {
        let mut summary = TruthSummary {
            provider: self.account.provider,
            account_id: self.account.id.clone(),
            as_of: millis_to_datetime(self.as_of_ms),
            calls: 0,
            bad: 0,
            checksum: 0,
            revenue_total: Decimal::ZERO,
        };
        for record in self {
            if record.bad.is_some() {
                summary.bad += 1;
                continue;
            }
            summary.calls += 1;
            summary.checksum = summary.checksum.wrapping_add(record.checksum());
            if let Some(revenue) = record.revenue {
                summary.revenue_total += revenue;
            }
        }
        summary
    }
}

impl Iterator for TruthIter {
    type Item = TruthRecord;

    fn next(&mut self) -> Option<TruthRecord> {
        for index in self.indices.by_ref() {
            let facts = self.account.facts(index);
            let Some(state) = facts.state_at(self.as_of_ms) else {
                continue;
            };
            // Invoca has no row before the call completes.
            if self.account.provider == Provider::Invoca && state.stage == Stage::Created {
                continue;
            }
            return Some(truth_record(&self.account, &facts, &state));
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = usize::try_from(self.indices.end - self.indices.start).ok();
        (0, remaining)
    }
}

fn micros(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

pub(crate) fn truth_record(account: &Account, facts: &CallFacts, state: &CallState) -> TruthRecord {
    let provider = account.provider;
    let call_id = providers::call_id(account, facts);
    let ended = state.stage != Stage::Created;
    let changed_at_ms = state.updated_ms;
    let routed = facts.outcome != crate::dataset::Outcome::Failed;
    let (campaign_name, tracking_number) = CAMPAIGNS[facts.campaign];
    let (buyer_name, buyer_number) = BUYERS[facts.buyer];
    let money = |cents: i64| Some(money_decimal(cents));
    let (version, provider_updated_at, status, provider_status, revenue, payout, started_ms) =
        match provider {
            Provider::Retreaver => {
                let text = retreaver::status_text(facts, state);
                (
                    Some(micros(changed_at_ms)),
                    Some(millis_to_datetime(changed_at_ms)),
                    retreaver::normalized_status(text),
                    Some(text.to_string()),
                    money(state.revenue_cents),
                    money(state.payout_cents),
                    facts.start_ms,
                )
            }
            Provider::Ringba => {
                let reason = if ended {
                    ringba::incomplete_reason(facts)
                } else {
                    ""
                };
                (
                    None,
                    None,
                    ringba::normalized_status(!ended, ended && facts.answered(), reason),
                    None,
                    money(state.revenue_cents),
                    money(state.payout_cents),
                    facts.created_ms,
                )
            }
            Provider::Invoca => {
                let text = invoca::result_description(facts);
                let newest = invoca::newest_row_stage(state);
                let version = invoca::row_version_micros(facts, newest);
                (
                    Some(version),
                    (newest > Stage::Completed).then(|| millis_to_datetime(version / 1000)),
                    invoca::normalized_status(text),
                    Some(text.to_string()),
                    money(state.revenue_cents),
                    money(state.payout_cents),
                    facts.created_ms,
                )
            }
            Provider::CallRail => (
                None,
                None,
                callrail::normalized_status(
                    ended.then_some(facts.total_secs),
                    ended && facts.answered(),
                ),
                None,
                callrail::value_cents(state).map(money_decimal),
                None,
                facts.created_ms,
            ),
            Provider::TrackDrive => {
                let text = trackdrive::status_text(facts, state);
                (
                    Some(micros(changed_at_ms)),
                    Some(millis_to_datetime(changed_at_ms)),
                    trackdrive::normalized_status(text),
                    Some(text.to_string()),
                    money(state.revenue_cents),
                    money(state.payout_cents),
                    facts.created_ms,
                )
            }
        };
    let has_publisher = provider != Provider::CallRail;
    TruthRecord {
        provider,
        account_id: account.id.clone(),
        call_key: CallKey::new(provider, &account.id, &call_id).into_string(),
        call_id,
        index: facts.index,
        version,
        provider_updated_at,
        changed_at: millis_to_datetime(changed_at_ms),
        stage: state.stage,
        started_at: millis_to_datetime(started_ms),
        ended_at: ended.then(|| millis_to_datetime(facts.ended_ms())),
        duration_secs: ended.then_some(facts.total_secs),
        status,
        provider_status,
        converted: state.converted,
        revenue,
        payout,
        currency: Some("USD".to_string()),
        caller_number: e164(facts.caller_national),
        tracking_number: e164(tracking_number),
        // TrackDrive's connected_to is set only for answered calls.
        destination_number: (routed
            && (provider != Provider::TrackDrive || (ended && facts.answered())))
        .then(|| e164(buyer_number)),
        campaign_name: campaign_name.to_string(),
        publisher_name: has_publisher.then(|| PUBLISHERS[facts.publisher].to_string()),
        buyer_name: (has_publisher && routed).then(|| buyer_name.to_string()),
        bad: facts.bad,
    }
}
