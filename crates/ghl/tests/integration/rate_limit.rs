use std::sync::Arc;
use std::time::{Duration, Instant};

use ghl::{ClientConfig, Error, RateLimit, Request};
use sandbox::{FaultRule, FaultSettings, RateLimitConfig, SandboxConfig};

use crate::common::*;

fn get_location(sb: &sandbox::Sandbox) -> Request {
    Request::get("/locations/{locationId}").path_param("locationId", sb.location_id())
}

/// At most `max` of `starts` (sorted) in any window of `interval`.
fn max_in_any_window(starts: &[Instant], interval: Duration) -> usize {
    let mut best = 0;
    for (i, &t) in starts.iter().enumerate() {
        let n = starts[i..].iter().take_while(|&&u| u < t + interval).count();
        best = best.max(n);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_gets_stay_within_the_limit_without_429() {
    let limit = RateLimitConfig { enabled: true, burst_max: 50, burst_interval_ms: 1000, daily_max: 200_000 };
    let sb = start(SandboxConfig::default().with_rate_limit(limit)).await;
    let rec = Arc::new(Recorder::default());
    let config = ClientConfig { rate_limit: RateLimit::per(50, Duration::from_secs(1)), ..ClientConfig::default() };
    let client = client(config, rec.clone());
    client.add_account(pit_account(&sb, ACCOUNT, PIT));

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let (c, r) = (client.clone(), get_location(&sb));
        tasks.push(tokio::spawn(async move { c.json(ACCOUNT, &r).await }));
    }
    for t in tasks {
        let body = t.await.expect("task").expect("every GET succeeds");
        assert!(body.get("location").is_some(), "{body}");
    }
    let elapsed = started.elapsed();

    let snap = rec.counters.snapshot();
    assert_eq!(snap.responses_429, 0, "the client saw a 429");
    assert_eq!(snap.retries, 0);
    assert_eq!(snap.responses_by_class[2], 500);
    let server = logged(&sb, "/locations/");
    assert_eq!(server.len(), 500, "one request per call reached the sandbox");
    assert!(server.iter().all(|e| status_of(e) == 200), "the sandbox refused something");

    let mut sent = rec.sent.lock().unwrap().clone();
    sent.sort();
    assert_eq!(sent.len(), 500);
    let worst = max_in_any_window(&sent, Duration::from_secs(1));
    assert!(worst <= 50, "{worst} requests went out within one second");
    // Pacing, not serialising: 10 windows of 50 take a little over 9 s.
    assert!(elapsed >= Duration::from_secs(9), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_the_limit_the_headers_announce() {
    let limit = RateLimitConfig { enabled: true, burst_max: 20, burst_interval_ms: 1000, daily_max: 200_000 };
    let sb = start(SandboxConfig::default().with_rate_limit(limit)).await;
    let rec = Arc::new(Recorder::default());
    // Configured for GHL's production numbers; the sandbox says otherwise.
    let client = client(ClientConfig::default(), rec.clone());
    client.add_account(pit_account(&sb, ACCOUNT, PIT));
    client.json(ACCOUNT, &get_location(&sb)).await.expect("first call");
    assert_eq!(client.limiter(sb.location_id()).current_limit(), (20, Duration::from_secs(1)));

    let mut tasks = Vec::new();
    for _ in 0..45 {
        let (c, r) = (client.clone(), get_location(&sb));
        tasks.push(tokio::spawn(async move { c.json(ACCOUNT, &r).await }));
    }
    for t in tasks {
        t.await.expect("task").expect("GET succeeds");
    }
    assert_eq!(rec.counters.snapshot().responses_429, 0);
    assert!(rec.counters.snapshot().rate_limit_waits > 0, "callers waited instead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_then_retries_even_a_post() {
    let sb = start_unlimited(SandboxConfig::default()).await;
    let rule = FaultRule { throttle_rate: 1.0, throttle_burst: Some(1), times: Some(1), ..FaultRule::default() };
    let mut faults = FaultSettings::default();
    faults.operations.insert("contacts.create_contact".into(), rule);
    sb.set_faults(faults, Some(7));
    let rec = Arc::new(Recorder::default());
    // Production limiter settings: it must follow Retry-After (1 s) rather than treat the
    // 429's "0 remaining of 100 per 10 s" as a full window to wait out.
    let config = ClientConfig { rate_limit: RateLimit::default(), ..quick_config() };
    let client = client(config, rec.clone());
    client.add_account(pit_account(&sb, ACCOUNT, PIT));

    let started = Instant::now();
    let req = Request::post("/contacts/")
        .body(serde_json::json!({"locationId": sb.location_id(), "firstName": "Ada", "email": "ada@example.com"}));
    let created = client.json(ACCOUNT, &req).await.expect("created after the 429");
    assert!(created.pointer("/contact/id").is_some(), "{created}");
    // The sandbox says Retry-After: 1.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    let statuses: Vec<u64> = logged(&sb, "/contacts").iter().map(status_of).collect();
    assert_eq!(statuses, vec![429, 201]);
    assert_eq!(rec.counters.snapshot().responses_429, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_is_reported_not_waited_for() {
    let limit = RateLimitConfig { enabled: true, burst_max: 100, burst_interval_ms: 10_000, daily_max: 3 };
    let sb = start(SandboxConfig::default().with_rate_limit(limit)).await;
    let client = client(ClientConfig::default(), Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, ACCOUNT, PIT));
    for _ in 0..3 {
        client.json(ACCOUNT, &get_location(&sb)).await.expect("within budget");
    }
    let err = client.json(ACCOUNT, &get_location(&sb)).await.expect_err("budget spent");
    assert!(matches!(err, Error::BudgetSpent { limit: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("daily"), "{err}");
    assert_eq!(logged(&sb, "/locations/").len(), 3, "the fourth call never left the client");
}
