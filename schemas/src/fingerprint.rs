//! The content fingerprint of a call record and the order of versions of one call.
//!
//! [`ContentFingerprint`]: 64 bits of xxh3-128 over a canonical encoding of what the call *is*,
//! so that two versions with the same content compare equal. [`Precedence`]: the pair
//! (version, fingerprint) that orders versions of one call everywhere: the processor emits a
//! record whose precedence is greater than the one it holds (equal: a duplicate; less: stale),
//! and the sink's upsert guard is the same comparison, so ties between equal versions with
//! different content break the same way in both.
//!
//! Left out of the fingerprint: `observed_at`, `source` and `raw` (how and when callsync saw
//! the call, not the call), and also `version` and `provider_updated_at`: they are the version
//! ordering itself. Were they hashed, every newer version would "differ" even when only the
//! provider's update clock moved (Ringba and CallRail versions are observation times, so every
//! re-poll would be a change), and the rule "emit when the version is newer *and* the content
//! differs" would collapse to "emit when newer".
//!
//! The encoding is canonical: every field is written in schema order with a tag byte, strings
//! and bytes with their length, options with a presence byte, decimals normalized (`1.50` and
//! `1.5` hash alike), and tags in key order. A partial record hashes only the fields it carries
//! and then its field set, so it never hashes like a complete record; a complete record hashes
//! exactly as before partial records existed (dedup state written then stays valid).
//!
//! Why 64 bits: a fingerprint is only compared with fingerprints of other versions *of the same
//! call*, so what matters is the chance that one real change hashes alike, 2^-64 per changed
//! version, not a birthday bound over all calls. The sink stores it in a `bigint` column.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use xxhash_rust::xxh3::xxh3_128;

use crate::model::CallRecord;
use crate::partial::{CallField, FieldSet};
use crate::view::CallRecordView;

/// The content fingerprint of a call record (see the module docs).
///
/// Ordered as the signed 64-bit integer [`Self::as_i64`], the form Postgres and SQLite store
/// and compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentFingerprint(u64);

impl ContentFingerprint {
    /// The fingerprint a stored row gets when the record it came from is not known (rows
    /// written before fingerprints were stored): the lowest, so any record of the same version
    /// wins the tie against it.
    pub const UNKNOWN: ContentFingerprint = ContentFingerprint(1 << 63);

    /// The fingerprint of `record` (which should already be normalized).
    pub fn of(record: &CallRecord) -> Self {
        with_buffer(|buffer| {
            encode_record(&mut CanonicalEncoder(buffer), record);
        })
    }

    /// The fingerprint of a record read in place, equal to [`Self::of`] the record the view
    /// holds. `None` when the view's tags are not in strictly ascending key order (not written
    /// by us): the caller fingerprints the owned record instead.
    pub fn of_view(view: &CallRecordView<'_>) -> Option<Self> {
        let mut sorted = true;
        let fp = with_buffer(|buffer| {
            sorted = encode_view(&mut CanonicalEncoder(buffer), view);
        });
        sorted.then_some(fp)
    }

    /// The fingerprint from its 64 bits (as [`Self::bits`] gave them).
    pub const fn from_bits(bits: u64) -> Self {
        ContentFingerprint(bits)
    }

    /// The low 64 bits of a 128-bit fingerprint (the dedup changelog's field).
    pub const fn from_u128(fingerprint: u128) -> Self {
        ContentFingerprint(fingerprint as u64)
    }

    /// The fingerprint as stored in a `bigint` column.
    pub const fn from_i64(stored: i64) -> Self {
        ContentFingerprint(stored as u64)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The stored and compared form.
    pub const fn as_i64(self) -> i64 {
        self.0 as i64
    }
}

impl Ord for ContentFingerprint {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_i64().cmp(&other.as_i64())
    }
}

impl PartialOrd for ContentFingerprint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for ContentFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentFingerprint({:#018x})", self.0)
    }
}

/// The order of versions of one call: version first, the content fingerprint breaking ties.
/// Postgres and SQLite compare the same pair as a row value:
/// `(calls.version, calls.fingerprint) < (EXCLUDED.version, EXCLUDED.fingerprint)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Precedence {
    pub version: i64,
    pub fingerprint: ContentFingerprint,
}

impl Precedence {
    pub fn new(version: i64, fingerprint: ContentFingerprint) -> Self {
        Precedence {
            version,
            fingerprint,
        }
    }

    /// The precedence of `record`, fingerprinting it.
    pub fn of(record: &CallRecord) -> Self {
        Precedence::new(record.version, ContentFingerprint::of(record))
    }
}

fn with_buffer(encode: impl FnOnce(&mut Vec<u8>)) -> ContentFingerprint {
    thread_local! {
        static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    }
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.clear();
        encode(&mut buffer);
        ContentFingerprint::from_u128(xxh3_128(&buffer))
    })
}

/// Tags of the canonical encoding, one per hashed field, in schema order.
mod tag {
    pub const PROVIDER: u8 = 1;
    pub const ACCOUNT_ID: u8 = 2;
    pub const CALL_ID: u8 = 3;
    pub const TAGS: u8 = 25;
    pub const FIELD_SET: u8 = 26;
}

/// The tag of an optional field (`started_at` is 4 ... `recording_url` 24, `tags` 25); `None`
/// for the fields left out of the fingerprint.
fn field_tag(field: CallField) -> Option<u8> {
    match field {
        CallField::ProviderUpdatedAt | CallField::Raw => None,
        CallField::Tags => Some(tag::TAGS),
        other => Some(other as u8 + 4),
    }
}

/// Writes the canonical encoding of a record: the same sequence [`encode_view`] writes.
fn encode_record(h: &mut CanonicalEncoder<'_>, r: &CallRecord) {
    let carried = r.present_fields.unwrap_or(FieldSet::ALL);
    h.str(tag::PROVIDER, r.provider.as_str());
    h.str(tag::ACCOUNT_ID, &r.account_id);
    h.str(tag::CALL_ID, &r.call_id);
    for field in carried.iter() {
        let Some(t) = field_tag(field) else { continue };
        match field {
            CallField::StartedAt => h.time(t, &r.started_at),
            CallField::AnsweredAt => h.opt_time(t, r.answered_at.as_ref()),
            CallField::EndedAt => h.opt_time(t, r.ended_at.as_ref()),
            CallField::DurationSecs => h.opt_i64(t, r.duration_secs.map(i64::from)),
            CallField::BillableSecs => h.opt_i64(t, r.billable_secs.map(i64::from)),
            CallField::CallerNumber => h.opt_str(t, r.caller_number.as_deref()),
            CallField::TrackingNumber => h.opt_str(t, r.tracking_number.as_deref()),
            CallField::DestinationNumber => h.opt_str(t, r.destination_number.as_deref()),
            CallField::CampaignId => h.opt_str(t, r.campaign_id.as_deref()),
            CallField::CampaignName => h.opt_str(t, r.campaign_name.as_deref()),
            CallField::PublisherId => h.opt_str(t, r.publisher_id.as_deref()),
            CallField::PublisherName => h.opt_str(t, r.publisher_name.as_deref()),
            CallField::BuyerId => h.opt_str(t, r.buyer_id.as_deref()),
            CallField::BuyerName => h.opt_str(t, r.buyer_name.as_deref()),
            CallField::Status => h.str(t, r.status.as_str()),
            CallField::ProviderStatus => h.opt_str(t, r.provider_status.as_deref()),
            CallField::Converted => h.opt_i64(t, r.converted.map(i64::from)),
            CallField::Revenue => h.opt_decimal(t, r.revenue.as_ref()),
            CallField::Payout => h.opt_decimal(t, r.payout.as_ref()),
            CallField::Currency => h.opt_str(t, r.currency.as_deref()),
            CallField::RecordingUrl => h.opt_str(t, r.recording_url.as_deref()),
            CallField::Tags => {
                h.tag(t);
                h.len(r.tags.len());
                for (k, v) in &r.tags {
                    h.bytes(k.as_bytes());
                    h.bytes(v.as_bytes());
                }
            }
            CallField::ProviderUpdatedAt | CallField::Raw => {}
        }
    }
    if let Some(set) = r.present_fields {
        h.tag(tag::FIELD_SET);
        h.0.extend_from_slice(&set.bits().to_le_bytes());
    }
}

/// Writes the canonical encoding of a view; returns false when its tags are not in strictly
/// ascending key order (the encoding is then not canonical).
fn encode_view(h: &mut CanonicalEncoder<'_>, r: &CallRecordView<'_>) -> bool {
    let carried = r.present_fields.unwrap_or(FieldSet::ALL);
    h.str(tag::PROVIDER, r.provider.as_str());
    h.str(tag::ACCOUNT_ID, r.account_id);
    h.str(tag::CALL_ID, r.call_id);
    for field in carried.iter() {
        let Some(t) = field_tag(field) else { continue };
        match field {
            CallField::StartedAt => h.time(t, &r.started_at),
            CallField::AnsweredAt => h.opt_time(t, r.answered_at.as_ref()),
            CallField::EndedAt => h.opt_time(t, r.ended_at.as_ref()),
            CallField::DurationSecs => h.opt_i64(t, r.duration_secs.map(i64::from)),
            CallField::BillableSecs => h.opt_i64(t, r.billable_secs.map(i64::from)),
            CallField::CallerNumber => h.opt_str(t, r.caller_number),
            CallField::TrackingNumber => h.opt_str(t, r.tracking_number),
            CallField::DestinationNumber => h.opt_str(t, r.destination_number),
            CallField::CampaignId => h.opt_str(t, r.campaign_id),
            CallField::CampaignName => h.opt_str(t, r.campaign_name),
            CallField::PublisherId => h.opt_str(t, r.publisher_id),
            CallField::PublisherName => h.opt_str(t, r.publisher_name),
            CallField::BuyerId => h.opt_str(t, r.buyer_id),
            CallField::BuyerName => h.opt_str(t, r.buyer_name),
            CallField::Status => h.str(t, r.status.as_str()),
            CallField::ProviderStatus => h.opt_str(t, r.provider_status),
            CallField::Converted => h.opt_i64(t, r.converted.map(i64::from)),
            CallField::Revenue => h.opt_decimal(t, r.revenue.as_ref()),
            CallField::Payout => h.opt_decimal(t, r.payout.as_ref()),
            CallField::Currency => h.opt_str(t, r.currency),
            CallField::RecordingUrl => h.opt_str(t, r.recording_url),
            CallField::Tags => {
                h.tag(t);
                let count_at = h.0.len();
                h.len(0);
                let mut count = 0usize;
                let mut previous: Option<&str> = None;
                let mut sorted = true;
                let walked = r.tags.for_each(|k, v| {
                    if previous.is_some_and(|p| p >= k) {
                        sorted = false;
                    }
                    previous = Some(k);
                    count += 1;
                    h.bytes(k.as_bytes());
                    h.bytes(v.as_bytes());
                });
                if walked.is_err() || !sorted {
                    return false;
                }
                h.0[count_at..count_at + 8].copy_from_slice(&(count as u64).to_le_bytes());
            }
            CallField::ProviderUpdatedAt | CallField::Raw => {}
        }
    }
    if let Some(set) = r.present_fields {
        h.tag(tag::FIELD_SET);
        h.0.extend_from_slice(&set.bits().to_le_bytes());
    }
    true
}

struct CanonicalEncoder<'a>(&'a mut Vec<u8>);

impl CanonicalEncoder<'_> {
    fn tag(&mut self, tag: u8) {
        self.0.push(tag);
    }

    fn len(&mut self, n: usize) {
        self.0.extend_from_slice(&(n as u64).to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, tag: u8, s: &str) {
        self.tag(tag);
        self.bytes(s.as_bytes());
    }

    fn opt_str(&mut self, tag: u8, s: Option<&str>) {
        self.tag(tag);
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.bytes(s.as_bytes());
            }
        }
    }

    fn time(&mut self, tag: u8, t: &DateTime<Utc>) {
        self.tag(tag);
        self.0
            .extend_from_slice(&t.timestamp_micros().to_le_bytes());
    }

    fn opt_time(&mut self, tag: u8, t: Option<&DateTime<Utc>>) {
        self.opt_i64(tag, t.map(DateTime::timestamp_micros));
    }

    fn opt_i64(&mut self, tag: u8, v: Option<i64>) {
        self.tag(tag);
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn opt_decimal(&mut self, tag: u8, d: Option<&Decimal>) {
        self.tag(tag);
        match d {
            None => self.0.push(0),
            Some(d) => {
                let n = d.normalize();
                self.0.push(1);
                self.0.extend_from_slice(&n.mantissa().to_le_bytes());
                self.0.extend_from_slice(&n.scale().to_le_bytes());
            }
        }
    }
}
