//! What the client adds per request: the same GET against the sandbox over loopback, once
//! through a bare reqwest client and once through `ghl::Client` (limiter, auth, retry loop,
//! URL rendering, JSON decoding). The difference is the client's overhead.
//!
//! `CARGO_TARGET_DIR=/work/target-ghl cargo bench -p ghl --bench overhead`

use std::time::{Duration, Instant};

use criterion::Criterion;
use ghl::{Account, Client, ClientConfig, Credentials, RateLimit, Request, Secret};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig};

const PIT: &str = "pit-sandbox-token";

struct Setup {
    rt: tokio::runtime::Runtime,
    _sandbox: Sandbox,
    raw: reqwest::Client,
    raw_url: String,
    client: Client,
    req: Request,
}

fn setup() -> Option<Setup> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().ok()?;
    let sandbox =
        rt.block_on(Sandbox::start(SandboxConfig::default().with_rate_limit(RateLimitConfig::disabled()))).ok()?;
    let base = sandbox.base_url();
    let location = sandbox.location_id().to_owned();
    let config = ClientConfig {
        // Pacing is not what is measured; the sandbox announces limits it does not enforce.
        rate_limit: RateLimit { adapt_to_headers: false, ..RateLimit::per(u32::MAX / 2, Duration::from_secs(1)) },
        ..ClientConfig::default()
    };
    let client = Client::builder().config(config).build().ok()?;
    let account = Account::new("bench", Credentials::PrivateToken(Secret::new(PIT)))
        .and_then(|a| a.with_base_url(&base))
        .ok()?
        .with_resource(location.clone());
    client.add_account(account);
    let raw = reqwest::Client::builder().gzip(true).build().ok()?;
    Some(Setup {
        raw_url: format!("{base}/locations/{location}"),
        req: Request::get("/locations/{locationId}").path_param("locationId", location),
        rt,
        _sandbox: sandbox,
        raw,
        client,
    })
}

async fn raw_get(s: &Setup) -> serde_json::Value {
    let resp = s
        .raw
        .get(&s.raw_url)
        .header("Authorization", format!("Bearer {PIT}"))
        .header("Version", "2021-07-28")
        .header("Accept", "application/json")
        .send()
        .await;
    match resp {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

async fn ghl_get(s: &Setup) -> serde_json::Value {
    s.client.json("bench", &s.req).await.unwrap_or_default()
}

/// Mean time per request over `n` sequential requests.
fn mean<F: Fn() -> serde_json::Value>(n: u32, f: F) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    start.elapsed() / n
}

fn main() {
    let Some(s) = setup() else {
        eprintln!("cannot start the sandbox or build the clients");
        return;
    };
    // Both must work, or the numbers mean nothing.
    if s.rt.block_on(raw_get(&s)).get("location").is_none() || s.rt.block_on(ghl_get(&s)).get("location").is_none() {
        eprintln!("the sandbox did not answer as expected");
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("get_location");
    g.bench_function("reqwest", |b| b.iter(|| s.rt.block_on(raw_get(&s))));
    g.bench_function("ghl", |b| b.iter(|| s.rt.block_on(ghl_get(&s))));
    g.finish();
    c.final_summary();

    // One plain figure to quote: interleaved rounds so drift affects both equally.
    let (mut raw, mut ghl) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..5 {
        raw += mean(1000, || s.rt.block_on(raw_get(&s)));
        ghl += mean(1000, || s.rt.block_on(ghl_get(&s)));
    }
    let (raw, ghl) = (raw / 5, ghl / 5);
    println!(
        "per request: reqwest {:.1} µs, ghl {:.1} µs, client overhead {:.1} µs",
        raw.as_secs_f64() * 1e6,
        ghl.as_secs_f64() * 1e6,
        (ghl.as_secs_f64() - raw.as_secs_f64()) * 1e6
    );
}
