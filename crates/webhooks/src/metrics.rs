//! Counters of deliveries by outcome, so a wrong key or a replay attempt shows on a
//! dashboard rather than only in logs. Labels are the fixed outcomes, never ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Accepted,
    Unsigned,
    BadSignature,
    Malformed,
    Stale,
    Replayed,
    /// The store could not persist it: answered 429 so GHL delivers it again.
    StoreFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Unsigned => "unsigned",
            Outcome::BadSignature => "bad_signature",
            Outcome::Malformed => "malformed",
            Outcome::Stale => "stale",
            Outcome::Replayed => "replayed",
            Outcome::StoreFailed => "store_failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    result: &'static str,
}

#[derive(Debug, Default)]
pub struct WebhookMetrics {
    deliveries: Family<OutcomeLabels, Counter>,
}

impl WebhookMetrics {
    /// Adds the counters to a registry (flowd's `/metrics`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("webhook_deliveries", "GHL webhook deliveries, by result", self.deliveries.clone());
    }

    pub fn record(&self, outcome: Outcome) {
        self.deliveries.get_or_create(&OutcomeLabels { result: outcome.as_str() }).inc();
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.deliveries.get_or_create(&OutcomeLabels { result: outcome.as_str() }).get()
    }
}
