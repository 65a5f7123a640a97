//! Normalizers of single values: phone numbers to E.164, currency codes to
//! ISO 4217, provider call statuses to [`CallStatus`].
//!
//! Each is a pure function; the rules that decide what is invalid live in
//! [`crate::validate`].

use callsync_schemas::CallStatus;
use rlibphonenumber::enums::Region;
use rlibphonenumber::{PhoneNumberFormat, PHONE_NUMBER_UTIL};

use crate::config::PhoneCheck;

/// Why a phone number could not be normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("{input:?} is not a phone number: {reason}")]
    Unparseable { input: String, reason: String },
    #[error("{input:?} parses as {e164} but is not a valid number of any numbering plan")]
    NotValid { input: String, e164: String },
}

/// Caller ids providers send for withheld or unknown numbers; they mean "no number", not a
/// malformed one.
const WITHHELD_MARKERS: [&str; 8] = [
    "anonymous",
    "restricted",
    "private",
    "unknown",
    "unavailable",
    "withheld",
    "blocked",
    "no caller id",
];

/// The libphonenumber region for an ISO 3166 alpha-2 code (`US`, `gb`), if the phone-number
/// metadata knows it (any two letters make a `Region`, only some have a numbering plan).
pub fn phone_region(code: &str) -> Option<Region> {
    let region = code.trim().parse::<Region>().ok()?;
    PHONE_NUMBER_UTIL
        .get_country_code_for_region(region)
        .map(|_| region)
}

/// Whether `input` is a North American number already written in E.164: `+1`, an area code
/// starting 2-9, then 9 digits. libphonenumber parses such a number to itself (country code 1,
/// a national number that cannot start with the national prefix `1`), so under
/// [`PhoneCheck::Parseable`] it is normalized as it stands and needs no parse. Most numbers of
/// the supported providers (US call tracking) have this shape.
pub fn is_canonical_nanp(input: &str) -> bool {
    let bytes = input.as_bytes();
    bytes.len() == 12
        && bytes.starts_with(b"+1")
        && (b'2'..=b'9').contains(&bytes[2])
        && bytes[3..].iter().all(u8::is_ascii_digit)
}

/// Normalize a phone number to E.164 (`+15551234567`).
///
/// Numbers without a country code are read in `default_region`. An empty string and the
/// markers providers use for withheld caller ids (`anonymous`, `restricted`, ...) give
/// `Ok(None)`. Extensions are dropped (E.164 has none).
pub fn normalize_phone(
    input: &str,
    default_region: Region,
    check: PhoneCheck,
) -> Result<Option<String>, PhoneError> {
    let trimmed = input.trim();
    if trimmed.is_empty()
        || WITHHELD_MARKERS
            .iter()
            .any(|m| trimmed.eq_ignore_ascii_case(m))
    {
        return Ok(None);
    }
    if check == PhoneCheck::Parseable && is_canonical_nanp(trimmed) {
        return Ok(Some(trimmed.to_string()));
    }
    let number = PHONE_NUMBER_UTIL
        .parse(trimmed, Some(default_region))
        .map_err(|e| PhoneError::Unparseable {
            input: input.to_string(),
            reason: e.to_string(),
        })?;
    let e164 = number.format_as(PhoneNumberFormat::E164).into_owned();
    match check {
        PhoneCheck::Valid if !number.is_valid() => Err(PhoneError::NotValid {
            input: input.to_string(),
            e164,
        }),
        PhoneCheck::Valid | PhoneCheck::Parseable => {
            // E.164 allows at most 15 digits after the '+'.
            let digits = e164.len().saturating_sub(1);
            if !(7..=15).contains(&digits) {
                return Err(PhoneError::Unparseable {
                    input: input.to_string(),
                    reason: format!("{digits} digits (E.164 numbers have 7 to 15)"),
                });
            }
            Ok(Some(e164))
        }
    }
}

/// A currency code that ISO 4217 does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ISO 4217 currency code")]
pub struct UnknownCurrency(pub String);

/// Normalize a currency code: trimmed, upper case, and known to ISO 4217.
pub fn normalize_currency(input: &str) -> Result<String, UnknownCurrency> {
    let code = input.trim().to_ascii_uppercase();
    match iso_currency::Currency::from_code(&code) {
        Some(currency) => Ok(currency.code().to_string()),
        None => Err(UnknownCurrency(input.to_string())),
    }
}

/// Map a provider's own status text to a [`CallStatus`].
///
/// Case, surrounding space and the separators `-`, `_` and ` ` are ignored, so `NO ANSWER`,
/// `no-answer` and `no_answer` are the same. Returns `None` for text no provider is known to
/// send.
pub fn map_provider_status(provider_status: &str) -> Option<CallStatus> {
    let mut folded = String::with_capacity(provider_status.len());
    for c in provider_status.trim().chars() {
        match c {
            '-' | '_' | ' ' => {}
            c => folded.extend(c.to_lowercase()),
        }
    }
    let status = match folded.as_str() {
        "completed" | "complete" | "answered" | "connected" | "success" | "successful"
        | "finished" | "ended" | "converted" | "billable" => CallStatus::Completed,
        "inprogress" | "ringing" | "live" | "active" | "queued" | "initiated" | "started"
        | "ongoing" => CallStatus::InProgress,
        "noanswer" | "notanswered" | "unanswered" | "missed" | "abandoned" | "voicemail"
        | "noconnect" | "timeout" => CallStatus::NoAnswer,
        "busy" | "userbusy" => CallStatus::Busy,
        "failed" | "failure" | "error" | "rejected" | "canceled" | "cancelled" | "blocked"
        | "invalid" | "dropped" => CallStatus::Failed,
        "unknown" | "" => CallStatus::Unknown,
        _ => return None,
    };
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn us(input: &str) -> Result<Option<String>, PhoneError> {
        normalize_phone(input, Region::US, PhoneCheck::Valid)
    }

    /// The short cut for E.164 North American numbers gives what libphonenumber gives: every
    /// area code, with national numbers spread over the whole range, in every default region
    /// the short cut ignores.
    #[test]
    fn canonical_nanp_numbers_normalize_to_themselves_as_libphonenumber_says() {
        let mut checked = 0;
        for area in 200..1000u32 {
            for (i, region) in [Region::US, Region::GB, Region::DE].into_iter().enumerate() {
                let rest = (u64::from(area) * 7_919 + i as u64 * 1_000_003) % 10_000_000;
                let input = format!("+1{area}{rest:07}");
                assert!(is_canonical_nanp(&input), "{input}");
                let parsed = PHONE_NUMBER_UTIL.parse(&input, Some(region)).unwrap();
                let e164 = parsed.format_as(PhoneNumberFormat::E164).into_owned();
                assert_eq!(e164, input, "libphonenumber rewrites {input}");
                assert_eq!(
                    normalize_phone(&input, region, PhoneCheck::Parseable).unwrap(),
                    Some(input.clone())
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2_400);
        for not in [
            "+11234567890",
            "+1415555267",
            "+141555526712",
            "+1415555267a",
            " +14155552671",
            "+44207946095",
            "14155552671x",
        ] {
            assert!(!is_canonical_nanp(not), "{not}");
        }
    }

    #[test]
    fn phone_numbers_in_common_shapes_become_e164() {
        for input in [
            "+1 (415) 555-2671",
            "415-555-2671",
            "(415) 555 2671",
            "+14155552671",
            "1-415-555-2671",
            "tel:+1-415-555-2671",
        ] {
            assert_eq!(
                us(input).unwrap().as_deref(),
                Some("+14155552671"),
                "{input}"
            );
        }
        assert_eq!(
            us("+44 20 7946 0958").unwrap().as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalize_phone("020 7946 0958", Region::GB, PhoneCheck::Valid)
                .unwrap()
                .as_deref(),
            Some("+442079460958")
        );
    }

    #[test]
    fn only_regions_with_a_numbering_plan_are_phone_regions() {
        assert_eq!(phone_region("US"), Some(Region::US));
        assert_eq!(phone_region("gb"), Some(Region::GB));
        for code in ["XX", "QQ", "", "USA", "1"] {
            assert_eq!(phone_region(code), None, "{code}");
        }
    }

    #[test]
    fn withheld_caller_ids_are_no_number() {
        for input in ["", "  ", "Anonymous", "RESTRICTED", "private", "Unknown"] {
            assert_eq!(us(input).unwrap(), None, "{input}");
        }
    }

    #[test]
    fn garbage_and_invalid_numbers_are_errors_that_quote_the_input() {
        let err = us("call me maybe").unwrap_err();
        assert!(matches!(err, PhoneError::Unparseable { .. }), "{err:?}");
        assert!(err.to_string().contains("call me maybe"));
        // North American area codes never start with 1: parseable, not valid.
        assert!(matches!(
            us("+1 123 456 7890").unwrap_err(),
            PhoneError::NotValid { .. }
        ));
        assert!(normalize_phone("+1 123 456 7890", Region::US, PhoneCheck::Parseable).is_ok());
    }

    #[test]
    fn currencies_are_upper_case_iso_4217() {
        assert_eq!(normalize_currency(" usd ").unwrap(), "USD");
        assert_eq!(normalize_currency("EUR").unwrap(), "EUR");
        assert_eq!(
            normalize_currency("XYZ").unwrap_err(),
            UnknownCurrency("XYZ".into())
        );
        assert!(normalize_currency("").is_err());
    }

    #[test]
    fn provider_statuses_map_regardless_of_spelling() {
        assert_eq!(map_provider_status("NO ANSWER"), Some(CallStatus::NoAnswer));
        assert_eq!(map_provider_status("no-answer"), Some(CallStatus::NoAnswer));
        assert_eq!(
            map_provider_status("Completed"),
            Some(CallStatus::Completed)
        );
        assert_eq!(
            map_provider_status(" in_progress "),
            Some(CallStatus::InProgress)
        );
        assert_eq!(map_provider_status("busy"), Some(CallStatus::Busy));
        assert_eq!(map_provider_status("Canceled"), Some(CallStatus::Failed));
        assert_eq!(map_provider_status("teleported"), None);
    }

    proptest! {
        #[test]
        fn phone_normalization_never_panics_and_yields_e164(input in "\\PC{0,40}") {
            if let Ok(Some(e164)) = normalize_phone(&input, Region::US, PhoneCheck::Parseable) {
                prop_assert!(e164.starts_with('+'));
                prop_assert!(e164[1..].bytes().all(|b| b.is_ascii_digit()), "{}", e164);
                prop_assert!((8..=16).contains(&e164.len()), "{}", e164);
            }
        }

        #[test]
        fn phone_normalization_is_idempotent(national in "[2-9][0-8][0-9][2-9][0-9]{6}") {
            if let Ok(Some(first)) = normalize_phone(&national, Region::US, PhoneCheck::Parseable) {
                let second = normalize_phone(&first, Region::GB, PhoneCheck::Parseable).unwrap();
                prop_assert_eq!(Some(first), second);
            }
        }

        #[test]
        fn formatting_does_not_change_the_number(
            area in "[2-9][0-8][0-9]", exchange in "[2-9][0-9]{2}", line in "[0-9]{4}",
            style in 0usize..5,
        ) {
            let formatted = match style {
                0 => format!("{area}{exchange}{line}"),
                1 => format!("({area}) {exchange}-{line}"),
                2 => format!("+1 {area} {exchange} {line}"),
                3 => format!("1-{area}-{exchange}-{line}"),
                _ => format!("{area}.{exchange}.{line}"),
            };
            let plain = normalize_phone(&format!("{area}{exchange}{line}"), Region::US, PhoneCheck::Parseable);
            let styled = normalize_phone(&formatted, Region::US, PhoneCheck::Parseable);
            prop_assert_eq!(plain.ok(), styled.ok());
        }

        #[test]
        fn currency_normalization_accepts_exactly_iso_codes_in_any_case(code in "[a-zA-Z]{3}") {
            let upper = code.to_ascii_uppercase();
            let known = iso_currency::Currency::from_code(&upper).is_some();
            match normalize_currency(&code) {
                Ok(c) => { prop_assert!(known); prop_assert_eq!(c, upper); }
                Err(_) => prop_assert!(!known),
            }
        }

        #[test]
        fn status_mapping_ignores_case_and_separators(idx in 0usize..6, upper in any::<bool>(), sep in "[-_ ]") {
            let status = CallStatus::ALL[idx];
            let mut text = status.as_str().replace('_', &sep);
            if upper { text = text.to_uppercase(); }
            prop_assert_eq!(map_provider_status(&text), Some(status));
        }
    }
}
