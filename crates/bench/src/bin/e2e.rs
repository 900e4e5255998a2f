//! End-to-end load benchmark: flowd's engine against the in-process GHL sandbox, with
//! a durable store on disk (`BENCH_STORE=sled|fjall`, default flowd's) and the sandbox's
//! rate limits off.
//!
//! ```text
//! cargo run --release -p bench --bin e2e -- [--items N] [--steps 1|3] [--concurrency C]
//!     [--repeat R] [--latency-polls P] [--latency-batch B]
//! ```
//!
//! Throughput: seed nothing, take the baseline poll, add N new contacts, then time from
//! the start of the poll that finds them until the last run has succeeded and is on disk
//! (every step's start durable before it is sent; the runs' ends flushed at the latest by
//! a final flush inside the timed span). Latency: P polls, each finding B new contacts; per
//! item, the time from the poll's durable commit (detection) until its one-step run has
//! succeeded (an upper bound on detection → first action: it includes the action's
//! response and the commit of the run's end). Peak RSS and CPU time are the whole process's:
//! the sandbox serving the requests runs in it too. Each throughput run also reports how
//! long the poll's commits and the writers' batches held the store's writer lock (sled:
//! its process-wide transaction lock), and waited for it ([`store::Store::transaction_time`]).

use anyhow::{bail, Context, Result};
use bench::{compile, cpu_seconds, engine_and_store, engine_for, peak_rss, quantile, sandbox, ONE_STEP, THREE_STEPS};
use engine::EngineConfig;
use sandbox::{RateLimitConfig, Seed};
use std::time::{Duration, Instant};
use store::RunStatus;

struct Args {
    items: usize,
    steps: usize,
    concurrency: usize,
    repeat: usize,
    latency_polls: usize,
    latency_batch: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        items: 10_000,
        steps: 1,
        concurrency: EngineConfig::default().concurrency,
        repeat: 3,
        latency_polls: 200,
        latency_batch: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: usize = value.parse().with_context(|| format!("{flag}: `{value}` is not a number"))?;
        match flag.as_str() {
            "--items" => a.items = n,
            "--steps" => a.steps = n,
            "--concurrency" => a.concurrency = n,
            "--repeat" => a.repeat = n.max(1),
            "--latency-polls" => a.latency_polls = n,
            "--latency-batch" => a.latency_batch = n.max(1),
            other => bail!("unknown flag {other}"),
        }
    }
    if a.steps != 1 && a.steps != 3 {
        bail!("--steps must be 1 or 3");
    }
    Ok(a)
}

fn config(concurrency: usize, items: usize) -> EngineConfig {
    EngineConfig { concurrency, max_items: items + 1000, max_pages: 1000, ..EngineConfig::default() }
}

fn add_contacts(sb: &sandbox::Sandbox, from: usize, n: usize) -> Result<()> {
    for i in from..from + n {
        let c = serde_json::json!({
            "locationId": sb.location_id(),
            "firstName": format!("New{i}"),
            "lastName": "Person",
            "email": format!("new{i}@example.com"),
        });
        sb.insert_record("contacts", c).context("insert contact")?;
    }
    Ok(())
}

struct Throughput {
    items_per_s: f64,
    poll_ms: f64,
    total_ms: f64,
    cpu_s: f64,
    /// The store's writer lock in the timed window: (held, waited), ms.
    lock_polls: (f64, f64),
    lock_updates: (f64, f64),
    /// Flushes to disk in the timed window.
    flushes: u64,
    /// The machine's idle share in the timed window (all cores, any process).
    idle: Option<f64>,
}

async fn throughput(a: &Args) -> Result<Throughput> {
    let sb = sandbox(Seed::Contacts(0), RateLimitConfig::disabled()).await?;
    let dir = tempfile::tempdir()?;
    let (engine, store) = engine_and_store(&sb, &dir.path().join("store"), config(a.concurrency, a.items), false)?;
    let text = if a.steps == 1 { ONE_STEP } else { THREE_STEPS };
    engine.set_flows(vec![compile(text)?])?;
    let (base, _) = engine.poll_and_run("welcome").await?;
    if !base.baseline {
        bail!("the first poll should be a baseline");
    }
    add_contacts(&sb, 0, a.items)?;
    let tasks_before = sb.records("tasks").len();
    let cpu0 = cpu_seconds().unwrap_or(0.0);
    let ticks0 = bench::machine_ticks();
    let tx0 = store.transaction_time();
    let t0 = Instant::now();
    let (report, runs) = engine.poll_and_dispatch("welcome").await?;
    let poll = t0.elapsed();
    let statuses = engine::Engine::wait_for(runs).await?;
    // A run's end is committed when its task ends and flushed with the next write that
    // needs the disk; the clock stops once the last one is on disk too.
    let flushing = store.clone();
    tokio::task::spawn_blocking(move || flushing.flush()).await??;
    let total = t0.elapsed();
    let cpu = cpu_seconds().unwrap_or(0.0) - cpu0;
    let idle = match (ticks0, bench::machine_ticks()) {
        (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => Some((i1 - i0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let tx = store.transaction_time();
    let ms = |now: store::LockTime, before: store::LockTime| {
        ((now.held - before.held).as_secs_f64() * 1e3, (now.waited - before.waited).as_secs_f64() * 1e3)
    };
    let ok = statuses.iter().filter(|s| **s == RunStatus::Succeeded).count();
    let tasks = sb.records("tasks").len() - tasks_before;
    if report.new != a.items || ok != a.items || tasks != a.items {
        bail!("expected {} items: found {}, succeeded {ok}, tasks created {tasks}", a.items, report.new);
    }
    Ok(Throughput {
        items_per_s: a.items as f64 / total.as_secs_f64(),
        poll_ms: poll.as_secs_f64() * 1e3,
        total_ms: total.as_secs_f64() * 1e3,
        cpu_s: cpu,
        lock_polls: ms(tx.polls, tx0.polls),
        lock_updates: ms(tx.updates, tx0.updates),
        flushes: tx.flushes - tx0.flushes,
        idle,
    })
}

/// Per-item detection → run succeeded, in ms.
async fn latency(a: &Args) -> Result<Vec<f64>> {
    let sb = sandbox(Seed::Contacts(0), RateLimitConfig::disabled()).await?;
    let dir = tempfile::tempdir()?;
    let total = a.latency_polls * a.latency_batch;
    let engine = engine_for(&sb, &dir.path().join("store"), config(a.concurrency, total), false)?;
    engine.set_flows(vec![compile(ONE_STEP)?])?;
    engine.poll_and_run("welcome").await?;
    let mut out = Vec::with_capacity(total);
    for p in 0..a.latency_polls {
        add_contacts(&sb, p * a.latency_batch, a.latency_batch)?;
        let report = engine.poll("welcome").await?;
        let detected = Instant::now();
        let watchers: Vec<_> = report
            .runs
            .iter()
            .map(|id| {
                let h = engine.dispatch(*id);
                tokio::spawn(async move {
                    let status = h.await;
                    (detected.elapsed(), status)
                })
            })
            .collect();
        for w in watchers {
            let (took, status) = w.await?;
            match status {
                Ok(Ok(RunStatus::Succeeded)) => out.push(took.as_secs_f64() * 1e3),
                other => bail!("run did not succeed: {other:?}"),
            }
        }
        // Items arrive spread out, not back to back.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = parse_args()?;
    println!(
        "e2e: {} new contacts, {}-step flow, concurrency {}, {} repeats ({} store on disk, sandbox rate limits off)",
        a.items,
        a.steps,
        a.concurrency,
        a.repeat,
        bench::store_backend()?
    );
    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    for r in 0..a.repeat {
        let t = throughput(&a).await?;
        println!(
            "  run {}: {:>8.0} items/s  (poll+commit, runs starting meanwhile {:.0} ms, poll → last run succeeded {:.0} ms, CPU {:.2} s = {:.0} µs/item)",
            r + 1,
            t.items_per_s,
            t.poll_ms,
            t.total_ms,
            t.cpu_s,
            t.cpu_s * 1e6 / a.items as f64
        );
        println!(
            "         the store's writer lock held {:.0} ms of it (poll commits {:.0}, run updates {:.0}); waited for: poll commits {:.0} ms, run updates {:.0} ms (summed over threads); {} flushes to disk; the machine's cores {} idle",
            t.lock_polls.0 + t.lock_updates.0,
            t.lock_polls.0,
            t.lock_updates.0,
            t.lock_polls.1,
            t.lock_updates.1,
            t.flushes,
            t.idle.map_or("?".to_string(), |i| format!("{:.0}%", i * 100.0)),
        );
        rates.push(t.items_per_s);
        cpus.push(t.cpu_s);
    }
    println!("throughput median: {:.0} items/s; CPU time median {:.2} s", median(rates), median(cpus));
    if a.latency_polls > 0 {
        let lat = latency(&a).await?;
        println!(
            "latency, detection (poll committed) → run succeeded, {} polls × {} items: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            a.latency_polls,
            a.latency_batch,
            quantile(&lat, 0.5),
            quantile(&lat, 0.99),
            quantile(&lat, 1.0)
        );
    }
    if let Some(rss) = peak_rss() {
        println!("peak RSS (whole process, sandbox included): {:.1} MB", rss as f64 / 1048576.0);
    }
    Ok(())
}
