//! The sandbox as a webhook sender: documented payloads, GHL's Ed25519 signature over
//! the raw body, retries on 429 only, and seeded loss and duplication.

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use common::*;
use ed25519_dalek::{Signature, SigningKey};
use reqwest::Method;
use sandbox::Seed;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Inbox = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver that records deliveries and answers 429 to the first `throttle` of them.
async fn receiver(throttle: u32) -> (String, Inbox) {
    let inbox: Inbox = Arc::default();
    let left = Arc::new(AtomicU32::new(throttle));
    let sink = inbox.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            let left = left.clone();
            async move {
                if left.load(Ordering::SeqCst) > 0 {
                    left.fetch_sub(1, Ordering::SeqCst);
                    return StatusCode::TOO_MANY_REQUESTS;
                }
                sink.lock().expect("inbox").push((headers, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, inbox)
}

async fn wait_for(inbox: &Inbox, n: usize) -> Vec<(HeaderMap, Bytes)> {
    let started = Instant::now();
    loop {
        let got = inbox.lock().expect("inbox").clone();
        if got.len() >= n || started.elapsed() > Duration::from_secs(3) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn api_changes_send_signed_documented_events() {
    let sb = start(Seed::Empty).await;
    let (url, inbox) = receiver(1).await;
    let c = client();
    let key = SigningKey::from_bytes(&[3; 32]);
    let settings = json!({"url": url, "signingKey": base64::engine::general_purpose::STANDARD.encode([3u8; 32]),
        "retryAfterMs": 20});
    let (status, body) = send(c.put(format!("{}/_sandbox/webhooks", sb.base_url())).json(&settings)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["settings"]["signingKey"].is_null(), "the key is never shown");

    let new = json!({"locationId": sb.location_id(), "firstName": "Ann", "email": "ann@example.com"});
    let (status, created) = send(req(&c, &sb, Method::POST, "/contacts/", V_CONTACTS).json(&new)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["contact"]["id"].as_str().expect("id").to_string();
    let task = json!({"title": "Call", "dueDate": "2030-01-01T00:00:00Z", "completed": false});
    let (status, _) = send(req(&c, &sb, Method::POST, &format!("/contacts/{id}/tasks"), V_CONTACTS).json(&task)).await;
    assert_eq!(status, 201);

    let got = wait_for(&inbox, 2).await;
    assert_eq!(got.len(), 2, "two events, the first after a 429 and a retry");
    let events: Vec<Value> = got
        .iter()
        .map(|(headers, body)| {
            let sig = headers.get("x-ghl-signature").and_then(|v| v.to_str().ok()).expect("signed");
            let sig = base64::engine::general_purpose::STANDARD.decode(sig).expect("base64");
            let sig = Signature::from_slice(&sig).expect("signature");
            key.verifying_key().verify_strict(body, &sig).expect("verifies over the raw body");
            serde_json::from_slice(body).expect("json")
        })
        .collect();
    let contact = events.iter().find(|e| e["type"] == "ContactCreate").expect("ContactCreate");
    assert_eq!(contact["id"], json!(id));
    assert_eq!(contact["locationId"], json!(sb.location_id()));
    assert_eq!(contact["email"], "ann@example.com");
    assert!(contact["webhookId"].as_str().is_some_and(|w| !w.is_empty()));
    assert!(contact["timestamp"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
    let task = events.iter().find(|e| e["type"] == "TaskCreate").expect("TaskCreate");
    assert_eq!(task["contactId"], json!(id));

    let (_, stats) = send(c.get(format!("{}/_sandbox/webhooks", sb.base_url()))).await;
    assert_eq!(stats["stats"]["delivered"], 2);
    assert_eq!(stats["stats"]["retried"], 1);
}

#[tokio::test]
async fn loss_and_duplication_follow_the_seeded_rates() {
    let sb = start(Seed::Empty).await;
    let (url, inbox) = receiver(0).await;
    sb.set_webhooks(sandbox::WebhookSettings {
        url: Some(url),
        drop_rate: 0.3,
        duplicate_rate: 0.2,
        rng_seed: Some(1),
        ..Default::default()
    })
    .expect("settings");
    for n in 0..100 {
        sb.insert_record("contacts", json!({"firstName": format!("C{n}")})).expect("insert");
    }
    let stats = sb.webhook_stats();
    assert_eq!(stats.events, 100);
    assert!((15..=45).contains(&stats.dropped), "{stats:?}");
    assert!((5..=30).contains(&stats.duplicated), "{stats:?}");
    let expected = (100 - stats.dropped + stats.duplicated) as usize;
    let got = wait_for(&inbox, expected).await;
    assert_eq!(got.len(), expected);
    let ids: std::collections::HashSet<Vec<u8>> = got.iter().map(|(_, b)| b.to_vec()).collect();
    assert_eq!(ids.len(), expected, "a duplicate is a separate delivery with its own webhookId");
    assert!(got.iter().all(|(h, _)| h.get("x-ghl-signature").is_none()), "no key, no signature");
}
