//! Shared mapping machinery: reading a provider's JSON record field by field without ever
//! passing money through `f64`, and the normalizations every provider needs (E.164 numbers,
//! time zones, status words).
//!
//! A record is parsed once into a map of field name to the field's raw JSON text
//! ([`Fields`]); each accessor then reads one field, tolerating the type quirks the providers
//! are known for (numbers sent as strings and the reverse, empty strings for absent ids) and
//! naming the field when it cannot. Unknown fields are ignored.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use callsync_schemas::{CallStatus, Provider, RecordSource};
use chrono::{DateTime, FixedOffset, NaiveDateTime, SubsecRound, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;

/// Why a provider record could not be mapped to a `CallRecord`. It goes to `calls.dlq`
/// with `reason` and `field` as headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider} record (account {account}): field {field:?}: {reason}: {detail}")]
pub struct MappingError {
    pub provider: Provider,
    pub account: String,
    /// The JSON field that failed (`$` for the record as a whole).
    pub field: String,
    /// A short machine-readable reason: `missing`, `invalid_type`, `invalid_value`,
    /// `malformed_json`, `encode`.
    pub reason: &'static str,
    /// What was wrong, with the offending value where it is safe to show.
    pub detail: String,
}

/// What a mapping function needs besides the record.
#[derive(Debug, Clone)]
pub struct MapContext {
    pub provider: Provider,
    pub account_id: String,
    pub observed_at: DateTime<Utc>,
    pub source: RecordSource,
    /// Region for numbers written without a country code (default US).
    pub default_region: rlibphonenumber::enums::Region,
    /// Currency of the account's money fields (providers do not send one per call).
    pub currency: Option<String>,
    /// The account's time zone, for providers that send local times without an offset.
    pub time_zone: chrono_tz::Tz,
}

impl MapContext {
    pub fn new(provider: Provider, account_id: impl Into<String>, source: RecordSource) -> Self {
        MapContext {
            provider,
            account_id: account_id.into(),
            observed_at: Utc::now(),
            source,
            default_region: rlibphonenumber::enums::Region::US,
            currency: Some("USD".to_string()),
            time_zone: chrono_tz::UTC,
        }
    }

    pub fn error(
        &self,
        field: &str,
        reason: &'static str,
        detail: impl Into<String>,
    ) -> MappingError {
        MappingError {
            provider: self.provider,
            account: self.account_id.clone(),
            field: field.to_string(),
            reason,
            detail: detail.into(),
        }
    }

    /// `observed_at` in microseconds: the version of a record whose provider keeps no update time.
    pub fn observed_micros(&self) -> i64 {
        self.observed_at.timestamp_micros()
    }
}

/// The kind of a raw JSON value, from its first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

pub fn kind_of(raw: &RawValue) -> JsonKind {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'n') => JsonKind::Null,
        Some(b't') | Some(b'f') => JsonKind::Bool,
        Some(b'"') => JsonKind::String,
        Some(b'[') => JsonKind::Array,
        Some(b'{') => JsonKind::Object,
        _ => JsonKind::Number,
    }
}

/// One JSON object's fields as raw JSON text, borrowed from the record's bytes.
pub struct Fields<'a> {
    map: HashMap<String, &'a RawValue>,
    ctx: &'a MapContext,
    /// Prefix of field names in errors (`call.` for Retreaver's wrapper).
    path: String,
}

impl<'a> Fields<'a> {
    /// Parses `raw` as a JSON object. Anything else is a `malformed_json` error on `$`.
    pub fn parse(raw: &'a RawValue, ctx: &'a MapContext) -> Result<Self, MappingError> {
        Self::parse_at(raw, ctx, "")
    }

    fn parse_at(raw: &'a RawValue, ctx: &'a MapContext, path: &str) -> Result<Self, MappingError> {
        let map: HashMap<String, &'a RawValue> = serde_json::from_str(raw.get()).map_err(|e| {
            ctx.error(
                if path.is_empty() {
                    "$"
                } else {
                    path.trim_end_matches('.')
                },
                "malformed_json",
                format!("expected a JSON object: {e}"),
            )
        })?;
        Ok(Fields {
            map,
            ctx,
            path: path.to_string(),
        })
    }

    fn name(&self, field: &str) -> String {
        format!("{}{}", self.path, field)
    }

    fn err(&self, field: &str, reason: &'static str, detail: impl Into<String>) -> MappingError {
        self.ctx.error(&self.name(field), reason, detail)
    }

    /// The raw value of `field` unless absent or `null`.
    pub fn raw(&self, field: &str) -> Option<&'a RawValue> {
        self.map
            .get(field)
            .copied()
            .filter(|r| kind_of(r) != JsonKind::Null)
    }

    pub fn has(&self, field: &str) -> bool {
        self.raw(field).is_some()
    }

    /// A nested object (`None` when absent, null, or an empty array standing for "none").
    pub fn object(&self, field: &str) -> Result<Option<Fields<'a>>, MappingError> {
        match self.raw(field) {
            None => Ok(None),
            Some(r) if kind_of(r) == JsonKind::Object => {
                Fields::parse_at(r, self.ctx, &format!("{}.", self.name(field))).map(Some)
            }
            Some(r) if kind_of(r) == JsonKind::Array && r.get().trim() == "[]" => Ok(None),
            Some(r) => Err(self.err(
                field,
                "invalid_type",
                format!("expected an object, found {}", short(r)),
            )),
        }
    }

    /// A string field; numbers and booleans are taken as their JSON text. Empty or
    /// whitespace-only strings are `None` (Ringba sends `""` for absent ids).
    pub fn string(&self, field: &str) -> Result<Option<String>, MappingError> {
        let Some(r) = self.raw(field) else {
            return Ok(None);
        };
        let s = match kind_of(r) {
            JsonKind::String => serde_json::from_str::<String>(r.get())
                .map_err(|e| self.err(field, "invalid_value", e.to_string()))?,
            JsonKind::Number | JsonKind::Bool => r.get().trim().to_string(),
            _ => {
                return Err(self.err(
                    field,
                    "invalid_type",
                    format!("expected a string, found {}", short(r)),
                ))
            }
        };
        let trimmed = s.trim();
        Ok(if trimmed.is_empty() {
            None
        } else {
            Some(trimmed.to_string())
        })
    }

    /// A required string field.
    pub fn required_string(&self, field: &str) -> Result<String, MappingError> {
        self.string(field)?
            .ok_or_else(|| self.err(field, "missing", "required field is absent, null or empty"))
    }

    /// The first of `fields` present as a string.
    pub fn first_string(&self, fields: &[&str]) -> Result<Option<String>, MappingError> {
        for f in fields {
            if let Some(s) = self.string(f)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// An integer; accepts JSON integers, integral floats (`14.0`) and digit strings.
    pub fn int(&self, field: &str) -> Result<Option<i64>, MappingError> {
        let Some(text) = self.number_text(field)? else {
            return Ok(None);
        };
        if let Ok(v) = text.parse::<i64>() {
            return Ok(Some(v));
        }
        match Decimal::from_str(&text).or_else(|_| Decimal::from_scientific(&text)) {
            Ok(d) if d.fract().is_zero() => i64::try_from(d)
                .map(Some)
                .map_err(|_| self.err(field, "invalid_value", format!("{text} is out of range"))),
            _ => Err(self.err(
                field,
                "invalid_value",
                format!("{text:?} is not an integer"),
            )),
        }
    }

    /// A duration in whole seconds as `i32` (negative values are passed on for the
    /// processor's validation to reject).
    pub fn seconds(&self, field: &str) -> Result<Option<i32>, MappingError> {
        match self.int(field)? {
            None => Ok(None),
            Some(v) => i32::try_from(v).map(Some).map_err(|_| {
                self.err(
                    field,
                    "invalid_value",
                    format!("{v} seconds is out of range"),
                )
            }),
        }
    }

    /// Money read exactly from the JSON text: numbers (`5.0`, `0`) and strings (`"0.08"`,
    /// `"$1,200.50"`) alike; `""` is `None`. An amount `decimal(18,4)` cannot hold exactly
    /// (more than 4 non-zero decimal places, more than 18 digits) is refused here, naming the
    /// field, rather than failing the Avro encoding later (a webhook would be answered 500).
    pub fn decimal(&self, field: &str) -> Result<Option<Decimal>, MappingError> {
        let Some(text) = self.number_text(field)? else {
            return Ok(None);
        };
        let amount = parse_decimal(&text).ok_or_else(|| {
            self.err(
                field,
                "invalid_value",
                format!("{text:?} is not a decimal amount"),
            )
        })?;
        callsync_schemas::binary::decimal_unscaled(&amount).map_err(|problem| {
            self.err(
                field,
                "invalid_value",
                format!("{text:?} does not fit decimal(18,4): {problem}"),
            )
        })?;
        Ok(Some(amount))
    }

    /// A boolean; accepts `true`/`false`, `"true"`/`"false"`, `1`/`0`, `"yes"`/`"no"`.
    pub fn boolean(&self, field: &str) -> Result<Option<bool>, MappingError> {
        let Some(r) = self.raw(field) else {
            return Ok(None);
        };
        let text = match kind_of(r) {
            JsonKind::Bool | JsonKind::Number => r.get().trim().to_string(),
            JsonKind::String => serde_json::from_str::<String>(r.get())
                .map_err(|e| self.err(field, "invalid_value", e.to_string()))?,
            _ => {
                return Err(self.err(
                    field,
                    "invalid_type",
                    format!("expected a boolean, found {}", short(r)),
                ))
            }
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "y" | "t" => Ok(Some(true)),
            "false" | "0" | "no" | "n" | "f" => Ok(Some(false)),
            "" => Ok(None),
            other => Err(self.err(
                field,
                "invalid_value",
                format!("{other:?} is not a boolean"),
            )),
        }
    }

    /// An ISO 8601 / RFC 3339 time with an offset (`Z`, `-05:00`, `-0500`), or the
    /// TrackDrive form `2016-01-01 12:25:15 -0500`; a time without offset is read in the
    /// account's time zone.
    pub fn timestamp(&self, field: &str) -> Result<Option<DateTime<Utc>>, MappingError> {
        let Some(s) = self.string(field)? else {
            return Ok(None);
        };
        parse_timestamp(&s, self.ctx.time_zone)
            .map(Some)
            .ok_or_else(|| self.err(field, "invalid_value", format!("{s:?} is not a timestamp")))
    }

    /// Epoch milliseconds (Ringba, Invoca), as a number or a digit string.
    pub fn epoch_millis(&self, field: &str) -> Result<Option<DateTime<Utc>>, MappingError> {
        match self.int(field)? {
            None => Ok(None),
            Some(0) => Ok(None),
            Some(ms) => Utc
                .timestamp_millis_opt(ms)
                .single()
                .map(Some)
                .ok_or_else(|| {
                    self.err(field, "invalid_value", format!("{ms} ms is out of range"))
                }),
        }
    }

    /// A phone number normalized to E.164 (see [`to_e164`]).
    pub fn phone(&self, field: &str) -> Result<Option<String>, MappingError> {
        Ok(self
            .string(field)?
            .map(|s| to_e164(&s, self.ctx.default_region)))
    }

    /// A string-to-string map (tags); non-string values are kept as their JSON text, arrays
    /// of strings are comma-joined.
    pub fn string_map(&self, field: &str) -> Result<BTreeMap<String, String>, MappingError> {
        let mut out = BTreeMap::new();
        let Some(r) = self.raw(field) else {
            return Ok(out);
        };
        match kind_of(r) {
            JsonKind::Object => {
                let map: BTreeMap<String, &RawValue> = serde_json::from_str(r.get())
                    .map_err(|e| self.err(field, "malformed_json", e.to_string()))?;
                for (k, v) in map {
                    if let Some(s) = value_text(v) {
                        out.insert(k, s);
                    }
                }
            }
            JsonKind::Array if r.get().trim() == "[]" => {}
            _ => {
                return Err(self.err(
                    field,
                    "invalid_type",
                    format!("expected an object, found {}", short(r)),
                ))
            }
        }
        Ok(out)
    }

    /// A list of strings (CallRail `tags`), each element as text.
    pub fn string_list(&self, field: &str) -> Result<Vec<String>, MappingError> {
        let Some(r) = self.raw(field) else {
            return Ok(Vec::new());
        };
        match kind_of(r) {
            JsonKind::Array => {
                let items: Vec<&RawValue> = serde_json::from_str(r.get())
                    .map_err(|e| self.err(field, "malformed_json", e.to_string()))?;
                Ok(items.into_iter().filter_map(value_text).collect())
            }
            JsonKind::String => Ok(self
                .string(field)?
                .map(|s| {
                    s.split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect()
                })
                .unwrap_or_default()),
            _ => Err(self.err(
                field,
                "invalid_type",
                format!("expected an array, found {}", short(r)),
            )),
        }
    }

    /// The text of a number-like field: a JSON number's own text or a string's content.
    fn number_text(&self, field: &str) -> Result<Option<String>, MappingError> {
        let Some(r) = self.raw(field) else {
            return Ok(None);
        };
        match kind_of(r) {
            JsonKind::Number => Ok(Some(r.get().trim().to_string())),
            JsonKind::String => {
                let s = serde_json::from_str::<String>(r.get())
                    .map_err(|e| self.err(field, "invalid_value", e.to_string()))?;
                let s = s.trim();
                Ok(if s.is_empty() {
                    None
                } else {
                    Some(s.to_string())
                })
            }
            _ => Err(self.err(
                field,
                "invalid_type",
                format!("expected a number, found {}", short(r)),
            )),
        }
    }
}

/// A value's text for tags: strings unquoted, scalars as JSON text, string arrays comma-joined,
/// null dropped.
fn value_text(v: &RawValue) -> Option<String> {
    match kind_of(v) {
        JsonKind::Null => None,
        JsonKind::String => serde_json::from_str::<String>(v.get()).ok(),
        JsonKind::Array => {
            let items: Vec<&RawValue> = serde_json::from_str(v.get()).ok()?;
            Some(
                items
                    .into_iter()
                    .filter_map(value_text)
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
        _ => Some(v.get().trim().to_string()),
    }
}

fn short(r: &RawValue) -> String {
    let s = r.get();
    if s.len() > 40 {
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

/// Parses money text exactly: `5`, `5.0`, `-0.08`, `1e2`, `"$1,200.50"`, and the localized
/// forms providers emit in money strings (Invoca's `*_localized` fields): `"25,50"`,
/// `"1.234,50"`, `"1 234,50"`, `"€25,50"`.
///
/// The separator rule: with both `.` and `,`, the last one is the decimal separator; with
/// only commas, a single comma followed by other than three digits is a decimal comma
/// (`"25,50"` is 25.50, `"1,200"` and `"1,200,300"` are thousands). Spaces, no-break spaces
/// and `'` group digits.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, t),
    };
    let t = t
        .trim_start_matches(['$', '€', '£'])
        .trim_end_matches(['€', '$', '£']);
    let t = t.trim();
    let t: String = t
        .chars()
        .filter(|c| !matches!(c, ' ' | '\u{a0}' | '\u{202f}' | '\''))
        .collect();
    let last_dot = t.rfind('.');
    let last_comma = t.rfind(',');
    let decimal_comma = match (last_dot, last_comma) {
        (Some(d), Some(c)) => c > d,
        (None, Some(c)) => t.matches(',').count() == 1 && t.len() - c - 1 != 3,
        _ => false,
    };
    let cleaned: String = if decimal_comma {
        t.chars()
            .filter(|c| *c != '.')
            .map(|c| if c == ',' { '.' } else { c })
            .collect()
    } else {
        t.chars().filter(|c| *c != ',').collect()
    };
    if cleaned.is_empty() {
        return None;
    }
    let d = Decimal::from_str(&cleaned)
        .or_else(|_| Decimal::from_scientific(&cleaned))
        .ok()?;
    Some(if neg { -d } else { d })
}

/// Parses the time formats the providers send. A string without an offset is read in `tz`.
/// Truncated to microseconds, the precision of the record (Avro `timestamp-micros`) and of
/// Postgres, so a record is the same before and after the wire.
pub fn parse_timestamp(s: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    parse_timestamp_exact(s, tz).map(|t| t.trunc_subsecs(6))
}

fn parse_timestamp_exact(s: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // offsets without colon, with a space, and TrackDrive's `2016-01-01 12:25:15 -0500`
    const WITH_OFFSET: [&str; 6] = [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f %z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f %z",
        "%Y-%m-%d %H:%M:%S %Z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
    ];
    for f in WITH_OFFSET {
        if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    const NAIVE: [&str; 3] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ];
    for f in NAIVE {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return tz
                .from_local_datetime(&n)
                .earliest()
                .map(|t| t.with_timezone(&Utc));
        }
    }
    None
}

/// Normalizes a phone number to E.164. Numbers already in E.164 pass through; US-style
/// 10-digit numbers in any punctuation (`866-555-1234`, `(866) 555-1234`) get `+1`; anything
/// else is parsed with libphonenumber's rules for `region`. A number that cannot be parsed is
/// returned trimmed but otherwise unchanged, for the processor's validation to judge.
pub fn to_e164(raw: &str, region: rlibphonenumber::enums::Region) -> String {
    let s = raw.trim();
    let plus = s.starts_with('+');
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    let only_punct = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '(' | ')' | '.'));
    if only_punct {
        if plus && (8..=15).contains(&digits.len()) && !digits.starts_with('0') {
            return format!("+{digits}");
        }
        if !plus && region == rlibphonenumber::enums::Region::US {
            if digits.len() == 10 && !digits.starts_with('0') && !digits.starts_with('1') {
                return format!("+1{digits}");
            }
            if digits.len() == 11 && digits.starts_with('1') {
                return format!("+{digits}");
            }
        }
    }
    match rlibphonenumber::PHONE_NUMBER_UTIL.parse(s, Some(region)) {
        Ok(n) => n
            .format_as(rlibphonenumber::PhoneNumberFormat::E164)
            .into_owned(),
        Err(_) => s.to_string(),
    }
}

/// Maps a provider's status word to the normalized status. Matching ignores case and treats
/// `-`, ` ` and `_` alike; anything not recognized is `unknown` (the word is kept in
/// `provider_status`).
pub fn normalize_status(word: &str) -> CallStatus {
    let w: String = word
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c == '-' || c == ' ' { '_' } else { c })
        .collect();
    match w.as_str() {
        "in_progress" | "inprogress" | "live" | "active" | "ringing" | "ring" | "queued"
        | "started" | "initiated" | "answered" | "connected" | "forwarded" | "on_hold"
        | "in_ivr" | "ivr" => CallStatus::InProgress,
        "finished" | "completed" | "complete" | "ended" | "success" | "successful"
        | "transferred" | "converted" | "hung_up" | "hangup" => CallStatus::Completed,
        "no_answer" | "noanswer" | "unanswered" | "missed" | "not_answered" | "no_connect"
        | "not_connected" | "voicemail" | "abandoned" | "canceled" | "cancelled" => {
            CallStatus::NoAnswer
        }
        "busy" | "user_busy" => CallStatus::Busy,
        "failed" | "failure" | "error" | "rejected" | "blocked" | "invalid" | "congestion" => {
            CallStatus::Failed
        }
        _ => CallStatus::Unknown,
    }
}

/// Micros since the epoch.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The record's JSON bytes, kept in `CallRecord::raw`.
pub fn raw_bytes(raw: &RawValue) -> Vec<u8> {
    raw.get().as_bytes().to_vec()
}

/// Whole seconds between two times, when both are known and ordered.
pub fn secs_between(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<i32> {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => i32::try_from((b - a).num_seconds()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MapContext {
        MapContext::new(Provider::Retreaver, "acct", RecordSource::Poll)
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn money_is_read_exactly_from_numbers_and_strings() {
        let c = ctx();
        let r = raw(
            r#"{"a": 5.0, "b": "0.08", "c": "-0.08", "d": 0.1, "e": "", "f": null, "g": 12345678901234.5678, "h": "$1,200.50"}"#,
        );
        let f = Fields::parse(&r, &c).unwrap();
        assert_eq!(
            f.decimal("a").unwrap(),
            Some(Decimal::from_str("5.0").unwrap())
        );
        assert_eq!(f.decimal("b").unwrap().unwrap().to_string(), "0.08");
        assert_eq!(f.decimal("c").unwrap().unwrap().to_string(), "-0.08");
        assert_eq!(f.decimal("d").unwrap().unwrap().to_string(), "0.1");
        assert_eq!(f.decimal("e").unwrap(), None);
        assert_eq!(f.decimal("f").unwrap(), None);
        assert_eq!(f.decimal("zz").unwrap(), None);
        assert_eq!(
            f.decimal("g").unwrap().unwrap().to_string(),
            "12345678901234.5678"
        );
        assert_eq!(f.decimal("h").unwrap().unwrap().to_string(), "1200.50");
    }

    /// Found by the fuzzing proptests (`connectors/src/fuzzing.rs`): a webhook whose money
    /// had more than 4 non-zero decimal places parsed, then failed the Avro encoding (500,
    /// retried by the sender for ever).
    #[test]
    fn money_that_decimal_18_4_cannot_hold_is_refused_naming_the_field() {
        let r = raw(
            r#"{"a": "0.000000000000000000000000001", "b": 12.34567, "c": "1e15", "d": "1.50000"}"#,
        );
        let c = ctx();
        let f = Fields::parse(&r, &c).unwrap();
        for field in ["a", "b", "c"] {
            let e = f.decimal(field).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.reason),
                (field, "invalid_value"),
                "{e}"
            );
            assert!(e.detail.contains("does not fit decimal(18,4)"), "{e}");
        }
        // trailing zeros rescale exactly: kept
        assert_eq!(f.decimal("d").unwrap().unwrap().to_string(), "1.50000");
    }

    /// Invoca's `*_localized` money follows the account's locale: `"25,50"` used to become
    /// 2550 (the comma was taken for a thousands separator).
    #[test]
    fn localized_money_with_decimal_commas() {
        let d = |s: &str| parse_decimal(s).map(|d| d.to_string());
        assert_eq!(d("25,50").as_deref(), Some("25.50"));
        assert_eq!(d("0,5").as_deref(), Some("0.5"));
        assert_eq!(d("1.234,50").as_deref(), Some("1234.50"));
        assert_eq!(d("1 234,50").as_deref(), Some("1234.50"));
        assert_eq!(d("€25,50").as_deref(), Some("25.50"));
        assert_eq!(d("-25,50").as_deref(), Some("-25.50"));
        assert_eq!(d("1,200").as_deref(), Some("1200"));
        assert_eq!(d("1,200,300.25").as_deref(), Some("1200300.25"));
        assert_eq!(d("$1,200.50").as_deref(), Some("1200.50"));
        assert_eq!(d("1'234.50").as_deref(), Some("1234.50"));
        assert_eq!(d("12.50").as_deref(), Some("12.50"));
        assert_eq!(d(","), None);
    }

    #[test]
    fn bad_values_name_the_field() {
        let c = ctx();
        let r = raw(r#"{"revenue": "lots", "n": [1]}"#);
        let f = Fields::parse(&r, &c).unwrap();
        let e = f.decimal("revenue").unwrap_err();
        assert_eq!((e.field.as_str(), e.reason), ("revenue", "invalid_value"));
        assert_eq!(f.int("n").unwrap_err().reason, "invalid_type");
    }

    #[test]
    fn phone_numbers_become_e164() {
        let us = rlibphonenumber::enums::Region::US;
        assert_eq!(to_e164("866-555-1234", us), "+18665551234");
        assert_eq!(to_e164("(301) 523-6555", us), "+13015236555");
        assert_eq!(to_e164("+13015236555", us), "+13015236555");
        assert_eq!(to_e164("13015236555", us), "+13015236555");
        assert_eq!(to_e164("+44 20 7946 0958", us), "+442079460958");
        assert_eq!(to_e164("anonymous", us), "anonymous");
    }

    /// Found by the page fuzz targets: a provider time with more than six fractional digits
    /// mapped to a record that changed through Avro's timestamp-micros.
    #[test]
    fn timestamps_are_truncated_to_microseconds() {
        let t = parse_timestamp("2025-12-30T00:16:21.0222222222222Z", chrono_tz::UTC).unwrap();
        assert_eq!(t.to_rfc3339(), "2025-12-30T00:16:21.022222+00:00");
        let t = parse_timestamp("2025-12-31 18:46:19.4222222229 -0500", chrono_tz::UTC).unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 422_222_000);
    }

    #[test]
    fn timestamps_with_offsets_and_local_forms() {
        let utc = chrono_tz::UTC;
        let t = parse_timestamp("2023-12-11T11:49:32.495-05:00", utc).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-12-11T16:49:32.495+00:00");
        let t = parse_timestamp("2016-01-01 12:25:15 -0500", utc).unwrap();
        assert_eq!(t.to_rfc3339(), "2016-01-01T17:25:15+00:00");
        let t = parse_timestamp("2024-11-04T16:52:18.034Z", utc).unwrap();
        assert_eq!(t.timestamp_micros(), 1_730_739_138_034_000);
        let ny = chrono_tz::America::New_York;
        let t = parse_timestamp("2024-01-02 10:00:00", ny).unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-02T15:00:00+00:00");
    }

    #[test]
    fn status_words() {
        assert_eq!(normalize_status("finished"), CallStatus::Completed);
        assert_eq!(normalize_status("No-Answer"), CallStatus::NoAnswer);
        assert_eq!(normalize_status("busy"), CallStatus::Busy);
        assert_eq!(normalize_status("in progress"), CallStatus::InProgress);
        assert_eq!(normalize_status("weird"), CallStatus::Unknown);
    }
}
