//! Reading the values a provider's webhook template renders to: times in the formats the
//! providers render them (ISO 8601, epoch seconds or milliseconds, Ringba's
//! `11/26/2025 9:48:06 PM`), durations, money, booleans; and the version rule of webhook
//! records.

use chrono::{DateTime, NaiveDateTime, SubsecRound, TimeZone, Utc};
use rust_decimal::Decimal;

use crate::mapping::parse_timestamp;

/// A rendered time. Tried in order: epoch seconds (10 digits) or milliseconds (13 digits);
/// ISO 8601 / RFC 3339 with or without offset and the `2016-01-01 12:25:15 -0500` form
/// ([`parse_timestamp`]); US month/day/year with a 12-hour clock (`11/26/2025 9:48:06 PM`,
/// Ringba's tokens) or a 24-hour one. Times without an offset are read in `tz`.
pub fn parse_time(text: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = t.parse().ok()?;
        return match t.len() {
            9..=11 => Utc.timestamp_opt(n, 0).single(),
            12..=14 => Utc.timestamp_millis_opt(n).single(),
            _ => None,
        };
    }
    if let Some(time) = parse_timestamp(t, tz) {
        return Some(time);
    }
    const US: [&str; 4] = [
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %I:%M %p",
        "%m/%d/%Y %H:%M:%S",
        "%m/%d/%Y %H:%M",
    ];
    let upper = t.to_ascii_uppercase();
    US.iter().find_map(|f| {
        NaiveDateTime::parse_from_str(&upper, f)
            .ok()
            .and_then(|n| tz.from_local_datetime(&n).earliest())
            .map(|local| local.with_timezone(&Utc).trunc_subsecs(6))
    })
}

/// A rendered duration in whole seconds: `125`, `125.0`, `2:05` or `0:02:05`.
pub fn parse_duration(text: &str) -> Option<i32> {
    let t = text.trim();
    if t.contains(':') {
        let mut total: i64 = 0;
        let parts: Vec<&str> = t.split(':').collect();
        if parts.len() > 3 {
            return None;
        }
        for part in parts {
            let n: i64 = part.trim().parse().ok()?;
            if n < 0 {
                return None;
            }
            total = total.checked_mul(60)?.checked_add(n)?;
        }
        return i32::try_from(total).ok();
    }
    if let Ok(n) = t.parse::<i64>() {
        return i32::try_from(n).ok();
    }
    let d: Decimal = t.parse().ok()?;
    if d.fract().is_zero() {
        i32::try_from(i64::try_from(d).ok()?).ok()
    } else {
        None
    }
}

/// A rendered boolean: `true`/`false` in any case, `1`/`0`, `yes`/`no`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "t" => Some(true),
        "false" | "0" | "no" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// The version of a webhook record (µs): the newest of the payload's own times (its update,
/// end, conversion or send time), never later than the receipt time — a payload time from
/// the future (a skewed clock) must not outrank the provider's later updates; the receipt
/// time only when the payload carries no time at all.
pub fn webhook_version(
    payload_times: impl IntoIterator<Item = DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> i64 {
    payload_times
        .into_iter()
        .max()
        .map(|t| t.min(received_at))
        .unwrap_or(received_at)
        .timestamp_micros()
}

/// A value that is still a template token (`[Call:InboundCallId]`, `{duration}`): the
/// provider had no value for it and left the token in place.
pub fn is_unrendered_token(text: &str) -> bool {
    let t = text.trim();
    let bracketed =
        (t.starts_with('[') && t.ends_with(']')) || (t.starts_with('{') && t.ends_with('}'));
    bracketed
        && t.len() > 2
        && t[1..t.len() - 1]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | ' ' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_rendered_form() {
        let utc = chrono_tz::UTC;
        let ny = chrono_tz::America::New_York;
        let t = |s: &str, tz| parse_time(s, tz).map(|t| t.to_rfc3339());
        assert_eq!(
            t("11/26/2025 9:48:06 PM", ny).as_deref(),
            Some("2025-11-27T02:48:06+00:00"),
            "Ringba's token form, read in the account's zone"
        );
        assert_eq!(
            t("11/26/2025 09:48:06 am", utc).as_deref(),
            Some("2025-11-26T09:48:06+00:00")
        );
        assert_eq!(
            t("1612368427115", utc).as_deref(),
            Some("2021-02-03T16:07:07.115+00:00")
        );
        assert_eq!(
            t("1612368427", utc).as_deref(),
            Some("2021-02-03T16:07:07+00:00")
        );
        assert_eq!(
            t("2024-11-04T16:52:18.034Z", utc).as_deref(),
            Some("2024-11-04T16:52:18.034+00:00")
        );
        assert_eq!(
            t("2016-01-01 12:25:15 -0500", utc).as_deref(),
            Some("2016-01-01T17:25:15+00:00")
        );
        assert_eq!(t("yesterday", utc), None);
        assert_eq!(t("13/45/2025 9:48:06 PM", utc), None);
    }

    #[test]
    fn durations_booleans_and_tokens() {
        assert_eq!(parse_duration("125"), Some(125));
        assert_eq!(parse_duration("2:05"), Some(125));
        assert_eq!(parse_duration("0:02:05"), Some(125));
        assert_eq!(parse_duration("125.0"), Some(125));
        assert_eq!(parse_duration("1.5"), None);
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("no"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
        assert!(is_unrendered_token("[Call:InboundCallId]"));
        assert!(is_unrendered_token("{call_result_description_detail}"));
        assert!(!is_unrendered_token("[]"));
        assert!(!is_unrendered_token("{\"a\": 1}"));
    }

    #[test]
    fn the_version_is_the_newest_payload_time_never_past_receipt() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let received = at("2026-01-02T00:00:10Z");
        let start = at("2026-01-02T00:00:00Z");
        let end = at("2026-01-02T00:00:05Z");
        assert_eq!(
            webhook_version([start, end], received),
            end.timestamp_micros()
        );
        let skewed = at("2026-01-02T00:01:00Z");
        assert_eq!(
            webhook_version([start, skewed], received),
            received.timestamp_micros()
        );
        assert_eq!(webhook_version([], received), received.timestamp_micros());
    }
}
