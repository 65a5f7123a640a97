//! The content fingerprint of a call record: xxh3-128 over a canonical encoding of
//! what the call *is*, so that two versions with the same content compare equal.
//!
//! Left out: `observed_at`, `source` and `raw` (how and when callsync saw the call, not
//! the call), and also `version` and `provider_updated_at`: they are the version
//! ordering itself. Were they hashed, every newer version would "differ" even when only
//! the provider's update clock moved (Ringba and CallRail versions are observation times,
//! so every re-poll would be a change), and the rule "emit when the version is newer
//! *and* the content differs" would collapse to "emit when newer".
//!
//! The encoding is canonical: every field is written in schema order with a tag byte,
//! strings and bytes with their length, options with a presence byte, decimals
//! normalized (`1.50` and `1.5` hash alike), and tags in key order.

use callsync_schemas::CallRecord;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::cell::RefCell;

use xxhash_rust::xxh3::xxh3_128;

/// A 128-bit hash of a record's content.
pub type Fingerprint = u128;

/// The fingerprint of `record` (which should already be normalized).
pub fn content_fingerprint(record: &CallRecord) -> Fingerprint {
    thread_local! {
        static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    }
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.clear();
        let mut h = CanonicalEncoder(&mut buffer);
        encode_canonical(&mut h, record);
        xxh3_128(&buffer)
    })
}

/// Writes the canonical encoding (hashed in one pass: much faster than feeding a streaming
/// hasher field by field).
fn encode_canonical(h: &mut CanonicalEncoder<'_>, record: &CallRecord) {
    h.str(1, record.provider.as_str());
    h.str(2, &record.account_id);
    h.str(3, &record.call_id);
    h.time(4, &record.started_at);
    h.opt_time(5, record.answered_at.as_ref());
    h.opt_time(6, record.ended_at.as_ref());
    h.opt_i64(7, record.duration_secs.map(i64::from));
    h.opt_i64(8, record.billable_secs.map(i64::from));
    h.opt_str(9, record.caller_number.as_deref());
    h.opt_str(10, record.tracking_number.as_deref());
    h.opt_str(11, record.destination_number.as_deref());
    h.opt_str(12, record.campaign_id.as_deref());
    h.opt_str(13, record.campaign_name.as_deref());
    h.opt_str(14, record.publisher_id.as_deref());
    h.opt_str(15, record.publisher_name.as_deref());
    h.opt_str(16, record.buyer_id.as_deref());
    h.opt_str(17, record.buyer_name.as_deref());
    h.str(18, record.status.as_str());
    h.opt_str(19, record.provider_status.as_deref());
    h.opt_i64(20, record.converted.map(i64::from));
    h.opt_decimal(21, record.revenue.as_ref());
    h.opt_decimal(22, record.payout.as_ref());
    h.opt_str(23, record.currency.as_deref());
    h.opt_str(24, record.recording_url.as_deref());
    h.tag(25);
    h.len(record.tags.len());
    for (k, v) in &record.tags {
        h.bytes(k.as_bytes());
        h.bytes(v.as_bytes());
    }
}

struct CanonicalEncoder<'a>(&'a mut Vec<u8>);

impl CanonicalEncoder<'_> {
    fn tag(&mut self, tag: u8) {
        self.0.extend_from_slice(&[tag]);
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
            None => self.0.extend_from_slice(&[0]),
            Some(s) => {
                self.0.extend_from_slice(&[1]);
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
            None => self.0.extend_from_slice(&[0]),
            Some(v) => {
                self.0.extend_from_slice(&[1]);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn opt_decimal(&mut self, tag: u8, d: Option<&Decimal>) {
        self.tag(tag);
        match d {
            None => self.0.extend_from_slice(&[0]),
            Some(d) => {
                let n = d.normalize();
                self.0.extend_from_slice(&[1]);
                self.0.extend_from_slice(&n.mantissa().to_le_bytes());
                self.0.extend_from_slice(&n.scale().to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::call_record as sample_record;
    use callsync_schemas::RecordSource;
    use std::str::FromStr;

    #[test]
    fn observation_fields_and_version_do_not_change_the_fingerprint() {
        let a = sample_record(1, 10);
        let mut b = a.clone();
        b.version = 99;
        b.observed_at += chrono::Duration::hours(1);
        b.source = RecordSource::Webhook;
        b.raw = Some(b"{\"other\":1}".to_vec());
        b.provider_updated_at = Some(b.observed_at);
        assert_eq!(content_fingerprint(&a), content_fingerprint(&b));
    }

    #[test]
    fn content_changes_change_the_fingerprint() {
        let a = sample_record(1, 10);
        let fp = content_fingerprint(&a);
        let mut b = a.clone();
        b.revenue = Some(Decimal::from_str("12.3401").unwrap());
        assert_ne!(fp, content_fingerprint(&b));
        let mut c = a.clone();
        c.tags.insert("new".into(), "tag".into());
        assert_ne!(fp, content_fingerprint(&c));
        let mut d = a.clone();
        d.campaign_name = None;
        assert_ne!(fp, content_fingerprint(&d));
        // moving a value between adjacent optional fields is a change too
        let mut e = a.clone();
        e.campaign_id = None;
        e.campaign_name = a.campaign_id.clone();
        assert_ne!(fp, content_fingerprint(&e));
    }

    #[test]
    fn equal_decimals_hash_alike() {
        let mut a = sample_record(1, 10);
        a.revenue = Some(Decimal::from_str("1.5").unwrap());
        let mut b = a.clone();
        b.revenue = Some(Decimal::from_str("1.5000").unwrap());
        assert_eq!(content_fingerprint(&a), content_fingerprint(&b));
    }
}
