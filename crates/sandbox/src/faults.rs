//! Fault injection: 5xx answers, bursts of 429, added latency, requests that hang until the
//! client gives up, malformed JSON bodies and dropped connections; globally or per
//! operation key, from a seeded generator so a run can be replayed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Probabilities (0.0 to 1.0) of each fault, checked in the order of the fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRule {
    /// Close the socket without answering.
    pub drop_rate: f64,
    /// Never answer (until the sandbox stops or the client goes away).
    pub hang_rate: f64,
    /// Answer with a 5xx status.
    pub error_rate: f64,
    /// Which 5xx status (default 500).
    pub error_status: Option<u16>,
    /// Carry the operation out before answering the 5xx, as GHL does when its gateway
    /// gives up on a backend that did the work: the client cannot tell it from a refusal.
    pub error_after_processing: bool,
    /// Start a burst of 429 answers.
    pub throttle_rate: f64,
    /// How many consecutive requests a 429 burst covers (default 1).
    pub throttle_burst: Option<u32>,
    /// Answer 200 with a body that is not valid JSON.
    pub malformed_rate: f64,
    /// Delay added before answering, in milliseconds.
    pub latency_ms: u64,
    /// Extra random delay of up to this many milliseconds.
    pub latency_jitter_ms: u64,
    /// Stop injecting after this many injected faults (latency excluded); `None` = forever.
    pub times: Option<u32>,
}

/// Rules for the whole API and overrides per operation key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSettings {
    pub global: FaultRule,
    /// An operation's rule replaces the global one for that operation.
    pub operations: BTreeMap<String, FaultRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Drop,
    Hang,
    Error(u16),
    /// The operation is carried out, then answered with this 5xx status.
    ErrorAfterProcessing(u16),
    Throttle,
    Malformed,
}

#[derive(Debug)]
struct Inner {
    settings: FaultSettings,
    rng: StdRng,
    /// 429s still owed by a burst, per rule ("" = global).
    throttle_left: BTreeMap<String, u32>,
    /// Faults left per rule when the rule has `times`.
    times_left: BTreeMap<String, u32>,
}

#[derive(Debug)]
pub struct Faults {
    inner: Mutex<Inner>,
    /// Fast path: most runs inject nothing, so skip the lock entirely.
    active: std::sync::atomic::AtomicBool,
}

impl Faults {
    pub fn new(settings: FaultSettings, seed: u64) -> Faults {
        let f = Faults {
            inner: Mutex::new(Inner {
                settings: FaultSettings::default(),
                rng: StdRng::seed_from_u64(seed),
                throttle_left: BTreeMap::new(),
                times_left: BTreeMap::new(),
            }),
            active: std::sync::atomic::AtomicBool::new(false),
        };
        f.set(settings, Some(seed));
        f
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> FaultSettings {
        self.lock().settings.clone()
    }

    /// Replaces the rules; with `seed`, also restarts the random sequence.
    pub fn set(&self, settings: FaultSettings, seed: Option<u64>) {
        let mut inner = self.lock();
        let active = settings != FaultSettings::default();
        inner.throttle_left.clear();
        inner.times_left = std::iter::once((String::new(), settings.global.times))
            .chain(settings.operations.iter().map(|(k, r)| (k.clone(), r.times)))
            .filter_map(|(k, t)| t.map(|t| (k, t)))
            .collect();
        inner.settings = settings;
        if let Some(seed) = seed {
            inner.rng = StdRng::seed_from_u64(seed);
        }
        self.active.store(active, std::sync::atomic::Ordering::Relaxed);
    }

    /// Decides the fault and the added delay for one request to `op_key`.
    pub fn roll(&self, op_key: &str) -> (Fault, Duration) {
        if !self.active.load(std::sync::atomic::Ordering::Relaxed) {
            return (Fault::None, Duration::ZERO);
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (scope, rule) = match inner.settings.operations.get(op_key) {
            Some(r) => (op_key.to_string(), r.clone()),
            None => (String::new(), inner.settings.global.clone()),
        };
        let jitter = if rule.latency_jitter_ms > 0 { inner.rng.random_range(0..=rule.latency_jitter_ms) } else { 0 };
        let delay = Duration::from_millis(rule.latency_ms + jitter);
        if inner.times_left.get(&scope) == Some(&0) {
            return (Fault::None, delay);
        }
        let fault = match inner.throttle_left.get_mut(&scope) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Fault::Throttle
            }
            _ => {
                let mut chance = |p: f64| p > 0.0 && inner.rng.random::<f64>() < p;
                if chance(rule.drop_rate) {
                    Fault::Drop
                } else if chance(rule.hang_rate) {
                    Fault::Hang
                } else if chance(rule.error_rate) {
                    let status = rule.error_status.filter(|s| (500..600).contains(s)).unwrap_or(500);
                    if rule.error_after_processing {
                        Fault::ErrorAfterProcessing(status)
                    } else {
                        Fault::Error(status)
                    }
                } else if chance(rule.throttle_rate) {
                    let burst = rule.throttle_burst.unwrap_or(1).max(1);
                    inner.throttle_left.insert(scope.clone(), burst - 1);
                    Fault::Throttle
                } else if chance(rule.malformed_rate) {
                    Fault::Malformed
                } else {
                    Fault::None
                }
            }
        };
        if fault != Fault::None {
            if let Some(n) = inner.times_left.get_mut(&scope) {
                *n = n.saturating_sub(1);
            }
        }
        (fault, delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(seed: u64) -> Vec<Fault> {
        let rule = FaultRule { error_rate: 0.5, ..FaultRule::default() };
        let f = Faults::new(FaultSettings { global: rule, ..FaultSettings::default() }, seed);
        (0..32).map(|_| f.roll("x").0).collect()
    }

    #[test]
    fn seeded_runs_repeat() {
        assert_eq!(sequence(7), sequence(7));
        assert!(sequence(7).contains(&Fault::Error(500)));
        assert!(sequence(7).contains(&Fault::None));
    }

    #[test]
    fn throttle_bursts_and_times() {
        let rule = FaultRule { throttle_rate: 1.0, throttle_burst: Some(3), times: Some(3), ..FaultRule::default() };
        let mut ops = BTreeMap::new();
        ops.insert("a".to_string(), rule);
        let f = Faults::new(FaultSettings { operations: ops, ..FaultSettings::default() }, 1);
        let got: Vec<Fault> = (0..5).map(|_| f.roll("a").0).collect();
        assert_eq!(got, vec![Fault::Throttle, Fault::Throttle, Fault::Throttle, Fault::None, Fault::None]);
        assert_eq!(f.roll("b").0, Fault::None);
    }
}
