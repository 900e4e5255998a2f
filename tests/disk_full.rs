//! A full disk under `flowd run`, without privileges: once the service is up, its file size
//! limit is lowered (`prlimit`; SIGXFSZ ignored, so that a write past it fails with EFBIG
//! as one fails on a full disk with ENOSPC) and it takes signed webhook deliveries until its
//! store cannot write. fjall sizes a new journal file to 32 MB at once, so the limit can
//! only come after the store is open; a write at an offset past it fails either way. It must
//! then say so (`/readyz` not 200) and exit with the documented code; restarted with space,
//! every delivery it accepted fires its flow once and nothing is lost.

mod support;

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "pit-disk-full-test";
const SEED: [u8; 32] = [9; 32];
/// `flowd::exit::STORE_FAILED`, as docs/operating.md documents it.
const STORE_FAILED: i32 = 75;
/// The file size limit: room in fjall's journal for some deliveries after the new store.
const LIMIT_BYTES: u64 = 256 * 1024;
const CONTACTS: usize = 3_000;

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

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("flowd.log")).unwrap_or_default()
}

/// `flowd run`; with `limited`, under `sh` with SIGXFSZ ignored (it stays ignored across
/// `exec`) and only warnings logged.
fn start(dir: &Path, limited: bool) -> Killed {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("flowd.log")).expect("log");
    let flowd = support::flowd_bin();
    let mut cmd = if limited {
        let mut c = Command::new("sh");
        c.args(["-c", "trap '' XFSZ; exec \"$0\" run --config flowd.yaml"]).arg(flowd);
        c
    } else {
        let mut c = Command::new(flowd);
        c.args(["run", "--config", "flowd.yaml"]);
        c
    };
    let mut child = cmd
        .current_dir(dir)
        .env("T", TOKEN)
        .env("RUST_LOG", if limited { "warn" } else { "info" })
        .stdout(Stdio::null())
        // Copied by this process, which has no file size limit: the log outlives the failure.
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowd starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut log = log;
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut log));
    Killed(child)
}

async fn wait_ready(http: &reqwest::Client, admin: &str, dir: &Path) {
    let started = Instant::now();
    while http.get(format!("http://{admin}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(20), "not ready; log:\n{}", read_log(dir));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn delivery(location: &str, contact: &str, n: usize) -> (String, String) {
    let body = serde_json::json!({"type": "ContactCreate", "locationId": location, "id": contact,
        "webhookId": format!("wh-{n}"), "timestamp": chrono::Utc::now().to_rfc3339()})
    .to_string();
    let sig = SigningKey::from_bytes(&SEED).sign(body.as_bytes());
    (body, base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fjall_store_that_cannot_write_stops_the_service_and_a_restart_loses_nothing() {
    a_store_that_cannot_write_stops_the_service_and_a_restart_loses_nothing("fjall").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_that_cannot_write_stops_the_service_and_a_restart_loses_nothing() {
    a_store_that_cannot_write_stops_the_service_and_a_restart_loses_nothing("sled").await
}

async fn a_store_that_cannot_write_stops_the_service_and_a_restart_loses_nothing(backend: &str) {
    let mut config = SandboxConfig::default().with_seed(Seed::Empty).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await.expect("sandbox");
    let contacts: Vec<String> = (0..CONTACTS)
        .map(|i| {
            let c = sb.insert_record("contacts", serde_json::json!({"firstName": format!("C{i}")})).expect("contact");
            c["id"].as_str().expect("id").to_string()
        })
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    std::fs::write(dir.path().join("flows/instant.yaml"), FLOW).expect("flow");
    let admin = format!("127.0.0.1:{}", free_port());
    let hooks = format!("127.0.0.1:{}", free_port());
    let public =
        base64::engine::general_purpose::STANDARD.encode(SigningKey::from_bytes(&SEED).verifying_key().as_bytes());
    let yaml = format!(
        "store: ./data\nstore_backend: {backend}\nflows: ./flows\nlisten: {admin}\nshutdown_timeout: 5s\nwebhooks:\n  listen: {hooks}\n  ed25519_keys: [\"{public}\"]\n  tolerance: 10m\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{T}}\n",
        sb.location_id(),
        sb.base_url()
    );
    std::fs::write(dir.path().join("flowd.yaml"), yaml).expect("config");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");

    let mut child = start(dir.path(), true);
    wait_ready(&http, &admin, dir.path()).await;
    // Serving, so `sh` has become flowd.
    let pid = i32::try_from(child.0.id()).expect("pid");
    rlimit::prlimit(pid, rlimit::Resource::FSIZE, Some((LIMIT_BYTES, LIMIT_BYTES)), None).expect("prlimit");

    // Deliveries until one is not accepted: the store could not write it.
    let mut accepted = Vec::new();
    let mut refused = None;
    for (n, contact) in contacts.iter().enumerate() {
        let (body, sig) = delivery(sb.location_id(), contact, n);
        let answer = http
            .post(format!("http://{hooks}/hooks/ghl"))
            .header("x-ghl-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => accepted.push(contact.clone()),
            Ok(r) => {
                refused = Some(format!("{}", r.status()));
                break;
            }
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.unwrap_or_else(|| {
        panic!("{} deliveries fitted under the limit; log:\n{}", accepted.len(), read_log(dir.path()))
    });
    assert!(!accepted.is_empty(), "nothing was accepted before the limit ({refused}); log:\n{}", read_log(dir.path()));

    // Not ready from then on (or already gone), and exits with the documented code.
    let ready = http.get(format!("http://{admin}/readyz")).send().await;
    if let Ok(r) = ready {
        assert_ne!(r.status(), 200, "ready with a store that cannot write; log:\n{}", read_log(dir.path()));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            use std::os::unix::process::ExitStatusExt;
            break status.code().ok_or(status.signal());
        }
        assert!(
            Instant::now() < deadline,
            "flowd kept running with a store that cannot write; log:\n{}",
            read_log(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = read_log(dir.path());
    assert_eq!(code, Ok(STORE_FAILED), "exit code, or the signal that ended it; log:\n{log}");
    assert!(log.contains("the store cannot write"), "{log}");

    // Space again: the restarted service reopens the store and finishes every accepted delivery.
    let _child = start(dir.path(), false);
    wait_ready(&http, &admin, dir.path()).await;
    let tagged = |id: &str| sb.record("contacts", id).is_some_and(|c| c["tags"] == serde_json::json!(["instant"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<&String> = accepted.iter().filter(|id| !tagged(id)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted deliveries never fired, e.g. {}; log:\n{}",
            missing.len(),
            accepted.len(),
            missing[0],
            read_log(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each contact was tagged once: nothing fired twice across the failure and the restart.
    let mut sent = HashSet::new();
    for e in sb.requests() {
        if e["method"] == "POST" && e["op"] == "contacts.add_tags" {
            let path = e["path"].as_str().unwrap_or_default().to_string();
            assert!(sent.insert(path.clone()), "{path} tagged twice");
        }
    }
    eprintln!(
        "{backend}: {} deliveries accepted before the store failed ({refused}), all fired once after the restart",
        accepted.len()
    );
}
