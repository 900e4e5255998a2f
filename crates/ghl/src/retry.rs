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

impl RetryPolicy {
    /// The backoff ceiling before retry number `attempt` (1 for the first retry):
    /// `base * 2^(attempt-1)`, at most `cap`. The one exponential backoff: the client's
    /// retries within a request and the engine's retries of a run both use it.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }
}

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this status; `retry_after` is what its headers asked for.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No connection was made, or the request was refused before it left (a local rate
    /// limit, a token that could not be had): it surely did not reach the server.
    ConnectFailed,
    /// The connection broke or timed out after the request may have been sent.
    Timeout,
    Broken,
    /// The request cannot be sent as described (an invalid URL, header or body, a target
    /// refused by policy): sending it again would fail the same way.
    Invalid,
}

/// What an attempt's outcome means for the request, whatever the attempt count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Trying again may succeed and cannot act twice.
    Retry,
    /// The server may have acted on the request, and it is not safe to repeat.
    InDoubt,
    /// Trying again will not help (a 4xx, an invalid request).
    Permanent,
}

/// The one rule for whether a failed request may be repeated: a request that surely did
/// not reach the server (no connection, a 429, which GHL refuses before doing any work)
/// always may; one that may have been acted on (a 5xx, a timeout, a broken connection)
/// only when its method is idempotent ([`Method::is_idempotent`]), else it is in doubt.
pub fn verdict(method: Method, outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Status { status: 429, .. } | Outcome::ConnectFailed => Verdict::Retry,
        Outcome::Status { status: 500..=599, .. } | Outcome::Timeout | Outcome::Broken => {
            if method.is_idempotent() {
                Verdict::Retry
            } else {
                Verdict::InDoubt
            }
        }
        Outcome::Status { .. } | Outcome::Invalid => Verdict::Permanent,
    }
}

impl crate::Error {
    /// The outcome this error stands for, for [`verdict`]: what the client gave up on, seen
    /// by a caller that decides whether to try the whole thing again later.
    pub fn outcome(&self) -> Outcome {
        use crate::Error as E;
        match self {
            E::Api(e) => Outcome::Status { status: e.status, retry_after: e.retry_after },
            E::Timeout => Outcome::Timeout,
            E::Transport(_) | E::Decode(_) | E::Pagination(_) => Outcome::Broken,
            E::InvalidRequest(_) => Outcome::Invalid,
            // Refused before anything was sent.
            E::Connect(_)
            | E::RateLimited { .. }
            | E::BudgetSpent { .. }
            | E::ReconnectNeeded { .. }
            | E::TokenStore(_) => Outcome::ConnectFailed,
        }
    }
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
/// What may be repeated at all is [`verdict`]'s rule: POST and PATCH only when GHL surely
/// did not act on them.
pub fn decide(policy: &RetryPolicy, method: Method, outcome: Outcome, attempt: u32, jitter: f64) -> Decision {
    if attempt >= policy.max_attempts || verdict(method, outcome) != Verdict::Retry {
        return Decision::GiveUp;
    }
    let server_delay = match outcome {
        Outcome::Status { status: 429, retry_after } => retry_after,
        _ => None,
    };
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    let backoff = policy.ceiling(attempt).mul_f64(jitter);
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
    fn the_verdict_says_why_a_request_is_not_repeated() {
        assert_eq!(verdict(Method::Post, st(503)), Verdict::InDoubt);
        assert_eq!(verdict(Method::Patch, Outcome::Timeout), Verdict::InDoubt);
        assert_eq!(verdict(Method::Put, st(503)), Verdict::Retry);
        assert_eq!(verdict(Method::Post, st(429)), Verdict::Retry);
        assert_eq!(verdict(Method::Post, Outcome::ConnectFailed), Verdict::Retry);
        assert_eq!(verdict(Method::Get, st(404)), Verdict::Permanent);
        assert_eq!(verdict(Method::Get, Outcome::Invalid), Verdict::Permanent);
        assert_eq!(decide(&P, Method::Get, Outcome::Invalid, 1, 0.5), Decision::GiveUp);
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        assert_eq!(P.ceiling(1), Duration::from_millis(100));
        assert_eq!(P.ceiling(2), Duration::from_millis(200));
        assert_eq!(P.ceiling(4), Duration::from_millis(800));
        assert_eq!(P.ceiling(5), P.cap);
        assert_eq!(P.ceiling(u32::MAX), P.cap);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let o = Outcome::Status { status: 429, retry_after: Some(Duration::from_secs(3)) };
        assert_eq!(decide(&P, Method::Post, o, 1, 0.0), Decision::Retry(Duration::from_secs(3)));
        let o = Outcome::Status { status: 429, retry_after: Some(Duration::from_millis(10)) };
        assert_eq!(decide(&P, Method::Get, o, 2, 1.0), Decision::Retry(Duration::from_millis(200)));
    }
}
