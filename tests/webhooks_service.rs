//! `flowd run` with the webhook receiver on its own port: the sandbox sends signed
//! webhooks, a webhook flow fires, rejected deliveries show on `/metrics`, and admin
//! endpoints are not served on the webhook port. `flowd run --once` fires the events a
//! stopped service left in its inbox.

mod support;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed, WebhookSettings};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "pit-webhook-service-test";
const SEED: [u8; 32] = [5; 32];

const FLOW: &str = r#"
name: instant
account: main
trigger:
  webhook: ContactCreate
steps:
  - id: tag
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [instant] }
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_fire_flows_through_flowd_run() {
    let mut config = SandboxConfig::default().with_seed(Seed::Empty).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await.expect("sandbox");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    std::fs::write(dir.path().join("flows/instant.yaml"), FLOW).expect("flow");
    let admin = format!("127.0.0.1:{}", free_port());
    let hooks = format!("127.0.0.1:{}", free_port());
    let public =
        base64::engine::general_purpose::STANDARD.encode(SigningKey::from_bytes(&SEED).verifying_key().as_bytes());
    let yaml = format!(
        "store: ./data\nflows: ./flows\nlisten: {admin}\nwebhooks:\n  listen: {hooks}\n  ed25519_keys: [\"{public}\"]\n  tolerance: 2m\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{T}}\n",
        sb.location_id(),
        sb.base_url()
    );
    std::fs::write(dir.path().join("flowd.yaml"), yaml).expect("config");
    let log = std::fs::File::create(dir.path().join("flowd.log")).expect("log");
    let _child = Killed(
        Command::new(support::flowd_bin())
            .args(["run", "--config", "flowd.yaml"])
            .current_dir(dir.path())
            .env("T", TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("flowd starts"),
    );
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let started = Instant::now();
    while http.get(format!("http://{admin}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(20), "{}", read_log(dir.path()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    sb.set_webhooks(WebhookSettings {
        url: Some(format!("http://{hooks}/hooks/ghl")),
        signing_key: Some(base64::engine::general_purpose::STANDARD.encode(SEED)),
        ..WebhookSettings::default()
    })
    .expect("webhooks");
    let contact = sb.insert_record("contacts", serde_json::json!({"firstName": "Ann"})).expect("contact");
    let id = contact["id"].as_str().expect("id").to_string();
    let tagged = || sb.record("contacts", &id).is_some_and(|c| c["tags"].as_array().is_some_and(|t| !t.is_empty()));
    let fired = Instant::now();
    while !tagged() {
        assert!(fired.elapsed() < Duration::from_secs(5), "flow did not fire; log:\n{}", read_log(dir.path()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Unsigned: rejected and counted. The admin API is not on the webhook port.
    let unsigned = http.post(format!("http://{hooks}/hooks/ghl")).body("{}").send().await.expect("answer");
    assert_eq!(unsigned.status(), 401);
    let admin_on_hooks = http.get(format!("http://{hooks}/metrics")).send().await.expect("answer");
    assert_eq!(admin_on_hooks.status(), 404);
    let metrics =
        http.get(format!("http://{admin}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains(r#"flowd_webhook_deliveries_total{result="accepted"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"flowd_webhook_deliveries_total{result="unsigned"} 1"#), "{metrics}");
}

fn read_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("flowd.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_fires_the_events_a_stopped_service_left_in_its_inbox() {
    let mut config = SandboxConfig::default().with_seed(Seed::Empty).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await.expect("sandbox");
    let contact = sb.insert_record("contacts", serde_json::json!({"firstName": "Ann"})).expect("contact");
    let id = contact["id"].as_str().expect("id").to_string();

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    std::fs::write(dir.path().join("flows/instant.yaml"), FLOW).expect("flow");
    let yaml = format!(
        "store: ./data\nflows: ./flows\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{T}}\n",
        sb.location_id(),
        sb.base_url()
    );
    std::fs::write(dir.path().join("flowd.yaml"), yaml).expect("config");
    // What a service that stopped between receiving and processing leaves behind.
    {
        let store = store::create_or_open(dir.path().join("data"), store::Backend::FOR_NEW_STORES).expect("store");
        let event = serde_json::json!({"type": "ContactCreate", "locationId": sb.location_id(), "id": id,
            "webhookId": "wh-1", "timestamp": chrono::Utc::now().to_rfc3339()});
        assert!(store.put_webhook_event("wh-1", &event).expect("stored"));
    }
    let once = || {
        Command::new(support::flowd_bin())
            .args(["run", "--once", "--config", "flowd.yaml"])
            .current_dir(dir.path())
            .env("T", TOKEN)
            .output()
            .expect("flowd runs")
    };
    let out = once();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("webhook inbox: 1 stored event(s), 1 run(s) (1 succeeded)"), "{text}");
    let tags = sb.record("contacts", &id).map(|c| c["tags"].clone()).unwrap_or_default();
    assert_eq!(tags, serde_json::json!(["instant"]), "{text}");
    // The event is processed: a second pass fires nothing.
    let out = once();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("webhook inbox"), "{text}");
    let tag_requests = sb.requests().iter().filter(|e| e["method"] == "POST" && e["op"] == "contacts.add_tags").count();
    assert_eq!(tag_requests, 1, "{text}");
}

/// The campaign's case: 400 idle connections held open against the webhook port of a
/// flowd started with a soft limit of 256 open files. flowd raises its limit, so the
/// connections do not exhaust it; a delivery is still answered and `/healthz` does not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_exhaust_files_nor_block_deliveries() {
    let mut config = SandboxConfig::default().with_seed(Seed::Empty).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await.expect("sandbox");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    std::fs::write(dir.path().join("flows/instant.yaml"), FLOW).expect("flow");
    let admin = format!("127.0.0.1:{}", free_port());
    let hooks = format!("127.0.0.1:{}", free_port());
    let public =
        base64::engine::general_purpose::STANDARD.encode(SigningKey::from_bytes(&SEED).verifying_key().as_bytes());
    let yaml = format!(
        "store: ./data\nflows: ./flows\nlisten: {admin}\nwebhooks:\n  listen: {hooks}\n  ed25519_keys: [\"{public}\"]\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{T}}\n",
        sb.location_id(),
        sb.base_url()
    );
    std::fs::write(dir.path().join("flowd.yaml"), yaml).expect("config");
    let log = std::fs::File::create(dir.path().join("flowd.log")).expect("log");
    let child = Killed(
        Command::new("sh")
            .args(["-c", "ulimit -Sn 256 && exec \"$0\" run --config flowd.yaml"])
            .arg(support::flowd_bin())
            .current_dir(dir.path())
            .env("T", TOKEN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("flowd starts"),
    );
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let started = Instant::now();
    while http.get(format!("http://{admin}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(20), "{}", read_log(dir.path()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).expect("limits");
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).expect("a line for open files");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "the soft limit is raised to the hard one: {open_files}");
    assert_ne!(numbers[0], "256", "{open_files}");

    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(tokio::net::TcpStream::connect(&hooks).await.expect("connect"));
    }
    let t = Instant::now();
    let health = http.get(format!("http://{admin}/healthz")).send().await.expect("healthz answers");
    assert_eq!(health.status(), 200);
    let unsigned =
        http.post(format!("http://{hooks}/hooks/ghl")).body("{}").send().await.expect("a delivery is answered");
    assert_eq!(unsigned.status(), 401);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(idle);
}
