//! The console in a real browser: headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` over WebDriver) against `flowd run` and the sandbox. An operator logs
//! in, finds a failed run by its contact's id, opens it, replays it and sees it succeed.
//! Screenshots of the run list and of the run page are written to
//! `target/console-screenshots/` (docs/console.png is one of them).
//!
//! Without Chromium this test fails (it does not skip): `.ci/run` installs `chromium`
//! and `chromium-driver` when they are missing.

mod console_support;

use console_support::{api_runs, eventually, start, ADMIN};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// chromedriver on a free loopback port, and a headless Chromium session through it.
async fn browser(profile: &std::path::Path) -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start chromedriver ({e}): this test needs headless Chromium: apt-get install chromium chromium-driver")
        });
    let driver = Driver(child);
    let mut caps = serde_json::Map::new();
    let mut args = vec![
        "--headless=new".to_string(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1360,900".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    // Chromium refuses to run as root with its sandbox (CI runs as root).
    if unsafe_is_root() {
        args.push("--no-sandbox".into());
    }
    let mut options = serde_json::json!({ "args": args });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = "/usr/bin/chromium".into();
    }
    caps.insert("goog:chromeOptions".into(), options);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
            Ok(client) => return (driver, client),
            Err(e) if Instant::now() > deadline => panic!("cannot start headless Chromium through chromedriver: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Whether this process runs as root, from /proc (no libc call needed).
fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn wait_for_text(c: &Client, css: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if e.text().await.map(|t| t.contains(text)).unwrap_or(false) {
                return;
            }
        }
        if Instant::now() > deadline {
            let source = c.source().await.unwrap_or_default();
            panic!("`{text}` never appeared in `{css}`:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_failed_run_by_contact_and_replays_it() {
    let rig = start(6, None, true).await;
    let svc = &rig.svc;
    eventually(svc, "7 dead runs of push-contacts", Duration::from_secs(60), || async {
        let runs = api_runs(svc, "flow=push-contacts&status=dead").await;
        runs.len() == 7
    })
    .await;
    let contact = rig.sb.records("contacts")[2]["id"].as_str().expect("contact id").to_string();

    let profile = tempfile::tempdir().expect("profile dir");
    let (_driver, c) = browser(profile.path()).await;

    // Not logged in: the console sends the browser to its login form.
    c.goto(&format!("{}/runs", svc.base)).await.expect("open the console");
    assert!(c.current_url().await.expect("url").path().ends_with("/login"));
    c.find(Locator::Css("#token")).await.expect("token field").send_keys(ADMIN).await.expect("type the token");
    c.find(Locator::Css("button[type=submit]")).await.expect("log in button").click().await.expect("log in");
    wait_for_text(&c, "h1", "Runs").await;
    let shots = screenshots();
    std::fs::write(shots.join("runs.png"), c.screenshot().await.expect("screenshot")).expect("write runs.png");

    // Search by the contact's id: its one run, dead on the push.
    let search = c.find(Locator::Css("input[name=touched]")).await.expect("search field");
    search.send_keys(&format!("contact:{contact}")).await.expect("type");
    c.find(Locator::Css("form.filters button")).await.expect("filter").click().await.expect("search");
    wait_for_text(&c, "table.runs tbody", "push-contacts").await;
    let rows = c.find_all(Locator::Css("table.runs tbody tr")).await.expect("rows");
    let text: Vec<String> = futures_text(&rows).await;
    let pushes: Vec<&String> = text.iter().filter(|t| t.contains("push-contacts")).collect();
    assert_eq!(pushes.len(), 1, "{text:?}");
    assert!(pushes[0].contains("dead"), "{text:?}");
    let link = c
        .find(Locator::XPath("//table[contains(@class,'runs')]//tr[contains(., 'push-contacts')]//a"))
        .await
        .expect("the run's link");
    link.click().await.expect("open the run");
    wait_for_text(&c, "h1", "dead").await;
    let page = c.source().await.expect("page");
    assert!(page.contains(&contact) && page.contains("the app is being deployed"), "{page}");

    // The app is back: replay from the failed step.
    rig.app.failing.store(false, Ordering::SeqCst);
    c.find(Locator::XPath("//button[contains(., 'Replay from the failed step')]"))
        .await
        .expect("replay button")
        .click()
        .await
        .expect("replay");
    wait_for_text(&c, "h1", "succeeded").await;
    std::fs::write(shots.join("run.png"), c.screenshot().await.expect("screenshot")).expect("write run.png");
    let runs = api_runs(svc, &format!("flow=push-contacts&touched=contact:{contact}")).await;
    assert_eq!(runs[0]["status"], "succeeded");
    c.close().await.expect("close the browser");
}

async fn futures_text(rows: &[fantoccini::elements::Element]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r.text().await.unwrap_or_default());
    }
    out
}
