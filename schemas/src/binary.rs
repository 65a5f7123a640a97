//! Avro binary encoding primitives: a direct writer (functions appending to a `Vec<u8>`) and
//! a bounds-checked [`DatumReader`] whose every error names the field, the byte offset and
//! what it expected.
//!
//! Nothing here allocates from a length prefix before checking that the input holds that many
//! bytes, and nothing panics on arbitrary input.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The largest unscaled value of `decimal(18,4)`: 18 nines.
pub const DECIMAL_MAX_UNSCALED: i128 = 999_999_999_999_999_999;
/// The scale of every money field (`decimal(18,4)`).
pub const DECIMAL_SCALE: u32 = 4;
/// The precision of every money field (`decimal(18,4)`).
pub const DECIMAL_PRECISION: u32 = 18;

// ---------------------------------------------------------------------------------------------
// Writing

/// Appends an Avro `long` (zigzag varint).
#[inline]
pub fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    if z < 0x80 {
        out.push(z as u8);
        return;
    }
    let mut buf = [0u8; 10];
    let mut n = 0;
    while z >= 0x80 {
        buf[n] = (z as u8) | 0x80;
        z >>= 7;
        n += 1;
    }
    buf[n] = z as u8;
    out.extend_from_slice(&buf[..=n]);
}

/// Appends an Avro `int` (zigzag varint).
#[inline]
pub fn put_int(out: &mut Vec<u8>, v: i32) {
    put_long(out, i64::from(v));
}

/// Appends Avro `bytes`: the length as a `long`, then the bytes.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Appends an Avro `string` (UTF-8 bytes with a length).
#[inline]
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Appends an Avro `boolean`.
#[inline]
pub fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.push(u8::from(b));
}

/// Appends an Avro `double` (8 bytes, little-endian IEEE 754).
#[inline]
pub fn put_double(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `timestamp-micros`: microseconds since the epoch as a `long`. Sub-microsecond
/// precision is truncated (towards the past), as the schema holds microseconds.
#[inline]
pub fn put_timestamp(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    put_long(out, t.timestamp_micros());
}

/// Appends the union branch of an optional value: `0` (null) for `None`, `1` for `Some`, then
/// the value written by `f`.
#[inline]
pub fn put_opt<T>(out: &mut Vec<u8>, v: Option<&T>, f: impl FnOnce(&mut Vec<u8>, &T))
where
    T: ?Sized,
{
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(2); // zigzag(1)
            f(out, v);
        }
    }
}

/// Why a decimal does not fit `decimal(18,4)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalProblem {
    /// It has non-zero digits beyond the 4th decimal place (rescaling would lose them).
    TooManyDecimalPlaces,
    /// At scale 4 it has more than 18 digits.
    TooManyDigits,
}

impl fmt::Display for DecimalProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecimalProblem::TooManyDecimalPlaces => {
                f.write_str("non-zero digits beyond 4 decimal places (would be lost)")
            }
            DecimalProblem::TooManyDigits => f.write_str("more than 18 digits at scale 4"),
        }
    }
}

/// The unscaled value of `d` at scale 4, when `d` fits `decimal(18,4)`.
///
/// A decimal with a scale below 4 is scaled up; one with a scale above 4 is rescaled only when
/// that is exact (its extra digits are zeros, e.g. `1.50000`); otherwise, and when the value
/// has more than 18 digits at scale 4, this is an error: money is never silently rounded.
pub fn decimal_unscaled(d: &Decimal) -> Result<i64, DecimalProblem> {
    let m = d.mantissa();
    let s = d.scale();
    let unscaled = if s <= DECIMAL_SCALE {
        // |m| < 2^96 and 10^4 < 2^14: no overflow.
        m * 10i128.pow(DECIMAL_SCALE - s)
    } else {
        // s <= 28, so 10^(s-4) <= 10^24 fits an i128.
        let div = 10i128.pow(s - DECIMAL_SCALE);
        if m % div != 0 {
            return Err(DecimalProblem::TooManyDecimalPlaces);
        }
        m / div
    };
    if unscaled.abs() > DECIMAL_MAX_UNSCALED {
        return Err(DecimalProblem::TooManyDigits);
    }
    Ok(unscaled as i64)
}

/// The minimal big-endian two's-complement bytes of `v` (Java's `BigInteger.toByteArray()`):
/// at least one byte; zero is `[0x00]`.
#[inline]
pub fn twos_complement_min(v: i64) -> ([u8; 8], usize) {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let b = bytes[start];
        let next_high = bytes[start + 1] & 0x80;
        if (b == 0x00 && next_high == 0) || (b == 0xFF && next_high != 0) {
            start += 1;
        } else {
            break;
        }
    }
    (bytes, start)
}

/// Appends a `decimal(18,4)` as Avro `bytes`: the unscaled value's minimal big-endian two's
/// complement.
#[inline]
pub fn put_decimal_unscaled(out: &mut Vec<u8>, unscaled: i64) {
    let (bytes, start) = twos_complement_min(unscaled);
    put_bytes(out, &bytes[start..]);
}

// ---------------------------------------------------------------------------------------------
// Reading

/// What went wrong reading one item of a datum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The input ended in the middle of an item.
    #[error("input ended while reading {0}")]
    EndOfInput(&'static str),
    /// A varint longer than 10 bytes, or with bits beyond 64.
    #[error("malformed varint (more than 64 bits)")]
    BadVarint,
    /// An `int` whose value does not fit 32 bits.
    #[error("int value {0} is outside the 32-bit range")]
    IntOutOfRange(i64),
    /// A negative length prefix.
    #[error("negative {what} length {len}")]
    NegativeLength {
        /// What the length was for ("string", "bytes").
        what: &'static str,
        /// The length read.
        len: i64,
    },
    /// A length prefix longer than the rest of the input.
    #[error("{what} length {len} exceeds the {remaining} bytes left")]
    LengthExceedsInput {
        /// What the length was for ("string", "bytes").
        what: &'static str,
        /// The length read.
        len: i64,
        /// Bytes left in the input.
        remaining: usize,
    },
    /// A map or array block count that the rest of the input cannot hold.
    #[error("{what} block of {count} entries cannot fit in the {remaining} bytes left")]
    BlockTooLarge {
        /// "map" or "array".
        what: &'static str,
        /// The block count read.
        count: i64,
        /// Bytes left in the input.
        remaining: usize,
    },
    /// A string that is not UTF-8.
    #[error("string is not valid UTF-8 (bad byte at string offset {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A union branch index that the union does not have.
    #[error("union branch {index} out of range 0..={max}")]
    UnionBranch {
        /// The index read.
        index: i64,
        /// The highest valid index.
        max: usize,
    },
    /// A boolean byte other than 0 or 1.
    #[error("boolean byte 0x{0:02x} is neither 0 nor 1")]
    InvalidBool(u8),
    /// An enum index the enum does not have.
    #[error("enum index {index} out of range 0..{symbols}")]
    EnumIndex {
        /// The index read.
        index: i64,
        /// How many symbols the enum has.
        symbols: usize,
    },
    /// A string that names no known value (provider, status, ...).
    #[error("{0}")]
    UnknownValue(String),
    /// A timestamp that `chrono` cannot represent.
    #[error("timestamp {0} µs is outside the representable range")]
    TimestampOutOfRange(i64),
    /// A decimal too large for `rust_decimal` (96-bit mantissa).
    #[error("decimal of {len} bytes does not fit a 96-bit mantissa")]
    DecimalOutOfRange {
        /// Length of the decimal's bytes.
        len: usize,
    },
    /// A fixed of the wrong size (resolution path).
    #[error("fixed of {found} bytes, expected {expected}")]
    FixedSize {
        /// Size expected.
        expected: usize,
        /// Size found.
        found: usize,
    },
    /// Nesting deeper than the decoder allows.
    #[error("nested more than {0} levels deep")]
    TooDeep(usize),
    /// A value of the wrong type after schema resolution.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// The type expected.
        expected: &'static str,
        /// What was found, abbreviated.
        found: String,
    },
    /// A field missing from a resolved record.
    #[error("missing from the resolved record")]
    Missing,
    /// A named type the schema refers to but does not define.
    #[error("schema refers to undefined type {0}")]
    UndefinedType(String),
}

/// An error reading a datum: which field, at which byte of the whole message, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatumError {
    /// The field being read (`revenue`, `tags`, `fingerprint`).
    pub field: Cow<'static, str>,
    /// Offset in the whole message (header included) where the failing item starts; `None`
    /// for errors found after apache-avro decoded and resolved the datum.
    pub offset: Option<usize>,
    /// What was wrong.
    pub problem: Problem,
}

impl DatumError {
    /// An error about `field` with no byte offset (the resolution path).
    pub fn value(field: impl Into<Cow<'static, str>>, problem: Problem) -> Self {
        DatumError {
            field: field.into(),
            offset: None,
            problem,
        }
    }
}

impl std::error::Error for DatumError {}

impl fmt::Display for DatumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "field {} at byte {offset}: {}", self.field, self.problem),
            None => write!(f, "field {}: {}", self.field, self.problem),
        }
    }
}

/// A bounds-checked reader of Avro binary data over a borrowed message.
///
/// Offsets in its errors are relative to the start of the whole message (the reader is
/// created over the datum with the length of the header that precedes it), so they can be
/// compared with a hex dump of the Kafka value.
#[derive(Debug, Clone)]
pub struct DatumReader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    field: &'static str,
}

impl<'a> DatumReader<'a> {
    /// A reader over `datum`, which starts `base` bytes into the message.
    pub fn new(datum: &'a [u8], base: usize) -> Self {
        DatumReader {
            buf: datum,
            pos: 0,
            base,
            field: "(record)",
        }
    }

    /// Names the field that the following reads belong to (for errors).
    #[inline]
    pub fn at(&mut self, field: &'static str) -> &mut Self {
        self.field = field;
        self
    }

    /// The offset of the next byte in the whole message.
    #[inline]
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes not yet read.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread rest of the datum.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// An error about the current field, at `start` (a position within the datum).
    #[cold]
    pub fn error_at(&self, start: usize, problem: Problem) -> DatumError {
        DatumError {
            field: Cow::Borrowed(self.field),
            offset: Some(self.base + start),
            problem,
        }
    }

    /// Reads an Avro `long`.
    #[inline]
    pub fn long(&mut self) -> Result<i64, DatumError> {
        let start = self.pos;
        // Fast path: one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                let z = u64::from(b);
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        let mut z: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.error_at(start, Problem::EndOfInput("a varint")));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.error_at(start, Problem::BadVarint));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(self.error_at(start, Problem::BadVarint));
            }
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// Reads an Avro `int`.
    #[inline]
    pub fn int(&mut self) -> Result<i32, DatumError> {
        let start = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| self.error_at(start, Problem::IntOutOfRange(v)))
    }

    /// Reads an Avro `boolean`.
    #[inline]
    pub fn boolean(&mut self) -> Result<bool, DatumError> {
        let start = self.pos;
        match self.buf.get(self.pos) {
            Some(0) => {
                self.pos += 1;
                Ok(false)
            }
            Some(1) => {
                self.pos += 1;
                Ok(true)
            }
            Some(&b) => Err(self.error_at(start, Problem::InvalidBool(b))),
            None => Err(self.error_at(start, Problem::EndOfInput("a boolean"))),
        }
    }

    /// Reads an Avro `double`.
    #[inline]
    pub fn double(&mut self) -> Result<f64, DatumError> {
        let b = self.fixed_array::<8>("a double")?;
        Ok(f64::from_le_bytes(b))
    }

    /// Reads an Avro `float`.
    #[inline]
    pub fn float(&mut self) -> Result<f32, DatumError> {
        let b = self.fixed_array::<4>("a float")?;
        Ok(f32::from_le_bytes(b))
    }

    /// Reads `N` raw bytes (an Avro `fixed`).
    #[inline]
    pub fn fixed_array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DatumError> {
        let start = self.pos;
        match self.buf.get(self.pos..self.pos + N) {
            Some(s) => {
                let mut a = [0u8; N];
                a.copy_from_slice(s);
                self.pos += N;
                Ok(a)
            }
            None => Err(self.error_at(start, Problem::EndOfInput(what))),
        }
    }

    /// Reads `n` raw bytes (an Avro `fixed` of size `n`), borrowed.
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8], DatumError> {
        let start = self.pos;
        if n > self.remaining() {
            return Err(self.error_at(start, Problem::EndOfInput("a fixed")));
        }
        self.pos += n;
        Ok(&self.buf[start..start + n])
    }

    /// Reads a length prefix and checks it against the rest of the input.
    #[inline]
    fn len_prefix(&mut self, what: &'static str) -> Result<(usize, usize), DatumError> {
        let start = self.pos;
        let len = self.long()?;
        if len < 0 {
            return Err(self.error_at(start, Problem::NegativeLength { what, len }));
        }
        let remaining = self.remaining();
        if len as u64 > remaining as u64 {
            return Err(self.error_at(
                start,
                Problem::LengthExceedsInput {
                    what,
                    len,
                    remaining,
                },
            ));
        }
        Ok((start, len as usize))
    }

    /// Reads Avro `bytes`, borrowed from the input.
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], DatumError> {
        let (_, len) = self.len_prefix("bytes")?;
        let s = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }

    /// Reads an Avro `string`, borrowed from the input.
    #[inline]
    pub fn str(&mut self) -> Result<&'a str, DatumError> {
        let (start, len) = self.len_prefix("string")?;
        let s = &self.buf[self.pos..self.pos + len];
        match std::str::from_utf8(s) {
            Ok(s) => {
                self.pos += len;
                Ok(s)
            }
            Err(e) => Err(self.error_at(
                start,
                Problem::InvalidUtf8 {
                    valid_up_to: e.valid_up_to(),
                },
            )),
        }
    }

    /// Reads an Avro `string` into an owned `String`.
    #[inline]
    pub fn string(&mut self) -> Result<String, DatumError> {
        self.str().map(str::to_owned)
    }

    /// Reads a string and parses it with `FromStr` (provider, status, ...); an unknown value is
    /// an error quoting the parser's message.
    #[inline]
    pub fn parse_str<T>(&mut self) -> Result<T, DatumError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let start = self.pos;
        let s = self.str()?;
        s.parse::<T>()
            .map_err(|e| self.error_at(start, Problem::UnknownValue(e.to_string())))
    }

    /// Reads a `timestamp-micros`.
    #[inline]
    pub fn timestamp(&mut self) -> Result<DateTime<Utc>, DatumError> {
        let start = self.pos;
        let micros = self.long()?;
        DateTime::<Utc>::from_timestamp_micros(micros)
            .ok_or_else(|| self.error_at(start, Problem::TimestampOutOfRange(micros)))
    }

    /// Reads a decimal at scale 4 stored as Avro `bytes` (big-endian two's complement).
    ///
    /// Any value that fits `rust_decimal` is accepted, also one wider than 18 digits (the
    /// processor's validation, not the decoder, rejects those with a reason).
    #[inline]
    pub fn decimal(&mut self) -> Result<Decimal, DatumError> {
        let start = self.pos;
        let b = self.bytes()?;
        decimal_from_bytes(b, DECIMAL_SCALE)
            .ok_or_else(|| self.error_at(start, Problem::DecimalOutOfRange { len: b.len() }))
    }

    /// Reads a union branch index and checks it is in `0..=max`.
    #[inline]
    pub fn branch(&mut self, max: usize) -> Result<usize, DatumError> {
        let start = self.pos;
        let index = self.long()?;
        if index < 0 || index as u64 > max as u64 {
            return Err(self.error_at(start, Problem::UnionBranch { index, max }));
        }
        Ok(index as usize)
    }

    /// Reads an optional value (`["null", T]`): branch 0 is `None`, branch 1 is read by `f`.
    #[inline]
    pub fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DatumError>,
    ) -> Result<Option<T>, DatumError> {
        match self.branch(1)? {
            0 => Ok(None),
            _ => f(self).map(Some),
        }
    }

    /// Reads the count of a map or array block. Returns `Ok(None)` at the end marker (0); a
    /// negative count (a block with its byte size) is made positive and its size skipped.
    /// `min_entry_len` is the least number of bytes one entry takes, to reject counts the
    /// input cannot hold before anything is allocated for them.
    pub fn block_count(
        &mut self,
        what: &'static str,
        min_entry_len: usize,
    ) -> Result<Option<usize>, DatumError> {
        let start = self.pos;
        let count = self.long()?;
        if count == 0 {
            return Ok(None);
        }
        let n = count.unsigned_abs();
        if count < 0 {
            // The block's size in bytes follows; we read the entries anyway.
            let _size = self.long()?;
        }
        let remaining = self.remaining();
        if n > (remaining / min_entry_len.max(1)) as u64 {
            return Err(self.error_at(
                start,
                Problem::BlockTooLarge {
                    what,
                    count,
                    remaining,
                },
            ));
        }
        Ok(Some(n as usize))
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DatumError> {
        let start = self.pos;
        if n > self.remaining() {
            return Err(self.error_at(start, Problem::EndOfInput(what)));
        }
        self.pos += n;
        Ok(())
    }
}

/// The decimal of big-endian two's-complement `bytes` at `scale`, or `None` when it does not fit
/// `rust_decimal`. Empty bytes are zero; sign-extension padding of any length is accepted.
pub fn decimal_from_bytes(bytes: &[u8], scale: u32) -> Option<Decimal> {
    let unscaled = i128_from_be_twos_complement(bytes)?;
    Decimal::try_from_i128_with_scale(unscaled, scale).ok()
}

fn i128_from_be_twos_complement(bytes: &[u8]) -> Option<i128> {
    let Some(&first) = bytes.first() else {
        return Some(0);
    };
    let negative = first & 0x80 != 0;
    let fill = if negative { 0xFF } else { 0x00 };
    let mut b = bytes;
    if b.len() > 16 {
        let (pad, rest) = b.split_at(b.len() - 16);
        if pad.iter().any(|&p| p != fill) || (rest[0] & 0x80 != 0) != negative {
            return None;
        }
        b = rest;
    }
    let mut full = [fill; 16];
    full[16 - b.len()..].copy_from_slice(b);
    Some(i128::from_be_bytes(full))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_long(v: i64) {
        let mut out = Vec::new();
        put_long(&mut out, v);
        let mut r = DatumReader::new(&out, 0);
        assert_eq!(r.long().unwrap(), v);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn longs_roundtrip() {
        for v in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            roundtrip_long(v);
        }
        let mut out = Vec::new();
        put_long(&mut out, -1);
        assert_eq!(out, [0x01]);
        out.clear();
        put_long(&mut out, 64);
        assert_eq!(out, [0x80, 0x01]);
    }

    #[test]
    fn varint_overflow_is_an_error() {
        let bytes = [0xFFu8; 11];
        let e = DatumReader::new(&bytes, 5).long().unwrap_err();
        assert_eq!(e.problem, Problem::BadVarint);
        assert_eq!(e.offset, Some(5));
        let bytes = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02];
        assert_eq!(
            DatumReader::new(&bytes, 0).long().unwrap_err().problem,
            Problem::BadVarint
        );
    }

    #[test]
    fn twos_complement_is_minimal() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (-1, &[0xFF]),
            (127, &[0x7F]),
            (128, &[0x00, 0x80]),
            (-128, &[0x80]),
            (-129, &[0xFF, 0x7F]),
            (255, &[0x00, 0xFF]),
        ];
        for (v, want) in cases {
            let (b, start) = twos_complement_min(*v);
            assert_eq!(&b[start..], *want, "{v}");
            assert_eq!(i128_from_be_twos_complement(want), Some(*v as i128));
        }
        assert_eq!(i128_from_be_twos_complement(&[0xFF; 20]), Some(-1));
        assert_eq!(i128_from_be_twos_complement(&[0x01; 17]), None);
    }

    #[test]
    fn decimals_rescale_only_when_exact() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(decimal_unscaled(&d("1.5")), Ok(15000));
        assert_eq!(decimal_unscaled(&d("-1.50000")), Ok(-15000));
        assert_eq!(decimal_unscaled(&d("0")), Ok(0));
        assert_eq!(
            decimal_unscaled(&d("99999999999999.9999")),
            Ok(DECIMAL_MAX_UNSCALED as i64)
        );
        assert_eq!(
            decimal_unscaled(&d("100000000000000")),
            Err(DecimalProblem::TooManyDigits)
        );
        assert_eq!(
            decimal_unscaled(&d("0.00001")),
            Err(DecimalProblem::TooManyDecimalPlaces)
        );
    }

    #[test]
    fn lengths_are_capped_by_the_input() {
        let mut out = Vec::new();
        put_long(&mut out, 1 << 40);
        out.extend_from_slice(b"abc");
        let e = DatumReader::new(&out, 10)
            .at("caller_number")
            .str()
            .unwrap_err();
        assert!(
            matches!(e.problem, Problem::LengthExceedsInput { remaining: 3, .. }),
            "{e}"
        );
        assert_eq!(e.offset, Some(10));
        assert_eq!(e.field, "caller_number");
    }
}
