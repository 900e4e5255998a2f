//! Rate limits with GHL's headers, and every fault-injection mode.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use sandbox::{FaultRule, FaultSettings, OAuthClient, RateLimitConfig, Sandbox, SandboxConfig, Seed};
use serde_json::{json, Value};

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

async fn start_with(rate_limit: RateLimitConfig, faults: FaultSettings) -> Sandbox {
    let config = SandboxConfig { seed: Seed::Demo, rate_limit, faults, ..SandboxConfig::default() };
    Sandbox::start(config).await.expect("sandbox")
}

fn contacts_url(sb: &Sandbox) -> String {
    format!("{}/contacts/?locationId={}&limit=1", sb.base_url(), sb.location_id())
}

#[tokio::test]
async fn burst_limit_answers_429_with_headers_per_location() {
    let rl = RateLimitConfig { enabled: true, burst_max: 5, burst_interval_ms: 60_000, daily_max: 1_000 };
    let sb = start_with(rl, FaultSettings::default()).await;
    let c = client();
    for i in 0..5u64 {
        let r = c.get(contacts_url(&sb)).bearer_auth(TOKEN).header("Version", V_CONTACTS).send().await.expect("ok");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(header(&r, "x-ratelimit-max"), Some(5));
        assert_eq!(header(&r, "x-ratelimit-remaining"), Some(4 - i));
        assert_eq!(header(&r, "x-ratelimit-interval-milliseconds"), Some(60_000));
        assert_eq!(header(&r, "x-ratelimit-limit-daily"), Some(1_000));
        assert_eq!(header(&r, "x-ratelimit-daily-remaining"), Some(999 - i));
    }
    let r = c.get(contacts_url(&sb)).bearer_auth(TOKEN).header("Version", V_CONTACTS).send().await.expect("429");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some(0));
    assert!(header(&r, "retry-after").is_some_and(|s| (1..=60).contains(&s)));
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["statusCode"], 429);

    // Another location has its own budget.
    sb.register_oauth_client(OAuthClient { client_id: "a".into(), client_secret: "b".into(), scopes: vec![] });
    let rt = sb.mint_refresh_token("a", "Location", Some("loc_other")).expect("refresh token");
    let t: Value = c
        .post(format!("{}/oauth/token", sb.base_url()))
        .form(&[
            ("client_id", "a"),
            ("client_secret", "b"),
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let access = t["access_token"].as_str().expect("access");
    let r = c
        .get(format!("{}/contacts/?locationId=loc_other", sb.base_url()))
        .bearer_auth(access)
        .header("Version", V_CONTACTS)
        .send()
        .await
        .expect("other");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some(4));
}

#[tokio::test]
async fn daily_budget_and_runtime_changes() {
    let rl = RateLimitConfig { enabled: true, burst_max: 100, burst_interval_ms: 10_000, daily_max: 3 };
    let sb = start_with(rl, FaultSettings::default()).await;
    let c = client();
    let statuses = futures_statuses(&c, &sb, 4).await;
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let r = c.get(contacts_url(&sb)).bearer_auth(TOKEN).header("Version", V_CONTACTS).send().await.expect("429");
    assert_eq!(header(&r, "x-ratelimit-daily-remaining"), Some(0));
    // Disabled at run time through the admin API.
    let r = c
        .put(format!("{}/_sandbox/ratelimit", sb.base_url()))
        .json(&json!({"enabled": false, "burstMax": 100, "burstIntervalMs": 10000, "dailyMax": 3}))
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status().as_u16(), 200);
    // With limits off, no limit headers either: a client following them must not slow down.
    for _ in 0..10 {
        let r = c.get(contacts_url(&sb)).bearer_auth(TOKEN).header("Version", V_CONTACTS).send().await.expect("resp");
        assert_eq!(r.status().as_u16(), 200);
        assert!(!r.headers().contains_key("x-ratelimit-remaining"));
    }
}

async fn futures_statuses(c: &reqwest::Client, sb: &Sandbox, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = c.get(contacts_url(sb)).bearer_auth(TOKEN).header("Version", V_CONTACTS).send().await.expect("resp");
        assert!(r.headers().contains_key("x-ratelimit-remaining"), "headers on every response");
        out.push(r.status().as_u16());
    }
    out
}

fn only(op: &str, rule: FaultRule) -> FaultSettings {
    let mut operations = BTreeMap::new();
    operations.insert(op.to_string(), rule);
    FaultSettings { global: FaultRule::default(), operations }
}

#[tokio::test]
async fn error_throttle_latency_and_malformed_faults() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let get_contacts = || c.get(contacts_url(&sb)).bearer_auth(TOKEN).header("Version", V_CONTACTS).send();

    sb.set_faults(
        FaultSettings {
            global: FaultRule { error_rate: 1.0, error_status: Some(503), ..FaultRule::default() },
            ..FaultSettings::default()
        },
        None,
    );
    let r = get_contacts().await.expect("503");
    assert_eq!(r.status().as_u16(), 503);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["statusCode"], 503);

    // A burst of three 429s, then normal service; only for the chosen operation.
    let rule = FaultRule { throttle_rate: 1.0, throttle_burst: Some(3), times: Some(3), ..FaultRule::default() };
    sb.set_faults(only("contacts.list_contacts_deprecated", rule), Some(1));
    for _ in 0..3 {
        let r = get_contacts().await.expect("429");
        assert_eq!(r.status().as_u16(), 429);
        assert!(r.headers().contains_key("retry-after"));
    }
    assert_eq!(get_contacts().await.expect("ok").status().as_u16(), 200);
    let (s, _) = get(&c, &sb, &format!("/calendars/?locationId={}", sb.location_id()), V_CALENDARS).await;
    assert_eq!(s, 200, "other operations are unaffected");

    sb.set_faults(
        FaultSettings { global: FaultRule { latency_ms: 250, ..FaultRule::default() }, ..FaultSettings::default() },
        None,
    );
    let t0 = Instant::now();
    assert_eq!(get_contacts().await.expect("slow").status().as_u16(), 200);
    assert!(t0.elapsed() >= Duration::from_millis(250));

    sb.set_faults(
        FaultSettings { global: FaultRule { malformed_rate: 1.0, ..FaultRule::default() }, ..FaultSettings::default() },
        None,
    );
    let r = get_contacts().await.expect("malformed");
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.expect("text");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "the body must not parse: {text}");
    // A create's answer is cut too, after the record was stored: the caller cannot tell.
    let contact = sb
        .records("contacts")
        .into_iter()
        .find(|c| c["locationId"] == sb.location_id())
        .expect("a demo contact in the token's location");
    let contact_id = contact["id"].as_str().expect("id").to_string();
    let tasks_before = sb.records("tasks").len();
    let r = c
        .post(format!("{}/contacts/{contact_id}/tasks", sb.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", V_CONTACTS)
        .json(&serde_json::json!({"title": "cut", "dueDate": "2026-12-01T00:00:00Z", "completed": false}))
        .send()
        .await
        .expect("malformed create");
    assert_eq!(r.status().as_u16(), 201);
    let text = r.text().await.expect("text");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "the body must not parse: {text}");
    assert!(text.starts_with("{\"task\":{"), "the real answer, cut: {text}");
    assert_eq!(sb.records("tasks").len(), tasks_before + 1, "the task was created");

    let log: Value =
        c.get(format!("{}/_sandbox/requests", sb.base_url())).send().await.expect("log").json().await.expect("json");
    let faults: Vec<&str> =
        log["requests"].as_array().expect("list").iter().filter_map(|e| e["fault"].as_str()).collect();
    assert!(faults.contains(&"error") && faults.contains(&"throttle") && faults.contains(&"malformed"), "{faults:?}");
}

#[tokio::test]
async fn hanging_and_dropped_connections() {
    let sb = start(Seed::Demo).await;
    let c = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("client");
    let send = || c.get(contacts_url(&sb)).bearer_auth(TOKEN).header("Version", V_CONTACTS).send();

    sb.set_faults(
        FaultSettings { global: FaultRule { hang_rate: 1.0, ..FaultRule::default() }, ..FaultSettings::default() },
        None,
    );
    let err = send().await.expect_err("hangs until the client gives up");
    assert!(err.is_timeout(), "{err:?}");

    sb.set_faults(
        FaultSettings { global: FaultRule { drop_rate: 1.0, ..FaultRule::default() }, ..FaultSettings::default() },
        None,
    );
    let t0 = Instant::now();
    let err = send().await.expect_err("the connection is dropped");
    assert!(!err.is_timeout(), "dropped, not timed out: {err:?}");
    assert!(t0.elapsed() < Duration::from_millis(300));

    sb.set_faults(FaultSettings::default(), None);
    assert_eq!(send().await.expect("healthy again").status().as_u16(), 200);
}

#[tokio::test]
async fn seeded_faults_repeat_through_the_admin_api() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let r = c
            .put(format!("{}/_sandbox/faults", sb.base_url()))
            .json(&json!({"global": {"errorRate": 0.5}, "rngSeed": 99}))
            .send()
            .await
            .expect("admin");
        assert_eq!(r.status().as_u16(), 200);
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let r =
                c.get(contacts_url(&sb)).bearer_auth(TOKEN).header("Version", V_CONTACTS).send().await.expect("resp");
            statuses.push(r.status().as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&500) && runs[0].contains(&200), "{:?}", runs[0]);
    let r = c.delete(format!("{}/_sandbox/faults", sb.base_url())).send().await.expect("clear");
    assert_eq!(r.status().as_u16(), 200);
}
