//! [`CallRecordView`]: a call record read in place from its Avro datum.
//!
//! Reading the view checks every field exactly as decoding a [`CallRecord`] does (it *is* the
//! decoder's first half: [`CallRecord`]'s `read_datum` reads a view and copies it out), but it
//! copies nothing. The processor looks a record's version up in its dedup state from the view,
//! so a duplicate or stale record, often half of what a re-polled window carries, is dropped
//! without a single allocation; only a record that may be emitted is copied into a
//! [`CallRecord`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::binary::{DatumError, DatumReader};
use crate::model::{CallRecord, CallStatus, Provider, RecordSource};
use crate::partial::{FieldName, FieldSet};

/// Every field of a [`CallRecord`], borrowed from the datum it was read from.
#[derive(Debug, Clone)]
pub struct CallRecordView<'a> {
    pub provider: Provider,
    pub account_id: &'a str,
    pub call_id: &'a str,
    pub version: i64,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_secs: Option<i32>,
    pub billable_secs: Option<i32>,
    pub caller_number: Option<&'a str>,
    pub tracking_number: Option<&'a str>,
    pub destination_number: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub campaign_name: Option<&'a str>,
    pub publisher_id: Option<&'a str>,
    pub publisher_name: Option<&'a str>,
    pub buyer_id: Option<&'a str>,
    pub buyer_name: Option<&'a str>,
    pub status: CallStatus,
    pub provider_status: Option<&'a str>,
    pub converted: Option<bool>,
    pub revenue: Option<Decimal>,
    pub payout: Option<Decimal>,
    pub currency: Option<&'a str>,
    pub recording_url: Option<&'a str>,
    pub tags: TagsView<'a>,
    pub source: RecordSource,
    pub observed_at: DateTime<Utc>,
    pub provider_updated_at: Option<DateTime<Utc>>,
    pub raw: Option<&'a [u8]>,
    pub present_fields: Option<FieldSet>,
}

/// The `tags` map of a datum, already checked: its bytes and where they start in the message.
#[derive(Debug, Clone)]
pub struct TagsView<'a> {
    reader: DatumReader<'a>,
}

impl<'a> TagsView<'a> {
    /// Reads the map's blocks (checking each entry) and returns its view.
    fn read(r: &mut DatumReader<'a>) -> Result<Self, DatumError> {
        r.at("tags");
        let start = r.clone();
        walk_entries(r, |_, _| {})?;
        Ok(TagsView { reader: start })
    }

    /// Calls `f` with each entry, in datum order.
    pub fn for_each(&self, f: impl FnMut(&'a str, &'a str)) -> Result<(), DatumError> {
        walk_entries(&mut self.reader.clone(), f)
    }
}

/// Reads a string map's blocks from `r`, calling `f` with each entry.
fn walk_entries<'a>(
    r: &mut DatumReader<'a>,
    mut f: impl FnMut(&'a str, &'a str),
) -> Result<(), DatumError> {
    // An entry is at least two length bytes.
    while let Some(n) = r.block_count("map", 2)? {
        for _ in 0..n {
            let k = r.str()?;
            let v = r.str()?;
            f(k, v);
        }
    }
    Ok(())
}

/// Reads a `present_fields` array: every name checked, the set it names.
fn read_field_set(r: &mut DatumReader<'_>) -> Result<FieldSet, DatumError> {
    let mut set = FieldSet::EMPTY;
    // A name is at least its length byte.
    while let Some(n) = r.block_count("array", 1)? {
        for _ in 0..n {
            if let FieldName::Optional(f) = r.parse_str::<FieldName>()? {
                set.insert(f);
            }
        }
    }
    Ok(set)
}

impl<'a> CallRecordView<'a> {
    /// Reads one datum written with our schema (the caller checks for trailing bytes).
    pub fn read(r: &mut DatumReader<'a>) -> Result<Self, DatumError> {
        Self::read_revision(r, true)
    }

    /// Reads one datum written with our schema or, with `has_present_fields` false, with the
    /// first revision of it, which ends before `present_fields` (a complete record).
    pub fn read_revision(
        r: &mut DatumReader<'a>,
        has_present_fields: bool,
    ) -> Result<Self, DatumError> {
        Ok(CallRecordView {
            provider: r.at("provider").parse_str()?,
            account_id: r.at("account_id").str()?,
            call_id: r.at("call_id").str()?,
            version: r.at("version").long()?,
            started_at: r.at("started_at").timestamp()?,
            answered_at: r.at("answered_at").opt(|r| r.timestamp())?,
            ended_at: r.at("ended_at").opt(|r| r.timestamp())?,
            duration_secs: r.at("duration_secs").opt(|r| r.int())?,
            billable_secs: r.at("billable_secs").opt(|r| r.int())?,
            caller_number: r.at("caller_number").opt(|r| r.str())?,
            tracking_number: r.at("tracking_number").opt(|r| r.str())?,
            destination_number: r.at("destination_number").opt(|r| r.str())?,
            campaign_id: r.at("campaign_id").opt(|r| r.str())?,
            campaign_name: r.at("campaign_name").opt(|r| r.str())?,
            publisher_id: r.at("publisher_id").opt(|r| r.str())?,
            publisher_name: r.at("publisher_name").opt(|r| r.str())?,
            buyer_id: r.at("buyer_id").opt(|r| r.str())?,
            buyer_name: r.at("buyer_name").opt(|r| r.str())?,
            status: r.at("status").parse_str()?,
            provider_status: r.at("provider_status").opt(|r| r.str())?,
            converted: r.at("converted").opt(|r| r.boolean())?,
            revenue: r.at("revenue").opt(|r| r.decimal())?,
            payout: r.at("payout").opt(|r| r.decimal())?,
            currency: r.at("currency").opt(|r| r.str())?,
            recording_url: r.at("recording_url").opt(|r| r.str())?,
            tags: TagsView::read(r)?,
            source: r.at("source").parse_str()?,
            observed_at: r.at("observed_at").timestamp()?,
            provider_updated_at: r.at("provider_updated_at").opt(|r| r.timestamp())?,
            raw: r.at("raw").opt(|r| r.bytes())?,
            present_fields: if has_present_fields {
                r.at("present_fields").opt(read_field_set)?
            } else {
                None
            },
        })
    }

    /// Copies the view into an owned record.
    pub fn to_record(&self) -> Result<CallRecord, DatumError> {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        let mut tags = BTreeMap::new();
        self.tags.for_each(|k, v| {
            tags.insert(k.to_owned(), v.to_owned());
        })?;
        Ok(CallRecord {
            provider: self.provider,
            account_id: self.account_id.to_owned(),
            call_id: self.call_id.to_owned(),
            version: self.version,
            started_at: self.started_at,
            answered_at: self.answered_at,
            ended_at: self.ended_at,
            duration_secs: self.duration_secs,
            billable_secs: self.billable_secs,
            caller_number: owned(self.caller_number),
            tracking_number: owned(self.tracking_number),
            destination_number: owned(self.destination_number),
            campaign_id: owned(self.campaign_id),
            campaign_name: owned(self.campaign_name),
            publisher_id: owned(self.publisher_id),
            publisher_name: owned(self.publisher_name),
            buyer_id: owned(self.buyer_id),
            buyer_name: owned(self.buyer_name),
            status: self.status,
            provider_status: owned(self.provider_status),
            converted: self.converted,
            revenue: self.revenue,
            payout: self.payout,
            currency: owned(self.currency),
            recording_url: owned(self.recording_url),
            tags,
            source: self.source,
            observed_at: self.observed_at,
            provider_updated_at: self.provider_updated_at,
            raw: self.raw.map(<[u8]>::to_vec),
            present_fields: self.present_fields,
        })
    }
}
