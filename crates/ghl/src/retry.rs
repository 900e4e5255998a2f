//! When to try a request again, as one pure function.
//!
//! `backon` is not used: its retry loop decides from the error alone, while this decision
//! also depends on the method and on a server-given delay, and keeping it a plain function
//! makes every case a one-line unit test.

use std::time::Duration;

use catalog::Method;

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. 1 disables retries.
    pub max_attempts: u32,
    /// Backoff ceiling for the first retry; doubles on each further retry.
    pub base: Duration,
    /// Highest backoff ceiling.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base: Duration::from_millis(200), cap: Duration::from_secs(20) }
    }
}

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// GHL answered with this status; `retry_after` is what its headers asked for.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No connection was made: the request surely did not reach GHL.
    ConnectFailed,
    /// The connection broke or timed out after the request may have been sent.
    Timeout,
    Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Retry(Duration),
    GiveUp,
}

/// Whether to try again after `attempt` (1 for the first attempt) ended with `outcome`.
///
/// `jitter` is a number in `[0, 1)` the caller draws at random; it scales the exponential
/// ceiling ("full jitter"), so concurrent callers that failed together spread out.
/// POST and PATCH are repeated only when GHL surely did not act on them: no connection, or
/// a 429 (rejected before any work).
pub fn decide(policy: &RetryPolicy, method: Method, outcome: Outcome, attempt: u32, jitter: f64) -> Decision {
    if attempt >= policy.max_attempts {
        return Decision::GiveUp;
    }
    let safe = method.is_idempotent();
    let server_delay = match outcome {
        Outcome::Status { status: 429, retry_after } => retry_after,
        Outcome::Status { status, .. } if (500..=599).contains(&status) && safe => None,
        Outcome::ConnectFailed => None,
        Outcome::Timeout | Outcome::Broken if safe => None,
        _ => return Decision::GiveUp,
    };
    let exp = attempt.saturating_sub(1).min(30);
    let ceiling = policy.base.saturating_mul(1u32 << exp).min(policy.cap);
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    let backoff = ceiling.mul_f64(jitter);
    // A server-given delay is a floor: retrying earlier only earns another 429.
    Decision::Retry(server_delay.map_or(backoff, |d| d.max(backoff)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy =
        RetryPolicy { max_attempts: 4, base: Duration::from_millis(100), cap: Duration::from_secs(1) };

    fn st(status: u16) -> Outcome {
        Outcome::Status { status, retry_after: None }
    }

    #[test]
    fn safe_methods_retry_server_errors_and_transport_failures() {
        for m in [Method::Get, Method::Put, Method::Delete] {
            for o in [st(500), st(502), st(503), st(599), Outcome::Timeout, Outcome::Broken, Outcome::ConnectFailed] {
                assert!(matches!(decide(&P, m, o, 1, 0.5), Decision::Retry(_)), "{m:?} {o:?}");
            }
        }
    }

    #[test]
    fn post_and_patch_retry_only_when_not_sent() {
        for m in [Method::Post, Method::Patch] {
            assert!(matches!(decide(&P, m, Outcome::ConnectFailed, 1, 0.5), Decision::Retry(_)));
            assert!(matches!(decide(&P, m, st(429), 1, 0.5), Decision::Retry(_)));
            for o in [st(500), st(503), Outcome::Timeout, Outcome::Broken] {
                assert_eq!(decide(&P, m, o, 1, 0.5), Decision::GiveUp, "{m:?} {o:?}");
            }
        }
    }

    #[test]
    fn client_errors_never_retry() {
        for s in [400, 401, 403, 404, 409, 422] {
            assert_eq!(decide(&P, Method::Get, st(s), 1, 0.5), Decision::GiveUp);
        }
        assert_eq!(decide(&P, Method::Get, st(200), 1, 0.5), Decision::GiveUp);
    }

    #[test]
    fn attempts_are_bounded() {
        assert!(matches!(decide(&P, Method::Get, st(503), 3, 0.5), Decision::Retry(_)));
        assert_eq!(decide(&P, Method::Get, st(503), 4, 0.5), Decision::GiveUp);
        assert_eq!(decide(&P, Method::Get, st(429), 9, 0.5), Decision::GiveUp);
        let once = RetryPolicy { max_attempts: 1, ..P };
        assert_eq!(decide(&once, Method::Get, st(503), 1, 0.5), Decision::GiveUp);
    }

    #[test]
    fn full_jitter_exponential_backoff_is_capped() {
        let d = |attempt, j| match decide(&P, Method::Get, st(503), attempt, j) {
            Decision::Retry(d) => d,
            Decision::GiveUp => Duration::MAX,
        };
        assert_eq!(d(1, 0.0), Duration::ZERO);
        assert_eq!(d(1, 0.5), Duration::from_millis(50));
        assert_eq!(d(2, 0.5), Duration::from_millis(100));
        assert_eq!(d(3, 0.5), Duration::from_millis(200));
        let big = RetryPolicy { max_attempts: 100, ..P };
        let far = decide(&big, Method::Get, st(503), 60, 0.999);
        assert!(matches!(far, Decision::Retry(x) if x <= P.cap));
        // Out-of-range jitter from a careless caller cannot blow the cap or panic.
        assert!(matches!(decide(&P, Method::Get, st(503), 2, 7.0), Decision::Retry(x) if x <= P.cap));
        assert!(matches!(decide(&P, Method::Get, st(503), 2, f64::NAN), Decision::Retry(x) if x == Duration::ZERO));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let o = Outcome::Status { status: 429, retry_after: Some(Duration::from_secs(3)) };
        assert_eq!(decide(&P, Method::Post, o, 1, 0.0), Decision::Retry(Duration::from_secs(3)));
        let o = Outcome::Status { status: 429, retry_after: Some(Duration::from_millis(10)) };
        assert_eq!(decide(&P, Method::Get, o, 2, 1.0), Decision::Retry(Duration::from_millis(200)));
    }
}
