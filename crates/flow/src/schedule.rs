//! When a trigger polls: a fixed interval or a crontab(5) expression, both in UTC.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Shortest interval a flow may poll at.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    // Boxed: a parsed cron pattern is large and schedules are built once per flow.
    Cron(Box<CronSchedule>),
}

/// A parsed crontab(5) expression (5 fields, UTC).
#[derive(Debug, Clone)]
pub struct CronSchedule {
    source: String,
    cron: Cron,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid interval `{input}`: {message}")]
    Interval { input: String, message: String },
    #[error("interval `{input}` is shorter than the minimum of 1s")]
    TooShort { input: String },
    #[error("invalid cron expression `{input}`: {message}")]
    Cron { input: String, message: String },
}

impl Schedule {
    /// `30s`, `5m`, `1h 30m` (humantime).
    pub fn every(input: &str) -> Result<Schedule, ScheduleError> {
        let d = humantime::parse_duration(input.trim())
            .map_err(|e| ScheduleError::Interval { input: input.to_string(), message: e.to_string() })?;
        if d < MIN_INTERVAL {
            return Err(ScheduleError::TooShort { input: input.to_string() });
        }
        Ok(Schedule::Every(d))
    }

    pub fn cron(input: &str) -> Result<Schedule, ScheduleError> {
        CronSchedule::parse(input).map(|c| Schedule::Cron(Box::new(c)))
    }

    /// The first time strictly after `after` the trigger should poll. For intervals that is
    /// `after + interval`, so pass the time of the last poll.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(d) => chrono::TimeDelta::from_std(*d).ok().and_then(|d| after.checked_add_signed(d)),
            Schedule::Cron(c) => c.next_after(after),
        }
    }

    /// How far polls may be spread: a tenth of the interval, at most 30 s (cron
    /// expressions are minute-grained, so they get 30 s).
    pub fn jitter_bound(&self) -> Duration {
        match self {
            Schedule::Every(d) => (*d / 10).min(Duration::from_secs(30)),
            Schedule::Cron(_) => Duration::from_secs(30),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => write!(f, "cron {}", c.source),
        }
    }
}

impl CronSchedule {
    pub fn parse(input: &str) -> Result<CronSchedule, ScheduleError> {
        let err = |message: String| ScheduleError::Cron { input: input.to_string(), message };
        let fields: Vec<&str> = input.split_whitespace().collect();
        if input.contains('@') {
            return Err(err("@nicknames are not supported; write the 5 fields".into()));
        }
        if fields.len() != 5 {
            return Err(err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        }
        // crontab(5): when day-of-month and day-of-week are both restricted, a day matching
        // either fires; a field that starts with `*` (even `*/2`) counts as unrestricted.
        // croner implements the OR rule but only treats a bare `*` as unrestricted, so
        // `*/2` style fields switch it to AND, which is what Vixie cron does for them.
        let starish = |f: &str| f.starts_with('*') && f != "*";
        let dom_and_dow = starish(fields[2]) || starish(fields[4]);
        let parser =
            CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).dom_and_dow(dom_and_dow).build();
        let cron = parser.parse(input).map_err(|e| err(e.to_string()))?;
        // A valid expression can still never match (`0 0 30 2 *`); say so now, not at run time.
        let probe = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
        let this = CronSchedule { source: input.trim().to_string(), cron };
        if this.next_after(probe).is_none() {
            return Err(err("it never matches a real date".into()));
        }
        Ok(this)
    }

    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The crontab expression as written.
    pub fn pattern(&self) -> &str {
        &self.source
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// A stable offset in `[0, bound)` derived from a flow's name, so flows sharing a schedule
/// do not all poll GHL in the same second, and a given flow keeps its slot across restarts.
/// FNV-1a, because std's hasher may change between Rust releases.
pub fn jitter(flow_name: &str, bound: Duration) -> Duration {
    let millis = bound.as_millis();
    if millis == 0 {
        return Duration::ZERO;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in flow_name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let offset = u128::from(h) % millis;
    Duration::from_millis(u64::try_from(offset).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn fires(expr: &str, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let s = Schedule::cron(expr).unwrap();
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = s.next_after(t).unwrap();
            out.push(t);
        }
        out
    }

    #[test]
    fn weekdays_only() {
        // 2024-01-06 is a Saturday.
        let got = fires("0 9 * * 1-5", at(2024, 1, 6, 0, 0), 6);
        assert!(got.iter().all(|t| t.hour() == 9 && t.minute() == 0));
        let days: Vec<Weekday> = got.iter().map(|t| t.weekday()).collect();
        use Weekday::*;
        assert_eq!(days, vec![Mon, Tue, Wed, Thu, Fri, Mon]);
    }

    #[test]
    fn sunday_is_0_and_7() {
        for expr in ["0 0 * * 0", "0 0 * * 7"] {
            let got = fires(expr, at(2024, 1, 1, 12, 0), 3);
            assert!(got.iter().all(|t| t.weekday() == Weekday::Sun), "{expr}: {got:?}");
            assert_eq!(got[0], at(2024, 1, 7, 0, 0));
        }
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // 2024-01-01 is a Monday; the next matches are the Mondays and Feb 1st (a Thursday).
        let got = fires("0 0 1 * 1", at(2024, 1, 1, 0, 0), 5);
        let want = [
            at(2024, 1, 8, 0, 0),
            at(2024, 1, 15, 0, 0),
            at(2024, 1, 22, 0, 0),
            at(2024, 1, 29, 0, 0),
            at(2024, 2, 1, 0, 0),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn star_step_counts_as_unrestricted() {
        // Vixie: `*/2` in day-of-month with a restricted day-of-week means both must match.
        let got = fires("0 0 */2 * 1", at(2024, 1, 1, 0, 0), 3);
        for t in &got {
            assert_eq!(t.weekday(), Weekday::Mon);
            assert_eq!(t.day() % 2, 1, "{t}");
        }
    }

    #[test]
    fn steps() {
        let got = fires("*/15 * * * *", at(2024, 1, 1, 0, 7), 4);
        let mins: Vec<u32> = got.iter().map(|t| t.minute()).collect();
        assert_eq!(mins, vec![15, 30, 45, 0]);
    }

    #[test]
    fn bad_expressions_are_rejected() {
        for (expr, needle) in [
            ("* * * *", "expected 5 fields"),
            ("0 * * * * *", "expected 5 fields"),
            ("61 * * * *", "invalid cron expression"),
            ("0 0 30 2 *", "never matches"),
            ("@daily", "@nicknames"),
            ("a b c d e", "invalid cron expression"),
            ("", "expected 5 fields"),
        ] {
            let e = Schedule::cron(expr).unwrap_err().to_string();
            assert!(e.contains(needle), "{expr}: {e}");
        }
    }

    #[test]
    fn intervals() {
        assert!(matches!(Schedule::every("5m"), Ok(Schedule::Every(d)) if d == Duration::from_secs(300)));
        assert!(matches!(Schedule::every("1h 30m"), Ok(Schedule::Every(d)) if d == Duration::from_secs(5400)));
        assert!(matches!(Schedule::every("500ms"), Err(ScheduleError::TooShort { .. })));
        assert!(matches!(Schedule::every("often"), Err(ScheduleError::Interval { .. })));
        let s = Schedule::every("30s").unwrap();
        assert_eq!(s.next_after(at(2024, 1, 1, 0, 0)), Some(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 30).unwrap()));
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let b = Duration::from_secs(30);
        assert_eq!(jitter("a", b), jitter("a", b));
        assert_ne!(jitter("welcome", b), jitter("goodbye", b));
        assert!(jitter("x", b) < b);
        assert_eq!(jitter("x", Duration::ZERO), Duration::ZERO);
        assert_eq!(Schedule::every("5m").unwrap().jitter_bound(), Duration::from_secs(30));
        assert_eq!(Schedule::every("10s").unwrap().jitter_bound(), Duration::from_secs(1));
    }
}
