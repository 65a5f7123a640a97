//! PostgreSQL's binary COPY format, written by hand for the staging table:
//! no text parsing on either side, and numbers, times and money go over as the
//! server stores them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Writes tuples of a binary COPY stream into a buffer.
#[derive(Debug, Default)]
pub struct BinaryCopyWriter {
    buf: Vec<u8>,
}

impl BinaryCopyWriter {
    /// A writer with the stream header already written.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(32));
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        BinaryCopyWriter { buf }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes written so far (send them as one COPY data message); the
    /// writer goes on with an empty buffer of the same capacity.
    pub fn take_chunk(&mut self) -> Vec<u8> {
        let capacity = self.buf.capacity();
        std::mem::replace(&mut self.buf, Vec::with_capacity(capacity))
    }

    /// Start a tuple of `fields` columns.
    pub fn tuple(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(b);
    }

    pub fn opt_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => self.bytes(b),
            None => self.null(),
        }
    }

    pub fn int8(&mut self, v: i64) {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn int4(&mut self, v: i32) {
        self.buf.extend_from_slice(&4i32.to_be_bytes());
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn opt_int4(&mut self, v: Option<i32>) {
        match v {
            Some(v) => self.int4(v),
            None => self.null(),
        }
    }

    pub fn opt_bool(&mut self, v: Option<bool>) {
        match v {
            Some(v) => {
                self.buf.extend_from_slice(&1i32.to_be_bytes());
                self.buf.push(v as u8);
            }
            None => self.null(),
        }
    }

    pub fn timestamptz(&mut self, t: &DateTime<Utc>) {
        self.int8(t.timestamp_micros() - PG_EPOCH_OFFSET_MICROS);
    }

    pub fn opt_timestamptz(&mut self, t: Option<&DateTime<Utc>>) {
        match t {
            Some(t) => self.timestamptz(t),
            None => self.null(),
        }
    }

    /// `jsonb`: a version byte (1) then the JSON text.
    pub fn jsonb(&mut self, json: &[u8]) {
        self.buf
            .extend_from_slice(&((json.len() + 1) as i32).to_be_bytes());
        self.buf.push(1);
        self.buf.extend_from_slice(json);
    }

    /// `jsonb` whose JSON text `write` appends to the stream in place (no buffer of its own).
    pub fn jsonb_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0i32.to_be_bytes());
        self.buf.push(1);
        write(&mut self.buf);
        let len = (self.buf.len() - at - 4) as i32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn opt_numeric(&mut self, d: Option<&Decimal>) {
        match d {
            Some(d) => self.numeric(d),
            None => self.null(),
        }
    }

    /// `numeric`: base-10000 digits with weight, sign and display scale.
    pub fn numeric(&mut self, d: &Decimal) {
        let parts = numeric_parts(d);
        let digits = parts.digits();
        let len = 8 + 2 * digits.len();
        self.buf.extend_from_slice(&(len as i32).to_be_bytes());
        self.buf
            .extend_from_slice(&(digits.len() as i16).to_be_bytes());
        self.buf.extend_from_slice(&parts.weight.to_be_bytes());
        self.buf.extend_from_slice(&parts.sign.to_be_bytes());
        self.buf.extend_from_slice(&parts.dscale.to_be_bytes());
        for digit in digits {
            self.buf.extend_from_slice(&digit.to_be_bytes());
        }
    }

    /// The finished stream (trailer written).
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Base-10000 digits a `Decimal` can need: its 96-bit mantissa has at most 29 decimal digits,
/// at most 32 once the fraction is padded to whole digits.
const MAX_NUMERIC_DIGITS: usize = 8;

/// A `numeric` as PostgreSQL's binary format lays it out, held without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NumericParts {
    weight: i16,
    sign: u16,
    dscale: u16,
    /// Base-10000 digits, most significant first, in `groups[..len]`.
    groups: [i16; MAX_NUMERIC_DIGITS],
    len: usize,
}

impl NumericParts {
    fn digits(&self) -> &[i16] {
        &self.groups[..self.len]
    }
}

fn numeric_parts(d: &Decimal) -> NumericParts {
    let scale = d.scale();
    let mut parts = NumericParts {
        weight: 0,
        sign: 0,
        dscale: scale as u16,
        groups: [0; MAX_NUMERIC_DIGITS],
        len: 0,
    };
    let mut mantissa = d.mantissa().unsigned_abs();
    if mantissa == 0 {
        return parts;
    }
    if d.is_sign_negative() {
        parts.sign = 0x4000;
    }
    // Pad the fraction to whole base-10000 digits.
    let frac_groups = scale.div_ceil(4);
    let pad = frac_groups * 4 - scale;
    mantissa *= 10u128.pow(pad);
    let mut lsb_first = [0i16; MAX_NUMERIC_DIGITS];
    let mut count = 0;
    while mantissa > 0 && count < MAX_NUMERIC_DIGITS {
        lsb_first[count] = (mantissa % 10_000) as i16;
        mantissa /= 10_000;
        count += 1;
    }
    // weight: position of the most significant digit relative to the point; it is never 0
    parts.weight = count as i16 - frac_groups as i16 - 1;
    // trailing zero digits are implied
    let trailing = lsb_first[..count].iter().take_while(|&&g| g == 0).count();
    for (slot, digit) in parts
        .groups
        .iter_mut()
        .zip(lsb_first[trailing..count].iter().rev())
    {
        *slot = *digit;
    }
    parts.len = count - trailing;
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn parts(s: &str) -> (i16, u16, u16, Vec<i16>) {
        let p = numeric_parts(&Decimal::from_str(s).unwrap());
        (p.weight, p.sign, p.dscale, p.digits().to_vec())
    }

    #[test]
    fn numeric_digits_match_postgres_layout() {
        assert_eq!(parts("0"), (0, 0, 0, vec![]));
        assert_eq!(parts("1"), (0, 0, 0, vec![1]));
        assert_eq!(parts("12345.6789"), (1, 0, 4, vec![1, 2345, 6789]));
        assert_eq!(parts("-2.5"), (0, 0x4000, 1, vec![2, 5000]));
        assert_eq!(parts("0.0001"), (-1, 0, 4, vec![1]));
        assert_eq!(parts("10000"), (1, 0, 0, vec![1]));
        assert_eq!(
            parts("99999999999999.9999"),
            (3, 0, 4, vec![99, 9999, 9999, 9999, 9999])
        );
        assert_eq!(parts("-0.00"), (0, 0, 2, vec![]));
        assert_eq!(parts("1.00"), (0, 0, 2, vec![1]));
        // the widest mantissas: 29 decimal digits, and padded to 32
        assert_eq!(
            parts("79228162514264337593543950335"),
            (7, 0, 0, vec![7, 9228, 1625, 1426, 4337, 5935, 4395, 335])
        );
        assert_eq!(
            parts("7922816251426433759354395033.5"),
            (
                6,
                0,
                1,
                vec![7922, 8162, 5142, 6433, 7593, 5439, 5033, 5000]
            )
        );
    }

    #[test]
    fn jsonb_written_in_place_matches_jsonb_of_a_buffer() {
        let mut a = BinaryCopyWriter::with_capacity(0);
        a.jsonb(br#"{"k":"v"}"#);
        let mut b = BinaryCopyWriter::with_capacity(0);
        b.jsonb_with(|out| out.extend_from_slice(br#"{"k":"v"}"#));
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn stream_has_header_and_trailer() {
        let mut w = BinaryCopyWriter::with_capacity(0);
        w.tuple(1);
        w.int8(7);
        let out = w.finish();
        assert!(out.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(out.ends_with(&[0xff, 0xff]));
        assert_eq!(out.len(), 11 + 8 + 2 + 4 + 8 + 2);
    }
}
