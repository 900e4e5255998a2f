//! Prometheus metrics of the engine and of its GHL calls. Labels stay bounded: per flow,
//! step, operation and status, never per contact or item.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;
use store::RunStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub flow: String,
    pub op: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub flow: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub flow: String,
    pub step: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub location: String,
    /// Empty for requests outside a flow.
    pub flow: String,
    pub purpose: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocationLabels {
    pub location: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub polls: Family<PollLabels, Counter>,
    pub poll_duration: HistogramFamily<FlowLabels>,
    pub items_seen: Family<FlowLabels, Counter>,
    pub items_new: Family<FlowLabels, Counter>,
    pub runs: Family<RunLabels, Counter>,
    pub step_duration: HistogramFamily<StepLabels>,
    pub queue_depth: Gauge,
    pub poll_drift: Histogram,
    pub poll_slot_waits: Counter,
    pub poll_slot_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub ghl_responses: Family<StatusLabels, Counter>,
    pub ghl_transport_errors: Counter,
    pub ghl_retries: Counter,
    pub rate_limit_waits: Counter,
    pub rate_limit_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub token_refreshes: Counter,
    /// GHL requests sent (each attempt), by location, flow and purpose.
    pub ghl_requests: Family<RequestLabels, Counter>,
    /// Requests a location has spent today (UTC), as its limiter counts them.
    pub daily_budget_used: Family<LocationLabels, Gauge>,
    /// A location's daily budget (GHL: 200,000, or what its headers announce).
    pub daily_budget_limit: Family<LocationLabels, Gauge>,
    /// 1 while a flow's polls wait for its location's daily budget to renew.
    pub flow_paused: Family<FlowLabels, Gauge>,
    /// Now minus the newest record time an incremental trigger has seen.
    pub watermark_lag: Family<FlowLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("flowd")),
            polls: Family::default(),
            poll_duration: Family::new_with_constructor(latency_histogram),
            items_seen: Family::default(),
            items_new: Family::default(),
            runs: Family::default(),
            step_duration: Family::new_with_constructor(latency_histogram),
            queue_depth: Gauge::default(),
            poll_drift: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            poll_slot_waits: Counter::default(),
            poll_slot_wait_seconds: Counter::default(),
            ghl_responses: Family::default(),
            ghl_transport_errors: Counter::default(),
            ghl_retries: Counter::default(),
            rate_limit_waits: Counter::default(),
            rate_limit_wait_seconds: Counter::default(),
            token_refreshes: Counter::default(),
            ghl_requests: Family::default(),
            daily_budget_used: Family::default(),
            daily_budget_limit: Family::default(),
            watermark_lag: Family::default(),
            flow_paused: Family::default(),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register("polls", "Trigger polls", m.polls.clone());
            r.register("poll_duration_seconds", "Time one poll takes, GHL calls included", m.poll_duration.clone());
            r.register("items_seen", "Items trigger polls returned", m.items_seen.clone());
            r.register("items_new", "Items not seen before", m.items_new.clone());
            r.register("runs", "Runs finished, by final status", m.runs.clone());
            r.register("step_duration_seconds", "Time one step takes, by outcome", m.step_duration.clone());
            r.register("queue_depth", "Runs waiting for an execution slot", m.queue_depth.clone());
            r.register("poll_drift_seconds", "How late scheduled polls start", m.poll_drift.clone());
            r.register(
                "poll_slot_waits",
                "Scheduled polls that waited for a slot of their account (poll_concurrency)",
                m.poll_slot_waits.clone(),
            );
            r.register(
                "poll_slot_wait_seconds",
                "Time scheduled polls spent waiting for a slot of their account",
                m.poll_slot_wait_seconds.clone(),
            );
            r.register("ghl_responses", "GHL responses by HTTP status", m.ghl_responses.clone());
            r.register("ghl_transport_errors", "GHL calls that got no response", m.ghl_transport_errors.clone());
            r.register("ghl_retries", "GHL calls repeated after a failure", m.ghl_retries.clone());
            r.register("rate_limit_waits", "Calls that waited for the rate limiter", m.rate_limit_waits.clone());
            r.register(
                "rate_limit_wait_seconds",
                "Time spent waiting for the rate limiter",
                m.rate_limit_wait_seconds.clone(),
            );
            r.register("token_refreshes", "OAuth token refreshes sent to GHL", m.token_refreshes.clone());
            r.register(
                "ghl_requests",
                "GHL requests sent, each attempt, by location, flow and purpose (poll, step, token, other)",
                m.ghl_requests.clone(),
            );
            r.register(
                "ghl_daily_budget_used",
                "Requests a location has spent today (UTC) against its daily budget",
                m.daily_budget_used.clone(),
            );
            r.register(
                "flow_paused",
                "1 while a flow's polls wait for its location's daily budget to renew",
                m.flow_paused.clone(),
            );
            r.register("ghl_daily_budget_limit", "A location's daily request budget", m.daily_budget_limit.clone());
            r.register(
                "trigger_watermark_lag_seconds",
                "Now minus the newest record time an incremental trigger has seen",
                m.watermark_lag.clone(),
            );
        }
        m
    }

    /// Adds metrics kept elsewhere (the webhook receiver's) to this registry, so one
    /// `/metrics` shows everything.
    pub fn register_with(&self, add: impl FnOnce(&mut Registry)) {
        if let Ok(mut r) = self.registry.lock() {
            add(&mut r);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }

    pub(crate) fn record_poll(&self, flow: &str, op: &str, took: Duration, report: Option<&crate::PollReport>) {
        let result = if report.is_some() { "ok" } else { "error" };
        self.polls.get_or_create(&PollLabels { flow: flow.into(), op: op.into(), result }).inc();
        let labels = FlowLabels { flow: flow.into() };
        self.poll_duration.get_or_create(&labels).observe(took.as_secs_f64());
        if let Some(r) = report {
            self.items_seen.get_or_create(&labels).inc_by(r.items as u64);
            self.items_new.get_or_create(&labels).inc_by(r.new as u64);
        }
    }

    pub(crate) fn record_watermark(&self, flow: &str, lag_ms: i64) {
        self.watermark_lag.get_or_create(&FlowLabels { flow: flow.into() }).set(lag_ms as f64 / 1000.0);
    }

    pub(crate) fn record_poll_slot_wait(&self, waited: Duration) {
        // Under a millisecond is a free slot, not a wait.
        if waited >= Duration::from_millis(1) {
            self.poll_slot_waits.inc();
            self.poll_slot_wait_seconds.inc_by(waited.as_secs_f64());
        }
    }

    pub(crate) fn record_run(&self, flow: &str, status: RunStatus, _took: Duration) {
        self.runs.get_or_create(&RunLabels { flow: flow.into(), status: status.as_str() }).inc();
    }

    pub(crate) fn record_step(&self, flow: &str, step: &str, took: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.step_duration
            .get_or_create(&StepLabels { flow: flow.into(), step: step.into(), outcome })
            .observe(took.as_secs_f64());
    }
}

impl ghl::Observer for Metrics {
    fn response(&self, status: u16) {
        self.ghl_responses.get_or_create(&StatusLabels { status: status.to_string() }).inc();
    }
    fn transport_error(&self) {
        self.ghl_transport_errors.inc();
    }
    fn retry(&self, _delay: Duration) {
        self.ghl_retries.inc();
    }
    fn rate_limit_wait(&self, wait: Duration) {
        self.rate_limit_waits.inc();
        self.rate_limit_wait_seconds.inc_by(wait.as_secs_f64());
    }
    fn token_refresh(&self, resource: &str) {
        self.token_refreshes.inc();
        self.ghl_requests
            .get_or_create(&RequestLabels {
                location: resource.to_owned(),
                flow: String::new(),
                purpose: ghl::Purpose::Token.as_str(),
            })
            .inc();
    }
    fn sending(&self, s: &ghl::Sending<'_>) {
        let labels = RequestLabels {
            location: s.location.to_owned(),
            flow: s.origin.flow.as_deref().unwrap_or_default().to_owned(),
            purpose: s.origin.purpose.as_str(),
        };
        self.ghl_requests.get_or_create(&labels).inc();
        let location = LocationLabels { location: s.location.to_owned() };
        self.daily_budget_used.get_or_create(&location).set(i64::from(s.daily_used));
        self.daily_budget_limit.get_or_create(&location).set(i64::from(s.daily_max));
    }
}
