//! Time stamps and ids. Stamps are strictly increasing so that an update always moves
//! `dateUpdated`/`updatedAt` and cursors over dates never see ties; ids are deterministic
//! (a counter through a mixer) so seeded runs are reproducible.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

#[derive(Debug, Default)]
pub struct Clock {
    last_ms: AtomicI64,
}

impl Clock {
    /// Now in epoch milliseconds, at least one more than the previous call.
    pub fn now_ms(&self) -> i64 {
        let wall = Utc::now().timestamp_millis();
        let mut prev = self.last_ms.load(Ordering::Relaxed);
        loop {
            let next = wall.max(prev + 1);
            match self.last_ms.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }

    /// The wall clock in epoch milliseconds, without taking a stamp.
    pub fn wall_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }

    pub fn now_iso(&self) -> String {
        iso(self.now_ms())
    }
}

/// `2024-01-02T03:04:05.678Z`, the format GHL uses for dates.
pub fn iso(ms: i64) -> String {
    let dt: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Dates further than this from 1970 (about 35,000 years) are refused, so that date
/// arithmetic on client input can never overflow.
const MAX_ABS_MS: i64 = 1 << 50;

/// Epoch milliseconds of an ISO date or an epoch number (as number or text).
pub fn parse_ms(v: &serde_json::Value) -> Option<i64> {
    parse_any_ms(v).filter(|ms| ms.abs() <= MAX_ABS_MS)
}

fn parse_any_ms(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.parse::<i64>().ok().or_else(|| {
            DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis()).or_else(|| {
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|d| d.and_utc().timestamp_millis())
            })
        }),
        _ => None,
    }
}

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Twenty-character alphanumeric ids, like GHL's.
#[derive(Debug, Default)]
pub struct IdGen {
    counter: AtomicU64,
}

impl IdGen {
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        id_from(n)
    }
}

pub fn id_from(n: u64) -> String {
    let mut state = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut out = String::with_capacity(20);
    for _ in 0..2 {
        let mut z = splitmix(&mut state);
        for _ in 0..10 {
            out.push(ALPHABET[(z % 62) as usize] as char);
            z /= 62;
        }
    }
    out
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_sized() {
        let g = IdGen::default();
        let a = g.next();
        let b = g.next();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }

    #[test]
    fn absurd_dates_are_refused() {
        assert_eq!(parse_ms(&serde_json::json!(i64::MAX)), None);
        assert_eq!(parse_ms(&serde_json::json!("1700000000000")), Some(1_700_000_000_000));
        assert_eq!(parse_ms(&serde_json::json!("2024-01-01")), Some(1_704_067_200_000));
    }

    #[test]
    fn clock_is_strictly_increasing() {
        let c = Clock::default();
        let a = c.now_ms();
        let b = c.now_ms();
        assert!(b > a);
    }
}
