//! A location's request budget shared with other processes (the nodes of a cluster), on
//! top of the local limiter ([`crate::ratelimit`]): before a request leaves, it takes one
//! request from a [`SharedBudget`], a few at a time.
//!
//! The shared count is kept in fixed windows of a tenth of GHL's interval (1 s of 10 s),
//! each allowing `max / 11` requests: any span of one interval overlaps at most 11 such
//! windows, so all processes together never start more than `max` requests in any interval,
//! wherever GHL's own window falls, at the price of a tenth of the budget. The day's budget
//! is counted per UTC day. Window and day are the store's clock, not each process's.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

/// Windows per GHL interval.
pub const WINDOWS_PER_INTERVAL: u32 = 10;

/// Requests taken from the shared budget at once: a process that took them and does not
/// use them within the window wastes them, so few.
const BATCH: u32 = 3;

/// What [`SharedBudget::take`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Requests granted now (0: the window or the day is spent).
    pub granted: u32,
    /// How long the window they belong to lasts from now.
    pub window_ends_in: Duration,
    /// The day's budget is spent (across every process).
    pub day_spent: bool,
}

/// A budget several processes take requests from (see the module doc).
pub trait SharedBudget: Send + Sync + 'static {
    /// Takes up to `want` requests of `location`'s budget in the current window of
    /// `window` length, which allows `per_window`, and in the current UTC day, which allows
    /// `daily`. Synchronous: the client calls it from `spawn_blocking`.
    fn take(&self, location: &str, window: Duration, per_window: u32, daily: u32, want: u32) -> Result<Grant, String>;
}

/// One location's requests taken and not yet used, and the single flight that takes more.
#[derive(Debug, Default)]
pub(crate) struct SharedCredits {
    state: tokio::sync::Mutex<Credits>,
}

#[derive(Debug, Default)]
struct Credits {
    left: u32,
    until: Option<Instant>,
}

impl SharedCredits {
    /// Waits until `budget` grants this process one request of `location`; returns how long
    /// it waited. `limit` is the local limiter's current (max, interval), `daily` its daily
    /// budget.
    pub(crate) async fn acquire(
        &self,
        budget: &Arc<dyn SharedBudget>,
        location: &str,
        limit: (u32, Duration),
        daily: u32,
    ) -> Result<Duration, Error> {
        let started = Instant::now();
        // Held while asking: the callers of one location share one question to the store.
        let mut credits = self.state.lock().await;
        loop {
            let now = Instant::now();
            if credits.left > 0 && credits.until.is_some_and(|u| u > now) {
                credits.left -= 1;
                return Ok(now - started);
            }
            let (max, interval) = limit;
            let window = interval / WINDOWS_PER_INTERVAL;
            let per_window = (max / (WINDOWS_PER_INTERVAL + 1)).max(1);
            let (budget, location_owned) = (budget.clone(), location.to_string());
            let grant =
                tokio::task::spawn_blocking(move || budget.take(&location_owned, window, per_window, daily, BATCH))
                    .await
                    .map_err(|e| Error::TokenStore(format!("shared budget task failed: {e}")))?
                    .map_err(|e| Error::RateLimited {
                        location: location.to_string(),
                        why: format!("the shared request budget could not be read: {e}"),
                        retry_after: Duration::from_secs(1),
                    })?;
            if grant.day_spent {
                return Err(Error::BudgetSpent {
                    location: location.to_string(),
                    limit: daily,
                    retry_after: crate::ratelimit::until_next_utc_day(),
                });
            }
            let now = Instant::now();
            if grant.granted > 0 {
                credits.left = grant.granted - 1;
                credits.until = Some(now + grant.window_ends_in);
                return Ok(now - started);
            }
            // The window is spent by every process together: the next one.
            tokio::time::sleep(grant.window_ends_in + Duration::from_millis(1)).await;
        }
    }
}
