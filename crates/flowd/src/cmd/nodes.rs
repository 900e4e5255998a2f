//! `flowd nodes`: the nodes sharing the config's `postgres://` store, what each owns, and
//! whether it is alive.

use std::io::Write;

use chrono::Utc;
use store::Cluster;

use crate::cli::NodesArgs;
use crate::config::Config;
use crate::exit::{Failed, UserError};

pub fn run(config: &Config, args: &NodesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(pg) = &config.postgres else {
        return Err(UserError::new(format!(
            "{}: the store is a directory, which one process owns; nodes share a `postgres://` store",
            config.path.display()
        ))
        .into());
    };
    let db = store::PgStore::connect(pg, store::pg::Create::No)
        .map_err(|e| Failed::new(format!("cannot open the store {}: {e}", config.store_name())))?;
    let nodes = db.nodes().map_err(|e| Failed::new(format!("cannot list the nodes: {e}")))?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&nodes)?)?;
        return Ok(());
    }
    if nodes.is_empty() {
        writeln!(out, "no node has run on {}", config.store_name())?;
        return Ok(());
    }
    let now = Utc::now();
    let ago = |t: chrono::DateTime<Utc>| {
        let s = (now - t).num_seconds().max(0);
        match s {
            0..=119 => format!("{s}s ago"),
            120..=7199 => format!("{}m ago", s / 60),
            _ => format!("{}h ago", s / 3600),
        }
    };
    writeln!(
        out,
        "{:<28} {:<10} {:<11} {:<10} {:>6} {:>6}  TRIGGERS",
        "NODE", "INSTANCE", "STATE", "HEARTBEAT", "LEASES", "RUNS"
    )?;
    for n in &nodes {
        let instance = n.id.rsplit('/').next().unwrap_or_default();
        let state = match (&n.ended, n.alive) {
            (Some(why), _) => why.clone(),
            (None, true) => "alive".into(),
            (None, false) => "unresponsive".into(),
        };
        writeln!(
            out,
            "{:<28} {:<10} {:<11} {:<10} {:>6} {:>6}  {}",
            n.name,
            &instance[..instance.len().min(8)],
            state,
            ago(n.heartbeat_at),
            n.leases.len(),
            n.runs,
            n.leases.join(", ")
        )?;
    }
    let alive = nodes.iter().filter(|n| n.alive).count();
    writeln!(out, "{} node instance(s), {alive} alive", nodes.len())?;
    Ok(())
}
