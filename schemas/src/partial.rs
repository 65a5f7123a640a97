//! Partial records: a [`CallRecord`] that carries only some of its fields (a webhook that
//! says only what changed), marked by [`CallRecord::present_fields`].
//!
//! - [`CallField`]: the fields a record may leave out (every field but the six it always
//!   carries: provider, account_id, call_id, version, source, observed_at).
//! - [`FieldSet`]: a set of them, one bit each, with the checked conversion from and to the
//!   Avro `present_fields` array of field names.
//! - [`CallRecord::into_partial`]: how a parser builds a partial record: fill the fields it
//!   has, as for a complete record, and name them.
//!
//! Meaning: `present_fields == None` is a complete record (every field as written). A partial
//! record updates only the fields it carries; a field it does not carry holds a placeholder
//! (`None`, status `unknown`, `started_at` at the epoch, no tags) that readers ignore.

use std::fmt;
use std::str::FromStr;

use chrono::DateTime;

use crate::model::{CallRecord, CallStatus};

/// A field of [`CallRecord`] that a partial record may carry or leave out, in schema order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum CallField {
    StartedAt,
    AnsweredAt,
    EndedAt,
    DurationSecs,
    BillableSecs,
    CallerNumber,
    TrackingNumber,
    DestinationNumber,
    CampaignId,
    CampaignName,
    PublisherId,
    PublisherName,
    BuyerId,
    BuyerName,
    Status,
    ProviderStatus,
    Converted,
    Revenue,
    Payout,
    Currency,
    RecordingUrl,
    Tags,
    ProviderUpdatedAt,
    Raw,
}

impl CallField {
    /// Every optional field, in schema order.
    pub const ALL: [CallField; 24] = [
        CallField::StartedAt,
        CallField::AnsweredAt,
        CallField::EndedAt,
        CallField::DurationSecs,
        CallField::BillableSecs,
        CallField::CallerNumber,
        CallField::TrackingNumber,
        CallField::DestinationNumber,
        CallField::CampaignId,
        CallField::CampaignName,
        CallField::PublisherId,
        CallField::PublisherName,
        CallField::BuyerId,
        CallField::BuyerName,
        CallField::Status,
        CallField::ProviderStatus,
        CallField::Converted,
        CallField::Revenue,
        CallField::Payout,
        CallField::Currency,
        CallField::RecordingUrl,
        CallField::Tags,
        CallField::ProviderUpdatedAt,
        CallField::Raw,
    ];

    /// The field's name in the schema (`revenue`).
    pub fn as_str(self) -> &'static str {
        match self {
            CallField::StartedAt => "started_at",
            CallField::AnsweredAt => "answered_at",
            CallField::EndedAt => "ended_at",
            CallField::DurationSecs => "duration_secs",
            CallField::BillableSecs => "billable_secs",
            CallField::CallerNumber => "caller_number",
            CallField::TrackingNumber => "tracking_number",
            CallField::DestinationNumber => "destination_number",
            CallField::CampaignId => "campaign_id",
            CallField::CampaignName => "campaign_name",
            CallField::PublisherId => "publisher_id",
            CallField::PublisherName => "publisher_name",
            CallField::BuyerId => "buyer_id",
            CallField::BuyerName => "buyer_name",
            CallField::Status => "status",
            CallField::ProviderStatus => "provider_status",
            CallField::Converted => "converted",
            CallField::Revenue => "revenue",
            CallField::Payout => "payout",
            CallField::Currency => "currency",
            CallField::RecordingUrl => "recording_url",
            CallField::Tags => "tags",
            CallField::ProviderUpdatedAt => "provider_updated_at",
            CallField::Raw => "raw",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

impl fmt::Display for CallField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields every record carries, partial or not, in schema order among the others.
pub const ALWAYS_CARRIED: [&str; 6] = [
    "provider",
    "account_id",
    "call_id",
    "version",
    "source",
    "observed_at",
];

/// A name in `present_fields` that is not a field of CallRecord (or is `present_fields`
/// itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("present_fields names {0:?}, which is not a CallRecord field")]
pub struct UnknownField(pub String);

/// What a name in `present_fields` stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldName {
    /// One of the six fields every record carries.
    AlwaysCarried,
    /// A field a partial record may leave out.
    Optional(CallField),
}

impl FromStr for FieldName {
    type Err = UnknownField;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if ALWAYS_CARRIED.contains(&s) {
            return Ok(FieldName::AlwaysCarried);
        }
        CallField::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .map(FieldName::Optional)
            .ok_or_else(|| UnknownField(s.to_string()))
    }
}

impl FromStr for CallField {
    type Err = UnknownField;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<FieldName>()? {
            FieldName::Optional(f) => Ok(f),
            FieldName::AlwaysCarried => Err(UnknownField(s.to_string())),
        }
    }
}

/// A set of [`CallField`]s: the optional fields a partial record carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FieldSet(u32);

impl FieldSet {
    /// No optional field: a record of identity and bookkeeping only.
    pub const EMPTY: FieldSet = FieldSet(0);
    /// Every optional field (a record carrying them all is complete).
    pub const ALL: FieldSet = FieldSet((1 << CallField::ALL.len()) - 1);

    /// This set with `field` added.
    pub const fn with(self, field: CallField) -> FieldSet {
        FieldSet(self.0 | 1 << (field as u8))
    }

    pub fn insert(&mut self, field: CallField) {
        self.0 |= field.bit();
    }

    pub fn remove(&mut self, field: CallField) {
        self.0 &= !field.bit();
    }

    pub fn contains(self, field: CallField) -> bool {
        self.0 & field.bit() != 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The fields in schema order.
    pub fn iter(self) -> impl Iterator<Item = CallField> {
        CallField::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }

    /// One bit per field in [`CallField::ALL`] order (stable: part of the content fingerprint).
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The names a record with this set lists in `present_fields`: the six always-carried
    /// fields and the set's fields, in schema order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        SCHEMA_ORDER
            .iter()
            .filter_map(move |(name, field)| match field {
                None => Some(*name),
                Some(f) if self.contains(*f) => Some(*name),
                Some(_) => None,
            })
    }

    /// The set named by a `present_fields` array: the always-carried names are accepted (and
    /// implied when absent), repeats are harmless, any other name is an error.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, UnknownField> {
        let mut set = FieldSet::EMPTY;
        for name in names {
            if let FieldName::Optional(f) = name.parse::<FieldName>()? {
                set.insert(f);
            }
        }
        Ok(set)
    }
}

impl fmt::Debug for FieldSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(CallField::as_str))
            .finish()
    }
}

/// As the Avro field: the list of carried field names.
impl serde::Serialize for FieldSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.names())
    }
}

impl<'de> serde::Deserialize<'de> for FieldSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        FieldSet::from_names(names.iter().map(|n| n.as_ref())).map_err(serde::de::Error::custom)
    }
}

impl FromIterator<CallField> for FieldSet {
    fn from_iter<I: IntoIterator<Item = CallField>>(iter: I) -> Self {
        let mut set = FieldSet::EMPTY;
        for f in iter {
            set.insert(f);
        }
        set
    }
}

/// Every CallRecord field name in schema order, with its [`CallField`] (`None`: always
/// carried). `present_fields` itself is not listed.
const SCHEMA_ORDER: [(&str, Option<CallField>); 30] = [
    ("provider", None),
    ("account_id", None),
    ("call_id", None),
    ("version", None),
    ("started_at", Some(CallField::StartedAt)),
    ("answered_at", Some(CallField::AnsweredAt)),
    ("ended_at", Some(CallField::EndedAt)),
    ("duration_secs", Some(CallField::DurationSecs)),
    ("billable_secs", Some(CallField::BillableSecs)),
    ("caller_number", Some(CallField::CallerNumber)),
    ("tracking_number", Some(CallField::TrackingNumber)),
    ("destination_number", Some(CallField::DestinationNumber)),
    ("campaign_id", Some(CallField::CampaignId)),
    ("campaign_name", Some(CallField::CampaignName)),
    ("publisher_id", Some(CallField::PublisherId)),
    ("publisher_name", Some(CallField::PublisherName)),
    ("buyer_id", Some(CallField::BuyerId)),
    ("buyer_name", Some(CallField::BuyerName)),
    ("status", Some(CallField::Status)),
    ("provider_status", Some(CallField::ProviderStatus)),
    ("converted", Some(CallField::Converted)),
    ("revenue", Some(CallField::Revenue)),
    ("payout", Some(CallField::Payout)),
    ("currency", Some(CallField::Currency)),
    ("recording_url", Some(CallField::RecordingUrl)),
    ("tags", Some(CallField::Tags)),
    ("source", None),
    ("observed_at", None),
    ("provider_updated_at", Some(CallField::ProviderUpdatedAt)),
    ("raw", Some(CallField::Raw)),
];

impl CallRecord {
    /// This record as a partial record carrying only `carried` (plus the six fields every
    /// record carries): the other fields are reset to their placeholders, so two partial
    /// records with the same carried values are equal and fingerprint alike. Carrying every
    /// field makes a complete record.
    ///
    /// ```
    /// # use callsync_schemas::{CallField, CallRecord, FieldSet};
    /// # fn parse(mut record: CallRecord, revenue: rust_decimal::Decimal) -> CallRecord {
    /// // a webhook that reports only the revenue of a call
    /// record.revenue = Some(revenue);
    /// record.into_partial(FieldSet::EMPTY.with(CallField::Revenue))
    /// # }
    /// ```
    pub fn into_partial(mut self, carried: FieldSet) -> CallRecord {
        if carried == FieldSet::ALL {
            self.present_fields = None;
            return self;
        }
        self.present_fields = Some(carried);
        self.clear_uncarried();
        self
    }

    /// Whether this record carries only some fields.
    pub fn is_partial(&self) -> bool {
        self.present_fields.is_some()
    }

    /// Whether this record carries `field` (a complete record carries every field).
    pub fn carries(&self, field: CallField) -> bool {
        self.present_fields.is_none_or(|set| set.contains(field))
    }

    /// Resets the fields a partial record does not carry to their placeholders; returns
    /// whether anything changed. A complete record is left alone.
    pub fn clear_uncarried(&mut self) -> bool {
        let Some(set) = self.present_fields else {
            return false;
        };
        let mut changed = false;
        fn clear<T>(slot: &mut Option<T>, changed: &mut bool) {
            if slot.take().is_some() {
                *changed = true;
            }
        }
        for field in CallField::ALL {
            if set.contains(field) {
                continue;
            }
            match field {
                CallField::StartedAt => {
                    if self.started_at != DateTime::UNIX_EPOCH {
                        self.started_at = DateTime::UNIX_EPOCH;
                        changed = true;
                    }
                }
                CallField::AnsweredAt => clear(&mut self.answered_at, &mut changed),
                CallField::EndedAt => clear(&mut self.ended_at, &mut changed),
                CallField::DurationSecs => clear(&mut self.duration_secs, &mut changed),
                CallField::BillableSecs => clear(&mut self.billable_secs, &mut changed),
                CallField::CallerNumber => clear(&mut self.caller_number, &mut changed),
                CallField::TrackingNumber => clear(&mut self.tracking_number, &mut changed),
                CallField::DestinationNumber => clear(&mut self.destination_number, &mut changed),
                CallField::CampaignId => clear(&mut self.campaign_id, &mut changed),
                CallField::CampaignName => clear(&mut self.campaign_name, &mut changed),
                CallField::PublisherId => clear(&mut self.publisher_id, &mut changed),
                CallField::PublisherName => clear(&mut self.publisher_name, &mut changed),
                CallField::BuyerId => clear(&mut self.buyer_id, &mut changed),
                CallField::BuyerName => clear(&mut self.buyer_name, &mut changed),
                CallField::Status => {
                    if self.status != CallStatus::Unknown {
                        self.status = CallStatus::Unknown;
                        changed = true;
                    }
                }
                CallField::ProviderStatus => clear(&mut self.provider_status, &mut changed),
                CallField::Converted => clear(&mut self.converted, &mut changed),
                CallField::Revenue => clear(&mut self.revenue, &mut changed),
                CallField::Payout => clear(&mut self.payout, &mut changed),
                CallField::Currency => clear(&mut self.currency, &mut changed),
                CallField::RecordingUrl => clear(&mut self.recording_url, &mut changed),
                CallField::Tags => {
                    if !self.tags.is_empty() {
                        self.tags.clear();
                        changed = true;
                    }
                }
                CallField::ProviderUpdatedAt => clear(&mut self.provider_updated_at, &mut changed),
                CallField::Raw => clear(&mut self.raw, &mut changed),
            }
        }
        changed
    }

    /// Applies `newer` (a later version of the same call) on top of this record, as the sink
    /// does to a row: a complete record replaces it; a partial record replaces the fields it
    /// carries and the bookkeeping (version, source, observed_at). The result is partial only
    /// when both were.
    pub fn apply(&mut self, newer: &CallRecord) {
        let Some(set) = newer.present_fields else {
            *self = newer.clone();
            return;
        };
        for field in set.iter() {
            match field {
                CallField::StartedAt => self.started_at = newer.started_at,
                CallField::AnsweredAt => self.answered_at = newer.answered_at,
                CallField::EndedAt => self.ended_at = newer.ended_at,
                CallField::DurationSecs => self.duration_secs = newer.duration_secs,
                CallField::BillableSecs => self.billable_secs = newer.billable_secs,
                CallField::CallerNumber => self.caller_number.clone_from(&newer.caller_number),
                CallField::TrackingNumber => {
                    self.tracking_number.clone_from(&newer.tracking_number)
                }
                CallField::DestinationNumber => self
                    .destination_number
                    .clone_from(&newer.destination_number),
                CallField::CampaignId => self.campaign_id.clone_from(&newer.campaign_id),
                CallField::CampaignName => self.campaign_name.clone_from(&newer.campaign_name),
                CallField::PublisherId => self.publisher_id.clone_from(&newer.publisher_id),
                CallField::PublisherName => self.publisher_name.clone_from(&newer.publisher_name),
                CallField::BuyerId => self.buyer_id.clone_from(&newer.buyer_id),
                CallField::BuyerName => self.buyer_name.clone_from(&newer.buyer_name),
                CallField::Status => self.status = newer.status,
                CallField::ProviderStatus => {
                    self.provider_status.clone_from(&newer.provider_status)
                }
                CallField::Converted => self.converted = newer.converted,
                CallField::Revenue => self.revenue = newer.revenue,
                CallField::Payout => self.payout = newer.payout,
                CallField::Currency => self.currency.clone_from(&newer.currency),
                CallField::RecordingUrl => self.recording_url.clone_from(&newer.recording_url),
                CallField::Tags => self.tags.clone_from(&newer.tags),
                CallField::ProviderUpdatedAt => {
                    self.provider_updated_at = newer.provider_updated_at
                }
                CallField::Raw => self.raw.clone_from(&newer.raw),
            }
        }
        self.version = newer.version;
        self.source = newer.source;
        self.observed_at = newer.observed_at;
        if let Some(mine) = self.present_fields {
            self.present_fields = Some(FieldSet(mine.0 | set.0)).filter(|s| *s != FieldSet::ALL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_schema_order_with_the_always_carried_fields() {
        let set = FieldSet::EMPTY
            .with(CallField::Revenue)
            .with(CallField::StartedAt);
        let names: Vec<&str> = set.names().collect();
        assert_eq!(
            names,
            [
                "provider",
                "account_id",
                "call_id",
                "version",
                "started_at",
                "revenue",
                "source",
                "observed_at"
            ]
        );
        assert_eq!(FieldSet::from_names(names.iter().copied()), Ok(set));
        // the always-carried names may be left out, repeats are harmless
        assert_eq!(
            FieldSet::from_names(["revenue", "started_at", "revenue"]),
            Ok(set)
        );
    }

    #[test]
    fn unknown_names_are_errors_naming_the_name() {
        let e = FieldSet::from_names(["revenue", "revenu"]).unwrap_err();
        assert_eq!(e, UnknownField("revenu".into()));
        assert!(e.to_string().contains("\"revenu\""), "{e}");
        assert!(FieldSet::from_names(["present_fields"]).is_err());
        assert!("provider".parse::<CallField>().is_err());
    }

    #[test]
    fn every_field_has_its_own_bit_and_name() {
        let all: FieldSet = CallField::ALL.into_iter().collect();
        assert_eq!(all, FieldSet::ALL);
        assert_eq!(FieldSet::ALL.len(), CallField::ALL.len());
        for f in CallField::ALL {
            assert_eq!(f.as_str().parse::<CallField>(), Ok(f));
        }
        assert_eq!(FieldSet::ALL.names().count(), SCHEMA_ORDER.len());
    }
}
