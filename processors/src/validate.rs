//! The validation rules of the processor. A record either passes (normalized in place) or
//! is rejected with a machine reason code, the field at fault and a message for people.
//!
//! Rules, in the order they are checked:
//! 1. the Kafka key is present and equals `{provider}:{account_id}:{call_id}`;
//! 2. required fields: `account_id` and `call_id` are not blank, `version` is positive;
//! 3. timestamps are ordered (`started_at <= answered_at <= ended_at`) and none is later
//!    than now plus the allowed skew;
//! 4. durations are not negative;
//! 5. money fits `decimal(18,4)`: at most 4 decimals, at most 14 integer digits;
//! 6. the currency is an ISO 4217 code (normalized to upper case);
//! 7. phone numbers normalize to E.164;
//! 8. the status is mapped: a record with status `unknown` and a provider status is given
//!    the mapped status; a provider status no mapping knows is rejected, so a new provider
//!    status surfaces in the DLQ (and can be redriven) instead of being silently `unknown`.
//!    A partial record that carries the provider status then carries the mapped status too.
//!
//! A partial record is checked on the fields it carries (the others are placeholders that
//! pass every rule: no value, `started_at` at the epoch).

use std::borrow::Cow;
use std::fmt;

use callsync_schemas::{CallField, CallKey, CallRecord, CallStatus, Provider};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::config::{ConfigError, PhoneCheck, ProcessorConfig};
use crate::normalize::{map_provider_status, normalize_currency, normalize_phone};
use crate::phone_memo::{PhoneMemo, PhoneMemoHit};

/// Why a record was rejected: the value of the `callsync.error.reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The value's bytes are not a call record in any accepted encoding.
    Undecodable,
    /// A record that passed validation could not be encoded for `calls` (a bug, not bad data).
    Unencodable,
    MissingKey,
    KeyMismatch,
    MissingField,
    InvalidVersion,
    TimestampsOutOfOrder,
    TimestampInFuture,
    NegativeDuration,
    MoneyPrecision,
    MoneyOutOfRange,
    UnknownCurrency,
    InvalidPhoneNumber,
    UnmappedStatus,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
        RejectReason::Undecodable,
        RejectReason::Unencodable,
        RejectReason::MissingKey,
        RejectReason::KeyMismatch,
        RejectReason::MissingField,
        RejectReason::InvalidVersion,
        RejectReason::TimestampsOutOfOrder,
        RejectReason::TimestampInFuture,
        RejectReason::NegativeDuration,
        RejectReason::MoneyPrecision,
        RejectReason::MoneyOutOfRange,
        RejectReason::UnknownCurrency,
        RejectReason::InvalidPhoneNumber,
        RejectReason::UnmappedStatus,
    ];

    /// The stable machine code written to the DLQ header.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::Undecodable => "undecodable",
            RejectReason::Unencodable => "unencodable",
            RejectReason::MissingKey => "missing_key",
            RejectReason::KeyMismatch => "key_mismatch",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidVersion => "invalid_version",
            RejectReason::TimestampsOutOfOrder => "timestamps_out_of_order",
            RejectReason::TimestampInFuture => "timestamp_in_future",
            RejectReason::NegativeDuration => "negative_duration",
            RejectReason::MoneyPrecision => "money_precision",
            RejectReason::MoneyOutOfRange => "money_out_of_range",
            RejectReason::UnknownCurrency => "unknown_currency",
            RejectReason::InvalidPhoneNumber => "invalid_phone_number",
            RejectReason::UnmappedStatus => "unmapped_status",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A record the processor will not pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} in {field}: {message}")]
pub struct Rejection {
    pub reason: RejectReason,
    /// The field at fault (`key` for the Kafka key; for undecodable bytes the field the
    /// decoder stopped in, else `value`).
    pub field: Cow<'static, str>,
    pub message: String,
}

impl Rejection {
    pub fn new(
        reason: RejectReason,
        field: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Rejection {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Money bounds of `decimal(18,4)`: 18 digits of which 4 decimals.
const MONEY_SCALE: u32 = 4;
const MONEY_MAX_ABS_EXCLUSIVE: i64 = 100_000_000_000_000; // 10^14

/// Checks and normalizes records with the processor's settings.
#[derive(Debug, Clone)]
pub struct RecordValidator {
    phone_region: rlibphonenumber::enums::Region,
    phone_check: PhoneCheck,
    max_future_skew: chrono::Duration,
    phone_memo: PhoneMemo,
}

impl RecordValidator {
    pub fn new(config: &ProcessorConfig) -> Result<Self, ConfigError> {
        config.check()?;
        let phone_region = crate::normalize::phone_region(&config.default_phone_region)
            .ok_or_else(|| ConfigError {
                key: "default_phone_region",
                value: config.default_phone_region.clone(),
                reason: "not an ISO 3166 alpha-2 region known to libphonenumber",
            })?;
        Ok(RecordValidator {
            phone_region,
            phone_check: config.phone_check,
            max_future_skew: chrono::Duration::seconds(
                i64::try_from(config.max_future_skew_secs).unwrap_or(i64::MAX / 1_000_000),
            ),
            phone_memo: PhoneMemo::default(),
        })
    }

    /// Validate `record` read with Kafka key `key` at time `now`, normalizing it in place.
    /// Returns whether normalization changed the record.
    pub fn check(
        &mut self,
        record: &mut CallRecord,
        key: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<bool, Rejection> {
        self.check_key(record.provider, &record.account_id, &record.call_id, key)?;
        check_required(record)?;
        self.check_times(record, now)?;
        check_durations(record)?;
        check_money(record.revenue.as_ref(), "revenue")?;
        check_money(record.payout.as_ref(), "payout")?;
        let mut changed = false;
        if let Some(currency) = record.currency.as_deref().filter(|c| !is_known_currency(c)) {
            let code = normalize_currency(currency).map_err(|e| {
                Rejection::new(RejectReason::UnknownCurrency, "currency", e.to_string())
            })?;
            if code != *currency {
                record.currency = Some(code);
                changed = true;
            }
        }
        changed |= self.normalize_phone_field(&mut record.caller_number, "caller_number")?;
        changed |= self.normalize_phone_field(&mut record.tracking_number, "tracking_number")?;
        changed |=
            self.normalize_phone_field(&mut record.destination_number, "destination_number")?;
        if record.status == CallStatus::Unknown {
            if let Some(provider_status) = &record.provider_status {
                match map_provider_status(provider_status) {
                    Some(CallStatus::Unknown) => {}
                    Some(status) => {
                        record.status = status;
                        // a partial record that reports the provider's status reports ours
                        if let Some(set) = record.present_fields.as_mut() {
                            set.insert(CallField::Status);
                        }
                        changed = true;
                    }
                    None => {
                        return Err(Rejection::new(
                            RejectReason::UnmappedStatus,
                            "provider_status",
                            format!("provider status {provider_status:?} maps to no call status"),
                        ))
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Rule 1 alone: the Kafka key is present and is the record's key.
    pub fn check_key(
        &self,
        provider: Provider,
        account_id: &str,
        call_id: &str,
        key: Option<&[u8]>,
    ) -> Result<(), Rejection> {
        let Some(key) = key else {
            return Err(Rejection::new(
                RejectReason::MissingKey,
                "key",
                "the Kafka message has no key (expected {provider}:{account_id}:{call_id})",
            ));
        };
        if !key_matches(key, provider, account_id, call_id) {
            let expected = CallKey::new(provider, account_id, call_id);
            return Err(Rejection::new(
                RejectReason::KeyMismatch,
                "key",
                format!(
                    "the Kafka key {:?} differs from the record's key {:?}",
                    String::from_utf8_lossy(key),
                    expected.as_str()
                ),
            ));
        }
        Ok(())
    }

    fn check_times(&self, record: &CallRecord, now: DateTime<Utc>) -> Result<(), Rejection> {
        let latest = now + self.max_future_skew;
        let times = [
            ("started_at", Some(record.started_at)),
            ("answered_at", record.answered_at),
            ("ended_at", record.ended_at),
            ("provider_updated_at", record.provider_updated_at),
        ];
        for (field, t) in times {
            if let Some(t) = t {
                if t > latest {
                    return Err(Rejection::new(
                        RejectReason::TimestampInFuture,
                        field,
                        format!("{field} {t} is later than now ({now}) plus the allowed skew"),
                    ));
                }
            }
        }
        if let Some(answered) = record.answered_at {
            if answered < record.started_at {
                return Err(Rejection::new(
                    RejectReason::TimestampsOutOfOrder,
                    "answered_at",
                    format!(
                        "answered_at {answered} is before started_at {}",
                        record.started_at
                    ),
                ));
            }
        }
        if let Some(ended) = record.ended_at {
            let floor = record.answered_at.unwrap_or(record.started_at);
            if ended < floor {
                return Err(Rejection::new(
                    RejectReason::TimestampsOutOfOrder,
                    "ended_at",
                    format!(
                        "ended_at {ended} is before the call started or was answered ({floor})"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn normalize_phone_field(
        &mut self,
        value: &mut Option<String>,
        field: &'static str,
    ) -> Result<bool, Rejection> {
        let Some(input) = value.as_deref() else {
            return Ok(false);
        };
        let normalized = match self.phone_memo.get(input) {
            PhoneMemoHit::E164(e164) if e164 == input => return Ok(false),
            PhoneMemoHit::E164(e164) => Some(e164.to_string()),
            PhoneMemoHit::Unknown => {
                let normalized = normalize_phone(input, self.phone_region, self.phone_check)
                    .map_err(|e| {
                        Rejection::new(RejectReason::InvalidPhoneNumber, field, e.to_string())
                    })?;
                if let Some(e164) = &normalized {
                    self.phone_memo.remember(input, e164);
                    if e164 == input {
                        return Ok(false);
                    }
                }
                normalized
            }
        };
        *value = normalized;
        Ok(true)
    }
}

/// Whether `code` is already a normalized ISO 4217 code (the common case: no allocation).
fn is_known_currency(code: &str) -> bool {
    code.len() == 3
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && iso_currency::Currency::from_code(code).is_some()
}

fn key_matches(key: &[u8], provider: Provider, account_id: &str, call_id: &str) -> bool {
    let parts = [
        provider.as_str().as_bytes(),
        account_id.as_bytes(),
        call_id.as_bytes(),
    ];
    let expected_len = parts.iter().map(|p| p.len()).sum::<usize>() + 2;
    if key.len() != expected_len {
        return false;
    }
    let mut rest = key;
    for (i, part) in parts.iter().enumerate() {
        let Some(tail) = rest.strip_prefix(*part) else {
            return false;
        };
        rest = tail;
        if i < 2 {
            let Some(tail) = rest.strip_prefix(b":") else {
                return false;
            };
            rest = tail;
        }
    }
    rest.is_empty()
}

fn check_required(record: &CallRecord) -> Result<(), Rejection> {
    for (field, value) in [
        ("account_id", &record.account_id),
        ("call_id", &record.call_id),
    ] {
        if value.trim().is_empty() {
            return Err(Rejection::new(
                RejectReason::MissingField,
                field,
                format!("{field} is blank"),
            ));
        }
    }
    if record.version <= 0 {
        return Err(Rejection::new(
            RejectReason::InvalidVersion,
            "version",
            format!("version {} is not positive", record.version),
        ));
    }
    Ok(())
}

fn check_durations(record: &CallRecord) -> Result<(), Rejection> {
    for (field, value) in [
        ("duration_secs", record.duration_secs),
        ("billable_secs", record.billable_secs),
    ] {
        if let Some(v) = value {
            if v < 0 {
                return Err(Rejection::new(
                    RejectReason::NegativeDuration,
                    field,
                    format!("{field} is {v}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_money(value: Option<&Decimal>, field: &'static str) -> Result<(), Rejection> {
    let Some(d) = value else { return Ok(()) };
    if d.scale() > MONEY_SCALE && d.round_dp(MONEY_SCALE) != *d {
        return Err(Rejection::new(
            RejectReason::MoneyPrecision,
            field,
            format!("{field} {d} has more than {MONEY_SCALE} decimals (decimal(18,4))"),
        ));
    }
    if d.abs() >= Decimal::from(MONEY_MAX_ABS_EXCLUSIVE) {
        return Err(Rejection::new(
            RejectReason::MoneyOutOfRange,
            field,
            format!("{field} {d} does not fit decimal(18,4) (at most 14 integer digits)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{bad_record_corpus, call_record};

    fn validator() -> RecordValidator {
        RecordValidator::new(&ProcessorConfig::default()).unwrap()
    }

    #[test]
    fn a_good_record_passes_unchanged() {
        let mut r = call_record(1, 100);
        let before = r.clone();
        let key = r.key();
        assert!(!validator()
            .check(&mut r, Some(key.as_bytes()), Utc::now())
            .unwrap());
        assert_eq!(r, before);
    }

    #[test]
    fn a_partial_record_passes_on_what_it_carries_and_gains_the_mapped_status() {
        let mut r = call_record(1, 100);
        r.provider_status = Some("NO ANSWER".into());
        let mut r = r.into_partial(
            callsync_schemas::FieldSet::EMPTY
                .with(CallField::Revenue)
                .with(CallField::ProviderStatus),
        );
        let key = r.key();
        assert!(validator()
            .check(&mut r, Some(key.as_bytes()), Utc::now())
            .unwrap());
        assert_eq!(r.status, CallStatus::NoAnswer);
        assert!(r.carries(CallField::Status) && r.carries(CallField::Revenue));
        assert!(!r.carries(CallField::StartedAt));
    }

    #[test]
    fn normalization_rewrites_phones_currency_and_status() {
        let mut r = call_record(1, 100);
        r.caller_number = Some("(415) 555-2671".into());
        r.currency = Some("usd".into());
        r.status = CallStatus::Unknown;
        r.provider_status = Some("NO ANSWER".into());
        let key = r.key();
        assert!(validator()
            .check(&mut r, Some(key.as_bytes()), Utc::now())
            .unwrap());
        assert_eq!(r.caller_number.as_deref(), Some("+14155552671"));
        assert_eq!(r.currency.as_deref(), Some("USD"));
        assert_eq!(r.status, CallStatus::NoAnswer);
    }

    #[test]
    fn each_bad_record_of_the_corpus_fails_its_own_rule() {
        let mut v = validator();
        let now = Utc::now();
        let corpus = bad_record_corpus(now);
        // every rule but decoding (tested on the processor's decode path) has a case
        let covered: std::collections::HashSet<_> = corpus.iter().map(|c| c.reason).collect();
        for reason in RejectReason::ALL {
            let not_a_rule = matches!(
                reason,
                RejectReason::Undecodable | RejectReason::Unencodable
            );
            assert!(
                not_a_rule || covered.contains(&reason),
                "no case for {reason}"
            );
        }
        for case in corpus {
            let mut record = case.record.clone();
            let err = v
                .check(&mut record, case.key.as_deref(), now)
                .expect_err(case.name);
            assert_eq!(
                (err.reason, &*err.field),
                (case.reason, case.field),
                "{}: {err}",
                case.name
            );
            assert!(!err.message.is_empty());
        }
    }
}
