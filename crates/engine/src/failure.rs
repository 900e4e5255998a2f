//! How a step ended when it did not succeed, decided for GHL steps and `http.request`
//! alike by the one retry rule, [`ghl::verdict`].

use catalog::Method;
use ghl::{Outcome, Verdict};

#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth trying again later (429, connection errors; 5xx and timeouts of safe requests).
    Retry(String),
    /// Trying again will not help (4xx, a template that cannot render).
    Permanent(String),
    /// The request may have reached the other side and is not safe to repeat.
    InDoubt(String),
    /// Nothing was sent, and nothing can be before `after` (the location's daily budget is
    /// spent): the run waits without spending an attempt.
    Deferred { after: std::time::Duration, why: String },
}

impl Failure {
    /// The failure a request sent with `method` ended in with `outcome`.
    pub(crate) fn of(method: Method, outcome: Outcome, text: String) -> Failure {
        match ghl::verdict(method, outcome) {
            Verdict::Retry => Failure::Retry(text),
            Verdict::InDoubt => Failure::InDoubt(text),
            Verdict::Permanent => Failure::Permanent(text),
        }
    }

    /// A GHL call the client gave up on: its own retries are spent, so this decides
    /// whether the run tries again later.
    pub(crate) fn of_ghl(e: &ghl::Error, method: Method) -> Failure {
        match e {
            ghl::Error::BudgetSpent { retry_after, .. } => {
                Failure::Deferred { after: *retry_after, why: e.to_string() }
            }
            _ => Failure::of(method, e.outcome(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn api(status: u16) -> ghl::Error {
        ghl::Error::Api(ghl::ApiError {
            status,
            status_code: Some(status),
            message: ghl::ApiMessage::Text("x".into()),
            error: None,
            trace_id: None,
            retry_after: None,
        })
    }

    #[test]
    fn ghl_failures_follow_the_one_rule() {
        let kind = |e: &ghl::Error, m: Method| match Failure::of_ghl(e, m) {
            Failure::Retry(_) => "retry",
            Failure::Permanent(_) => "permanent",
            Failure::InDoubt(_) => "in doubt",
            Failure::Deferred { .. } => "deferred",
        };
        assert_eq!(kind(&api(503), Method::Post), "in doubt");
        assert_eq!(kind(&api(503), Method::Put), "retry");
        assert_eq!(kind(&api(429), Method::Post), "retry");
        assert_eq!(kind(&api(422), Method::Get), "permanent");
        assert_eq!(kind(&ghl::Error::Timeout, Method::Post), "in doubt");
        assert_eq!(kind(&ghl::Error::Timeout, Method::Delete), "retry");
        assert_eq!(kind(&ghl::Error::Connect("refused".into()), Method::Post), "retry");
        assert_eq!(kind(&ghl::Error::InvalidRequest("bad".into()), Method::Get), "permanent");
        let spent = ghl::Error::BudgetSpent { location: "l".into(), limit: 1, retry_after: Duration::from_secs(5) };
        assert_eq!(kind(&spent, Method::Post), "deferred");
    }
}
