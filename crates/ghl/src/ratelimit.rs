//! Per-location pacing so callers wait instead of collecting 429s, and a backlog flows at an
//! even rate instead of in bursts.
//!
//! Every caller reserves the earliest start time two rules allow (in order, under one lock,
//! so hundreds of waiting callers are served first come, first served without waking each
//! other), then sleeps until it. With N requests per interval T (GHL: 100 per 10 s), a
//! margin m (default 2% of T) and a burst B (default N/32, at least 2):
//!
//! 1. **Window** (no 429s): a request starts no earlier than T + m after the N-th latest one.
//!    That holds "at most N in any window of length T + m" exactly, whatever the callers do;
//!    m absorbs network jitter, so the server's view of any T holds at most N as well.
//! 2. **Pace** (an even flow): GCRA with emission interval τ = (T + m) / N and tolerance
//!    (B − 1)·τ. An idle location lets B requests through at once; with work queued, one
//!    starts every τ. When rule 1 holds a request back beyond what rule 2 allows, the burst
//!    credit counts as spent (the next request may start τ after it): otherwise the credit
//!    GCRA accrues while rule 1 holds callers back would let the idle burst recur as a
//!    B-clump once every T + m.
//!
//! Rule 1 alone lets a backlog out as N requests in a burst of ≈ 1 s and then nothing for
//! ≈ 9.2 s: 100 in every *fixed* GHL window, but a sliding 10 s
//! window opening mid-burst held as few as 2. Rule 2 alone would not prevent 429s: B + N − 1
//! starts fit into T + m. Together, for GHL (N = 100, T = 10 s, m = 200 ms, B = 3,
//! τ = 102 ms):
//!
//! - any window of T + m = 10.2 s holds at most 100 starts (rule 1); a fixed server window
//!   of T (GHL's, the sandbox's) holds 99 of a steadily paced backlog, as 99·τ ≥ T;
//! - a backlog, after its first T + m: one start every τ, so a window of T holds
//!   ⌊T/τ⌋ = 98 or ⌈T/τ⌉ = 99 starts (T/τ = 98.04), 99 when it opens with a start;
//! - a backlog, its first T + m: B starts at 0, one every τ until (N − B)·τ = 9.894 s, then
//!   rule 1 holds the next until T + m (and spends the credit). A window of T that opens
//!   at a start holds at least N − B = 97 (the one opening at τ); any window at least
//!   N − B − 1 = 96 (the one opening just after τ).
//!
//! So while work is queued every window of T holds ≥ min(N − B − 1, ⌊N·T/(T + m)⌋) = 96
//! starts, and at most 100. B ≤ 4% of N keeps that at or above 95% of N; m = 2% costs 2 of
//! the steady 100 (m = 1% would give 99 and halve the jitter headroom: not worth it). The
//! idle burst could be larger only at the price of the first window (B = 5 → 94 in the
//! worst window). B scales with N so that τ stays large against the timer: with the loose
//! limits used where rate limits are off (100,000 per second, τ ≈ 10 µs) a fixed B of 3
//! would make concurrent callers sleep a few µs, which the runtime rounds up to 1 ms.
//! `burst` ≥ N turns pacing off (rule 1 only: N at once, then a wait).
//!
//! Not `governor`: its GCRA is rule 2 without rule 1; with a burst of N it admits up to 2N − 1
//! in one window of T, which a windowed server counter rejects, and its quota is fixed at
//! construction while GHL's headers can change the limit at run time.
//!
//! A caller that wakes late (a busy runtime) must not squeeze into a window that a punctual
//! later caller already fills, so on waking each caller also checks the actual start times of
//! the last N requests (rule 1 again) and waits a little more when needed.
//!
//! A 429 pauses the location ([`LocationLimiter::pause`]). The callers already asleep on a
//! reserved start would all find the pause over at the same instant and go at once (a 429
//! storm answered by another storm), so the pause moves every reservation still in the future
//! onto a fresh schedule that starts where the pause ends, in the order they were reserved,
//! under both rules: B at once, then one every τ. A caller learns its new start on waking.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use reqwest::header::HeaderName;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::Error;

/// Limits applied to every location until its responses say otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per `burst_interval` (GHL: 100).
    pub burst_max: u32,
    /// GHL: 10 s.
    pub burst_interval: Duration,
    /// Requests per UTC day (GHL: 200,000).
    pub daily_max: u32,
    /// Added to the interval so network jitter cannot squeeze N+1 arrivals into one server
    /// window. `None` = 2% of the interval.
    pub margin: Option<Duration>,
    /// Requests an idle location may start at once; with work queued, the rest are spaced
    /// (interval + margin) / `burst_max` apart. `None` = `burst_max` / 32, at least 2.
    /// `burst_max` or more turns pacing off: a whole window's requests at once, then a wait.
    pub burst: Option<u32>,
    /// A caller that would wait longer than this gets `Error::RateLimited` instead.
    pub max_wait: Duration,
    /// Follow the X-RateLimit-* headers GHL returns (limits, remaining, daily budget).
    pub adapt_to_headers: bool,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst_max: 100,
            burst_interval: Duration::from_secs(10),
            daily_max: 200_000,
            margin: None,
            burst: None,
            max_wait: Duration::from_secs(120),
            adapt_to_headers: true,
        }
    }
}

impl RateLimit {
    /// A limit of `max` requests per `interval`, other fields default.
    pub fn per(max: u32, interval: Duration) -> Self {
        RateLimit { burst_max: max, burst_interval: interval, ..RateLimit::default() }
    }
}

/// Parsed once: a lookup by `&str` parses and checks the name on every response.
static RATE_HEADER_NAMES: LazyLock<[HeaderName; 5]> = LazyLock::new(|| {
    [
        "x-ratelimit-limit-daily",
        "x-ratelimit-daily-remaining",
        "x-ratelimit-interval-milliseconds",
        "x-ratelimit-max",
        "x-ratelimit-remaining",
    ]
    .map(HeaderName::from_static)
});

/// The X-RateLimit-* headers of one response, and Retry-After.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub daily_limit: Option<u32>,
    pub daily_remaining: Option<u32>,
    pub interval: Option<Duration>,
    pub max: Option<u32>,
    pub remaining: Option<u32>,
    pub retry_after: Option<Duration>,
}

impl RateHeaders {
    pub fn from_headers(h: &reqwest::header::HeaderMap) -> Self {
        let [daily_limit, daily_remaining, interval, max, remaining] = &*RATE_HEADER_NAMES;
        let num = |name: &HeaderName| -> Option<u64> { h.get(name)?.to_str().ok()?.trim().parse().ok() };
        let num32 = |name: &HeaderName| num(name).and_then(|n| u32::try_from(n).ok());
        RateHeaders {
            daily_limit: num32(daily_limit),
            daily_remaining: num32(daily_remaining),
            interval: num(interval).map(Duration::from_millis),
            max: num32(max),
            remaining: num32(remaining),
            retry_after: h.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after),
        }
    }

    /// How long a 429 asks us to pause: Retry-After, else the burst interval.
    pub fn pause_after_429(&self) -> Option<Duration> {
        self.retry_after.or(self.interval)
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = at.with_timezone(&Utc) - Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Longest interval/limit accepted from headers; beyond that a header is treated as noise.
const MAX_SANE_INTERVAL: Duration = Duration::from_secs(3600);
const MAX_SANE_BURST: u32 = 100_000;

/// The limiter of one location.
#[derive(Debug)]
pub struct LocationLimiter {
    location: String,
    config: RateLimit,
    state: Mutex<State>,
    /// Per flow, the slots it may hold reserved (see [`LocationLimiter::acquire_for`]).
    turns: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
}

#[derive(Debug)]
struct State {
    max: u32,
    interval: Duration,
    /// Start times of the latest `max` requests, oldest first, never decreasing; may lie in
    /// the future (reserved by callers still sleeping).
    slots: VecDeque<Instant>,
    /// Actual start times of the latest `max` requests, oldest first.
    started: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    /// Start times reserved and not yet reached, in the order they were reserved: every
    /// caller still asleep, however many (`slots` keeps only the latest `max`).
    waiting: VecDeque<Instant>,
    /// Reservations a pause moved, in the order they were made: (reserved, new start). A
    /// caller that wakes at `reserved` looks its new start up (and follows it again if a
    /// later pause moved that one too).
    moved: VecDeque<(Instant, Instant)>,
    /// Pacing (GCRA): the theoretical arrival time. A request may start at
    /// `tat - (burst - 1)·τ`; each start moves it on by τ. `None` until the first request.
    tat: Option<Instant>,
    daily_max: u32,
    daily_used: u32,
    day: NaiveDate,
}

impl LocationLimiter {
    pub fn new(location: impl Into<String>, config: RateLimit) -> Self {
        LocationLimiter {
            location: location.into(),
            state: Mutex::new(State {
                max: config.burst_max.max(1),
                interval: config.burst_interval,
                slots: VecDeque::new(),
                started: VecDeque::new(),
                blocked_until: None,
                waiting: VecDeque::new(),
                moved: VecDeque::new(),
                tat: None,
                daily_max: config.daily_max,
                daily_used: 0,
                day: Utc::now().date_naive(),
            }),
            turns: Mutex::new(HashMap::new()),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a handful of numbers updated atomically under the lock; a panic
        // elsewhere cannot leave it half-written, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn margin(&self, interval: Duration) -> Duration {
        self.config.margin.unwrap_or(interval / 50)
    }

    /// The burst B and emission interval τ for `max` requests per `interval`; `None` when
    /// pacing is off (B ≥ `max`).
    fn pacing(&self, max: u32, interval: Duration) -> Option<(u32, Duration)> {
        let burst = self.config.burst.unwrap_or((max / 32).max(2)).max(1);
        (burst < max).then(|| (burst, (interval + self.margin(interval)) / max))
    }

    /// Reserves the next start time and returns how long the caller must wait for it.
    pub fn reserve(&self) -> Result<Duration, Error> {
        let now = Instant::now();
        Ok(self.reserve_slot(now)?.saturating_duration_since(now))
    }

    /// Reserves the next start time and returns it.
    fn reserve_slot(&self, now: Instant) -> Result<Instant, Error> {
        let mut s = self.lock();
        let today = Utc::now().date_naive();
        if today != s.day {
            s.day = today;
            s.daily_used = 0;
        }
        if s.daily_used >= s.daily_max {
            return Err(Error::BudgetSpent {
                location: self.location.clone(),
                limit: s.daily_max,
                retry_after: until_next_utc_day(),
            });
        }
        let (at, paced) = self.next_start(&s, now);
        let wait = at.saturating_duration_since(now);
        if wait > self.config.max_wait {
            return Err(Error::RateLimited {
                location: self.location.clone(),
                why: format!("{} requests per {:?} already queued", s.max, s.interval),
                retry_after: wait,
            });
        }
        self.book(&mut s, at, paced);
        if at > now {
            while s.waiting.front().is_some_and(|&t| t <= now) {
                s.waiting.pop_front();
            }
            s.waiting.push_back(at);
        }
        s.daily_used = s.daily_used.saturating_add(1);
        Ok(at)
    }

    /// The earliest start rules 1 and 2 allow now, and the one rule 2 alone allows.
    fn next_start(&self, s: &State, now: Instant) -> (Instant, Instant) {
        let mut paced = now;
        if let Some(b) = s.blocked_until {
            paced = paced.max(b);
        }
        let pacing = self.pacing(s.max, s.interval);
        if let (Some((burst, tau)), Some(tat)) = (pacing, s.tat) {
            // Rule 2: no earlier than tat - (B - 1)·τ.
            let tolerance = tau * (burst - 1);
            if tat > paced + tolerance {
                paced = tat - tolerance;
            }
        }
        let mut at = paced;
        let max = s.max as usize;
        if s.slots.len() >= max {
            if let Some(&nth_latest) = s.slots.get(s.slots.len() - max) {
                // Rule 1: no earlier than T + margin after the N-th latest.
                at = at.max(nth_latest + s.interval + self.margin(s.interval));
            }
        }
        (at, paced)
    }

    /// Books a start at `at` (from [`LocationLimiter::next_start`]) in both rules' state.
    fn book(&self, s: &mut State, at: Instant, paced: Instant) {
        let pacing = self.pacing(s.max, s.interval);
        let max = s.max as usize;
        s.slots.push_back(at);
        while s.slots.len() > max {
            s.slots.pop_front();
        }
        s.tat = pacing.map(|(burst, tau)| {
            if at > paced {
                // Held back by the window: the burst credit is spent, the next may start τ later.
                at + tau * burst
            } else {
                s.tat.map_or(at, |t| t.max(at)) + tau
            }
        });
    }

    /// Records a start now if the window allows it; otherwise how much longer to wait.
    pub fn commit(&self) -> Duration {
        self.commit_slot(&mut Instant::now())
    }

    /// [`LocationLimiter::commit`] for the caller that reserved `slot`: when a pause moved
    /// that reservation, `slot` becomes the new start and the wait is until it.
    fn commit_slot(&self, slot: &mut Instant) -> Duration {
        let now = Instant::now();
        let mut s = self.lock();
        let mut moved = false;
        while let Some(i) = s.moved.iter().position(|&(reserved, _)| reserved == *slot) {
            if let Some((_, to)) = s.moved.remove(i) {
                *slot = to;
                moved = true;
            }
        }
        if moved && *slot > now {
            return *slot - now;
        }
        let max = s.max as usize;
        let mut at = now;
        if let Some(b) = s.blocked_until {
            at = at.max(b);
        }
        if s.started.len() >= max {
            if let Some(&nth_latest) = s.started.get(s.started.len() - max) {
                at = at.max(nth_latest + s.interval + self.margin(s.interval));
            }
        }
        let wait = at.saturating_duration_since(now);
        if wait.is_zero() {
            s.started.push_back(now);
            while s.started.len() > max {
                s.started.pop_front();
            }
        }
        wait
    }

    /// Waits for a slot; returns how long it waited. The request should go out right after.
    pub async fn acquire(&self) -> Result<Duration, Error> {
        let now = Instant::now();
        let mut slot = self.reserve_slot(now)?;
        let mut waited = slot.saturating_duration_since(now);
        if !waited.is_zero() {
            tokio::time::sleep(waited).await;
        }
        loop {
            let extra = self.commit_slot(&mut slot);
            if extra.is_zero() {
                return Ok(waited);
            }
            waited += extra;
            tokio::time::sleep(extra).await;
        }
    }

    /// Learns from a response's headers. On a 429 the remaining count is ignored: the
    /// pause derived from Retry-After (see [`LocationLimiter::pause`]) is the better signal.
    pub fn observe(&self, h: &RateHeaders, status: u16) {
        if !self.config.adapt_to_headers {
            return;
        }
        let now = Instant::now();
        let mut s = self.lock();
        if let Some(max) = h.max.filter(|m| (1..=MAX_SANE_BURST).contains(m)) {
            s.max = max;
            while s.slots.len() > max as usize {
                s.slots.pop_front();
            }
            while s.started.len() > max as usize {
                s.started.pop_front();
            }
        }
        if let Some(iv) = h.interval.filter(|d| !d.is_zero() && *d <= MAX_SANE_INTERVAL) {
            s.interval = iv;
        }
        if let Some(remaining) = h.remaining.filter(|_| status != 429) {
            // The server saw more requests in its window than we sent: someone else (another
            // process with the same app) spends this location's budget. Book the difference
            // as our own so we slow down accordingly.
            let server_used = s.max.saturating_sub(remaining) as usize;
            let horizon = s.interval + self.margin(s.interval);
            let local_used = s.slots.iter().filter(|&&t| t + horizon > now).count();
            if server_used > local_used {
                let at = s.slots.back().copied().unwrap_or(now).max(now);
                for _ in local_used..server_used {
                    s.slots.push_back(at);
                }
                let max = s.max as usize;
                while s.slots.len() > max {
                    s.slots.pop_front();
                }
            }
        }
        if let Some(limit) = h.daily_limit {
            s.daily_max = limit;
        }
        if let Some(rem) = h.daily_remaining {
            let used = s.daily_max.saturating_sub(rem);
            s.daily_used = s.daily_used.max(used);
        }
    }

    /// Holds every caller of this location back for `pause` (after a 429), and spreads the
    /// callers already waiting over the time after it at the paced rate (see the module doc).
    pub fn pause(&self, pause: Duration) {
        let now = Instant::now();
        let until = now + pause.min(MAX_SANE_INTERVAL);
        let mut s = self.lock();
        s.blocked_until = Some(s.blocked_until.map_or(until, |b| b.max(until)));
        // A moved reservation whose caller has not asked for it long after its new start
        // belongs to a caller that gave up (its future was dropped).
        let horizon = self.config.max_wait + MAX_SANE_INTERVAL;
        s.moved.retain(|&(_, to)| to + horizon > now);
        let waiting: Vec<Instant> = std::mem::take(&mut s.waiting).into_iter().filter(|&t| t > now).collect();
        if waiting.is_empty() {
            return;
        }
        // Slots are never decreasing: the reservations still to come are a suffix, and
        // they are booked again below, after the pause.
        let past = s.slots.partition_point(|&t| t <= now);
        s.slots.truncate(past);
        // The pacing credit restarts at the end of the pause: B at once, then one every τ.
        s.tat = None;
        for reserved in waiting {
            let (at, paced) = self.next_start(&s, now);
            self.book(&mut s, at, paced);
            s.waiting.push_back(at);
            s.moved.push_back((reserved, at));
        }
    }

    /// The burst limit currently applied: (max, interval).
    pub fn current_limit(&self) -> (u32, Duration) {
        let s = self.lock();
        (s.max, s.interval)
    }

    /// Requests counted against today's budget.
    pub fn daily_used(&self) -> u32 {
        self.lock().daily_used
    }

    /// Today's requests and the daily budget: (used, max).
    pub fn daily(&self) -> (u32, u32) {
        let s = self.lock();
        (s.daily_used, s.daily_max)
    }

    /// Like [`LocationLimiter::acquire`], in `flow`'s turn: each flow holds at most B
    /// reserved slots (B the idle burst) until they start, so while several flows have
    /// requests waiting, the location's slots go round between them, B at a time, however
    /// many requests one of them has queued. `None` (a request outside any flow) takes no turn.
    pub async fn acquire_for(&self, flow: Option<&Arc<str>>) -> Result<Duration, Error> {
        let Some(flow) = flow else { return self.acquire().await };
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            let burst = self.turn_size();
            turns.entry(flow.clone()).or_insert_with(|| Arc::new(Semaphore::new(burst))).clone()
        };
        // The semaphore is never closed; were it, the request would only lose its turn.
        let _turn = turn.acquire().await.ok();
        self.acquire().await
    }

    /// Slots one flow may hold reserved at once: the idle burst, so a lone flow still
    /// starts B requests at once, and at least 1.
    fn turn_size(&self) -> usize {
        let (max, interval) = self.current_limit();
        let burst = self.pacing(max, interval).map_or(max, |(burst, _)| burst);
        usize::try_from(burst).unwrap_or(usize::MAX).clamp(1, Semaphore::MAX_PERMITS)
    }
}

pub(crate) fn until_next_utc_day() -> Duration {
    let now = Utc::now();
    let next = now.date_naive().succ_opt().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|d| d.and_utc());
    next.and_then(|n| (n - now).to_std().ok()).unwrap_or(Duration::from_secs(3600))
}

/// Limiters by location, shared by every caller of one client.
#[derive(Debug, Default)]
pub struct RateLimiters {
    config: RateLimit,
    map: Mutex<HashMap<String, Arc<LocationLimiter>>>,
}

impl RateLimiters {
    pub fn new(config: RateLimit) -> Self {
        RateLimiters { config, map: Mutex::new(HashMap::new()) }
    }

    pub fn get(&self, location: &str) -> Arc<LocationLimiter> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(location.to_owned()).or_insert_with(|| Arc::new(LocationLimiter::new(location, self.config))).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: u32, ms: u64) -> LocationLimiter {
        LocationLimiter::new(
            "loc",
            RateLimit { margin: Some(Duration::ZERO), ..RateLimit::per(max, Duration::from_millis(ms)) },
        )
    }

    /// At most `max` starts in any window of `interval`.
    fn assert_windows(starts: &[Instant], max: usize, interval: Duration) {
        for (i, &t) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|&&u| u < t + interval).count();
            assert!(in_window <= max, "{in_window} starts in one window from index {i}");
        }
    }

    /// `callers` tasks acquire at once; their start times, sorted.
    async fn backlog(l: &Arc<LocationLimiter>, callers: usize) -> Vec<Instant> {
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire().await.unwrap();
                Instant::now()
            }));
        }
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap());
        }
        starts.sort();
        starts
    }

    /// The fewest starts in a window of `interval` that opens at a start (`[s, s + interval)`)
    /// or just after one (`(s, s + interval]`) and ends by the last start: (at, after).
    fn fewest_in_full_windows(starts: &[Instant], interval: Duration) -> (usize, usize) {
        let last = *starts.last().unwrap();
        let (mut at, mut after) = (usize::MAX, usize::MAX);
        for (i, &t) in starts.iter().enumerate() {
            if t + interval > last {
                break;
            }
            at = at.min(starts[i..].iter().take_while(|&&u| u < t + interval).count());
            after = after.min(starts[i..].iter().filter(|&&u| u > t && u <= t + interval).count());
        }
        (at, after)
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_in_any_window() {
        // Pacing off (burst = max): the window rule alone.
        let l = LocationLimiter::new(
            "loc",
            RateLimit {
                margin: Some(Duration::ZERO),
                burst: Some(5),
                ..RateLimit::per(5, Duration::from_millis(1000))
            },
        );
        let starts = backlog(&Arc::new(l), 23).await;
        assert_windows(&starts, 5, Duration::from_millis(1000));
        // And it is not slower than it must be: 23 requests at 5/s need 4 full intervals.
        let span = *starts.last().unwrap() - starts[0];
        assert_eq!(span, Duration::from_millis(4000));

        // Paced (default burst 2): 2 at once, then one every 200 ms; the window rule holds
        // the 6th until 1000 ms, and from there on the flow is even.
        let starts = backlog(&Arc::new(limiter(5, 1000)), 23).await;
        assert_windows(&starts, 5, Duration::from_millis(1000));
        let ms: Vec<u64> = starts.iter().map(|t| (*t - starts[0]).as_millis() as u64).collect();
        let mut want = vec![0, 0, 200, 400, 600];
        want.extend((5..23).map(|i| i * 200));
        assert_eq!(ms, want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ghl_backlog_is_paced_evenly() {
        // GHL's limits with the default margin (200 ms) and burst (3): τ = 102 ms.
        let l = Arc::new(LocationLimiter::new("loc", RateLimit::default()));
        let starts = backlog(&l, 450).await;
        let t = Duration::from_secs(10);
        // (a) Never more than 100 in any window of T + margin, let alone of T.
        assert_windows(&starts, 100, Duration::from_millis(10_200));
        assert_eq!(
            (0..starts.len()).map(|i| starts[i..].iter().take_while(|&&u| u < starts[i] + t).count()).max(),
            Some(100),
            "the first window is full"
        );
        // (b) While work is queued, at least 97 in every window of T that opens at a start
        // and 96 in every window at all (the first window: 3 at once, 97 paced, then the
        // window rule holds the 101st until 10.2 s) ...
        assert_eq!(fewest_in_full_windows(&starts, t), (97, 96));
        // ... and after the first window, one start every 102 ms: 99 (or 98) in every T.
        let first = starts[0] + Duration::from_millis(10_200);
        let steady: Vec<Instant> = starts.iter().copied().filter(|&s| s >= first).collect();
        assert!(steady.len() > 300);
        assert!(steady.windows(2).all(|w| w[1] - w[0] == Duration::from_millis(102)), "evenly spaced");
        assert_eq!(fewest_in_full_windows(&steady, t), (99, 98));
        // The throughput is what the window rule allows: 100 per 10.2 s.
        let span = *starts.last().unwrap() - starts[0];
        assert_eq!(span, Duration::from_millis(102 * 449));
    }

    /// `callers` tasks of `flow` acquire at once; their (start, flow), unsorted.
    fn flow_backlog(
        l: &Arc<LocationLimiter>,
        flow: &'static str,
        callers: usize,
    ) -> Vec<tokio::task::JoinHandle<(Instant, &'static str)>> {
        let key: Arc<str> = flow.into();
        (0..callers)
            .map(|_| {
                let (l, key) = (l.clone(), key.clone());
                tokio::spawn(async move {
                    l.acquire_for(Some(&key)).await.unwrap();
                    (Instant::now(), flow)
                })
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn flows_take_turns_for_the_locations_slots() {
        let l = Arc::new(LocationLimiter::new(
            "loc",
            RateLimit { max_wait: Duration::from_secs(3600), ..RateLimit::default() },
        ));
        // A backfill queues 400 requests; a poll of another flow and three steps of a third
        // come after it.
        let mut tasks = flow_backlog(&l, "backfill", 400);
        tokio::task::yield_now().await;
        tasks.extend(flow_backlog(&l, "contact-created", 1));
        tasks.extend(flow_backlog(&l, "task-sync", 3));
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap());
        }
        starts.sort();
        let position = |flow: &str| starts.iter().rposition(|(_, f)| *f == flow).unwrap();
        // First come, first served would start them after the 400: they go within a few turns.
        assert!(position("contact-created") < 8, "{}", position("contact-created"));
        assert!(position("task-sync") < 12, "{}", position("task-sync"));
        // The location's pace is unchanged: 404 requests as fast as one flow's 404 would go.
        let span = starts.last().unwrap().0 - starts[0].0;
        assert_eq!(span, Duration::from_millis(102 * 403));
        let times: Vec<Instant> = starts.iter().map(|(t, _)| *t).collect();
        assert_windows(&times, 100, Duration::from_millis(10_200));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limiter_admits_a_burst_without_waiting() {
        let l = LocationLimiter::new("loc", RateLimit::default());
        // (c) The first three go at once, the fourth waits τ.
        for _ in 0..3 {
            assert_eq!(l.acquire().await.unwrap(), Duration::ZERO);
        }
        assert_eq!(l.acquire().await.unwrap(), Duration::from_millis(102));
        // Sporadic work: a request every 500 ms never waits.
        for _ in 0..50 {
            tokio::time::advance(Duration::from_millis(500)).await;
            assert_eq!(l.acquire().await.unwrap(), Duration::ZERO);
        }
        // After a backlog, an idle spell of 3·τ earns the whole burst back.
        let l = Arc::new(l);
        backlog(&l, 250).await;
        tokio::time::advance(Duration::from_millis(306)).await;
        for _ in 0..3 {
            assert_eq!(l.acquire().await.unwrap(), Duration::ZERO);
        }
        assert_eq!(l.acquire().await.unwrap(), Duration::from_millis(102));
    }

    #[tokio::test(start_paused = true)]
    async fn random_arrivals_never_overfill_a_window() {
        // Callers arrive in random clumps (up to 25 at once) with idle spells (up to 3 s)
        // between them, at times faster than the limit allows; the limit learned from the
        // headers changes halfway.
        let l = Arc::new(LocationLimiter::new("loc", RateLimit::default()));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut tasks = Vec::new();
        let mut changed = None;
        for round in 0..400 {
            if round == 200 {
                l.observe(
                    &RateHeaders { max: Some(50), interval: Some(Duration::from_secs(5)), ..Default::default() },
                    200,
                );
                changed = Some(Instant::now());
            }
            for _ in 0..next(26) {
                let l = l.clone();
                tasks.push(tokio::spawn(async move {
                    l.acquire().await.unwrap();
                    Instant::now()
                }));
            }
            tokio::time::advance(Duration::from_millis(next(3000))).await;
        }
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap());
        }
        starts.sort();
        // 100 per 10 s, then 50 per 5 s: never more than 100 in 10.2 s, nor 50 in 5.1 s once
        // the callers that reserved under the old limit have gone.
        assert!(starts.len() > 4000, "{}", starts.len());
        assert_windows(&starts, 100, Duration::from_millis(10_200));
        let later = changed.unwrap() + Duration::from_secs(60);
        let i = starts.partition_point(|&s| s < later);
        assert!(starts.len() - i > 1500, "{}", starts.len() - i);
        assert_windows(&starts[i..], 50, Duration::from_millis(5_100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_waker_cannot_overfill_a_window() {
        let l = limiter(2, 1000);
        // Two callers reserve the first window; the first one wakes late.
        assert_eq!(l.reserve().unwrap(), Duration::ZERO);
        assert_eq!(l.reserve().unwrap(), Duration::ZERO);
        assert_eq!(l.commit(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(l.commit(), Duration::ZERO, "late, at 300 ms");
        // Two more callers both get the slot at 1000 ms; the second of them would make
        // three starts within [300, 1300), so on waking it waits until 1300 ms.
        assert_eq!(l.reserve().unwrap(), Duration::from_millis(700));
        assert_eq!(l.reserve().unwrap(), Duration::from_millis(700));
        tokio::time::advance(Duration::from_millis(700)).await;
        assert_eq!(l.commit(), Duration::ZERO);
        assert_eq!(l.commit(), Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(l.commit(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn margin_spaces_windows() {
        let l = LocationLimiter::new(
            "loc",
            RateLimit { margin: Some(Duration::from_millis(30)), ..RateLimit::per(2, Duration::from_millis(100)) },
        );
        assert_eq!(l.reserve().unwrap(), Duration::ZERO);
        assert_eq!(l.reserve().unwrap(), Duration::ZERO);
        assert_eq!(l.reserve().unwrap(), Duration::from_millis(130));
        // Default margin is 2% of the interval.
        let d = LocationLimiter::new("x", RateLimit::per(1, Duration::from_secs(10)));
        d.reserve().unwrap();
        assert_eq!(d.reserve().unwrap(), Duration::from_millis(10_200));
    }

    #[tokio::test(start_paused = true)]
    async fn long_waits_are_refused_not_queued() {
        let l = LocationLimiter::new(
            "loc",
            RateLimit { max_wait: Duration::from_millis(1500), ..RateLimit::per(1, Duration::from_secs(1)) },
        );
        l.reserve().unwrap();
        l.reserve().unwrap();
        assert!(matches!(l.reserve(), Err(Error::RateLimited { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_after_429_holds_everyone() {
        let l = limiter(100, 1000);
        l.pause(Duration::from_millis(700));
        assert_eq!(l.reserve().unwrap(), Duration::from_millis(700));
        assert_eq!(l.reserve().unwrap(), Duration::from_millis(700));
    }

    /// A 429 storm: callers queued before the pause resume at the paced rate after it, B at
    /// once and then one every τ, in the order they queued, and so do those queued later.
    #[tokio::test(start_paused = true)]
    async fn after_a_429_pause_the_waiting_callers_resume_paced_not_at_once() {
        let l = Arc::new(LocationLimiter::new(
            "loc",
            RateLimit { max_wait: Duration::from_secs(3600), ..RateLimit::default() },
        ));
        let t0 = Instant::now();
        let spawn = |l: &Arc<LocationLimiter>, i: usize| {
            let l = l.clone();
            tokio::spawn(async move {
                l.acquire().await.unwrap();
                (Instant::now(), i)
            })
        };
        let mut tasks: Vec<_> = (0..150).map(|i| spawn(&l, i)).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 7 have started (3 at once, then every 102 ms); GHL answers 429, wait 10 s.
        l.pause(Duration::from_secs(10));
        let resume = t0 + Duration::from_millis(10_500);
        tasks.extend((150..250).map(|i| spawn(&l, i)));
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap());
        }
        starts.sort();
        let before = starts.iter().filter(|(t, _)| *t < resume).count();
        assert_eq!(before, 7, "started before the pause");
        let after: Vec<(Instant, usize)> = starts[before..].to_vec();
        assert_eq!(after.iter().filter(|(t, _)| *t == resume).count(), 3, "a burst of B when the pause ends");
        let tau = Duration::from_millis(102);
        for w in after[2..].windows(2) {
            assert!(w[1].0 - w[0].0 >= tau, "{:?} then {:?}", w[0].0 - t0, w[1].0 - t0);
        }
        // In the order they queued: the callers from before the pause first.
        let order: Vec<usize> = after.iter().map(|&(_, i)| i).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        let times: Vec<Instant> = starts.iter().map(|&(t, _)| t).collect();
        assert_windows(&times, 100, Duration::from_millis(10_200));
        // And at the paced rate, not slower: the 243 after the pause take 242·τ, as a backlog
        // of an idle location does (3 at once, the window rule holds the 101st, see
        // `a_ghl_backlog_is_paced_evenly`).
        assert_eq!(after.last().unwrap().0 - resume, tau * (after.len() as u32 - 1));
    }

    /// Per-flow turns keep working across a pause: every request starts, paced.
    #[tokio::test(start_paused = true)]
    async fn flows_turns_survive_a_pause() {
        let l = Arc::new(LocationLimiter::new(
            "loc",
            RateLimit { max_wait: Duration::from_secs(3600), ..RateLimit::default() },
        ));
        let mut tasks = flow_backlog(&l, "backfill", 60);
        tasks.extend(flow_backlog(&l, "other", 20));
        tokio::time::sleep(Duration::from_millis(300)).await;
        l.pause(Duration::from_secs(5));
        let resume = Instant::now() + Duration::from_secs(5);
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap().0);
        }
        starts.sort();
        assert_eq!(starts.len(), 80);
        let after: Vec<Instant> = starts.iter().copied().filter(|&t| t >= resume).collect();
        assert_eq!(after.iter().filter(|&&t| t == resume).count(), 3);
        assert!(after[2..].windows(2).all(|w| w[1] - w[0] >= Duration::from_millis(102)));
    }

    #[tokio::test(start_paused = true)]
    async fn adapts_limit_and_books_foreign_usage() {
        let l = limiter(100, 10_000);
        l.observe(&RateHeaders { max: Some(3), interval: Some(Duration::from_millis(500)), ..Default::default() }, 200);
        assert_eq!(l.current_limit(), (3, Duration::from_millis(500)));
        assert_eq!(l.reserve().unwrap(), Duration::ZERO);
        // The server says only 1 remains although we sent 1 of 3: someone else sent one.
        l.observe(&RateHeaders { remaining: Some(0), ..Default::default() }, 429);
        assert_eq!(l.reserve().unwrap(), Duration::ZERO, "a 429's remaining count is not booked");
        l.observe(&RateHeaders { remaining: Some(0), ..Default::default() }, 200);
        assert_eq!(l.reserve().unwrap(), Duration::from_millis(500));
        let l = limiter(100, 10_000);
        l.observe(&RateHeaders { max: Some(3), interval: Some(Duration::from_millis(500)), ..Default::default() }, 200);
        assert_eq!(l.reserve().unwrap(), Duration::ZERO);
        l.observe(&RateHeaders { remaining: Some(1), ..Default::default() }, 200);
        assert_eq!(l.reserve().unwrap(), Duration::ZERO);
        assert_eq!(l.reserve().unwrap(), Duration::from_millis(500));
        // Nonsense is ignored.
        l.observe(&RateHeaders { max: Some(0), interval: Some(Duration::ZERO), ..Default::default() }, 200);
        assert_eq!(l.current_limit(), (3, Duration::from_millis(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn daily_budget_is_enforced_and_follows_headers() {
        let l = LocationLimiter::new("loc", RateLimit { daily_max: 2, ..RateLimit::default() });
        l.reserve().unwrap();
        l.reserve().unwrap();
        let e = l.reserve().unwrap_err();
        assert!(matches!(e, Error::BudgetSpent { limit: 2, .. }), "{e:?}");
        assert!(e.budget_spent().is_some_and(|d| d <= Duration::from_secs(86_400)));
        assert!(e.to_string().contains("daily budget of 2 requests for loc is spent"), "{e}");
        let l = limiter(100, 1000);
        l.observe(&RateHeaders { daily_limit: Some(10), daily_remaining: Some(0), ..Default::default() }, 200);
        assert!(l.reserve().is_err());
    }

    #[test]
    fn parses_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("X-RateLimit-Max", "50".parse().unwrap());
        h.insert("X-RateLimit-Remaining", "49".parse().unwrap());
        h.insert("X-RateLimit-Interval-Milliseconds", "1000".parse().unwrap());
        h.insert("X-RateLimit-Limit-Daily", "200000".parse().unwrap());
        h.insert("X-RateLimit-Daily-Remaining", "199999".parse().unwrap());
        h.insert("Retry-After", "2".parse().unwrap());
        let r = RateHeaders::from_headers(&h);
        assert_eq!(
            r,
            RateHeaders {
                daily_limit: Some(200_000),
                daily_remaining: Some(199_999),
                interval: Some(Duration::from_secs(1)),
                max: Some(50),
                remaining: Some(49),
                retry_after: Some(Duration::from_secs(2)),
            }
        );
        h.insert("X-RateLimit-Max", "lots".parse().unwrap());
        assert_eq!(RateHeaders::from_headers(&h).max, None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    }
}
