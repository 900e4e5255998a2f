//! Idle `flowd run` memory (issue 8: RSS < 30 MB): the real `flowd` binary as a child
//! process, running the example flows of `flows/` against the in-process GHL sandbox
//! (demo data), measured from `/proc/<pid>/status` once every flow has polled.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo build --release -p flowd
//! cargo run --release -p bench --bin idle -- [--flows DIR] [--settle SECS] [--watch SECS]
//!     [--flowd PATH] [--keep]
//! ```
//!
//! The `flowd` binary is looked for next to this one (same target directory) unless
//! `--flowd` names it. flowd gets a `flowd.yaml` in a temporary directory (store there,
//! `flows:` pointing at the repository's `flows/`, one account `main` on the sandbox) and
//! the environment the examples read (`APP_HOOK_URL`: a sink in this process that answers
//! 200; the `trigger.http` flows are idle without a `webhooks:` listener). Nothing changes in the
//! sandbox, so after their first (baseline) polls the flows find nothing new: that is
//! idle. The bench waits until flowd's `/metrics` counts a poll of every flow, then
//! `--settle` seconds (default 10), prints RSS, then samples RSS every 5 s for `--watch`
//! seconds (default 130: two more rounds of the 1-minute flows) and prints the largest.

use anyhow::{bail, Context, Result};
use bench::{free_port, locate_flowd};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "pit-idle-bench";

struct Args {
    flows: PathBuf,
    settle: u64,
    watch: u64,
    flowd: Option<PathBuf>,
    keep: bool,
}

fn parse_args() -> Result<Args> {
    let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows");
    let mut a = Args { flows, settle: 10, watch: 130, flowd: None, keep: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--keep" {
            a.keep = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<u64>().with_context(|| format!("{flag}: `{value}` is not a number"));
        match flag.as_str() {
            "--flows" => a.flows = PathBuf::from(&value),
            "--settle" => a.settle = num()?,
            "--watch" => a.watch = num()?,
            "--flowd" => a.flowd = Some(PathBuf::from(&value)),
            other => bail!("unknown flag {other}"),
        }
    }
    a.flows = a.flows.canonicalize().with_context(|| format!("flows directory {}", a.flows.display()))?;
    Ok(a)
}

/// What `/proc/<pid>/status` says about a process's memory (kB) and threads.
#[derive(Clone, Copy)]
struct Status {
    rss: u64,
    hwm: u64,
    /// RSS that is anonymous memory (heap, stacks) and mapped files (mostly the binary).
    anon: u64,
    file: u64,
    threads: u64,
}

fn status(pid: u32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Status {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
        threads: field("Threads:")?,
    })
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// "Your app": answers 200 with `{}` to every request (the examples push to it only
/// when something changes, which nothing does here).
async fn start_sink() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    Ok(url)
}

/// Flows that have polled at least once, from flowd's `/metrics` (`flowd_polls_total`).
async fn flows_polled(http: &reqwest::Client, listen: &str) -> Option<usize> {
    let text = http.get(format!("http://{listen}/metrics")).send().await.ok()?.text().await.ok()?;
    let mut flows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("flowd_polls_total{"))
        .filter_map(|l| l.split("flow=\"").nth(1)?.split('"').next())
        .collect();
    flows.sort_unstable();
    flows.dedup();
    Some(flows.len())
}

struct Flowd(Child);

impl Drop for Flowd {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = parse_args()?;
    let flowd = locate_flowd(a.flowd.clone())?;
    let tmp = tempfile::Builder::new().prefix("flowd-idle-").tempdir()?;
    let result = measure(&a, &flowd, tmp.path()).await;
    if a.keep || result.is_err() {
        eprintln!("files kept in {}", tmp.keep().display());
    }
    result
}

async fn measure(a: &Args, flowd: &Path, dir: &Path) -> Result<()> {
    let mut config = SandboxConfig::default().with_seed(Seed::Demo).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await.map_err(|e| anyhow::anyhow!("sandbox: {e}"))?;
    let hook = start_sink().await?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let flow_files = polling_flows(&a.flows)?;
    std::fs::write(
        dir.join("flowd.yaml"),
        format!(
            "store: ./data\nflows: {}\nlisten: {listen}\n\
             accounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{IDLE_TOKEN}}\n",
            a.flows.display(),
            sb.location_id(),
            sb.base_url()
        ),
    )?;
    let log = std::fs::File::create(dir.join("flowd.log"))?;
    let child = Command::new(flowd)
        .args(["run", "--config", "flowd.yaml"])
        .current_dir(dir)
        .env("IDLE_TOKEN", TOKEN)
        .env("APP_HOOK_URL", &hook)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", flowd.display()))?;
    let pid = child.id();
    let mut flowd_child = Flowd(child);
    println!(
        "idle: {} as pid {pid}, {} polling flows from {}, sandbox {} (demo data)",
        flowd.display(),
        flow_files,
        a.flows.display(),
        sb.base_url()
    );

    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = flowd_child.0.try_wait() {
            bail!("flowd exited with {status}; see {}", dir.join("flowd.log").display());
        }
        let polled = flows_polled(&http, &listen).await.unwrap_or(0);
        if polled >= flow_files {
            println!("every flow polled after {:.1} s", started.elapsed().as_secs_f64());
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            println!("after 60 s only {polled} of {flow_files} flows have polled; measuring anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(a.settle)).await;
    let first = status(pid).context("flowd's /proc status")?;
    println!(
        "after {} s more: VmRSS {:.1} MB (anonymous {:.1}, files {:.1}), VmHWM {:.1} MB, {} threads ({:.0} s after start)",
        a.settle,
        mb(first.rss),
        mb(first.anon),
        mb(first.file),
        mb(first.hwm),
        first.threads,
        started.elapsed().as_secs_f64()
    );
    if a.watch > 0 {
        let until = Instant::now() + Duration::from_secs(a.watch);
        let (mut max, mut last) = (first.rss, first);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Some(s) = status(pid) {
                max = max.max(s.rss);
                last = s;
            }
        }
        println!(
            "over {} s more: VmRSS at most {:.1} MB, at the end {:.1} MB (anonymous {:.1}, files {:.1}); VmHWM {:.1} MB; {} threads",
            a.watch,
            mb(max),
            mb(last.rss),
            mb(last.anon),
            mb(last.file),
            mb(last.hwm),
            last.threads
        );
    }
    let polls = http
        .get(format!("http://{listen}/metrics"))
        .send()
        .await?
        .text()
        .await?
        .lines()
        .filter(|l| l.starts_with("flowd_polls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    println!("polls in all: {polls:.0}");
    drop(flowd_child);
    sb.shutdown().await;
    Ok(())
}

/// The flows of `dir` that poll: an inbound (`trigger.http`) flow waits for the app and
/// never polls, so it is not waited for.
fn polling_flows(dir: &Path) -> Result<usize> {
    let catalog = catalog::Catalog::builtin().map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
    let env = flow::CompileEnv::default();
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let (compiled, _) = flow::load(&path.display().to_string(), &text, &catalog, &env);
        n += usize::from(compiled.is_some_and(|f| f.trigger.polls()));
    }
    Ok(n)
}
