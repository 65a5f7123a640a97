//! Date-time arguments: `--to-datetime`, `--from-datetime`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

use super::OpsError;

/// Parses a date-time argument: RFC 3339 (`2024-05-01T12:00:00Z`, with an offset), a naive
/// `YYYY-MM-DDTHH:MM:SS[.fff]` (or with a space) taken as UTC, like Kafka's own
/// `kafka-consumer-groups --to-datetime`, or a date `YYYY-MM-DD` (midnight UTC).
pub fn parse_datetime(argument: &'static str, input: &str) -> Result<DateTime<Utc>, OpsError> {
    let s = input.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(Utc.from_utc_datetime(&naive));
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return Ok(Utc.from_utc_datetime(&midnight));
        }
    }
    Err(OpsError::BadDateTime {
        argument,
        input: input.to_string(),
    })
}

/// clap value parser for date-time arguments.
pub fn datetime_arg(input: &str) -> Result<DateTime<Utc>, String> {
    parse_datetime("date-time", input).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc3339_naive_and_dates() {
        let z = parse_datetime("--to-datetime", "2024-05-01T12:00:00Z").unwrap();
        assert_eq!(z.timestamp(), 1_714_564_800);
        let off = parse_datetime("--to-datetime", "2024-05-01T14:00:00+02:00").unwrap();
        assert_eq!(off, z);
        let naive = parse_datetime("--to-datetime", "2024-05-01T12:00:00.000").unwrap();
        assert_eq!(naive, z);
        let date = parse_datetime("--to-datetime", "2024-05-01").unwrap();
        assert_eq!(date.timestamp(), 1_714_521_600);
    }

    #[test]
    fn rejects_garbage_naming_the_argument() {
        let e = parse_datetime("--to-datetime", "yesterday").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--to-datetime") && msg.contains("yesterday"),
            "{msg}"
        );
    }
}
