//! `flowd runs`, `flowd runs show`, `flowd replay`, `flowd release`.
//!
//! The store can be open in one process only. When `flowd run` is not running these
//! commands open it directly; when it is, they ask the service's HTTP API instead, with
//! the config's `admin_token` (every `/api` route needs it).

use crate::cli::{ReleaseArgs, ReplayArgs, RunsArgs, RunsCommand, StatusArg};
use crate::config::Config;
use crate::exit::{Failed, UserError};
use crate::service::console::{self, actions};
use crate::service::wiring::{self, Open, Opened};
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use store::{Run, RunFilter, RunId, RunStatus, Store};

enum Backend {
    Store(Arc<dyn Store>),
    Api { base: String, token: Option<String> },
}

fn backend(config: &Config) -> anyhow::Result<Backend> {
    backend_as(config, None)
}

/// As [`backend`] for a command that executes runs: on a `postgres://` store it is a cluster
/// node of its own, named after `role` (see [`Config::node_store`]).
fn backend_as(config: &Config, role: Option<&str>) -> anyhow::Result<Backend> {
    let node = role.and_then(|r| config.node_store(Some(r)));
    Ok(match wiring::open_store_as(config, Open::Existing, node)? {
        Opened::Ready(s) => Backend::Store(s),
        Opened::InUse(_) => {
            Backend::Api { base: format!("http://{}", config.listen), token: config.admin_token.clone() }
        }
    })
}

fn status_of(s: StatusArg) -> RunStatus {
    match s {
        StatusArg::Pending => RunStatus::Pending,
        StatusArg::Running => RunStatus::Running,
        StatusArg::Succeeded => RunStatus::Succeeded,
        StatusArg::Failed => RunStatus::Failed,
        StatusArg::Dead => RunStatus::Dead,
        StatusArg::InDoubt => RunStatus::InDoubt,
        StatusArg::Held => RunStatus::Held,
    }
}

/// Calls the running service's API with the admin token.
async fn api_call(method: reqwest::Method, base: &str, path: &str, token: &Option<String>) -> anyhow::Result<Value> {
    let Some(token) = token else {
        return Err(UserError::new(
            "the store is in use by the running service: set `admin_token` in the config to use its API",
        )
        .into());
    };
    let res =
        reqwest::Client::new().request(method, format!("{base}{path}")).bearer_auth(token).send().await.map_err(
            |e| Failed::new(format!("the store is in use, and the service at {base} cannot be reached: {e}")),
        )?;
    let status = res.status();
    let body: Value = res.json().await?;
    if !status.is_success() {
        let message = format!("{base}{path}: {}", body["error"].as_str().unwrap_or("request failed"));
        // The service refuses what the user asked for (an unknown run or flow, a run that
        // is not dead, a wrong token) with a 4xx: the same bad input as offline.
        return Err(if status.is_client_error() {
            UserError::new(message).into()
        } else {
            Failed::new(message).into()
        });
    }
    Ok(body)
}

async fn api_get(base: &str, path: &str, token: &Option<String>) -> anyhow::Result<Value> {
    api_call(reqwest::Method::GET, base, path, token).await
}

async fn api_post(base: &str, path: &str, token: &Option<String>) -> anyhow::Result<Value> {
    api_call(reqwest::Method::POST, base, path, token).await
}

pub async fn list(config: &Config, args: &RunsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(RunsCommand::Show { id }) = &args.show {
        return show(config, *id, args.json, out).await;
    }
    let now = chrono::Utc::now();
    let time = |s: &Option<String>, flag: &str| {
        console::parse_time(s.as_deref().unwrap_or(""), now).map_err(|e| UserError::new(format!("--{flag}: {e}")))
    };
    let (since, until) = (time(&args.since, "since")?, time(&args.until, "until")?);
    let runs: Vec<Run> = match backend(config)? {
        Backend::Store(s) => {
            let filter = RunFilter {
                flow: args.flow.clone(),
                status: args.status.map(status_of),
                limit: args.limit,
                touched: args.touched.as_deref().and_then(console::record_ref),
                since,
                until,
                ..RunFilter::default()
            };
            s.list_runs(&filter)?
        }
        Backend::Api { base, token } => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &args.limit.to_string());
            if let Some(f) = &args.flow {
                q.append_pair("flow", f);
            }
            if let Some(s) = args.status {
                q.append_pair("status", status_of(s).as_str());
            }
            // Times go as the service's own RFC 3339, so "2h" means 2 hours before now here.
            for (k, v) in [("since", since), ("until", until)] {
                if let Some(t) = v {
                    q.append_pair(k, &t.to_rfc3339());
                }
            }
            if let Some(t) = &args.touched {
                q.append_pair("touched", t);
            }
            serde_json::from_value(api_get(&base, &format!("/api/runs?{}", q.finish()), &token).await?["runs"].clone())?
        }
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &runs)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:>10}  {:<24}  {:<9}  {:>3}  {:<20}  ERROR", "RUN", "FLOW", "STATUS", "TRY", "CREATED")?;
    for r in &runs {
        let error = r.error.as_deref().unwrap_or("");
        let error: String = error.chars().take(60).collect();
        writeln!(
            out,
            "{:>10}  {:<24}  {:<9}  {:>3}  {:<20}  {error}",
            r.id,
            r.flow,
            r.status.as_str(),
            r.attempts,
            r.created_at.format("%Y-%m-%d %H:%M:%S")
        )?;
    }
    writeln!(out, "{} run(s)", runs.len())?;
    Ok(())
}

async fn show(config: &Config, id: u64, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let run: Run = match backend(config)? {
        Backend::Store(s) => s.get_run(RunId(id))?.ok_or_else(|| UserError::new(format!("run {id} not found")))?,
        Backend::Api { base, token } => {
            serde_json::from_value(api_get(&base, &format!("/api/runs/{id}"), &token).await?)?
        }
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &run)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", serde_saphyr::to_string(&run)?)?;
    }
    Ok(())
}

/// Replays one run, or every dead run with `--failed` (narrowed by `--flow`, `--since`,
/// `--until`, `--touched`; `--dry-run` only counts them), the console's bulk replay. A
/// replayed run is `pending` again (in the same write that checks it is still dead), so
/// running the command twice replays nothing the second time. In-doubt runs are replayed
/// only with `--include-in-doubt`; `--failed` says how many it left out before it starts.
pub async fn replay(
    config: &Config,
    catalog: Arc<catalog::Catalog>,
    args: &ReplayArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match backend_as(config, Some("replay"))? {
        Backend::Store(s) => {
            let engine = offline_engine(config, catalog, s)?;
            let ids: Vec<RunId> = match args.id {
                Some(id) => vec![RunId(id)],
                None => {
                    let found = actions::replay_candidates(engine.store().as_ref(), &selection(args)?)?;
                    match bulk_ids(found, args, out)? {
                        Some(ids) => ids,
                        None => return Ok(()),
                    }
                }
            };
            if ids.is_empty() {
                writeln!(out, "no dead runs to replay")?;
                return Ok(());
            }
            let progress = indicatif::ProgressBar::new(ids.len() as u64);
            let (mut failed, mut skipped) = (0, 0);
            for id in ids {
                match engine.replay(id, args.include_in_doubt).await {
                    Ok(status) => {
                        if status != RunStatus::Succeeded {
                            failed += 1;
                        }
                        progress.suspend(|| writeln!(out, "run {id} replayed: {status}")).ok();
                    }
                    Err(engine::EngineError::NotReplayable(why)) if args.id.is_none() => {
                        // Replayed by someone else since the list was read.
                        skipped += 1;
                        progress.suspend(|| writeln!(out, "{why}")).ok();
                    }
                    Err(e @ (engine::EngineError::NotReplayable(_) | engine::EngineError::UnknownRun(_))) => {
                        return Err(UserError::new(e.to_string()).into())
                    }
                    Err(engine::EngineError::UnknownFlow(flow)) => return Err(not_loaded(config, &flow).into()),
                    Err(e) => return Err(e.into()),
                }
                progress.inc(1);
            }
            progress.finish_and_clear();
            // On a cluster, this command's node goes; what it did not finish is claimed by
            // the service's nodes.
            engine.leave_cluster().await;
            if skipped > 0 {
                writeln!(out, "{skipped} run(s) were no longer dead and were left alone")?;
            }
            if failed > 0 {
                return Err(Failed::new(format!("{failed} replayed run(s) did not succeed")).into());
            }
        }
        Backend::Api { base, token } => {
            let ids = match args.id {
                Some(id) => vec![RunId(id)],
                None => {
                    let found = api_candidates(&base, &token, &selection(args)?).await?;
                    match bulk_ids(found, args, out)? {
                        Some(ids) => ids,
                        None => return Ok(()),
                    }
                }
            };
            let query = if args.include_in_doubt { "?include_in_doubt=true" } else { "" };
            let mut failed = 0;
            for id in &ids {
                let body = match api_post(&base, &format!("/api/runs/{id}/replay{query}"), &token).await {
                    Ok(body) => body,
                    Err(e) if args.id.is_none() => {
                        // Replayed by someone else since the list was read.
                        writeln!(out, "run {id}: {e}")?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let status = body["status"].as_str().unwrap_or("?");
                if status != "succeeded" {
                    failed += 1;
                }
                writeln!(out, "run {id} replayed: {status}")?;
            }
            if failed > 0 && args.id.is_none() {
                return Err(UserError::new(format!("{failed} replayed run(s) did not succeed")).into());
            }
        }
    }
    Ok(())
}

/// The bulk replay's selection from `flowd replay --failed`'s flags.
fn selection(args: &ReplayArgs) -> anyhow::Result<actions::Selection> {
    let now = chrono::Utc::now();
    let time = |s: &Option<String>, flag: &str| {
        console::parse_time(s.as_deref().unwrap_or(""), now).map_err(|e| UserError::new(format!("--{flag}: {e}")))
    };
    Ok(actions::Selection {
        flow: args.flow.clone(),
        since: time(&args.since, "since")?,
        until: time(&args.until, "until")?,
        touched: args.touched.as_deref().and_then(console::record_ref),
    })
}

/// What a bulk replay replays, said before it starts; `None` when nothing is to be
/// replayed now (none selected, or `--dry-run`).
fn bulk_ids(found: actions::Candidates, args: &ReplayArgs, out: &mut dyn Write) -> anyhow::Result<Option<Vec<RunId>>> {
    let actions::Candidates { mut dead, in_doubt } = found;
    let doubtful = in_doubt.len();
    if args.include_in_doubt {
        if doubtful > 0 {
            writeln!(out, "including {doubtful} in_doubt run(s)")?;
        }
        dead.extend(in_doubt);
        dead.sort();
    } else if doubtful > 0 {
        writeln!(
            out,
            "{doubtful} in_doubt run(s) left out: their request may have reached GHL; check them, then replay them with --include-in-doubt"
        )?;
    }
    if dead.is_empty() {
        writeln!(out, "no dead runs to replay")?;
        return Ok(None);
    }
    if args.dry_run {
        let list: Vec<String> = dead.iter().map(|id| id.to_string()).collect();
        writeln!(out, "{} run(s) would be replayed (dry run, nothing sent): {}", dead.len(), list.join(" "))?;
        return Ok(None);
    }
    Ok(Some(dead))
}

/// [`actions::replay_candidates`] through the running service's API.
async fn api_candidates(
    base: &str,
    token: &Option<String>,
    sel: &actions::Selection,
) -> anyhow::Result<actions::Candidates> {
    let mut found = actions::Candidates::default();
    for (status, into) in [("dead", &mut found.dead), ("in_doubt", &mut found.in_doubt)] {
        let mut before: Option<u64> = None;
        loop {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("status", status).append_pair("limit", "1000");
            if let Some(f) = &sel.flow {
                q.append_pair("flow", f);
            }
            for (k, v) in [("since", sel.since), ("until", sel.until)] {
                if let Some(t) = v {
                    q.append_pair(k, &t.to_rfc3339());
                }
            }
            if let Some(t) = &sel.touched {
                q.append_pair("touched", t);
            }
            if let Some(b) = before {
                q.append_pair("before", &b.to_string());
            }
            let runs: Vec<Run> = serde_json::from_value(
                api_get(base, &format!("/api/runs?{}", q.finish()), token).await?["runs"].clone(),
            )?;
            into.extend(runs.iter().map(|r| r.id));
            match runs.last() {
                Some(last) if runs.len() == 1000 => before = Some(last.id.0),
                _ => break,
            }
        }
        into.sort();
    }
    Ok(found)
}

pub async fn release(
    config: &Config,
    catalog: Arc<catalog::Catalog>,
    args: &ReleaseArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match backend_as(config, Some("release"))? {
        Backend::Store(s) => {
            let engine = offline_engine(config, catalog, s)?;
            if !engine.flow_names().contains(&args.flow) {
                return Err(not_loaded(config, &args.flow).into());
            }
            let statuses = match engine.release(&args.flow).await {
                Err(engine::EngineError::UnknownFlow(flow)) => return Err(not_loaded(config, &flow).into()),
                other => other?,
            };
            engine.leave_cluster().await;
            let ok = statuses.iter().filter(|s| **s == RunStatus::Succeeded).count();
            writeln!(out, "released {} run(s) of {}: {ok} succeeded", statuses.len(), args.flow)?;
        }
        Backend::Api { base, token } => {
            let body = api_post(&base, &format!("/api/flows/{}/release", args.flow), &token).await?;
            writeln!(out, "released {} run(s) of {}", body["released"], args.flow)?;
        }
    }
    Ok(())
}

/// A flow a command names (or a run belongs to) that is not among the config's valid flows.
fn not_loaded(config: &Config, flow: &str) -> UserError {
    UserError::new(format!(
        "flow `{flow}` is not among the valid flows of {} (see `flowd validate --config {}`)",
        config.flows.display(),
        config.path.display()
    ))
}

/// An engine over the store with the flows that validate, for commands run while the
/// service is stopped.
fn offline_engine(
    config: &Config,
    catalog: Arc<catalog::Catalog>,
    store: Arc<dyn Store>,
) -> anyhow::Result<Arc<engine::Engine>> {
    let engine = wiring::build_engine_on(config, catalog, store)?;
    let files = crate::flows::discover(std::slice::from_ref(&config.flows)).map_err(UserError::new)?;
    let env = crate::flows::compile_env(config.accounts.keys().cloned().collect());
    let loaded = crate::flows::load_files(&files, engine.catalog(), &env);
    engine.set_flows(loaded.flows.into_iter().map(|(_, f)| f).collect())?;
    // On a cluster, this command is a node for as long as it executes runs.
    engine.keep_alive();
    Ok(engine)
}
