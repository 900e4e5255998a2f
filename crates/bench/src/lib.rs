//! Shared pieces of flowd's benchmarks: the benchmark flows, an engine wired to a
//! sandbox and a store on disk, and process measurements (RSS, CPU time) from `/proc`.

use anyhow::{anyhow, bail, Context, Result};
use engine::{AccountInfo, Engine, EngineConfig, Metrics};
use sandbox::{Sandbox, SandboxConfig, Seed};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const TOKEN: &str = "pit-bench";

/// New contact → create a task.
pub const ONE_STEP: &str = r#"
name: welcome
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}", pageLimit: 500 }
  every: 1m
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

/// New contact → create a task, tag the contact, add a note.
pub const THREE_STEPS: &str = r#"
name: welcome
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}", pageLimit: 500 }
  every: 1m
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
  - id: tag
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [welcomed] }
  - id: note
    uses: contacts.create_note
    with: { contactId: "{{ trigger.id }}", body: "Task {{ steps.task.id }} created for {{ trigger.email }}" }
"#;

/// Starts a sandbox (rate limits as given) that accepts [`TOKEN`].
pub async fn sandbox(seed: Seed, rate_limit: sandbox::RateLimitConfig) -> Result<Sandbox> {
    let mut config = SandboxConfig::default().with_seed(seed).with_rate_limit(rate_limit);
    config.tokens = vec![TOKEN.into()];
    Sandbox::start(config).await.map_err(|e| anyhow!("sandbox: {e}"))
}

/// The store backend the benches create: `BENCH_STORE=sled|fjall`, else flowd's default.
pub fn store_backend() -> Result<store::Backend> {
    match std::env::var("BENCH_STORE") {
        Ok(name) => name.parse().map_err(|e: String| anyhow!("BENCH_STORE: {e}")),
        Err(_) => Ok(store::Backend::FOR_NEW_STORES),
    }
}

/// An engine talking to `sb`, with a real store at `store_dir` (see [`store_backend`]). `limited`: the
/// client enforces GHL's 100 requests / 10 s per location (its default); else a limit
/// no benchmark reaches, to match a sandbox with rate limits off.
pub fn engine_for(sb: &Sandbox, store_dir: &Path, config: EngineConfig, limited: bool) -> Result<Arc<Engine>> {
    engine_and_store(sb, store_dir, config, limited).map(|(engine, _)| engine)
}

/// [`engine_for`], also returning the engine's store (for its transaction times).
pub fn engine_and_store(
    sb: &Sandbox,
    store_dir: &Path,
    config: EngineConfig,
    limited: bool,
) -> Result<(Arc<Engine>, Arc<dyn store::Store>)> {
    let metrics = Arc::new(Metrics::new());
    let mut client_config = ghl::ClientConfig::default();
    // As `flowd run` sets it: one idle connection per run in flight.
    client_config.pool_max_idle_per_host = config.concurrency.max(client_config.pool_max_idle_per_host);
    if !limited {
        client_config.rate_limit = ghl::RateLimit {
            burst_max: 100_000,
            burst_interval: std::time::Duration::from_secs(1),
            daily_max: u32::MAX,
            adapt_to_headers: false,
            ..ghl::RateLimit::default()
        };
    }
    let client = ghl::Client::builder().config(client_config).observer(metrics.clone()).build().context("client")?;
    let account = ghl::Account::new("main", ghl::Credentials::PrivateToken(ghl::Secret::new(TOKEN)))
        .context("account")?
        .with_base_url(&sb.base_url())
        .context("base url")?
        .with_resource(sb.location_id());
    client.add_account(account);
    let store = store::create_or_open(store_dir, store_backend()?).context("store")?;
    let catalog = Arc::new(catalog::Catalog::builtin().map_err(|e| anyhow!("catalog: {e:?}"))?);
    let accounts = vec![AccountInfo { name: "main".into(), location_id: sb.location_id().into() }];
    let engine = Engine::new(catalog, client, store.clone(), accounts, BTreeMap::new(), config, metrics);
    Ok((engine, store))
}

/// Compiles a flow against the built-in catalog.
pub fn compile(text: &str) -> Result<flow::CompiledFlow> {
    let catalog = catalog::Catalog::builtin().map_err(|e| anyhow!("catalog: {e:?}"))?;
    let env = flow::CompileEnv { env: BTreeMap::new(), accounts: vec!["main".into()] };
    let (flow, diags) = flow::load("bench.yaml", text, &catalog, &env);
    flow.ok_or_else(|| anyhow!("flow does not compile:\n{}", flow::render_all(&diags)))
}

/// Peak resident set size of this process, in bytes (`VmHWM`).
pub fn peak_rss() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size of this process, in bytes (`VmRSS`).
pub fn rss() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of this process so far, in seconds (`/proc/self/stat`, at
/// the kernel's usual 100 ticks per second).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The whole machine's CPU time so far, in clock ticks: `(idle, total)` from the first
/// line of `/proc/stat` (idle counts `iowait` too). Between two readings, idle / total is
/// the share of every core that nothing used.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let t: Vec<u64> = line.split_whitespace().take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    let idle = t.get(3)? + t.get(4)?;
    Some((idle, t.iter().sum()))
}

/// The value at quantile `q` (0..=1) of sorted `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Cumulative buckets `(upper bound in seconds, count)` of the engine's
/// `poll_drift_seconds` histogram, read from its Prometheus text encoding
/// (`Metrics::encode`). The last bucket is `+Inf`.
pub fn drift_buckets(encoded: &str) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    for line in encoded.lines() {
        let Some(rest) = line.strip_prefix("flowd_poll_drift_seconds_bucket{le=\"") else {
            continue;
        };
        let Some((le, count)) = rest.split_once("\"}") else {
            continue;
        };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        if let Ok(count) = count.trim().parse::<u64>() {
            out.push((le, count));
        }
    }
    out
}

/// `after - before`, bucket by bucket (both from [`drift_buckets`] of the same histogram).
pub fn bucket_delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|(le, n)| {
            let old = before.iter().find(|(l, _)| l == le).map(|(_, c)| *c).unwrap_or(0);
            (*le, n.saturating_sub(old))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of cumulative `buckets`
/// (`NaN` when empty): the value is at most this.
pub fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map(|(_, n)| *n).unwrap_or(0);
    if total == 0 {
        return f64::NAN;
    }
    let rank = (total as f64 * q).ceil().max(1.0) as u64;
    buckets.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le).unwrap_or(f64::INFINITY)
}

/// Observations in cumulative `buckets` (the `+Inf` bucket).
pub fn bucket_count(buckets: &[(f64, u64)]) -> u64 {
    buckets.last().map(|(_, n)| *n).unwrap_or(0)
}

/// Megabytes, for printing.
pub fn mb(bytes: Option<u64>) -> f64 {
    bytes.map(|b| b as f64 / 1_048_576.0).unwrap_or(f64::NAN)
}

/// The flowd binary the fault and idle benches start: `explicit` (`--flowd PATH`), else the
/// `flowd` built next to the running bench binary (same target directory and profile).
pub fn locate_flowd(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(format!("flowd{}", std::env::consts::EXE_SUFFIX));
    if !p.is_file() {
        bail!("no flowd binary at {}: run `cargo build --release -p flowd` first, or pass --flowd PATH", p.display());
    }
    Ok(p)
}

/// A loopback port free right now, for a flowd child's `listen:`.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// flowd's allocator (crates/flowd/src/main.rs), so that what the benches measure is what
/// flowd does.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// flowd's jemalloc options (crates/flowd/src/main.rs), so the figures are flowd's.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[used]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"narenas:1\0"[0];

/// Bytes the allocator counts as allocated by the program, where it can tell.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
    {
        // The statistics are a snapshot taken at the last epoch.
        tikv_jemalloc_ctl::epoch::advance().ok()?;
        tikv_jemalloc_ctl::stats::allocated::read().ok().map(|b| b as u64)
    }
    #[cfg(not(all(feature = "jemalloc", not(target_env = "msvc"))))]
    {
        None
    }
}
