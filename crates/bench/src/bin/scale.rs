//! Scale benchmark: N flows spread over L locations (accounts), each polling its own
//! sandbox location on a fixed interval, with a durable sled store on disk. Measures
//! what loading the flows costs (time, RSS), then RSS, CPU and poll drift while the
//! engine runs its schedules with nothing new to find.
//!
//! ```text
//! cargo run --release -p bench --bin scale -- [--flows N] [--locations L] [--minutes M]
//!     [--every SECS] [--contacts K] [--blocking-threads T] [--poll-concurrency P]
//! ```
//!
//! The sandboxes (one per location, `K` contacts each, GHL's rate limits on) run in a
//! child process (this binary with `--serve-sandboxes`), so the RSS and CPU printed are
//! the engine's process alone: the engine, its client, store, metrics and the bench's
//! own bookkeeping. `--every` (default 300 = the issue's `every: 5m`) shortens the
//! interval for quick runs. The first round of polls (each flow's baseline, spread over
//! the scheduler's 2 s start jitter) is reported apart from the steady state.
//!
//! The tokio runtime is built like flowd's (`max_blocking_threads` 16, `--blocking-threads`
//! to change it; tokio's default is 512) and the allocator is flowd's (jemalloc, see
//! `bench::heap_in_use`). Next to RSS the bench prints the bytes the allocator counts as
//! allocated (read three times only), so live data shows apart from what the allocator
//! keeps after a burst. Allocated counts memory never touched (sled allocates zeroed
//! metrics at open that stay out of RSS; BENCHMARKS.md, "Scale"), so it can exceed RSS.

use anyhow::{anyhow, bail, Context, Result};
use bench::{bucket_count, bucket_delta, bucket_quantile, cpu_seconds, drift_buckets, mb, peak_rss, rss, TOKEN};
use engine::{AccountInfo, Engine, EngineConfig, Metrics};
use sandbox::{RateLimitConfig, SandboxConfig, Seed};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// flowd's `max_blocking_threads` (crates/flowd/src/main.rs).
const BLOCKING_THREADS: usize = 16;

struct Args {
    flows: usize,
    locations: usize,
    minutes: f64,
    every: u64,
    contacts: usize,
    blocking_threads: usize,
    poll_concurrency: usize,
    serve: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        flows: 1000,
        locations: 100,
        minutes: 6.0,
        every: 300,
        contacts: 5,
        blocking_threads: BLOCKING_THREADS,
        poll_concurrency: EngineConfig::default().poll_concurrency,
        serve: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--serve-sandboxes" {
            a.serve = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: `{value}` is not a number");
        match flag.as_str() {
            "--flows" => a.flows = value.parse().with_context(bad)?,
            "--locations" => a.locations = value.parse::<usize>().with_context(bad)?.max(1),
            "--minutes" => a.minutes = value.parse().with_context(bad)?,
            "--every" => a.every = value.parse::<u64>().with_context(bad)?.max(1),
            "--contacts" => a.contacts = value.parse().with_context(bad)?,
            "--blocking-threads" => a.blocking_threads = value.parse::<usize>().with_context(bad)?.max(1),
            "--poll-concurrency" => a.poll_concurrency = value.parse::<usize>().with_context(bad)?.max(1),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn flow_text(i: usize, account: &str, every: u64) -> String {
    format!(
        r#"
name: flow{i:05}
account: {account}
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}", pageLimit: 100 }}
  every: {every}s
  dedupe: new
steps:
  - id: task
    uses: contacts.create_task
    with:
      contactId: "{{{{ trigger.id }}}}"
      title: "Welcome call with {{{{ trigger.firstName }}}}"
      dueDate: "{{{{ date_add now days=2 }}}}"
      completed: false
"#
    )
}

/// Child mode: start the sandboxes, print `location base_url` per line, then serve until
/// stdin closes.
async fn serve(a: &Args) -> Result<()> {
    let mut sandboxes = Vec::with_capacity(a.locations);
    let mut out = std::io::stdout().lock();
    for i in 0..a.locations {
        let mut config =
            SandboxConfig::default().with_seed(Seed::Contacts(a.contacts)).with_rate_limit(RateLimitConfig::default());
        config.location_id = format!("loc{i:03}");
        config.tokens = vec![TOKEN.into()];
        config.request_log_capacity = 100;
        let sb = sandbox::Sandbox::start(config).await.map_err(|e| anyhow!("sandbox: {e}"))?;
        writeln!(out, "{} {}", sb.location_id(), sb.base_url())?;
        sandboxes.push(sb);
    }
    out.flush()?;
    drop(out);
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    Ok(())
}

/// The engine's poll drift histogram alone, to read it without encoding every metric:
/// at 10,000 flows the whole `/metrics` text is megabytes, and the bench reads the drift
/// ten times a second during the first round.
struct Drift(prometheus_client::registry::Registry);

impl Drift {
    fn new(engine: &Engine) -> Drift {
        let mut r = prometheus_client::registry::Registry::with_prefix("flowd");
        r.register("poll_drift_seconds", "How late scheduled polls start", engine.metrics().poll_drift.clone());
        Drift(r)
    }

    fn snapshot(&self) -> Vec<(f64, u64)> {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0);
        drift_buckets(&out)
    }
}

fn drift_line(label: &str, b: &[(f64, u64)]) {
    println!(
        "  poll drift, {label}: {} polls, p50 ≤ {:.3} s, p99 ≤ {:.3} s, max ≤ {:.3} s (histogram bucket bounds)",
        bucket_count(b),
        bucket_quantile(b, 0.5),
        bucket_quantile(b, 0.99),
        bucket_quantile(b, 1.0)
    );
}

fn heap_text() -> String {
    match bench::heap_in_use() {
        Some(used) => format!("heap in use {:.1} MB", mb(Some(used))),
        None => "heap in use: not known on this platform".into(),
    }
}

fn main() -> Result<()> {
    let a = parse_args()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(a.blocking_threads)
        .build()?
        .block_on(main_async(a))
}

async fn main_async(a: Args) -> Result<()> {
    if a.serve {
        return serve(&a).await;
    }
    println!(
        "scale: {} flows over {} locations, every {} s, {} contacts per location, {} min (sandboxes in a child process); \
         blocking threads ≤ {}, polls in progress ≤ {} per account",
        a.flows, a.locations, a.every, a.contacts, a.minutes, a.blocking_threads, a.poll_concurrency
    );
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve-sandboxes", "--locations", &a.locations.to_string(), "--contacts", &a.contacts.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the sandbox process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut locations = Vec::with_capacity(a.locations);
    for _ in 0..a.locations {
        let line = lines.next().context("sandbox process ended early")??;
        let (loc, url) = line.split_once(' ').context("bad sandbox line")?;
        locations.push((loc.to_string(), url.to_string()));
    }
    let result = run(&a, &locations).await;
    drop(child.stdin.take());
    let _ = child.wait();
    result
}

async fn run(a: &Args, locations: &[(String, String)]) -> Result<()> {
    let rss_start = rss();
    let dir = tempfile::tempdir()?;
    let metrics = Arc::new(Metrics::new());
    let client = ghl::Client::builder()
        .config(ghl::ClientConfig::default())
        .observer(metrics.clone())
        .build()
        .context("client")?;
    let mut accounts = Vec::with_capacity(locations.len());
    for (i, (loc, url)) in locations.iter().enumerate() {
        let name = format!("acct{i:03}");
        let account = ghl::Account::new(name.clone(), ghl::Credentials::PrivateToken(ghl::Secret::new(TOKEN)))
            .context("account")?
            .with_base_url(url)
            .context("base url")?
            .with_resource(loc.clone());
        client.add_account(account);
        accounts.push(AccountInfo { name, location_id: loc.clone() });
    }
    let store = store::create_or_open(dir.path().join("store"), bench::store_backend()?).context("store")?;
    let catalog = Arc::new(catalog::Catalog::builtin().map_err(|e| anyhow!("catalog: {e:?}"))?);
    let env = flow::CompileEnv { env: BTreeMap::new(), accounts: accounts.iter().map(|x| x.name.clone()).collect() };
    let engine = Engine::new(
        catalog.clone(),
        client,
        store,
        accounts.clone(),
        BTreeMap::new(),
        EngineConfig { poll_concurrency: a.poll_concurrency, ..EngineConfig::default() },
        metrics,
    );
    let rss_engine = rss();

    // Validate + compile every flow text, then load them.
    let texts: Vec<String> = (0..a.flows).map(|i| flow_text(i, &accounts[i % accounts.len()].name, a.every)).collect();
    let t0 = Instant::now();
    let mut flows = Vec::with_capacity(a.flows);
    for (i, text) in texts.iter().enumerate() {
        let (f, diags) = flow::load(&format!("flow{i:05}.yaml"), text, &catalog, &env);
        flows.push(f.ok_or_else(|| anyhow!("flow does not compile:\n{}", flow::render_all(&diags)))?);
    }
    let compiled = t0.elapsed();
    engine.set_flows(flows)?;
    let loaded = t0.elapsed();
    drop(texts);
    let rss_loaded = rss();
    println!(
        "load: flow::load × {} {:.0} ms + set_flows {:.0} ms = {:.0} ms",
        a.flows,
        compiled.as_secs_f64() * 1e3,
        (loaded - compiled).as_secs_f64() * 1e3,
        loaded.as_secs_f64() * 1e3
    );
    println!(
        "RSS: {:.1} MB at start (runtime, bench), {:.1} MB with engine/store/catalog/client, {:.1} MB with flows loaded",
        mb(rss_start),
        mb(rss_engine),
        mb(rss_loaded)
    );
    println!("  with flows loaded: {}", heap_text());

    let drift = Drift::new(&engine);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let cpu_start = cpu_seconds().unwrap_or(0.0);
    let tasks = engine.start(rx);

    // First round: every flow's first (baseline) poll, due within 2 s of the start.
    let deadline = started + Duration::from_secs_f64(a.minutes * 60.0);
    while bucket_count(&drift.snapshot()) < a.flows as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last polls of the round finish (they are counted when they start).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = drift.snapshot();
    let first_round = started.elapsed();
    let cpu_first = cpu_seconds().unwrap_or(0.0);
    println!(
        "first round: {} polls started in {:.1} s, CPU {:.2} s; RSS {:.1} MB",
        bucket_count(&first),
        first_round.as_secs_f64() - 5.0,
        cpu_first - cpu_start,
        mb(rss())
    );
    println!("  after the first round: {}", heap_text());
    drift_line("first round (baselines)", &first);

    // Steady state: until the deadline, RSS sampled every 5 s.
    let steady_from = Instant::now();
    let mut rss_max = 0u64;
    let mut rss_samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5).min(deadline.saturating_duration_since(Instant::now()))).await;
        if let Some(r) = rss() {
            rss_max = rss_max.max(r);
            rss_samples.push(r);
        }
    }
    let steady = steady_from.elapsed().as_secs_f64();
    let cpu_steady = cpu_seconds().unwrap_or(0.0) - cpu_first;
    let end = drift.snapshot();
    let steady_drift = bucket_delta(&first, &end);
    println!(
        "steady state: {:.0} s, CPU {:.2} s = {:.2}% of one core; RSS {:.1} MB at end, max {:.1} MB (of {} samples); peak RSS (VmHWM) {:.1} MB",
        steady,
        cpu_steady,
        cpu_steady / steady * 100.0,
        mb(rss()),
        rss_max as f64 / 1_048_576.0,
        rss_samples.len(),
        mb(peak_rss())
    );
    println!("  at the end: {}", heap_text());
    drift_line("steady state", &steady_drift);
    drift_line("whole run", &end);
    if bucket_count(&steady_drift) < a.flows as u64 && steady < a.every as f64 {
        println!(
            "  (steady window shorter than one interval: not every flow polled again; use --minutes ≥ every/60 + 1)"
        );
    }
    // What one Prometheus scrape of flowd's `/metrics` costs at this many flows.
    let t = Instant::now();
    let text = engine.metrics().encode();
    println!(
        "/metrics: {:.1} MB of text, encoded in {:.0} ms; RSS {:.1} MB after",
        text.len() as f64 / 1_048_576.0,
        t.elapsed().as_secs_f64() * 1e3,
        mb(rss())
    );
    drop(text);

    let _ = tx.send(true);
    tasks.join().await;
    Ok(())
}
