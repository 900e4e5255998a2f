//! The admin API, seeding, and the server's life cycle.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use serde_json::{json, Value};

async fn admin(
    c: &reqwest::Client,
    sb: &Sandbox,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = c.request(method, format!("{}/_sandbox/{path}", sb.base_url()));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    send(rb).await
}

#[tokio::test]
async fn request_log_counters_reset_and_seed() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let (s, health) = admin(&c, &sb, reqwest::Method::GET, "health", None).await;
    assert_eq!(s, 200);
    assert_eq!(health["operations"], 126);
    assert_eq!(health["records"]["contacts"], 39);

    let (s, _) = get(&c, &sb, &format!("/contacts/?locationId={}", sb.location_id()), V_CONTACTS).await;
    assert_eq!(s, 200);
    let (s, _) = get(&c, &sb, "/contacts/nope", V_CONTACTS).await;
    assert_eq!(s, 404);
    let (_, log) = admin(&c, &sb, reqwest::Method::GET, "requests", None).await;
    let entries = log["requests"].as_array().expect("entries");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["method"], "GET");
    assert_eq!(entries[0]["path"], "/contacts/");
    assert_eq!(entries[0]["op"], "contacts.list_contacts_deprecated");
    assert_eq!(entries[0]["status"], 200);
    assert_eq!(entries[1]["op"], "contacts.get_contact");
    assert_eq!(entries[1]["status"], 404);
    let (_, counters) = admin(&c, &sb, reqwest::Method::GET, "counters", None).await;
    assert_eq!(counters["counters"]["contacts.get_contact"]["404"], 1);

    let (s, seeded) = admin(&c, &sb, reqwest::Method::POST, "seed", Some(json!({"seed": 250}))).await;
    assert_eq!(s, 200);
    assert_eq!(seeded["records"]["contacts"], 250);
    let (_, page) = get(&c, &sb, &format!("/contacts/?locationId={}&limit=100", sb.location_id()), V_CONTACTS).await;
    assert_eq!(page["meta"]["total"], 250);

    let (s, reset) = admin(&c, &sb, reqwest::Method::POST, "reset", Some(json!({"seed": "empty"}))).await;
    assert_eq!(s, 200);
    assert_eq!(reset["records"]["contacts"], 0);
    let (_, log) = admin(&c, &sb, reqwest::Method::GET, "requests", None).await;
    assert_eq!(log["requests"].as_array().map(Vec::len), Some(0));

    let (s, made) =
        admin(&c, &sb, reqwest::Method::POST, "records/opportunities", Some(json!({"name": "Direct"}))).await;
    assert_eq!(s, 201);
    assert!(made["createdAt"].is_string() && made["updatedAt"].is_string());
    let id = made["id"].as_str().expect("id");
    let (s, _) = admin(&c, &sb, reqwest::Method::DELETE, &format!("records/opportunities/{id}"), None).await;
    assert_eq!(s, 200);
    let (s, _) = admin(&c, &sb, reqwest::Method::POST, "records/nonsense", Some(json!({}))).await;
    assert_eq!(s, 404);
    let (s, _) = admin(&c, &sb, reqwest::Method::POST, "seed", Some(json!({"seed": "lots"}))).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn a_hundred_thousand_contacts_seed_quickly_and_search() {
    let t0 = Instant::now();
    let sb = start(Seed::Contacts(100_000)).await;
    let seeded = t0.elapsed();
    // Generous for unoptimised test builds; a release build takes a fraction of this.
    assert!(seeded < Duration::from_secs(20), "seeding took {seeded:?}");
    let c = client();
    let (s, body) = send(
        req(&c, &sb, reqwest::Method::POST, "/contacts/search", V_CONTACTS)
            .json(&json!({"locationId": sb.location_id(), "page": 3, "pageLimit": 100})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["total"], 100_000);
    assert_eq!(body["contacts"].as_array().map(Vec::len), Some(100));
}

#[tokio::test]
async fn bind_serves_and_drop_stops() {
    let config =
        SandboxConfig { seed: Seed::Empty, rate_limit: RateLimitConfig::disabled(), ..SandboxConfig::default() };
    let sb = Sandbox::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await.expect("bind");
    let base = sb.base_url();
    let c = client();
    let r = c.get(format!("{base}/_sandbox/health")).send().await.expect("up");
    assert_eq!(r.status().as_u16(), 200);
    // Binding the same port again fails with a typed error.
    let again = Sandbox::bind(sb.addr(), SandboxConfig::default()).await;
    assert!(again.is_err());
    drop(sb);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    assert!(fresh.get(format!("{base}/_sandbox/health")).send().await.is_err(), "stopped on drop");
}

#[tokio::test]
async fn shutdown_releases_hanging_requests() {
    let sb = start(Seed::Demo).await;
    sb.set_faults(
        sandbox::FaultSettings {
            global: sandbox::FaultRule { hang_rate: 1.0, ..Default::default() },
            ..Default::default()
        },
        None,
    );
    let url = format!("{}/contacts/?locationId={}", sb.base_url(), sb.location_id());
    let pending =
        tokio::spawn(async move { client().get(url).bearer_auth(TOKEN).header("Version", V_CONTACTS).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    sb.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    let res = pending.await.expect("join");
    assert!(res.is_err() || res.is_ok_and(|r| r.status().is_server_error()));
}
