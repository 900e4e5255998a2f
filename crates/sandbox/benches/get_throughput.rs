//! Simple GET throughput over loopback: `cargo bench -p sandbox`.
//!
//! Many keep-alive connections each send `GET /contacts/{id}` and wait for the full answer
//! before the next request (no pipelining), so the figure is requests/s the sandbox really
//! answers. Env: `BENCH_CONNS` (default 64), `BENCH_SECS` (default 5),
//! `BENCH_CLIENT=reqwest` to drive it with reqwest instead of the raw HTTP/1.1 loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(quick))
}

async fn run(quick: bool) -> Result<(), Box<dyn std::error::Error>> {
    let config = SandboxConfig {
        seed: Seed::Contacts(1_000),
        rate_limit: RateLimitConfig::disabled(),
        ..SandboxConfig::default()
    };
    let sb = Sandbox::start(config).await?;
    let id = sb.records("contacts").first().and_then(|c| c["id"].as_str().map(String::from)).ok_or("no contact")?;
    let conns = env_or("BENCH_CONNS", 64);
    let secs = if quick { 1 } else { env_or("BENCH_SECS", 5) };
    let use_reqwest = std::env::var("BENCH_CLIENT").is_ok_and(|v| v == "reqwest");
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let http = reqwest::Client::builder().pool_max_idle_per_host(conns as usize).build()?;
    for _ in 0..conns {
        let (done, errors, measuring, stop) = (done.clone(), errors.clone(), measuring.clone(), stop.clone());
        let addr = sb.addr();
        let path = format!("/contacts/{id}");
        let http = http.clone();
        let base = sb.base_url();
        tasks.push(tokio::spawn(async move {
            if use_reqwest {
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .get(format!("{base}{path}"))
                        .bearer_auth("pit-sandbox-token")
                        .header("Version", "2021-07-28")
                        .send()
                        .await;
                    let ok = match r {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    count(ok, &measuring, &done, &errors);
                }
            } else {
                let _ = raw_loop(addr, &path, &stop, &measuring, &done, &errors).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(if quick { 200 } else { 1_000 })).await;
    measuring.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    measuring.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Ordering::SeqCst);
    println!(
        "sandbox GET /contacts/{{id}}: {:.0} req/s ({n} requests in {elapsed:.2}s, {conns} keep-alive connections, client {}, errors {})",
        n as f64 / elapsed,
        if use_reqwest { "reqwest" } else { "raw HTTP/1.1" },
        errors.load(Ordering::SeqCst)
    );
    sb.shutdown().await;
    Ok(())
}

fn count(ok: bool, measuring: &AtomicBool, done: &AtomicU64, errors: &AtomicU64) {
    if !measuring.load(Ordering::Relaxed) {
        return;
    }
    if ok {
        done.fetch_add(1, Ordering::Relaxed);
    } else {
        errors.fetch_add(1, Ordering::Relaxed);
    }
}

async fn raw_loop(
    addr: std::net::SocketAddr,
    path: &str,
    stop: &AtomicBool,
    measuring: &AtomicBool,
    done: &AtomicU64,
    errors: &AtomicU64,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer pit-sandbox-token\r\nVersion: 2021-07-28\r\n\r\n"
    );
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(request.as_bytes()).await?;
        let mut filled = 0;
        let (head_end, body_len) = loop {
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
            if let Some(pos) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                    .unwrap_or(0);
                break (pos + 4, len);
            }
        };
        while filled < head_end + body_len {
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
        }
        count(buf.starts_with(b"HTTP/1.1 200"), measuring, done, errors);
    }
    Ok(())
}
