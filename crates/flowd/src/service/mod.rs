//! `flowd run`: the long-lived service around the engine.
//!
//! Start-up: open the store (refusing a damaged one), connect the accounts, load the
//! flows that validate, resume runs a previous process left unfinished, then schedule
//! polls and serve the HTTP endpoints. Flows reload when their directory changes or on
//! SIGHUP. SIGTERM/SIGINT stop the schedulers, give in-flight runs a deadline to finish,
//! flush the store and exit 0. A store that can no longer write (a full disk) stops the
//! service the same way, not ready from the moment it is seen, and exits
//! [`crate::exit::STORE_FAILED`]: the database refuses writes until it is reopened, and a
//! restart reopens it with everything made durable.

pub mod console;
mod http;
mod inbound;
mod listener;
mod reload;
mod webhooks;
pub mod wiring;

use crate::config::Config;
use engine::Engine;
use std::sync::Arc;
use tokio::sync::watch;

pub async fn run(config: Config, catalog: Arc<catalog::Catalog>, once: bool) -> anyhow::Result<()> {
    for w in &config.warnings {
        tracing::warn!("{}: {w}", config.path.display());
    }
    let engine = wiring::build_engine(&config, catalog.clone(), once.then_some("once"))?;
    let mut flows = reload::FlowSet::new(config.flows.clone(), config.accounts.keys().cloned().collect());
    let report = flows.reload(&catalog);
    report.log();
    engine.set_flows(flows.compiled())?;
    tracing::info!(
        flows = engine.flow_names().len(),
        store = %config.store_name(),
        store_backend = %engine.store().backend(),
        "flowd started"
    );

    let resumed = engine.resume().await?;
    if !resumed.is_empty() {
        tracing::info!(runs = resumed.len(), "resumed unfinished runs");
    }

    if once {
        return run_once(&engine).await;
    }

    raise_open_files_limit();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(listen = %config.listen, "serving /healthz, /readyz, /metrics and /api");
    let console = console::Options { load_errors: flows.errors() };
    let server =
        http::serve(listener, engine.clone(), config.admin_token.clone(), ready.clone(), shutdown_rx.clone(), console);

    let tasks = engine.start(shutdown_rx.clone());
    let receiver = match &config.webhooks {
        Some(w) => Some(webhooks::start(w, &engine, shutdown_rx.clone()).await?),
        None => {
            let paths = engine.inbound_paths();
            if !paths.is_empty() {
                tracing::warn!(
                    ?paths,
                    "flows have `trigger.http` routes but there is no `webhooks:` listener to serve them"
                );
            }
            None
        }
    };
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let watcher = reload::watch(engine.clone(), catalog.clone(), flows, shutdown_rx.clone());
    let pruner = spawn_pruner(engine.store().clone(), shutdown_rx.clone());

    let store = engine.store().clone();
    let mut superseded = false;
    let fault = tokio::select! {
        _ = wait_for_stop_signal() => None,
        fault = store_fault(&store) => Some(fault),
        _ = engine.superseded() => {
            superseded = true;
            None
        }
    };
    ready.store(false, std::sync::atomic::Ordering::SeqCst);
    match &fault {
        None => tracing::info!("stopping: no new polls; waiting up to {:?} for running flows", config.shutdown_timeout),
        Some(fault) => tracing::error!(
            error = %fault,
            "the store cannot write (full disk or I/O error): stopping, exit code {}; a restart recovers everything stored",
            crate::exit::STORE_FAILED
        ),
    }
    let _ = shutdown_tx.send(true);
    tasks.join().await;
    if let Some(r) = receiver {
        r.join().await;
    }
    let _ = watcher.await;
    let _ = pruner.await;
    if !engine.drain(config.shutdown_timeout).await {
        tracing::warn!("runs still executing at the deadline: they resume on the next start");
    }
    if superseded {
        let _ = server.await;
        return Err(crate::exit::Failed::new(
            "another flowd started under this node's name (`cluster.node`) and took its work: this one stops",
        )
        .into());
    }
    // A cluster node hands its leases and unfinished runs over before it goes.
    engine.leave_cluster().await;
    if let Some(fault) = fault {
        // No flush: the database takes no more writes; what it made durable is kept.
        let _ = server.await;
        return Err(crate::exit::StoreFailed(fault).into());
    }
    tokio::task::spawn_blocking(move || store.flush()).await??;
    let _ = server.await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Resolves once the store reports that it cannot write (see [`store::Store::fault`]).
async fn store_fault(store: &Arc<dyn store::Store>) -> String {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tick.tick().await;
        if let Some(fault) = store.fault() {
            return fault;
        }
    }
}

/// Keeps the store bounded: prunes old seen keys and finished runs hourly.
fn spawn_pruner(store: Arc<dyn store::Store>, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.prune(&store::Retention::default())).await {
                Ok(Ok(stats)) if stats != store::PruneStats::default() => {
                    tracing::info!(
                        seen = stats.seen_removed,
                        runs = stats.runs_removed,
                        webhooks = stats.webhooks_removed,
                        "store pruned"
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "pruning the store failed"),
                Err(e) => tracing::warn!(error = %e, "pruning the store failed"),
            }
        }
    })
}

async fn run_once(engine: &Arc<Engine>) -> anyhow::Result<()> {
    // A cluster node polls the triggers whose lease it gets, and executes the runs it claims;
    // it stays alive for the others until it leaves.
    engine.heartbeat_now().await?;
    engine.keep_alive();
    let mut failures = 0;
    for name in engine.flow_names() {
        match engine.poll_and_run(&name).await {
            Ok((report, statuses)) => {
                let ok = statuses.iter().filter(|s| **s == store::RunStatus::Succeeded).count();
                failures += statuses.len() - ok;
                println!(
                    "{name}: {} item(s), {} new, {} run(s) ({ok} succeeded){}{}",
                    report.items,
                    report.new,
                    statuses.len(),
                    if report.baseline { ", baseline recorded" } else { "" },
                    if report.held > 0 { format!(", {} held", report.held) } else { String::new() },
                );
            }
            Err(e) => {
                failures += 1;
                println!("{name}: poll failed: {e}");
            }
        }
    }
    failures += run_stored_webhooks(engine).await?;
    let claimed = engine.run_claimed().await?;
    if !claimed.is_empty() {
        let ok = claimed.iter().filter(|s| **s == store::RunStatus::Succeeded).count();
        failures += claimed.len() - ok;
        println!("cluster: {} claimed run(s) ({ok} succeeded)", claimed.len());
    }
    engine.leave_cluster().await;
    let store = engine.store().clone();
    tokio::task::spawn_blocking(move || store.flush()).await??;
    if failures > 0 {
        return Err(crate::exit::Failed::new(format!("{failures} poll(s) or run(s) failed")).into());
    }
    Ok(())
}

/// Fires the webhook events a service stored but did not get to process (it stopped or
/// crashed between receiving and processing them), as the running service would, and
/// returns how many of their runs did not succeed. Events whose coalescing window is
/// still open stay in the inbox for the next run.
async fn run_stored_webhooks(engine: &Arc<Engine>) -> anyhow::Result<usize> {
    let (mut events, mut runs, mut ok, mut skipped) = (0, 0, 0, 0);
    let deferred = loop {
        let pass = engine.process_webhooks().await?;
        if pass.events == 0 {
            break pass.deferred;
        }
        events += pass.events;
        skipped += pass.skipped;
        runs += pass.runs.len();
        let statuses = engine.execute_all(pass.runs).await?;
        ok += statuses.iter().filter(|s| **s == store::RunStatus::Succeeded).count();
    };
    if events > 0 || deferred > 0 {
        println!(
            "webhook inbox: {events} stored event(s), {runs} run(s) ({ok} succeeded){}{}",
            if skipped > 0 { format!(", {skipped} left out by `if` or already seen") } else { String::new() },
            if deferred > 0 { format!(", {deferred} left for later (coalescing window open)") } else { String::new() },
        );
    }
    Ok(runs - ok)
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Every connection and store file takes a descriptor; the soft limit (often 1,024, or 256)
/// is raised to the hard limit so that a burst of deliveries meets the listeners' own cap
/// (a fast 503) before the process runs out of descriptors.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}
