//! The web console's run list with 10,000 runs in the store (issue 24: the first page in
//! under 100 ms): the real `flowd` binary as a child process over a store filled here,
//! timed as a browser sees it (one HTTP request over loopback: the store read, the HTML
//! rendering and the transfer).
//!
//! ```text
//! cargo build --release -p flowd && cargo build --release -p bench --bin console
//! target/release/console [--runs N] [--requests R] [--flowd PATH]
//! ```
//!
//! The store gets `--runs` runs (default 10,000) of two flows, each with a contact as
//! its trigger item and two recorded steps (request and response), a fifth of them dead,
//! written in batches through `Store::commit_poll` and `Store::update_runs` as the engine
//! writes them. flowd runs with no flows (it sends nothing to GHL). The bench logs in,
//! then times `--requests` loads (default 50) of: the first page, the first page of one
//! flow's dead runs, the second page, and a search by contact id; it prints the median,
//! 95th percentile and maximum of each.

use anyhow::{bail, Context, Result};
use bench::{free_port, locate_flowd};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use store::{NewRun, PollCommit, PollItem, RunChange, RunStatus, StepStatus};

const ADMIN: &str = "console-bench-admin";

struct Args {
    runs: usize,
    requests: usize,
    flowd: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { runs: 10_000, requests: 50, flowd: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().with_context(|| format!("{flag}: `{value}` is not a number"));
        match flag.as_str() {
            "--runs" => a.runs = num()?,
            "--requests" => a.requests = num()?.max(1),
            "--flowd" => a.flowd = Some(PathBuf::from(&value)),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn contact(i: usize) -> serde_json::Value {
    json!({
        "id": format!("c{i:08}"), "locationId": "loc_bench", "firstName": format!("Ann{i}"), "lastName": "Smith",
        "email": format!("ann{i}@example.com"), "phone": "+15125550002", "tags": ["lead", "bench"],
        "address1": "102 Main St", "city": "Miami", "country": "US", "dateAdded": "2026-01-31T08:00:00.000Z",
    })
}

/// Fills the store as the engine would have: runs created by polls, then their steps.
fn fill(path: &std::path::Path, runs: usize) -> Result<String> {
    let s = store::create_or_open(path, store::Backend::FOR_NEW_STORES)?;
    const BATCH: usize = 500;
    let mut searched = String::new();
    for start in (0..runs).step_by(BATCH) {
        let items = (start..(start + BATCH).min(runs))
            .map(|i| {
                let flow = if i % 2 == 0 { "push-contacts" } else { "welcome" };
                let mut run = NewRun::new(flow, contact(i));
                run.trigger = Some(format!("{flow}/contacts.search_contacts/new"));
                run.touched = vec![format!("contact:c{i:08}")];
                PollItem { key: format!("c{i:08}"), run: Some(run) }
            })
            .collect();
        let out = s.commit_poll(&PollCommit { lease: None, trigger: format!("bench/{start}"), state: None, items })?;
        let batch: Vec<_> = out
            .created
            .iter()
            .enumerate()
            .map(|(k, (key, id))| {
                let dead = (start + k) % 5 == 0;
                let task = json!({"op": "contacts.create_task", "method": "POST", "path": format!("/contacts/{key}/tasks"),
                    "query": [], "body": {"title": "Welcome call", "dueDate": "2030-01-01T10:00:00Z", "completed": false}});
                let mut changes = vec![
                    RunChange::Status { status: RunStatus::Running, error: None },
                    RunChange::StepStarted { step: "task".into(), request: task.into() },
                    RunChange::StepFinished {
                        step: "task".into(),
                        status: StepStatus::Succeeded,
                        response: Some(json!({"id": format!("t{key}"), "title": "Welcome call", "contactId": key}).into()),
                        error: None,
                    },
                    RunChange::StepStarted {
                        step: "push".into(),
                        request: json!({"method": "POST", "url": "https://app.example/hook", "json": {"contact": key}}).into(),
                    },
                ];
                let (step, status, error) = if dead {
                    (StepStatus::Failed, RunStatus::Dead, Some("step `push`: https://app.example/hook answered 400".to_string()))
                } else {
                    (StepStatus::Succeeded, RunStatus::Succeeded, None)
                };
                changes.push(RunChange::StepFinished { step: "push".into(), status: step, response: None, error: error.clone() });
                changes.push(RunChange::Status { status, error });
                (*id, changes)
            })
            .collect();
        for r in s.update_runs(&batch)? {
            r?;
        }
        if searched.is_empty() {
            searched = format!("contact:c{:08}", runs / 2);
        }
    }
    s.flush()?;
    Ok(searched)
}

struct Flowd(Child);

impl Drop for Flowd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn summary(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1).min(times.len() - 1)];
    println!(
        "{name:<40} median {:>7.1} ms   p95 {:>7.1} ms   max {:>7.1} ms   ({} loads)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.95).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        times.len()
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let flowd = locate_flowd(args.flowd.clone())?;
    let flowd = flowd.canonicalize().with_context(|| format!("no flowd binary at {}", flowd.display()))?;
    let dir = tempfile::tempdir()?;
    let filled = Instant::now();
    let searched = fill(&dir.path().join("data"), args.runs)?;
    eprintln!("{} runs written in {:.1} s", args.runs, filled.elapsed().as_secs_f64());
    std::fs::create_dir(dir.path().join("flows"))?;
    let port = free_port()?;
    let config = format!(
        "store: ./data\nflows: ./flows\nlisten: 127.0.0.1:{port}\nadmin_token: {ADMIN}\naccounts:\n  main:\n    location_id: loc_bench\n    base_url: http://127.0.0.1:9\n    token: pit-unused\n"
    );
    std::fs::write(dir.path().join("flowd.yaml"), config)?;
    let _child = Flowd(
        Command::new(&flowd)
            .args(["run", "--config", "flowd.yaml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", flowd.display()))?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        if Instant::now() > deadline {
            bail!("flowd did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let login = http.post(format!("{base}/login")).form(&[("token", ADMIN)]).send().await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_string();
    let first = http.get(format!("{base}/runs")).header("cookie", &cookie).send().await?.text().await?;
    let last_id: u64 = first
        .split("href=\"/runs/")
        .nth(50)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse().ok())
        .context("the first page has no 50th run")?;
    let pages = [
        ("first page".to_string(), "/runs".to_string()),
        ("one flow's dead runs".into(), "/runs?flow=push-contacts&status=dead".into()),
        ("second page".into(), format!("/runs?before={last_id}")),
        (format!("search {searched} (linear scan)"), format!("/runs?touched={searched}")),
    ];
    println!("flowd console, {} runs in the store ({}):", args.runs, flowd.display());
    for (name, path) in pages {
        let mut times = Vec::with_capacity(args.requests);
        for _ in 0..args.requests {
            let t = Instant::now();
            let res = http.get(format!("{base}{path}")).header("cookie", &cookie).send().await?;
            let status = res.status();
            let body = res.text().await?;
            times.push(t.elapsed());
            if !status.is_success() || !body.contains("href=\"/runs/") {
                bail!("{path}: {status}, no runs on the page");
            }
        }
        summary(&name, times);
    }
    Ok(())
}
