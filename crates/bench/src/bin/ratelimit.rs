//! Rate-limit fidelity: the sandbox enforcing GHL's 100 requests / 10 s on its one
//! location, a backlog of new contacts on it, and the engine (scheduler included) with
//! the client's default GHL limits working it off through a create-task flow.
//!
//! ```text
//! cargo run --release -p bench --bin ratelimit -- [--contacts N] [--timeout SECS]
//! ```
//!
//! Requests are timed twice: client-side when each attempt is sent (a `ghl::Observer`
//! wrapped around the engine's metrics), and server-side from the sandbox's request log
//! (its entries carry no time, so the bench reads the log every 10 ms and stamps new
//! entries when it sees them: ≤ 10 ms late, in the sandbox's order). For every full
//! sliding 10 s window while work is queued (from the first request to the last task
//! created) it reports the fewest requests (and where the first such window opens) and
//! the most, the gaps between requests (and where the widest is), and the number of 429s.

use anyhow::{anyhow, bail, Context, Result};
use bench::{quantile, TOKEN};
use engine::{AccountInfo, Engine, EngineConfig, Metrics};
use sandbox::{RateLimitConfig, SandboxConfig, Seed};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FLOW: &str = r#"
name: welcome
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}", pageLimit: 500 }
  every: 10s
  dedupe: new
  max_new: 1000000
steps:
  - id: task
    uses: contacts.create_task
    with:
      contactId: "{{ trigger.id }}"
      title: "Welcome call with {{ trigger.firstName }}"
      dueDate: "{{ date_add now days=2 }}"
      completed: false
"#;

/// Times every attempt the client sends and every status it gets, and passes everything
/// on to the engine's metrics.
struct Recorder {
    inner: Arc<Metrics>,
    t0: Instant,
    sends: Mutex<Vec<f64>>,
    statuses: Mutex<BTreeMap<u16, u64>>,
}

impl ghl::Observer for Recorder {
    fn sending(&self, sending: &ghl::Sending<'_>) {
        if let Ok(mut s) = self.sends.lock() {
            s.push(self.t0.elapsed().as_secs_f64());
        }
        ghl::Observer::sending(&*self.inner, sending);
    }
    fn response(&self, status: u16) {
        if let Ok(mut s) = self.statuses.lock() {
            *s.entry(status).or_default() += 1;
        }
        ghl::Observer::response(&*self.inner, status);
    }
    fn transport_error(&self) {
        ghl::Observer::transport_error(&*self.inner);
    }
    fn retry(&self, delay: Duration) {
        ghl::Observer::retry(&*self.inner, delay);
    }
    fn rate_limit_wait(&self, wait: Duration) {
        ghl::Observer::rate_limit_wait(&*self.inner, wait);
    }
    fn token_refresh(&self, resource: &str) {
        ghl::Observer::token_refresh(&*self.inner, resource);
    }
}

/// Counts of requests in every sliding window `[t, t + 10 s)` that starts at a request
/// and ends by `end`: (windows, fewest, when the first window with the fewest starts
/// (seconds from the first request), most).
fn windows(times: &[f64], end: f64) -> (usize, usize, f64, usize) {
    let mut min = usize::MAX;
    let mut min_at = 0.0;
    let mut max = 0;
    let mut n = 0;
    let mut j = 0;
    for (i, &t) in times.iter().enumerate() {
        if t + 10.0 > end {
            break;
        }
        while j < times.len() && times[j] < t + 10.0 {
            j += 1;
        }
        let count = j - i;
        if count < min {
            min = count;
            min_at = t - times[0];
        }
        max = max.max(count);
        n += 1;
    }
    (n, if n == 0 { 0 } else { min }, min_at, max)
}

/// The most requests in any sliding 10 s window of the whole run (ending anywhere).
fn busiest(times: &[f64]) -> usize {
    let mut j = 0;
    let mut max = 0;
    for (i, &t) in times.iter().enumerate() {
        while j < times.len() && times[j] < t + 10.0 {
            j += 1;
        }
        max = max.max(j - i);
    }
    max
}

/// Requests per fixed 10 s window from the first one.
fn fixed(times: &[f64]) -> Vec<usize> {
    let Some(&start) = times.first() else { return Vec::new() };
    let mut out = Vec::new();
    for &t in times {
        let w = ((t - start) / 10.0) as usize;
        if out.len() <= w {
            out.resize(w + 1, 0);
        }
        out[w] += 1;
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut contacts = 600usize;
    let mut timeout = 300u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: u64 = value.parse().with_context(|| format!("{flag}: `{value}` is not a number"))?;
        match flag.as_str() {
            "--contacts" => contacts = usize::try_from(n)?,
            "--timeout" => timeout = n,
            other => bail!("unknown flag {other}"),
        }
    }
    println!("ratelimit: {contacts} new contacts on one location, sandbox and client at GHL's 100 requests / 10 s");

    let mut config = SandboxConfig::default().with_seed(Seed::Contacts(0)).with_rate_limit(RateLimitConfig::default());
    config.tokens = vec![TOKEN.into()];
    config.request_log_capacity = 5000;
    let sb = sandbox::Sandbox::start(config).await.map_err(|e| anyhow!("sandbox: {e}"))?;

    let t0 = Instant::now();
    let metrics = Arc::new(Metrics::new());
    let recorder = Arc::new(Recorder {
        inner: metrics.clone(),
        t0,
        sends: Mutex::new(Vec::new()),
        statuses: Mutex::new(BTreeMap::new()),
    });
    let client = ghl::Client::builder()
        .config(ghl::ClientConfig::default())
        .observer(recorder.clone())
        .build()
        .context("client")?;
    let account = ghl::Account::new("main", ghl::Credentials::PrivateToken(ghl::Secret::new(TOKEN)))
        .context("account")?
        .with_base_url(&sb.base_url())
        .context("base url")?
        .with_resource(sb.location_id());
    client.add_account(account);
    let dir = tempfile::tempdir()?;
    let store = store::create_or_open(dir.path().join("store"), bench::store_backend()?).context("store")?;
    let catalog = Arc::new(catalog::Catalog::builtin().map_err(|e| anyhow!("catalog: {e:?}"))?);
    let accounts = vec![AccountInfo { name: "main".into(), location_id: sb.location_id().into() }];
    let engine_config = EngineConfig { max_items: contacts + 1000, ..EngineConfig::default() };
    let engine = Engine::new(catalog, client, store, accounts, BTreeMap::new(), engine_config, metrics);
    engine.set_flows(vec![bench::compile(FLOW)?])?;

    // Baseline on the empty location, then the backlog arrives.
    let (base, _) = engine.poll_and_run("welcome").await?;
    if !base.baseline {
        bail!("the first poll should be a baseline");
    }
    for i in 0..contacts {
        let c = serde_json::json!({
            "locationId": sb.location_id(),
            "firstName": format!("New{i}"),
            "lastName": "Person",
            "email": format!("new{i}@example.com"),
        });
        sb.insert_record("contacts", c).context("insert contact")?;
    }
    // Server-side times: read the request log every 10 ms.
    let mut server: Vec<(f64, u16)> = Vec::new();
    let mut last_seq: i64 = -1;
    let mut sample = |server: &mut Vec<(f64, u16)>| {
        let now = t0.elapsed().as_secs_f64();
        for e in sb.requests() {
            let seq = e.get("seq").and_then(|s| s.as_i64()).unwrap_or(-1);
            if seq > last_seq {
                last_seq = seq;
                let status = e.get("status").and_then(|s| s.as_u64()).unwrap_or(0) as u16;
                server.push((now, status));
            }
        }
    };
    sample(&mut server);
    let before = server.len();

    let (tx, rx) = tokio::sync::watch::channel(false);
    let tasks = engine.start(rx);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut done_at = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        sample(&mut server);
        if sb.records("tasks").len() >= contacts {
            done_at = Some(t0.elapsed().as_secs_f64());
            break;
        }
    }
    let _ = tx.send(true);
    tasks.join().await;
    sample(&mut server);
    let done = done_at.context("the backlog was not worked off before --timeout")?;

    let server_all: Vec<(f64, u16)> = server[before..].to_vec();
    let server_times: Vec<f64> = server_all.iter().map(|(t, _)| *t).collect();
    let server_429 = server_all.iter().filter(|(_, s)| *s == 429).count();
    let sends: Vec<f64> = {
        let s = recorder.sends.lock().map_err(|_| anyhow!("poisoned"))?;
        s.iter().copied().filter(|t| *t <= done + 1.0).collect()
    };
    // The baseline poll's request happened before the backlog: leave it out.
    let client_times: Vec<f64> = sends.iter().copied().skip(1).collect();
    let statuses = recorder.statuses.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let start = server_times.first().copied().unwrap_or(0.0);
    println!(
        "work off: {} tasks in {:.1} s from the first request ({} requests seen by the sandbox, {} sent by the client)",
        contacts,
        done - start,
        server_times.len(),
        client_times.len()
    );
    for (label, times) in [("server (log sampled every 10 ms)", &server_times), ("client (when sent)", &client_times)] {
        let (n, min, min_at, max) = windows(times, done);
        println!(
            "  {label}: {n} full sliding 10 s windows while work was queued: fewest {min} (first at +{:.1} s), most {max}; busiest window of the run {}",
            min_at,
            busiest(times)
        );
        println!("    per fixed 10 s window from the first request: {:?}", fixed(times));
    }
    let gaps: Vec<(f64, f64)> = server_times.windows(2).map(|w| (w[1] - w[0], w[0] - start)).collect();
    let widest = gaps.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0)).unwrap_or_default();
    let gaps: Vec<f64> = {
        let mut g: Vec<f64> = gaps.iter().map(|g| g.0).collect();
        g.sort_by(f64::total_cmp);
        g
    };
    println!(
        "  gaps between requests (server): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (after the request at +{:.1} s)",
        quantile(&gaps, 0.5) * 1e3,
        quantile(&gaps, 0.99) * 1e3,
        widest.0 * 1e3,
        widest.1
    );
    println!("429s: {server_429} in the sandbox's log; client statuses {statuses:?}");
    Ok(())
}
