//! `Client::send_marked`: the caller's "about to send" mark runs once, when the request
//! leaves (after the rate limiter's wait), and never for a request that does not leave.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ghl::{ClientConfig, Error, RateLimit, Request};
use sandbox::{FaultRule, FaultSettings, SandboxConfig};
use serde_json::json;

use crate::common::*;

fn post(sb: &sandbox::Sandbox, name: &str) -> Request {
    Request::post("/contacts/").body(json!({"locationId": sb.location_id(), "firstName": name}))
}

fn mark(count: &Arc<AtomicUsize>) -> impl FnOnce() -> std::future::Ready<Result<(), String>> {
    let count = count.clone();
    move || {
        count.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mark_waits_for_the_rate_limiter() {
    let sb = start_unlimited(SandboxConfig::default()).await;
    let slow = RateLimit { burst: Some(1), adapt_to_headers: false, ..RateLimit::per(1, Duration::from_secs(2)) };
    let client = client(ClientConfig { rate_limit: slow, ..quick_config() }, Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, ACCOUNT, PIT));
    let first = Arc::new(AtomicUsize::new(0));
    client.send_marked(ACCOUNT, &post(&sb, "First"), mark(&first)).await.expect("mark").expect("sent");
    assert_eq!(first.load(Ordering::SeqCst), 1);

    let second = Arc::new(AtomicUsize::new(0));
    let (c, req, m) = (client.clone(), post(&sb, "Second"), mark(&second));
    let queued = tokio::spawn(async move { c.send_marked(ACCOUNT, &req, m).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(second.load(Ordering::SeqCst), 0, "not marked while it waits for the limiter");
    assert_eq!(logged(&sb, "/contacts/").len(), 1);
    queued.await.expect("task").expect("mark").expect("sent");
    assert_eq!(second.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mark_runs_once_across_retries_and_its_failure_sends_nothing() {
    let sb = start_unlimited(SandboxConfig::default()).await;
    let client = client(quick_config(), Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, ACCOUNT, PIT));

    // Two 429s then success: three requests, one mark.
    let throttle = FaultRule { throttle_rate: 1.0, throttle_burst: Some(2), times: Some(2), ..FaultRule::default() };
    sb.set_faults(FaultSettings { global: throttle, ..FaultSettings::default() }, Some(1));
    let count = Arc::new(AtomicUsize::new(0));
    client.send_marked(ACCOUNT, &post(&sb, "Retried"), mark(&count)).await.expect("mark").expect("sent");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(logged(&sb, "/contacts/").len(), 3);
    sb.set_faults(FaultSettings::default(), None);

    // A mark that fails stops the request before it leaves.
    let failing = || std::future::ready(Err::<(), _>("the store is full".to_string()));
    let out = client.send_marked(ACCOUNT, &post(&sb, "Never"), failing).await;
    assert_eq!(out.err().as_deref(), Some("the store is full"));
    assert_eq!(logged(&sb, "/contacts/").len(), 3, "nothing was sent");

    // A request that cannot leave (an unknown account) is never marked.
    let count = Arc::new(AtomicUsize::new(0));
    let out = client.send_marked("nobody", &post(&sb, "Nobody"), mark(&count)).await.expect("no mark error");
    assert!(matches!(out, Err(Error::InvalidRequest(_))), "{out:?}");
    assert_eq!(count.load(Ordering::SeqCst), 0);
}
