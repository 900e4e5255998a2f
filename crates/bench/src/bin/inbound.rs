//! Inbound HTTP triggers (issue 22): the real `flowd` binary as a child process, its
//! webhook listener on loopback, the GHL sandbox in this process.
//!
//! ```text
//! cargo build --release -p flowd
//! cargo run --release -p bench --bin inbound -- [--requests N] [--concurrency C] [--flowd PATH]
//! ```
//!
//! Three flows, four measurements:
//!
//! * `accept` (`N` requests over `C` connections): `POST /bench/accept` (bearer), no
//!   `respond`: answered 202 once the run is stored durably. Requests per second accepted.
//! * `read-cached` (`N` over `C`): `POST /bench/read` answered with a contact through
//!   `cache: 5m`, over 10 contacts (the first read of each goes to GHL, the rest are hits).
//! * `read-cached-1` (500 over 1 connection): the same, one request at a time: latency.
//! * `read-uncached-1` (80 over 1 connection, 150 ms apart): the same flow without
//!   `cache:`, every request a GHL read, spaced wider than flowd's pacing of a location's
//!   requests (after 11 s for the budget's window to clear), so that it measures a read and
//!   not the rate limiter's wait. Uncached, request/reply is capped by the location's
//!   budget (100 GHL requests per 10 s), whatever the load.
//!
//! Latency is from the request leaving to the whole answer read, per request; p50/p99 are
//! over all requests of the measurement. The sandbox's rate limit is off.

use anyhow::{bail, Context, Result};
use bench::{free_port, locate_flowd, quantile};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "pit-inbound-bench";
/// A pause after each uncached request, longer than flowd's pacing of one location's GHL
/// requests (10 s / 98 ≈ 102 ms, `ghl::ratelimit`): the latency is then the read's, not
/// the wait for the next slot.
const PACE: Duration = Duration::from_millis(150);
const APP_TOKEN: &str = "bench-app-token";

const ACCEPT: &str = r#"
name: accept
account: main
trigger:
  http:
    path: /bench/accept
    auth: { bearer: "${APP_TOKEN}" }
steps:
  - id: read
    uses: contacts.get_contact
    with: { contactId: "{{ trigger.body.contactId }}" }
    cache: 5m
"#;

const READ: &str = r#"
name: NAME
account: main
trigger:
  http:
    path: /bench/PATH
    auth: { bearer: "${APP_TOKEN}" }
    respond:
      body: { id: "{{ steps.contact.id }}", name: "{{ steps.contact.firstName }}" }
steps:
  - id: contact
    uses: contacts.get_contact
    with: { contactId: "{{ trigger.body.contactId }}" }
CACHE
"#;

struct Args {
    requests: usize,
    concurrency: usize,
    flowd: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { requests: 4000, concurrency: 16, flowd: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().with_context(|| format!("{flag}: `{value}` is not a number"));
        match flag.as_str() {
            "--requests" => a.requests = num()?,
            "--concurrency" => a.concurrency = num()?.max(1),
            "--flowd" => a.flowd = Some(PathBuf::from(&value)),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `n` requests over `c` connections; returns the wall time and each latency (ms).
async fn load(
    url: &str,
    n: usize,
    c: usize,
    expect: u16,
    ids: Arc<Vec<String>>,
    gap: Duration,
) -> Result<(Duration, Vec<f64>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (url, next, ids) = (url.to_string(), next.clone(), ids.clone());
        let http = reqwest::Client::builder().pool_max_idle_per_host(1).timeout(Duration::from_secs(30)).build()?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let body = json!({ "contactId": ids[i % ids.len()] });
                let t = Instant::now();
                let r = http.post(&url).bearer_auth(APP_TOKEN).json(&body).send().await?;
                let status = r.status().as_u16();
                let text = r.text().await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                if status != expect {
                    bail!("{url}: answered {status}, expected {expect}: {text}");
                }
                tokio::time::sleep(gap).await;
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((started.elapsed(), all))
}

fn report(name: &str, wall: Duration, mut lat: Vec<f64>) {
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<14} {:>6} requests in {:>6.2}s = {:>7.0}/s   p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms",
        lat.len(),
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        quantile(&lat, 0.50),
        quantile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let flowd = locate_flowd(args.flowd.clone())?;
    let mut config = SandboxConfig::default().with_seed(Seed::Empty).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await?;
    let mut ids = Vec::new();
    for i in 0..10 {
        let c = sb.insert_record("contacts", json!({"firstName": format!("C{i}")})).context("contact")?;
        ids.push(c["id"].as_str().context("id")?.to_string());
    }
    let ids = Arc::new(ids);

    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("flows"))?;
    std::fs::write(dir.path().join("flows/accept.yaml"), ACCEPT)?;
    let cached = READ.replace("NAME", "read-cached").replace("PATH", "read").replace("CACHE", "    cache: 5m");
    let uncached = READ.replace("NAME", "read-uncached").replace("PATH", "read-uncached").replace("CACHE", "");
    std::fs::write(dir.path().join("flows/read-cached.yaml"), cached)?;
    std::fs::write(dir.path().join("flows/read-uncached.yaml"), uncached)?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let hooks = format!("127.0.0.1:{}", free_port()?);
    let yaml = format!(
        "store: ./data\nflows: ./flows\nlisten: {admin}\nwebhooks:\n  listen: {hooks}\n  max_connections: 4096\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{T}}\n",
        sb.location_id(),
        sb.base_url()
    );
    std::fs::write(dir.path().join("flowd.yaml"), yaml)?;
    let _child = Killed(
        Command::new(&flowd)
            .args(["run", "--config", "flowd.yaml"])
            .current_dir(dir.path())
            .env("T", TOKEN)
            .env("APP_TOKEN", APP_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", flowd.display()))?,
    );
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("http://{admin}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("flowd did not get ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} requests per measurement over {} connections; flowd {}",
        args.requests,
        args.concurrency,
        flowd.display()
    );
    // A short warm-up (connections, the first reads).
    load(&format!("http://{hooks}/bench/read"), 20, 2, 200, ids.clone(), Duration::ZERO).await?;
    let (n, c) = (args.requests, args.concurrency);
    let (wall, lat) = load(&format!("http://{hooks}/bench/accept"), n, c, 202, ids.clone(), Duration::ZERO).await?;
    report("accept", wall, lat);
    // Let the accepted runs finish before the reads are timed.
    let done = format!(r#"flowd_runs_total{{flow="accept",status="succeeded"}} {n}"#);
    let waited = Instant::now();
    while !http.get(format!("http://{admin}/metrics")).send().await?.text().await?.contains(&done) {
        if waited.elapsed() > Duration::from_secs(120) {
            bail!("the accepted runs did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("accepted runs all succeeded after {:.2}s more", waited.elapsed().as_secs_f64());
    let (wall, lat) = load(&format!("http://{hooks}/bench/read"), n, c, 200, ids.clone(), Duration::ZERO).await?;
    report("read-cached", wall, lat);
    let (wall, lat) = load(&format!("http://{hooks}/bench/read"), 500, 1, 200, ids.clone(), Duration::ZERO).await?;
    report("read-cached-1", wall, lat);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (wall, lat) = load(&format!("http://{hooks}/bench/read-uncached"), 80, 1, 200, ids.clone(), PACE).await?;
    report("read-uncached-1", wall, lat);
    let gets = sb.requests().iter().filter(|e| e["op"] == "contacts.get_contact").count();
    println!("GHL reads of contacts.get_contact in all (sandbox log): {gets}");
    Ok(())
}
