//! Fast, allocation-light formatting of the values providers put in their JSON: timestamps
//! in several styles, money, phone numbers and ids.

use rust_decimal::Decimal;

/// Civil date and time of an epoch-milliseconds instant shifted by `offset_minutes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Civil {
    pub(crate) fn from_millis(ms: i64, offset_minutes: i32) -> Civil {
        let local_ms = ms + i64::from(offset_minutes) * 60_000;
        let days = local_ms.div_euclid(86_400_000);
        let ms_of_day = local_ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        Civil {
            year,
            month,
            day,
            hour: (secs / 3600) as u32,
            minute: (secs / 60 % 60) as u32,
            second: (secs % 60) as u32,
            millis: (ms_of_day % 1000) as u32,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn push_digits(out: &mut String, value: u64, width: usize) {
    let mut buffer = [b'0'; 20];
    let mut remaining = value;
    let mut index = buffer.len();
    while remaining > 0 || buffer.len() - index < width {
        index -= 1;
        buffer[index] = b'0' + (remaining % 10) as u8;
        remaining /= 10;
    }
    for &byte in &buffer[index..] {
        out.push(char::from(byte));
    }
}

fn push_date(out: &mut String, civil: &Civil) {
    if civil.year < 0 {
        out.push('-');
    }
    push_digits(out, civil.year.unsigned_abs(), 4);
    out.push('-');
    push_digits(out, u64::from(civil.month), 2);
    out.push('-');
    push_digits(out, u64::from(civil.day), 2);
}

fn push_time(out: &mut String, civil: &Civil) {
    push_digits(out, u64::from(civil.hour), 2);
    out.push(':');
    push_digits(out, u64::from(civil.minute), 2);
    out.push(':');
    push_digits(out, u64::from(civil.second), 2);
}

fn push_offset(out: &mut String, offset_minutes: i32, with_colon: bool) {
    out.push(if offset_minutes < 0 { '-' } else { '+' });
    let magnitude = offset_minutes.unsigned_abs();
    push_digits(out, u64::from(magnitude / 60), 2);
    if with_colon {
        out.push(':');
    }
    push_digits(out, u64::from(magnitude % 60), 2);
}

/// `2024-11-04T16:52:18.034Z`
pub(crate) fn iso_utc_millis(ms: i64) -> String {
    let civil = Civil::from_millis(ms, 0);
    let mut out = String::with_capacity(24);
    push_date(&mut out, &civil);
    out.push('T');
    push_time(&mut out, &civil);
    out.push('.');
    push_digits(&mut out, u64::from(civil.millis), 3);
    out.push('Z');
    out
}

/// `2023-12-11T11:49:32.495-05:00` (with `with_millis`) or `2018-02-19T13:41:00-05:00`.
pub(crate) fn iso_local(ms: i64, offset_minutes: i32, with_millis: bool) -> String {
    let civil = Civil::from_millis(ms, offset_minutes);
    let mut out = String::with_capacity(29);
    push_date(&mut out, &civil);
    out.push('T');
    push_time(&mut out, &civil);
    if with_millis {
        out.push('.');
        push_digits(&mut out, u64::from(civil.millis), 3);
    }
    push_offset(&mut out, offset_minutes, true);
    out
}

/// `2024-11-04 11:52:18 -0500`
pub(crate) fn spaced_local(ms: i64, offset_minutes: i32) -> String {
    let civil = Civil::from_millis(ms, offset_minutes);
    let mut out = String::with_capacity(25);
    push_date(&mut out, &civil);
    out.push(' ');
    push_time(&mut out, &civil);
    out.push(' ');
    push_offset(&mut out, offset_minutes, false);
    out
}

/// Money in cents as a decimal string: `12.50`, `-0.08`.
pub(crate) fn money_string(cents: i64) -> String {
    let mut out = String::with_capacity(12);
    if cents < 0 {
        out.push('-');
    }
    let magnitude = cents.unsigned_abs();
    push_digits(&mut out, magnitude / 100, 1);
    out.push('.');
    push_digits(&mut out, magnitude % 100, 2);
    out
}

/// Money in cents in a locale's style: `12.50`, or `12,50` with a decimal comma.
pub(crate) fn money_localized(cents: i64, decimal_comma: bool) -> String {
    let text = money_string(cents);
    if decimal_comma {
        text.replace('.', ",")
    } else {
        text
    }
}

/// Money in cents as a JSON number; prints as the shortest exact decimal (`12.5`).
pub(crate) fn money_number(cents: i64) -> f64 {
    cents as f64 / 100.0
}

pub(crate) fn money_decimal(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// `+1AAAEEELLLL` from a ten-digit NANP number.
pub(crate) fn e164(national: u64) -> String {
    let mut out = String::with_capacity(12);
    out.push_str("+1");
    push_digits(&mut out, national, 10);
    out
}

/// `AAA-EEE-LLLL` (Invoca's style).
pub(crate) fn dashed(national: u64) -> String {
    let mut out = String::with_capacity(12);
    push_digits(&mut out, national / 10_000_000, 3);
    out.push('-');
    push_digits(&mut out, national / 10_000 % 1000, 3);
    out.push('-');
    push_digits(&mut out, national % 10_000, 4);
    out
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// `digits` hex digits of `value` (most significant first).
pub(crate) fn push_hex(out: &mut String, value: u64, digits: u32, upper: bool) {
    let table = if upper { HEX_UPPER } else { HEX_LOWER };
    for position in (0..digits).rev() {
        let nibble = if position >= 16 {
            0
        } else {
            (value >> (position * 4)) & 0xF
        };
        out.push(char::from(table[nibble as usize]));
    }
}

/// A version-4-shaped UUID from two random words.
pub(crate) fn uuid(high: u64, low: u64) -> String {
    let mut out = String::with_capacity(36);
    push_hex(&mut out, high >> 32, 8, false);
    out.push('-');
    push_hex(&mut out, high >> 16, 4, false);
    out.push_str("-4");
    push_hex(&mut out, high, 3, false);
    out.push('-');
    push_hex(&mut out, 0x8 | ((low >> 60) & 0x3), 1, false);
    push_hex(&mut out, low >> 48, 3, false);
    out.push('-');
    push_hex(&mut out, low, 12, false);
    out
}

/// A prefixed opaque id: `prefix` then 32 lowercase hex digits.
pub(crate) fn prefixed_hex(prefix: &str, high: u64, low: u64) -> String {
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    push_hex(&mut out, high, 16, false);
    push_hex(&mut out, low, 16, false);
    out
}

/// A timestamp in the same style that no parser accepts: month 13, day 45.
pub(crate) fn garbled(mut timestamp: String) -> String {
    if timestamp.len() >= 10 && timestamp.is_char_boundary(5) && timestamp.is_char_boundary(10) {
        timestamp.replace_range(5..10, "13-45");
    }
    timestamp
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, FixedOffset, TimeZone, Utc};

    #[test]
    fn timestamps_match_chrono() {
        for ms in [0i64, 1_612_368_427_115, 1_768_478_400_123, 951_782_400_000] {
            let utc: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single().unwrap();
            assert_eq!(
                iso_utc_millis(ms),
                utc.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
            );
            let zone = FixedOffset::west_opt(5 * 3600).unwrap();
            let local = utc.with_timezone(&zone);
            assert_eq!(
                iso_local(ms, -300, true),
                local.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
            );
            assert_eq!(
                spaced_local(ms, -300),
                local.format("%Y-%m-%d %H:%M:%S %z").to_string()
            );
            let days = ms.div_euclid(86_400_000);
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn money_and_phones() {
        assert_eq!(money_string(1250), "12.50");
        assert_eq!(money_string(-8), "-0.08");
        assert_eq!(money_string(0), "0.00");
        assert_eq!(serde_json::to_string(&money_number(1250)).unwrap(), "12.5");
        assert_eq!(serde_json::to_string(&money_number(7)).unwrap(), "0.07");
        assert_eq!(e164(3015236555), "+13015236555");
        assert_eq!(dashed(8665551234), "866-555-1234");
        assert_eq!(uuid(u64::MAX, 0).len(), 36);
    }
}
