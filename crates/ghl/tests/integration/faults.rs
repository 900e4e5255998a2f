use std::sync::Arc;
use std::time::Duration;

use ghl::{Account, ClientConfig, Credentials, Error, Request, RetryPolicy, Secret};
use sandbox::{FaultRule, FaultSettings, SandboxConfig};
use serde_json::{json, Value};

use crate::common::*;

fn faults(global: FaultRule) -> FaultSettings {
    FaultSettings { global, ..FaultSettings::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_get_survives_injected_5xx_and_dropped_connections() {
    let sb = start_unlimited(SandboxConfig::default()).await;
    sb.set_faults(faults(FaultRule { error_rate: 0.2, drop_rate: 0.1, ..FaultRule::default() }), Some(11));
    let rec = Arc::new(Recorder::default());
    let config = ClientConfig {
        retry: RetryPolicy { max_attempts: 12, base: Duration::from_millis(5), cap: Duration::from_millis(50) },
        ..quick_config()
    };
    let client = client(config, rec.clone());
    client.add_account(pit_account(&sb, ACCOUNT, PIT));

    let mut tasks = Vec::new();
    for i in 0..300 {
        let c = client.clone();
        let req = if i % 2 == 0 {
            Request::get("/locations/{locationId}").path_param("locationId", sb.location_id())
        } else {
            Request::get("/users/").query("locationId", sb.location_id())
        };
        tasks.push(tokio::spawn(async move { c.json(ACCOUNT, &req).await }));
    }
    for t in tasks {
        t.await.expect("task").expect("every GET succeeds despite faults");
    }
    let log = sb.requests();
    let fault = |kind: &str| log.iter().filter(|e| e.get("fault").and_then(Value::as_str) == Some(kind)).count();
    assert!(fault("error") > 20, "5xx were injected: {}", fault("error"));
    assert!(fault("drop") > 5, "connections were dropped: {}", fault("drop"));
    let snap = rec.counters.snapshot();
    assert_eq!(snap.retries as usize, fault("error") + fault("drop"), "each fault cost exactly one retry");
    assert!(snap.transport_errors > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_repeated_after_a_5xx_or_a_dropped_connection() {
    let sb = start_unlimited(SandboxConfig::default()).await;
    let client = client(quick_config(), Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, ACCOUNT, PIT));
    let post = Request::post("/contacts/").body(json!({"locationId": sb.location_id(), "firstName": "Once"}));

    sb.set_faults(faults(FaultRule { error_rate: 1.0, error_status: Some(503), ..FaultRule::default() }), Some(1));
    let err = client.json(ACCOUNT, &post).await.expect_err("503");
    let api = match &err {
        Error::Api(api) => api.clone(),
        other => panic!("expected an API error, got {other:?}"),
    };
    assert_eq!(api.status, 503);
    assert!(api.trace_id.is_some(), "GHL's traceId is kept");
    assert_eq!(logged(&sb, "/contacts").len(), 1, "the POST went out once");

    sb.set_faults(faults(FaultRule { drop_rate: 1.0, ..FaultRule::default() }), Some(1));
    let err = client.json(ACCOUNT, &post).await.expect_err("dropped");
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert_eq!(logged(&sb, "/contacts").len(), 2, "and once more, not retried");

    // The same faults on a GET are retried until the attempts run out.
    let get = Request::get("/locations/{locationId}").path_param("locationId", sb.location_id());
    let err = client.json(ACCOUNT, &get).await.expect_err("always dropped");
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert_eq!(logged(&sb, "/locations").len(), 8, "max_attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_request_times_out_and_is_retried() {
    let sb = start_unlimited(SandboxConfig::default()).await;
    sb.set_faults(faults(FaultRule { hang_rate: 1.0, times: Some(1), ..FaultRule::default() }), Some(3));
    let config = ClientConfig { request_timeout: Duration::from_millis(300), ..quick_config() };
    let rec = Arc::new(Recorder::default());
    let client = client(config, rec.clone());
    client.add_account(pit_account(&sb, ACCOUNT, PIT));
    let get = Request::get("/locations/{locationId}").path_param("locationId", sb.location_id());
    client.json(ACCOUNT, &get).await.expect("second attempt answers");
    assert_eq!(rec.counters.snapshot().retries, 1);
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // Bind and drop to find a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let rec = Arc::new(Recorder::default());
    let client = client(quick_config(), rec.clone());
    let account = Account::new("dead", Credentials::PrivateToken(Secret::new("t")))
        .and_then(|a| a.with_base_url(&format!("http://127.0.0.1:{port}")))
        .expect("account");
    client.add_account(account);
    let err = client.json("dead", &Request::post("/contacts/").body(json!({}))).await.expect_err("nobody listens");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(rec.counters.snapshot().retries, 7, "a POST that never connected is safe to repeat");
}
