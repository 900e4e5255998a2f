//! Timestamps written the way chrono's serde writes them (RFC 3339, UTC as `Z`, fractional
//! seconds in 0, 3, 6 or 9 digits), without its formatting machinery.
//!
//! A run record carries four timestamps and is rewritten on every change, so their encoding
//! is on the hot path, and chrono's `Display`-based path is slow for it. Anything outside the
//! plain case (years before 0 or after 9999, leap seconds) goes through chrono, so the
//! bytes on disk are the same either way and chrono reads them back.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match write(t, &mut buf) {
        // Only ASCII digits and separators are written.
        Some(n) => s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default()),
        None => serde::Serialize::serialize(t, s),
    }
}

pub(crate) fn serialize_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

/// Writes `t` into `buf` and returns the length, or `None` for what chrono must write.
fn write(t: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    buf[..20].copy_from_slice(b"0000-00-00T00:00:00.");
    put(buf, 0, year as u32, 4);
    put(buf, 5, t.month(), 2);
    put(buf, 8, t.day(), 2);
    put(buf, 11, t.hour(), 2);
    put(buf, 14, t.minute(), 2);
    put(buf, 17, t.second(), 2);
    let end = match nanos {
        0 => 19,
        _ if nanos.is_multiple_of(1_000_000) => put(buf, 20, nanos / 1_000_000, 3),
        _ if nanos.is_multiple_of(1_000) => put(buf, 20, nanos / 1_000, 6),
        _ => put(buf, 20, nanos, 9),
    };
    buf[end] = b'Z';
    Some(end + 1)
}

/// Writes `value` as `width` decimal digits at `at`; returns where they end.
fn put(buf: &mut [u8; 30], at: usize, mut value: u32, width: usize) -> usize {
    for i in (at..at + width).rev() {
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    at + width
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(t: &DateTime<Utc>) -> String {
        let mut out = Vec::new();
        serialize(t, &mut serde_json::Serializer::new(&mut out)).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_exactly_what_chrono_writes() {
        let mut samples = vec![
            DateTime::from_timestamp(0, 0).unwrap(),
            DateTime::from_timestamp(1_795_000_000, 123_000_000).unwrap(),
            DateTime::from_timestamp(1_795_000_000, 123_456_000).unwrap(),
            DateTime::from_timestamp(1_795_000_000, 123_456_789).unwrap(),
            DateTime::from_timestamp(1_795_000_000, 1).unwrap(),
            DateTime::from_timestamp(253_402_300_799, 999_999_999).unwrap(), // 9999-12-31T23:59:59.999999999
            DateTime::from_timestamp(253_402_300_800, 0).unwrap(),           // year 10000: chrono's path
            DateTime::from_timestamp(-62_167_219_201, 0).unwrap(),           // year -1: chrono's path
            DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap(), // a leap second
            Utc::now(),
        ];
        // A spread of instants over four centuries, with every kind of fraction.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 12_700_000_000) as i64 - 2_208_988_800;
            let nanos = match x % 4 {
                0 => 0,
                1 => (x >> 20) as u32 % 1000 * 1_000_000,
                2 => (x >> 20) as u32 % 1_000_000 * 1000,
                _ => (x >> 20) as u32 % 1_000_000_000,
            };
            samples.push(DateTime::from_timestamp(secs, nanos).unwrap());
        }
        // And over the whole range written here, years 0 to 9999, with its edges and leap days.
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 315_569_520_000) as i64 - 62_167_219_200;
            samples.push(DateTime::from_timestamp(secs, (x >> 40) as u32 % 1000 * 1_000_000).unwrap());
        }
        for secs in [
            -62_167_219_200, // 0000-01-01T00:00:00
            -62_167_219_201, // the second before: chrono's path
            -62_162_121_600, // 0000-02-29 (year 0 is a leap year)
            -2_203_891_200,  // 1900-03-01 (1900 is not)
            951_782_400,     // 2000-02-29
            4_107_456_000,   // 2100-02-28
            4_107_542_399,   // 2100-02-28T23:59:59
            4_107_542_400,   // 2100-03-01
        ] {
            samples.push(DateTime::from_timestamp(secs, 0).unwrap());
        }
        for t in samples {
            assert_eq!(ours(&t), serde_json::to_string(&t).unwrap(), "{t:?}");
        }
    }
}
