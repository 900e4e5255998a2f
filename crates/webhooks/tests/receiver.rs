//! The receiver over real HTTP on 127.0.0.1 with a real sled store: what it accepts,
//! what it rejects (and counts), and that a store failure is a 429 whose retry is
//! stored once.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::Utc;
use ed25519_dalek::{Signer, SigningKey};
use rsa::pkcs8::DecodePrivateKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{
    NewRun, PollCommit, PollOutcome, PruneStats, Retention, Run, RunChange, RunFilter, RunId, SledStore, Store,
    StoreError, WebhookEvent,
};
use webhooks::{Outcome, Receiver, Verifier, WebhookMetrics};

const RSA_PRIVATE: &str = include_str!("fixtures/rsa_test_private.pem");
const RSA_PUBLIC: &str = include_str!("fixtures/rsa_test_public.pem");

/// A sled store whose `put_webhook_event` fails while `failures` is above zero (a full
/// disk, say), to see that flowd then answers 429 and keeps nothing.
struct FlakyStore {
    inner: SledStore,
    failures: AtomicU32,
}

impl Store for FlakyStore {
    fn store_id(&self) -> &str {
        self.inner.store_id()
    }
    fn filter_unseen(&self, t: &str, k: &[String]) -> store::Result<Vec<bool>> {
        self.inner.filter_unseen(t, k)
    }
    fn trigger_state(&self, t: &str) -> store::Result<Option<Value>> {
        self.inner.trigger_state(t)
    }
    fn commit_poll(&self, c: &PollCommit) -> store::Result<PollOutcome> {
        self.inner.commit_poll(c)
    }
    fn create_run(&self, r: &NewRun) -> store::Result<RunId> {
        self.inner.create_run(r)
    }
    fn get_run(&self, id: RunId) -> store::Result<Option<Run>> {
        self.inner.get_run(id)
    }
    fn list_runs(&self, f: &RunFilter) -> store::Result<Vec<Run>> {
        self.inner.list_runs(f)
    }
    fn update_run(&self, id: RunId, c: &[RunChange]) -> store::Result<Run> {
        self.inner.update_run(id, c)
    }
    fn list_resumable(&self) -> store::Result<Vec<Run>> {
        self.inner.list_resumable()
    }
    fn list_due_retries(&self, now: chrono::DateTime<Utc>, limit: usize) -> store::Result<Vec<Run>> {
        self.inner.list_due_retries(now, limit)
    }
    fn release_held(&self, flow: &str) -> store::Result<Vec<RunId>> {
        self.inner.release_held(flow)
    }
    fn get_tokens(&self, a: &str) -> store::Result<Option<Value>> {
        self.inner.get_tokens(a)
    }
    fn put_tokens(&self, a: &str, t: &Value) -> store::Result<()> {
        self.inner.put_tokens(a, t)
    }
    fn delete_tokens(&self, a: &str) -> store::Result<bool> {
        self.inner.delete_tokens(a)
    }
    fn put_webhook_event(&self, id: &str, payload: &Value) -> store::Result<bool> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Invalid("injected: disk full".into()));
        }
        self.inner.put_webhook_event(id, payload)
    }
    fn list_unprocessed_webhooks(&self, limit: usize) -> store::Result<Vec<WebhookEvent>> {
        self.inner.list_unprocessed_webhooks(limit)
    }
    fn complete_webhook_event(&self, id: &str) -> store::Result<()> {
        self.inner.complete_webhook_event(id)
    }
    fn prune(&self, p: &Retention) -> store::Result<PruneStats> {
        self.inner.prune(p)
    }
    fn flush(&self) -> store::Result<()> {
        self.inner.flush()
    }
    fn backend(&self) -> store::Backend {
        self.inner.backend()
    }
}

struct Server {
    url: String,
    store: Arc<FlakyStore>,
    metrics: Arc<WebhookMetrics>,
    key: SigningKey,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = SledStore::create_or_open(dir.path()).expect("store");
    let store = Arc::new(FlakyStore { inner, failures: AtomicU32::new(0) });
    let key = SigningKey::from_bytes(&[42; 32]);
    let rsa = webhooks::parse_rsa(RSA_PUBLIC).expect("rsa key");
    let verifier = Verifier::new(vec![key.verifying_key()], vec![rsa], Duration::from_secs(300));
    let metrics = Arc::new(WebhookMetrics::default());
    let receiver = Receiver {
        verifier: Arc::new(verifier),
        store: store.clone(),
        metrics: metrics.clone(),
        wake: Arc::new(tokio::sync::Notify::new()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = webhooks::router(receiver, webhooks::DEFAULT_PATH);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    Server { url: format!("http://{addr}{}", webhooks::DEFAULT_PATH), store, metrics, key, http, _dir: dir }
}

fn event(id: &str, at: chrono::DateTime<Utc>) -> Vec<u8> {
    let v = json!({"type": "ContactCreate", "locationId": "loc", "id": "c1", "webhookId": id, "timestamp": at.to_rfc3339()});
    serde_json::to_vec(&v).expect("json")
}

impl Server {
    async fn post(&self, body: &[u8], headers: &[(&str, String)]) -> u16 {
        let mut req = self.http.post(&self.url).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req.send().await.expect("answer").status().as_u16()
    }

    fn ed25519(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        vec![("x-ghl-signature", STANDARD.encode(self.key.sign(body).to_bytes()))]
    }
}

#[tokio::test]
async fn accepts_signed_events_and_rejects_the_rest() {
    let s = server().await;
    let now = Utc::now();

    let ok = event("w1", now);
    assert_eq!(s.post(&ok, &s.ed25519(&ok)).await, 200);
    let stored = s.store.inner.webhook_event("w1").expect("read").expect("stored before the 200");
    assert_eq!(stored.payload["id"], "c1");

    // Legacy RSA header, GHL's older scheme.
    let legacy = event("w2", now);
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE).expect("private key");
    let sig = private.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&legacy)).expect("sign");
    assert_eq!(s.post(&legacy, &[("x-wh-signature", STANDARD.encode(sig))]).await, 200);

    // Unsigned, signed by someone else, tampered, garbage header.
    let e3 = event("w3", now);
    assert_eq!(s.post(&e3, &[]).await, 401);
    let stranger = SigningKey::from_bytes(&[1; 32]);
    assert_eq!(s.post(&e3, &[("x-ghl-signature", STANDARD.encode(stranger.sign(&e3).to_bytes()))]).await, 401);
    let tampered = event("w3", now + chrono::Duration::seconds(1));
    assert_eq!(s.post(&tampered, &s.ed25519(&e3)).await, 401);
    assert_eq!(s.post(&e3, &[("x-ghl-signature", "not base64 at all".into())]).await, 401);
    assert_eq!(s.post(&e3, &[("x-wh-signature", STANDARD.encode([0u8; 256]))]).await, 401);

    // Stale both ways (older than the tolerance and GHL's retries, or ahead by more than the
    // tolerance), and a signed body that is not an event.
    let old = event("w4", now - chrono::Duration::minutes(5 + 70 + 1));
    assert_eq!(s.post(&old, &s.ed25519(&old)).await, 400);
    let future = event("w5", now + chrono::Duration::minutes(6));
    assert_eq!(s.post(&future, &s.ed25519(&future)).await, 400);
    for body in [&b"{not json"[..], b"[]", br#"{"timestamp":"2026-01-01T00:00:00Z"}"#] {
        assert_eq!(s.post(body, &s.ed25519(body)).await, 400);
    }

    // Far larger than any GHL event: refused before it is read, and counted.
    let huge = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(s.post(&huge, &s.ed25519(&huge)).await, 413);

    // A replay of an accepted delivery, byte for byte.
    assert_eq!(s.post(&ok, &s.ed25519(&ok)).await, 409);

    assert!(s.store.inner.webhook_event("w3").expect("read").is_none());
    assert_eq!(s.store.list_unprocessed_webhooks(0).expect("list").len(), 2);
    let m = &s.metrics;
    assert_eq!(m.count(Outcome::Accepted), 2);
    assert_eq!(m.count(Outcome::Unsigned), 1);
    assert_eq!(m.count(Outcome::BadSignature), 4);
    assert_eq!(m.count(Outcome::Stale), 2);
    assert_eq!(m.count(Outcome::Malformed), 4);
    assert_eq!(m.count(Outcome::Replayed), 1);
}

#[tokio::test]
async fn a_store_failure_is_a_429_and_the_retry_is_stored_once() {
    let s = server().await;
    s.store.failures.store(1, Ordering::SeqCst);
    let body = event("w-retry", Utc::now());
    assert_eq!(s.post(&body, &s.ed25519(&body)).await, 429);
    assert!(s.store.inner.webhook_event("w-retry").expect("read").is_none(), "nothing kept for a 429");
    // GHL's retry carries the same webhookId: it is not a replay, since it was never stored.
    assert_eq!(s.post(&body, &s.ed25519(&body)).await, 200);
    assert_eq!(s.post(&body, &s.ed25519(&body)).await, 409);
    assert_eq!(s.store.list_unprocessed_webhooks(0).expect("list").len(), 1);
    assert_eq!(s.metrics.count(Outcome::StoreFailed), 1);
    assert_eq!(s.metrics.count(Outcome::Accepted), 1);
}

/// GHL re-sends a delivery answered 429 about ten minutes later, up to six times, with the
/// body (and the timestamp) it first signed: those retries are stored, not refused as stale
/// by the 5-minute tolerance, and a replay of one after it was stored is still refused.
#[tokio::test]
async fn ghl_retries_of_a_429_keep_their_timestamp_and_are_stored_once() {
    let s = server().await;
    let now = Utc::now();
    // First attempt ten minutes ago was answered 429; this is the first retry, same body.
    let body = event("w-late", now - chrono::Duration::minutes(10));
    s.store.failures.store(1, Ordering::SeqCst);
    assert_eq!(s.post(&body, &s.ed25519(&body)).await, 429, "the store fails again: 429, not 400");
    assert_eq!(s.post(&body, &s.ed25519(&body)).await, 200, "the next retry is stored");
    assert_eq!(s.post(&body, &s.ed25519(&body)).await, 409, "a replay of it is refused");
    // The sixth retry, about an hour after the first attempt.
    let last = event("w-last", now - chrono::Duration::minutes(62));
    assert_eq!(s.post(&last, &s.ed25519(&last)).await, 200);
    assert_eq!(s.post(&last, &s.ed25519(&last)).await, 409);
    // Ahead of now, only clock skew is tolerated.
    let ahead = event("w-ahead", now + chrono::Duration::minutes(6));
    assert_eq!(s.post(&ahead, &s.ed25519(&ahead)).await, 400);
    assert_eq!(s.store.list_unprocessed_webhooks(0).expect("list").len(), 2);
    assert_eq!(s.metrics.count(Outcome::Accepted), 2);
    assert_eq!(s.metrics.count(Outcome::Replayed), 2);
}

/// Replay protection holds only while the store remembers a `webhookId` for longer than a
/// delivery's timestamp is accepted: a replay is either stale or a known id.
#[test]
fn webhook_ids_are_kept_longer_than_any_accepted_timestamp() {
    let widest = Verifier::new(vec![], vec![], Duration::from_secs(24 * 3600));
    let kept = Retention::default().webhooks_max_age.expect("processed events are pruned");
    // The delivery may reach flowd `tolerance` before its timestamp; ids are kept from then.
    assert!(kept > widest.max_age() + widest.tolerance(), "{kept:?}");
}
