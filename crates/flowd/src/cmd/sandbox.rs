//! `flowd sandbox`: the GHL simulator as a standalone server.

use crate::cli::SandboxArgs;
use crate::exit::{Failed, UserError};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};

pub async fn run(args: &SandboxArgs) -> anyhow::Result<()> {
    let seed: Seed = args.seed.parse().map_err(|e: String| UserError::new(format!("--seed: {e}")))?;
    let mut config = SandboxConfig::default().with_seed(seed);
    if let Some(l) = &args.location {
        config.location_id = l.clone();
    }
    if let Some(t) = &args.token {
        config.tokens = vec![t.clone()];
    }
    if args.no_rate_limit {
        config = config.with_rate_limit(RateLimitConfig::disabled());
    }
    let token = config.tokens.first().cloned().unwrap_or_default();
    let location = config.location_id.clone();
    let sb = Sandbox::bind(args.listen, config)
        .await
        .map_err(|e| Failed::new(format!("cannot start the sandbox on {}: {e}", args.listen)))?;
    let base = sb.base_url();
    let contact = sb.records("contacts").first().and_then(|c| c["id"].as_str().map(str::to_string));
    println!("GHL sandbox listening on {base}");
    println!("  location id: {location}");
    println!("  token:       {token}  (Private Integration token, as `Authorization: Bearer ...`)");
    println!("  admin API:   {base}/_sandbox/  (requests, counters, faults, reset)");
    if args.no_rate_limit {
        println!("  rate limits: off (--no-rate-limit)");
    } else {
        println!("  rate limits: 100 requests / 10 s per location, as GHL (X-RateLimit-* headers, 429 beyond; --no-rate-limit turns them off)");
    }
    if let Some(id) = contact {
        println!("try:\n  curl -H 'Authorization: Bearer {token}' -H 'Version: 2021-07-28' {base}/contacts/{id}");
    }
    println!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await?;
    sb.shutdown().await;
    Ok(())
}
