//! [`AvroRecord`]: the schema and both conversions (direct binary and apache-avro `Value`) of
//! each record type callsync moves through Kafka.
//!
//! The direct binary path (`write_datum` / `read_datum`) is the fast path for data written
//! with our own schema; the `Value` path serves schema resolution (data written with another
//! writer schema, decoded and resolved by apache-avro) and cross-checks in tests.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use apache_avro::types::{Value, ValueKind};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::binary::{
    decimal_from_bytes, decimal_unscaled, put_bool, put_bytes, put_decimal_unscaled, put_double,
    put_int, put_long, put_opt, put_str, put_timestamp, twos_complement_min, DatumError,
    DatumReader, Problem, DECIMAL_SCALE,
};
use crate::error::EncodeError;
use crate::model::{CallRecord, DedupEntry, SyncEvent, SyncRequest};
use crate::partial::FieldSet;
use crate::schema::{
    call_record_revisions, call_record_schema, dedup_entry_schema, sync_event_schema,
    sync_request_schema, Revision, SchemaInfo, CALL_RECORD_V1_FIELDS,
};
use crate::view::CallRecordView;

/// A record type with an Avro schema in `schemas/avro/` and codecs for it.
///
/// Implemented for [`CallRecord`], [`SyncRequest`], [`SyncEvent`] and [`DedupEntry`]. Use it
/// through [`crate::encode`], [`crate::RecordEncoder`] and [`crate::RecordDecoder`].
pub trait AvroRecord: Sized + Send + Sync + 'static {
    /// The short record name, used in errors (`CallRecord`).
    const NAME: &'static str;

    /// The record's schema (reader and writer), parsed once.
    fn schema_info() -> &'static SchemaInfo;

    /// Appends the Avro binary datum (no header) to `out`. On error `out` may hold a partial
    /// datum; [`crate::encode`] truncates it back.
    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), EncodeError>;

    /// Reads one datum written with our schema. The caller checks for trailing bytes.
    fn read_datum(r: &mut DatumReader<'_>) -> Result<Self, DatumError>;

    /// The record as an apache-avro `Value` of our schema.
    fn to_avro_value(&self) -> Result<Value, EncodeError>;

    /// The record from an apache-avro `Value` resolved against our schema.
    fn from_avro_value(value: Value) -> Result<Self, DatumError>;

    /// A guess at the encoded size, to reserve buffer space once.
    fn size_hint(&self) -> usize {
        64
    }

    /// Earlier revisions of our schema whose values are read by the fast path, oldest first.
    fn revisions() -> &'static [Revision] {
        &[]
    }

    /// Reads one datum written with `revision` (one of [`Self::revisions`]).
    fn read_revision_datum(
        r: &mut DatumReader<'_>,
        revision: &Revision,
    ) -> Result<Self, DatumError> {
        let _ = revision;
        Self::read_datum(r)
    }

    /// The earliest revision that holds this record unchanged, to write a single-object value
    /// with (so readers that know only that revision still read it); `None` for our schema.
    fn single_object_revision(&self) -> Option<&'static Revision> {
        None
    }

    /// Appends the datum of `revision` (as [`Self::single_object_revision`] chose it).
    fn write_revision_datum(
        &self,
        revision: &Revision,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let _ = revision;
        self.write_datum(out)
    }
}

// ---------------------------------------------------------------------------------------------
// helpers for the binary path

fn put_money(
    out: &mut Vec<u8>,
    record: &'static str,
    field: &'static str,
    value: Option<&Decimal>,
) -> Result<(), EncodeError> {
    match value {
        None => out.push(0),
        Some(d) => {
            let unscaled = decimal_unscaled(d).map_err(|problem| EncodeError::Decimal {
                record,
                field,
                value: *d,
                problem,
            })?;
            out.push(2);
            put_decimal_unscaled(out, unscaled);
        }
    }
    Ok(())
}

fn money_value(
    record: &'static str,
    field: &'static str,
    value: Option<&Decimal>,
) -> Result<Value, EncodeError> {
    Ok(match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(d) => {
            let unscaled = decimal_unscaled(d).map_err(|problem| EncodeError::Decimal {
                record,
                field,
                value: *d,
                problem,
            })?;
            let (bytes, start) = twos_complement_min(unscaled);
            Value::Union(
                1,
                Box::new(Value::Decimal(apache_avro::Decimal::from(&bytes[start..]))),
            )
        }
    })
}

fn put_opt_str(out: &mut Vec<u8>, v: &Option<String>) {
    put_opt(out, v.as_deref(), put_str);
}

fn put_opt_ts(out: &mut Vec<u8>, v: &Option<DateTime<Utc>>) {
    put_opt(out, v.as_ref(), put_timestamp);
}

fn opt_len(v: &Option<String>) -> usize {
    v.as_ref().map_or(1, |s| s.len() + 3)
}

// ---------------------------------------------------------------------------------------------
// helpers for the Value path

fn null() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

fn some(v: Value) -> Value {
    Value::Union(1, Box::new(v))
}

fn opt_value<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    match v {
        None => null(),
        Some(v) => some(f(v)),
    }
}

fn ts_value(t: &DateTime<Utc>) -> Value {
    Value::TimestampMicros(t.timestamp_micros())
}

fn kind(v: &Value) -> String {
    format!("{:?}", ValueKind::from(v))
}

fn wrong(field: &'static str, expected: &'static str, v: &Value) -> DatumError {
    DatumError::value(
        field,
        Problem::WrongType {
            expected,
            found: kind(v),
        },
    )
}

/// The fields of a resolved record, taken by name.
struct Fields {
    fields: Vec<(String, Value)>,
}

impl Fields {
    fn new(value: Value) -> Result<Self, DatumError> {
        match value {
            Value::Record(fields) => Ok(Fields { fields }),
            other => Err(wrong("(record)", "a record", &other)),
        }
    }

    fn take(&mut self, field: &'static str) -> Result<(&'static str, Value), DatumError> {
        match self.fields.iter_mut().find(|(name, _)| name == field) {
            Some((_, v)) => Ok((field, std::mem::replace(v, Value::Null))),
            None => Err(DatumError::value(field, Problem::Missing)),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String, DatumError> {
        let (f, v) = self.take(field)?;
        v_string(f, v)
    }

    fn parse<T>(&mut self, field: &'static str) -> Result<T, DatumError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let (f, v) = self.take(field)?;
        v_parse(f, v)
    }

    fn long(&mut self, field: &'static str) -> Result<i64, DatumError> {
        let (f, v) = self.take(field)?;
        v_long(f, v)
    }

    fn int(&mut self, field: &'static str) -> Result<i32, DatumError> {
        let (f, v) = self.take(field)?;
        v_int(f, v)
    }

    fn double(&mut self, field: &'static str) -> Result<f64, DatumError> {
        let (f, v) = self.take(field)?;
        v_double(f, v)
    }

    fn ts(&mut self, field: &'static str) -> Result<DateTime<Utc>, DatumError> {
        let (f, v) = self.take(field)?;
        v_ts(f, v)
    }

    fn opt<T>(
        &mut self,
        field: &'static str,
        conv: impl FnOnce(&'static str, Value) -> Result<T, DatumError>,
    ) -> Result<Option<T>, DatumError> {
        let (f, v) = self.take(field)?;
        match v {
            Value::Null => Ok(None),
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                inner => conv(f, inner).map(Some),
            },
            other => conv(f, other).map(Some),
        }
    }
}

fn v_string(f: &'static str, v: Value) -> Result<String, DatumError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Bytes(b) => String::from_utf8(b).map_err(|e| {
            DatumError::value(
                f,
                Problem::InvalidUtf8 {
                    valid_up_to: e.utf8_error().valid_up_to(),
                },
            )
        }),
        Value::Uuid(u) => Ok(u.to_string()),
        other => Err(wrong(f, "a string", &other)),
    }
}

fn v_parse<T>(f: &'static str, v: Value) -> Result<T, DatumError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let s = match v {
        Value::Enum(_, s) => s,
        other => v_string(f, other)?,
    };
    s.parse::<T>()
        .map_err(|e| DatumError::value(f, Problem::UnknownValue(e.to_string())))
}

fn v_long(f: &'static str, v: Value) -> Result<i64, DatumError> {
    match v {
        Value::Long(i) => Ok(i),
        Value::Int(i) => Ok(i64::from(i)),
        other => Err(wrong(f, "a long", &other)),
    }
}

fn v_int(f: &'static str, v: Value) -> Result<i32, DatumError> {
    match v {
        Value::Int(i) => Ok(i),
        Value::Long(i) => {
            i32::try_from(i).map_err(|_| DatumError::value(f, Problem::IntOutOfRange(i)))
        }
        other => Err(wrong(f, "an int", &other)),
    }
}

fn v_bool(f: &'static str, v: Value) -> Result<bool, DatumError> {
    match v {
        Value::Boolean(b) => Ok(b),
        other => Err(wrong(f, "a boolean", &other)),
    }
}

fn v_double(f: &'static str, v: Value) -> Result<f64, DatumError> {
    match v {
        Value::Double(d) => Ok(d),
        Value::Float(d) => Ok(f64::from(d)),
        Value::Long(i) => Ok(i as f64),
        Value::Int(i) => Ok(f64::from(i)),
        other => Err(wrong(f, "a double", &other)),
    }
}

fn v_bytes(f: &'static str, v: Value) -> Result<Vec<u8>, DatumError> {
    match v {
        Value::Bytes(b) => Ok(b),
        Value::String(s) => Ok(s.into_bytes()),
        Value::Fixed(_, b) => Ok(b),
        other => Err(wrong(f, "bytes", &other)),
    }
}

fn v_ts(f: &'static str, v: Value) -> Result<DateTime<Utc>, DatumError> {
    let micros = match v {
        Value::TimestampMicros(m) | Value::LocalTimestampMicros(m) | Value::Long(m) => m,
        Value::TimestampMillis(m) | Value::LocalTimestampMillis(m) => m
            .checked_mul(1000)
            .ok_or_else(|| DatumError::value(f, Problem::TimestampOutOfRange(m)))?,
        Value::TimestampNanos(n) | Value::LocalTimestampNanos(n) => n.div_euclid(1000),
        other => return Err(wrong(f, "a timestamp-micros", &other)),
    };
    DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| DatumError::value(f, Problem::TimestampOutOfRange(micros)))
}

fn v_decimal(f: &'static str, v: Value) -> Result<Decimal, DatumError> {
    let bytes = match v {
        Value::Decimal(d) => Vec::<u8>::try_from(&d).map_err(|e| {
            DatumError::value(
                f,
                Problem::WrongType {
                    expected: "a decimal",
                    found: e.to_string(),
                },
            )
        })?,
        Value::Bytes(b) | Value::Fixed(_, b) => b,
        other => return Err(wrong(f, "a decimal", &other)),
    };
    decimal_from_bytes(&bytes, DECIMAL_SCALE)
        .ok_or_else(|| DatumError::value(f, Problem::DecimalOutOfRange { len: bytes.len() }))
}

fn v_string_map(f: &'static str, v: Value) -> Result<BTreeMap<String, String>, DatumError> {
    match v {
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| v_string(f, v).map(|v| (k, v)))
            .collect(),
        other => Err(wrong(f, "a map", &other)),
    }
}

// ---------------------------------------------------------------------------------------------
// CallRecord

impl AvroRecord for CallRecord {
    const NAME: &'static str = "CallRecord";

    fn schema_info() -> &'static SchemaInfo {
        call_record_schema()
    }

    fn size_hint(&self) -> usize {
        let tags: usize = self.tags.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        96 + self.account_id.len()
            + self.call_id.len()
            + opt_len(&self.caller_number)
            + opt_len(&self.tracking_number)
            + opt_len(&self.destination_number)
            + opt_len(&self.campaign_id)
            + opt_len(&self.campaign_name)
            + opt_len(&self.publisher_id)
            + opt_len(&self.publisher_name)
            + opt_len(&self.buyer_id)
            + opt_len(&self.buyer_name)
            + opt_len(&self.provider_status)
            + opt_len(&self.currency)
            + opt_len(&self.recording_url)
            + tags
            + self.raw.as_ref().map_or(1, |r| r.len() + 6)
            + self
                .present_fields
                .map_or(1, |set| 8 + 16 * (set.len() + 6))
    }

    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.write_v1_fields(out)?;
        match self.present_fields {
            None => out.push(0),
            Some(set) => {
                out.push(2);
                put_field_set(out, set);
            }
        }
        Ok(())
    }

    fn revisions() -> &'static [Revision] {
        call_record_revisions()
    }

    fn read_revision_datum(
        r: &mut DatumReader<'_>,
        revision: &Revision,
    ) -> Result<Self, DatumError> {
        CallRecordView::read_revision(r, revision.fields() > CALL_RECORD_V1_FIELDS)?.to_record()
    }

    /// A complete record is written with the first revision (no `present_fields`): the same
    /// bytes as before partial records existed, readable by every older reader.
    fn single_object_revision(&self) -> Option<&'static Revision> {
        match self.present_fields {
            None => call_record_revisions().first(),
            Some(_) => None,
        }
    }

    fn write_revision_datum(
        &self,
        revision: &Revision,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if revision.fields() > CALL_RECORD_V1_FIELDS || self.present_fields.is_some() {
            return self.write_datum(out);
        }
        self.write_v1_fields(out)
    }

    fn read_datum(r: &mut DatumReader<'_>) -> Result<Self, DatumError> {
        CallRecordView::read(r)?.to_record()
    }

    fn to_avro_value(&self) -> Result<Value, EncodeError> {
        let mut fields = self.v1_values()?;
        fields.push((
            "present_fields".into(),
            opt_value(self.present_fields, |set| {
                Value::Array(set.names().map(|n| Value::String(n.into())).collect())
            }),
        ));
        Ok(Value::Record(fields))
    }

    fn from_avro_value(value: Value) -> Result<Self, DatumError> {
        let mut f = Fields::new(value)?;
        Ok(CallRecord {
            provider: f.parse("provider")?,
            account_id: f.string("account_id")?,
            call_id: f.string("call_id")?,
            version: f.long("version")?,
            started_at: f.ts("started_at")?,
            answered_at: f.opt("answered_at", v_ts)?,
            ended_at: f.opt("ended_at", v_ts)?,
            duration_secs: f.opt("duration_secs", v_int)?,
            billable_secs: f.opt("billable_secs", v_int)?,
            caller_number: f.opt("caller_number", v_string)?,
            tracking_number: f.opt("tracking_number", v_string)?,
            destination_number: f.opt("destination_number", v_string)?,
            campaign_id: f.opt("campaign_id", v_string)?,
            campaign_name: f.opt("campaign_name", v_string)?,
            publisher_id: f.opt("publisher_id", v_string)?,
            publisher_name: f.opt("publisher_name", v_string)?,
            buyer_id: f.opt("buyer_id", v_string)?,
            buyer_name: f.opt("buyer_name", v_string)?,
            status: f.parse("status")?,
            provider_status: f.opt("provider_status", v_string)?,
            converted: f.opt("converted", v_bool)?,
            revenue: f.opt("revenue", v_decimal)?,
            payout: f.opt("payout", v_decimal)?,
            currency: f.opt("currency", v_string)?,
            recording_url: f.opt("recording_url", v_string)?,
            tags: {
                let (name, v) = f.take("tags")?;
                v_string_map(name, v)?
            },
            source: f.parse("source")?,
            observed_at: f.ts("observed_at")?,
            provider_updated_at: f.opt("provider_updated_at", v_ts)?,
            raw: f.opt("raw", v_bytes)?,
            present_fields: f.opt("present_fields", v_field_set)?,
        })
    }
}

/// Writes the names of a `present_fields` array (one block).
fn put_field_set(out: &mut Vec<u8>, set: FieldSet) {
    put_long(out, set.names().count() as i64);
    for name in set.names() {
        put_str(out, name);
    }
    out.push(0);
}

fn v_field_set(f: &'static str, v: Value) -> Result<FieldSet, DatumError> {
    let Value::Array(items) = v else {
        return Err(wrong(f, "an array of field names", &v));
    };
    let names = items
        .into_iter()
        .map(|item| v_string(f, item))
        .collect::<Result<Vec<_>, _>>()?;
    FieldSet::from_names(names.iter().map(String::as_str))
        .map_err(|e| DatumError::value(f, Problem::UnknownValue(e.to_string())))
}

impl CallRecord {
    /// The fields of the first revision (all but `present_fields`).
    fn write_v1_fields(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_str(out, self.provider.as_str());
        put_str(out, &self.account_id);
        put_str(out, &self.call_id);
        put_long(out, self.version);
        put_timestamp(out, &self.started_at);
        put_opt_ts(out, &self.answered_at);
        put_opt_ts(out, &self.ended_at);
        put_opt(out, self.duration_secs.as_ref(), |o, v| put_int(o, *v));
        put_opt(out, self.billable_secs.as_ref(), |o, v| put_int(o, *v));
        put_opt_str(out, &self.caller_number);
        put_opt_str(out, &self.tracking_number);
        put_opt_str(out, &self.destination_number);
        put_opt_str(out, &self.campaign_id);
        put_opt_str(out, &self.campaign_name);
        put_opt_str(out, &self.publisher_id);
        put_opt_str(out, &self.publisher_name);
        put_opt_str(out, &self.buyer_id);
        put_opt_str(out, &self.buyer_name);
        put_str(out, self.status.as_str());
        put_opt_str(out, &self.provider_status);
        put_opt(out, self.converted.as_ref(), |o, v| put_bool(o, *v));
        put_money(out, Self::NAME, "revenue", self.revenue.as_ref())?;
        put_money(out, Self::NAME, "payout", self.payout.as_ref())?;
        put_opt_str(out, &self.currency);
        put_opt_str(out, &self.recording_url);
        if !self.tags.is_empty() {
            put_long(out, self.tags.len() as i64);
            for (k, v) in &self.tags {
                put_str(out, k);
                put_str(out, v);
            }
        }
        out.push(0);
        put_str(out, self.source.as_str());
        put_timestamp(out, &self.observed_at);
        put_opt_ts(out, &self.provider_updated_at);
        put_opt(out, self.raw.as_deref(), put_bytes);
        Ok(())
    }

    /// The values of the first revision's fields (all but `present_fields`).
    fn v1_values(&self) -> Result<Vec<(String, Value)>, EncodeError> {
        let s = |v: &Option<String>| opt_value(v.clone(), Value::String);
        let t = |v: &Option<DateTime<Utc>>| opt_value(v.as_ref(), ts_value);
        Ok(vec![
            (
                "provider".into(),
                Value::String(self.provider.as_str().into()),
            ),
            ("account_id".into(), Value::String(self.account_id.clone())),
            ("call_id".into(), Value::String(self.call_id.clone())),
            ("version".into(), Value::Long(self.version)),
            ("started_at".into(), ts_value(&self.started_at)),
            ("answered_at".into(), t(&self.answered_at)),
            ("ended_at".into(), t(&self.ended_at)),
            (
                "duration_secs".into(),
                opt_value(self.duration_secs, Value::Int),
            ),
            (
                "billable_secs".into(),
                opt_value(self.billable_secs, Value::Int),
            ),
            ("caller_number".into(), s(&self.caller_number)),
            ("tracking_number".into(), s(&self.tracking_number)),
            ("destination_number".into(), s(&self.destination_number)),
            ("campaign_id".into(), s(&self.campaign_id)),
            ("campaign_name".into(), s(&self.campaign_name)),
            ("publisher_id".into(), s(&self.publisher_id)),
            ("publisher_name".into(), s(&self.publisher_name)),
            ("buyer_id".into(), s(&self.buyer_id)),
            ("buyer_name".into(), s(&self.buyer_name)),
            ("status".into(), Value::String(self.status.as_str().into())),
            ("provider_status".into(), s(&self.provider_status)),
            (
                "converted".into(),
                opt_value(self.converted, Value::Boolean),
            ),
            (
                "revenue".into(),
                money_value(Self::NAME, "revenue", self.revenue.as_ref())?,
            ),
            (
                "payout".into(),
                money_value(Self::NAME, "payout", self.payout.as_ref())?,
            ),
            ("currency".into(), s(&self.currency)),
            ("recording_url".into(), s(&self.recording_url)),
            (
                "tags".into(),
                Value::Map(
                    self.tags
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect::<HashMap<_, _>>(),
                ),
            ),
            ("source".into(), Value::String(self.source.as_str().into())),
            ("observed_at".into(), ts_value(&self.observed_at)),
            ("provider_updated_at".into(), t(&self.provider_updated_at)),
            ("raw".into(), opt_value(self.raw.clone(), Value::Bytes)),
        ])
    }
}

// ---------------------------------------------------------------------------------------------
// SyncRequest

impl AvroRecord for SyncRequest {
    const NAME: &'static str = "SyncRequest";

    fn schema_info() -> &'static SchemaInfo {
        sync_request_schema()
    }

    fn size_hint(&self) -> usize {
        64 + self.id.len() + self.account_id.len() + self.requested_by.len()
    }

    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_str(out, &self.id);
        put_str(out, self.provider.as_str());
        put_str(out, &self.account_id);
        put_str(out, self.mode.as_str());
        put_opt_ts(out, &self.window_start);
        put_opt_ts(out, &self.window_end);
        put_timestamp(out, &self.requested_at);
        put_str(out, &self.requested_by);
        put_int(out, self.attempt);
        put_opt_ts(out, &self.not_before);
        Ok(())
    }

    fn read_datum(r: &mut DatumReader<'_>) -> Result<Self, DatumError> {
        Ok(SyncRequest {
            id: r.at("id").string()?,
            provider: r.at("provider").parse_str()?,
            account_id: r.at("account_id").string()?,
            mode: r.at("mode").parse_str()?,
            window_start: r.at("window_start").opt(|r| r.timestamp())?,
            window_end: r.at("window_end").opt(|r| r.timestamp())?,
            requested_at: r.at("requested_at").timestamp()?,
            requested_by: r.at("requested_by").string()?,
            attempt: r.at("attempt").int()?,
            not_before: r.at("not_before").opt(|r| r.timestamp())?,
        })
    }

    fn to_avro_value(&self) -> Result<Value, EncodeError> {
        let t = |v: &Option<DateTime<Utc>>| opt_value(v.as_ref(), ts_value);
        Ok(Value::Record(vec![
            ("id".into(), Value::String(self.id.clone())),
            (
                "provider".into(),
                Value::String(self.provider.as_str().into()),
            ),
            ("account_id".into(), Value::String(self.account_id.clone())),
            ("mode".into(), Value::String(self.mode.as_str().into())),
            ("window_start".into(), t(&self.window_start)),
            ("window_end".into(), t(&self.window_end)),
            ("requested_at".into(), ts_value(&self.requested_at)),
            (
                "requested_by".into(),
                Value::String(self.requested_by.clone()),
            ),
            ("attempt".into(), Value::Int(self.attempt)),
            ("not_before".into(), t(&self.not_before)),
        ]))
    }

    fn from_avro_value(value: Value) -> Result<Self, DatumError> {
        let mut f = Fields::new(value)?;
        Ok(SyncRequest {
            id: f.string("id")?,
            provider: f.parse("provider")?,
            account_id: f.string("account_id")?,
            mode: f.parse("mode")?,
            window_start: f.opt("window_start", v_ts)?,
            window_end: f.opt("window_end", v_ts)?,
            requested_at: f.ts("requested_at")?,
            requested_by: f.string("requested_by")?,
            attempt: f.int("attempt")?,
            not_before: f.opt("not_before", v_ts)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// SyncEvent

impl AvroRecord for SyncEvent {
    const NAME: &'static str = "SyncEvent";

    fn schema_info() -> &'static SchemaInfo {
        sync_event_schema()
    }

    fn size_hint(&self) -> usize {
        80 + self.sync_id.len() + self.account_id.len() + self.error.as_ref().map_or(0, String::len)
    }

    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_str(out, &self.sync_id);
        put_str(out, self.provider.as_str());
        put_str(out, &self.account_id);
        put_str(out, self.mode.as_str());
        put_str(out, self.kind.as_str());
        put_long(out, self.records);
        put_long(out, self.pages);
        put_double(out, self.rate_per_sec);
        put_opt(out, self.eta_secs.as_ref(), |o, v| put_long(o, *v));
        put_opt_str(out, &self.error);
        put_timestamp(out, &self.at);
        Ok(())
    }

    fn read_datum(r: &mut DatumReader<'_>) -> Result<Self, DatumError> {
        Ok(SyncEvent {
            sync_id: r.at("sync_id").string()?,
            provider: r.at("provider").parse_str()?,
            account_id: r.at("account_id").string()?,
            mode: r.at("mode").parse_str()?,
            kind: r.at("kind").parse_str()?,
            records: r.at("records").long()?,
            pages: r.at("pages").long()?,
            rate_per_sec: r.at("rate_per_sec").double()?,
            eta_secs: r.at("eta_secs").opt(|r| r.long())?,
            error: r.at("error").opt(|r| r.string())?,
            at: r.at("at").timestamp()?,
        })
    }

    fn to_avro_value(&self) -> Result<Value, EncodeError> {
        Ok(Value::Record(vec![
            ("sync_id".into(), Value::String(self.sync_id.clone())),
            (
                "provider".into(),
                Value::String(self.provider.as_str().into()),
            ),
            ("account_id".into(), Value::String(self.account_id.clone())),
            ("mode".into(), Value::String(self.mode.as_str().into())),
            ("kind".into(), Value::String(self.kind.as_str().into())),
            ("records".into(), Value::Long(self.records)),
            ("pages".into(), Value::Long(self.pages)),
            ("rate_per_sec".into(), Value::Double(self.rate_per_sec)),
            ("eta_secs".into(), opt_value(self.eta_secs, Value::Long)),
            ("error".into(), opt_value(self.error.clone(), Value::String)),
            ("at".into(), ts_value(&self.at)),
        ]))
    }

    fn from_avro_value(value: Value) -> Result<Self, DatumError> {
        let mut f = Fields::new(value)?;
        Ok(SyncEvent {
            sync_id: f.string("sync_id")?,
            provider: f.parse("provider")?,
            account_id: f.string("account_id")?,
            mode: f.parse("mode")?,
            kind: f.parse("kind")?,
            records: f.long("records")?,
            pages: f.long("pages")?,
            rate_per_sec: f.double("rate_per_sec")?,
            eta_secs: f.opt("eta_secs", v_long)?,
            error: f.opt("error", v_string)?,
            at: f.ts("at")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// DedupEntry

impl AvroRecord for DedupEntry {
    const NAME: &'static str = "DedupEntry";

    fn schema_info() -> &'static SchemaInfo {
        dedup_entry_schema()
    }

    fn size_hint(&self) -> usize {
        16 + 10 + 10
    }

    /// The fingerprint is written as 16 bytes, big-endian.
    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.extend_from_slice(&self.fingerprint.to_be_bytes());
        put_long(out, self.version);
        put_timestamp(out, &self.seen_at);
        Ok(())
    }

    fn read_datum(r: &mut DatumReader<'_>) -> Result<Self, DatumError> {
        let fingerprint =
            u128::from_be_bytes(r.at("fingerprint").fixed_array::<16>("a fixed(16)")?);
        let version = r.at("version").long()?;
        let seen_at = r.at("seen_at").timestamp()?;
        Ok(DedupEntry {
            fingerprint,
            version,
            seen_at,
        })
    }

    fn to_avro_value(&self) -> Result<Value, EncodeError> {
        Ok(Value::Record(vec![
            (
                "fingerprint".into(),
                Value::Fixed(16, self.fingerprint.to_be_bytes().to_vec()),
            ),
            ("version".into(), Value::Long(self.version)),
            ("seen_at".into(), ts_value(&self.seen_at)),
        ]))
    }

    fn from_avro_value(value: Value) -> Result<Self, DatumError> {
        let mut f = Fields::new(value)?;
        let (name, fp) = f.take("fingerprint")?;
        let fingerprint = match fp {
            Value::Fixed(_, b) | Value::Bytes(b) => {
                let arr: [u8; 16] = b.as_slice().try_into().map_err(|_| {
                    DatumError::value(
                        name,
                        Problem::FixedSize {
                            expected: 16,
                            found: b.len(),
                        },
                    )
                })?;
                u128::from_be_bytes(arr)
            }
            other => return Err(wrong(name, "a fixed(16)", &other)),
        };
        Ok(DedupEntry {
            fingerprint,
            version: f.long("version")?,
            seen_at: f.ts("seen_at")?,
        })
    }
}
