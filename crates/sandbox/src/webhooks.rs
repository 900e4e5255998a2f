//! The sandbox as a webhook sender: when its data changes it POSTs the documented event
//! payload (`docs/webhook-events`), signed like GHL (`X-GHL-Signature`, Ed25519 over the
//! raw body), to a configured URL. Like GHL it retries only a 429 (up to six times), and
//! on request it loses, duplicates, delays and reorders deliveries, from a seeded
//! generator so a test run can be replayed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::store::kinds;

/// GHL retries a 429 up to six times.
const MAX_ATTEMPTS: u32 = 7;

/// Where and how to send webhooks. Rates are probabilities from 0.0 to 1.0.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSettings {
    /// Receiver URL; no URL, no webhooks.
    pub url: Option<String>,
    /// Ed25519 signing key: base64 of the 32-byte secret seed. Without one deliveries are unsigned.
    pub signing_key: Option<String>,
    /// Never send the event (as GHL sometimes does not).
    pub drop_rate: f64,
    /// Send the event a second time, as a separate delivery with its own webhookId.
    pub duplicate_rate: f64,
    /// Delay each delivery by a random time up to this many milliseconds.
    pub max_delay_ms: u64,
    /// Hold a delivery back long enough that later ones overtake it.
    pub reorder_rate: f64,
    /// Wait before retrying a delivery answered 429 (GHL: about ten minutes).
    pub retry_after_ms: Option<u64>,
    pub rng_seed: Option<u64>,
}

/// What the sender did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStats {
    /// Changes that produced an event.
    pub events: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Deliveries answered 2xx.
    pub delivered: u64,
    /// Deliveries answered something else (after retries), or not answered.
    pub failed: u64,
    /// Retries after a 429.
    pub retried: u64,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

struct Inner {
    settings: WebhookSettings,
    key: Option<SigningKey>,
    rng: StdRng,
}

pub struct Emitter {
    inner: Mutex<Inner>,
    /// Whether a receiver URL is set, readable without the lock: most runs send no
    /// webhooks, and building an event's payload (a copy of the record) for nobody is
    /// the larger part of a create request's cost.
    enabled: AtomicBool,
    seq: AtomicU64,
    counters: Arc<Counters>,
    http: reqwest::Client,
}

/// A bad signing key in the settings.
#[derive(Debug, thiserror::Error)]
#[error("webhook signing key: {0}")]
pub struct KeyError(String);

fn signing_key(text: &str) -> Result<SigningKey, KeyError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|e| KeyError(e.to_string()))?;
    let seed: [u8; 32] =
        bytes.as_slice().try_into().map_err(|_| KeyError(format!("expected 32 bytes, got {}", bytes.len())))?;
    Ok(SigningKey::from_bytes(&seed))
}

impl Emitter {
    pub fn new(settings: WebhookSettings, default_seed: u64) -> Emitter {
        let key = settings.signing_key.as_deref().and_then(|k| signing_key(k).ok());
        let rng = StdRng::seed_from_u64(settings.rng_seed.unwrap_or(default_seed));
        Emitter {
            enabled: AtomicBool::new(settings.url.is_some()),
            inner: Mutex::new(Inner { settings, key, rng }),
            seq: AtomicU64::new(1),
            counters: Arc::new(Counters::default()),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, settings: WebhookSettings) -> Result<(), KeyError> {
        let key = settings.signing_key.as_deref().map(signing_key).transpose()?;
        let mut inner = self.lock();
        if let Some(seed) = settings.rng_seed {
            inner.rng = StdRng::seed_from_u64(seed);
        }
        inner.key = key;
        self.enabled.store(settings.url.is_some(), Ordering::Relaxed);
        inner.settings = settings;
        Ok(())
    }

    /// The settings, with the signing key left out.
    pub fn settings(&self) -> WebhookSettings {
        WebhookSettings { signing_key: None, ..self.lock().settings.clone() }
    }

    pub fn stats(&self) -> WebhookStats {
        let c = &self.counters;
        WebhookStats {
            events: c.events.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
        }
    }

    /// Whether events are sent at all (a receiver URL is set). Callers check it before
    /// they fetch or copy a record only to report it.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A record of `kind` was created, updated or deleted (`change`: create, update,
    /// delete); sends the matching event if there is one and a URL is set.
    pub fn record_changed(&self, kind: &str, change: Change, record: &Map<String, Value>, location_id: &str) {
        if !self.enabled() {
            return;
        }
        let Some(event) = event_type(kind, change, record) else { return };
        let location = record.get("locationId").and_then(Value::as_str).unwrap_or(location_id);
        // Appointment events nest the record; the others carry its fields at the top.
        let mut payload = Map::new();
        payload.insert("type".into(), json!(event));
        payload.insert("locationId".into(), json!(location));
        if kind == kinds::EVENTS {
            payload.insert("appointment".into(), Value::Object(record.clone()));
        } else {
            for (k, v) in record {
                if k != "type" {
                    payload.insert(k.clone(), v.clone());
                }
            }
        }
        self.emit(payload);
    }

    fn emit(&self, payload: Map<String, Value>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let mut inner = self.lock();
        let Some(url) = inner.settings.url.clone() else { return };
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let s = inner.settings.clone();
        if inner.rng.random_bool(s.drop_rate.clamp(0.0, 1.0)) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let copies = if inner.rng.random_bool(s.duplicate_rate.clamp(0.0, 1.0)) {
            self.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = if s.max_delay_ms > 0 { inner.rng.random_range(0..=s.max_delay_ms) } else { 0 };
            if inner.rng.random_bool(s.reorder_rate.clamp(0.0, 1.0)) {
                delay += s.max_delay_ms.max(50) * 2;
            }
            let mut p = payload.clone();
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            p.insert("webhookId".into(), json!(format!("wh_{n:08}")));
            p.insert(
                "timestamp".into(),
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
            let body = serde_json::to_vec(&Value::Object(p)).unwrap_or_default();
            let signature = inner.key.as_ref().map(|k| STANDARD.encode(k.sign(&body).to_bytes()));
            let delivery = Delivery {
                http: self.http.clone(),
                url: url.clone(),
                body,
                signature,
                delay: Duration::from_millis(delay),
                retry_after: Duration::from_millis(s.retry_after_ms.unwrap_or(200)),
                counters: self.counters.clone(),
            };
            rt.spawn(delivery.send());
        }
    }
}

struct Delivery {
    http: reqwest::Client,
    url: String,
    body: Vec<u8>,
    signature: Option<String>,
    delay: Duration,
    retry_after: Duration,
    counters: Arc<Counters>,
}

impl Delivery {
    async fn send(self) {
        tokio::time::sleep(self.delay).await;
        for attempt in 1..=MAX_ATTEMPTS {
            let mut req = self.http.post(&self.url).header("content-type", "application/json").body(self.body.clone());
            if let Some(sig) = &self.signature {
                req = req.header("x-ghl-signature", sig);
            }
            match req.send().await.map(|r| r.status().as_u16()) {
                Ok(s) if (200..300).contains(&s) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(429) if attempt < MAX_ATTEMPTS => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.retry_after).await;
                }
                _ => break,
            }
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Create,
    Update,
    Delete,
}

/// The record kind and change of API operations that change data GHL sends events for.
pub fn api_change(op: &str) -> Option<(&'static str, Change)> {
    use Change::*;
    Some(match op {
        "contacts.create_contact" | "contacts.upsert_contact" => (kinds::CONTACTS, Create),
        "contacts.update_contact" | "contacts.add_tags" | "contacts.remove_tags" => (kinds::CONTACTS, Update),
        "contacts.delete_contact" => (kinds::CONTACTS, Delete),
        "contacts.create_task" => (kinds::TASKS, Create),
        "contacts.update_task" | "contacts.complete_task" => (kinds::TASKS, Update),
        "contacts.delete_task" => (kinds::TASKS, Delete),
        "contacts.create_note" => (kinds::NOTES, Create),
        "contacts.update_note" => (kinds::NOTES, Update),
        "contacts.delete_note" => (kinds::NOTES, Delete),
        "calendars.create_appointment" => (kinds::EVENTS, Create),
        "calendars.update_appointment" => (kinds::EVENTS, Update),
        "opportunities.create_opportunity" => (kinds::OPPORTUNITIES, Create),
        "opportunities.update_opportunity" => (kinds::OPPORTUNITIES, Update),
        "opportunities.delete_opportunity" => (kinds::OPPORTUNITIES, Delete),
        _ => return None,
    })
}

/// The id of the record an API reply is about: the reply's own `id`, or that of the
/// first object in it that has one (`{ "contact": { "id": .. } }`).
pub fn reply_record_id(reply: &Value) -> Option<String> {
    let id = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_string);
    id(reply).or_else(|| reply.as_object()?.values().find_map(id))
}

/// The documented event for a change, where GHL sends one.
fn event_type(kind: &str, change: Change, record: &Map<String, Value>) -> Option<&'static str> {
    use Change::*;
    Some(match (kind, change) {
        (kinds::CONTACTS, Create) => "ContactCreate",
        (kinds::CONTACTS, Update) => "ContactUpdate",
        (kinds::CONTACTS, Delete) => "ContactDelete",
        (kinds::TASKS, Create) => "TaskCreate",
        (kinds::TASKS, Update) if record.get("completed") == Some(&Value::Bool(true)) => "TaskComplete",
        (kinds::TASKS, Delete) => "TaskDelete",
        (kinds::NOTES, Create) => "NoteCreate",
        (kinds::NOTES, Update) => "NoteUpdate",
        (kinds::NOTES, Delete) => "NoteDelete",
        (kinds::EVENTS, _) if record.get("isBlockSlot") == Some(&Value::Bool(true)) => return None,
        (kinds::EVENTS, Create) => "AppointmentCreate",
        (kinds::EVENTS, Update) => "AppointmentUpdate",
        (kinds::EVENTS, Delete) => "AppointmentDelete",
        (kinds::OPPORTUNITIES, Create) => "OpportunityCreate",
        (kinds::OPPORTUNITIES, Update) => "OpportunityUpdate",
        (kinds::OPPORTUNITIES, Delete) => "OpportunityDelete",
        (kinds::USERS, Create) => "UserCreate",
        _ => return None,
    })
}
