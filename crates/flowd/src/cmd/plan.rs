//! `flowd plan`: what a config's flows will spend of each location's GHL budget (100
//! requests per 10 s, 200,000 a day), before it is deployed.

use crate::cli::PlanArgs;
use crate::exit::{Failed, UserError};
use crate::flows;
use catalog::Catalog;
use chrono::{Duration as ChronoDuration, Utc};
use flow::{CompiledFlow, Schedule, StepTarget};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// GHL's budget per location.
const PER_10S: f64 = 100.0;
const PER_DAY: f64 = 200_000.0;
/// Above this share of either budget, the plan warns.
const WARN_SHARE: f64 = 0.8;
/// A fan-out whose round through all parents takes longer than this is warned about.
const WARN_ROUND_SECS: f64 = 3600.0;

#[derive(Debug, Serialize)]
struct FlowPlan {
    flow: String,
    trigger: String,
    read: String,
    schedule: String,
    polls_per_hour: f64,
    requests_per_poll: u64,
    ghl_steps_per_run: usize,
    requests_per_hour: f64,
    /// A fan-out trigger: how long a round through all its parents takes when nothing
    /// changes, so how late a child of an unchanged parent may be seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    round_seconds: Option<f64>,
    /// The same when half of every poll goes to changed parents (the longest a round takes).
    #[serde(skip_serializing_if = "Option::is_none")]
    busy_round_seconds: Option<f64>,
    /// The parent trigger of a fan-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    fans_out_over: Option<String>,
}

#[derive(Debug, Serialize)]
struct LocationPlan {
    location: String,
    accounts: Vec<String>,
    flows: Vec<FlowPlan>,
    requests_per_hour: f64,
    requests_per_day: f64,
    share_of_daily_budget: f64,
    share_of_10s_budget: f64,
}

/// The config as planning reads it: it needs no credentials, so unset variables stand
/// for themselves.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<crate::config::Config> {
    Ok(crate::config::load(path, &|k| std::env::var(k).ok().or_else(|| Some(format!("${{{k}}}"))))?)
}

pub fn run(
    catalog: &Catalog,
    config: &crate::config::Config,
    args: &PlanArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let files = flows::discover(std::slice::from_ref(&config.flows)).map_err(UserError::new)?;
    let loaded = flows::load_files(&files, catalog, &flows::compile_env(config.accounts.keys().cloned().collect()));
    if loaded.errors() > 0 {
        for d in &loaded.diagnostics {
            writeln!(out, "{d}")?;
        }
        return Err(UserError::new(format!("{} error(s) in the flows: see `flowd validate`", loaded.errors())).into());
    }
    let mut by_location: BTreeMap<String, LocationPlan> = BTreeMap::new();
    for (_, flow) in &loaded.flows {
        let Some(account) = config.accounts.get(&flow.account) else { continue };
        let plan = plan_flow(catalog, flow, args.records, args.changes);
        let loc = by_location.entry(account.location_id.clone()).or_insert_with(|| LocationPlan {
            location: account.location_id.clone(),
            accounts: Vec::new(),
            flows: Vec::new(),
            requests_per_hour: 0.0,
            requests_per_day: 0.0,
            share_of_daily_budget: 0.0,
            share_of_10s_budget: 0.0,
        });
        if !loc.accounts.contains(&flow.account) {
            loc.accounts.push(flow.account.clone());
        }
        loc.requests_per_hour += plan.requests_per_hour;
        loc.flows.push(plan);
    }
    let mut over = Vec::new();
    for loc in by_location.values_mut() {
        loc.requests_per_day = loc.requests_per_hour * 24.0;
        loc.share_of_daily_budget = loc.requests_per_day / PER_DAY;
        loc.share_of_10s_budget = loc.requests_per_hour / 360.0 / PER_10S;
        if loc.share_of_daily_budget > 1.0 || loc.share_of_10s_budget > 1.0 {
            over.push(loc.location.clone());
        }
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &by_location.values().collect::<Vec<_>>())?;
        writeln!(out)?;
    } else {
        render(&by_location, args, out)?;
    }
    if !over.is_empty() {
        return Err(Failed::new(format!(
            "the flows of {} do not fit GHL's budget (100 requests per 10 s, 200,000 a day per location)",
            over.join(", ")
        ))
        .into());
    }
    Ok(())
}

fn plan_flow(catalog: &Catalog, flow: &CompiledFlow, records: u64, changes: f64) -> FlowPlan {
    let ghl_steps = flow.steps.iter().filter(|s| matches!(s.uses, StepTarget::Ghl(_))).count();
    let spec = catalog.get(&flow.trigger.op).and_then(|o| o.trigger.as_ref());
    let (polls, schedule) = if flow.trigger.polls() {
        (polls_per_hour(&flow.trigger.schedule), describe(&flow.trigger.schedule))
    } else {
        (0.0, if flow.trigger.http.is_some() { "on request" } else { "webhook" }.to_string())
    };
    let mode = flow.trigger.dedupe;
    let (read, per_poll) = match spec {
        Some(spec) if polls > 0.0 => {
            let read = spec.read_spec();
            let incremental = read.mode(mode).is_some();
            // Changes re-read while they are within the lookback of the watermark.
            let window_h = (3600.0 / polls + flow.trigger.lookback.as_secs_f64()) / 3600.0;
            let changed = (changes * window_h).ceil() as u64;
            match &flow.trigger.fan_out {
                Some(fan) => (
                    "fan-out".to_string(),
                    catalog::FanOutCost { max_per_poll: fan.max_per_poll }.requests(records, changed),
                ),
                None => {
                    let label = format!("{}{}", read.strategy(), if incremental { ", incremental" } else { "" });
                    (label, spec.poll_cost(mode).requests(records, changed))
                }
            }
        }
        _ => ("-".to_string(), 0),
    };
    let cost = flow
        .trigger
        .fan_out
        .as_ref()
        .filter(|_| polls > 0.0)
        .map(|fan| catalog::FanOutCost { max_per_poll: fan.max_per_poll });
    let round_seconds = cost.map(|c| c.polls_per_round(records) as f64 * 3600.0 / polls);
    let busy_round_seconds = cost.map(|c| c.busy_polls_per_round(records) as f64 * 3600.0 / polls);
    let sweep = match (flow.trigger.sweep, spec) {
        (Some(every), Some(spec)) if polls > 0.0 => {
            catalog::PollCost::Pages { page: page_of(spec.poll_cost(catalog::DedupeMode::Changed)) }
                .requests(records, 0) as f64
                * 3600.0
                / every.as_secs_f64()
        }
        _ => 0.0,
    };
    let requests_per_hour = polls * per_poll as f64 + sweep + changes * ghl_steps as f64;
    FlowPlan {
        flow: flow.name.clone(),
        trigger: match (flow.trigger.polls(), &flow.trigger.http) {
            (true, _) => flow.trigger.op.clone(),
            (false, Some(h)) => format!("http {}", h.path),
            (false, None) => "webhook".into(),
        },
        read,
        schedule,
        polls_per_hour: polls,
        requests_per_poll: per_poll,
        ghl_steps_per_run: ghl_steps,
        requests_per_hour,
        round_seconds,
        busy_round_seconds,
        fans_out_over: flow.trigger.fan_out.as_ref().map(|f| f.parent.clone()),
    }
}

fn page_of(cost: catalog::PollCost) -> u64 {
    match cost {
        catalog::PollCost::Pages { page } | catalog::PollCost::Changed { page } => page,
        catalog::PollCost::Fixed(_) => u64::MAX,
    }
}

/// Polls an hour: exact for intervals, counted over the next day for cron schedules.
fn polls_per_hour(schedule: &Schedule) -> f64 {
    match schedule {
        Schedule::Every(d) => 3600.0 / d.as_secs_f64().max(1.0),
        Schedule::Cron(_) => {
            let start = Utc::now();
            let end = start + ChronoDuration::days(1);
            let mut at = start;
            let mut n = 0u32;
            while let Some(next) = schedule.next_after(at) {
                if next > end || n > 100_000 {
                    break;
                }
                n += 1;
                at = next;
            }
            f64::from(n) / 24.0
        }
    }
}

fn describe(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
        Schedule::Cron(c) => format!("cron {}", c.pattern()),
    }
}

fn render(plan: &BTreeMap<String, LocationPlan>, args: &PlanArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "Assuming {} records per collection and {} changes an hour per flow (--records, --changes).",
        args.records, args.changes
    )?;
    for loc in plan.values() {
        writeln!(out, "\nlocation {} (account {})", loc.location, loc.accounts.join(", "))?;
        let w = loc.flows.iter().map(|f| f.flow.len()).max().unwrap_or(4).max(4);
        let wt = loc.flows.iter().map(|f| f.trigger.len()).max().unwrap_or(7).max(7);
        writeln!(
            out,
            "  {:w$}  {:wt$}  {:19}  {:14}  {:>7}  {:>8}  {:>10}  {:>9}",
            "FLOW", "TRIGGER", "READ", "SCHEDULE", "POLLS/H", "REQ/POLL", "STEPS/RUN", "REQ/H"
        )?;
        for f in &loc.flows {
            writeln!(
                out,
                "  {:w$}  {:wt$}  {:19}  {:14}  {:>7.0}  {:>8}  {:>10}  {:>9.0}",
                f.flow,
                f.trigger,
                f.read,
                f.schedule,
                f.polls_per_hour,
                f.requests_per_poll,
                f.ghl_steps_per_run,
                f.requests_per_hour
            )?;
        }
        for f in &loc.flows {
            let (Some(secs), Some(busy), Some(parent)) = (f.round_seconds, f.busy_round_seconds, &f.fans_out_over)
            else {
                continue;
            };
            let human = |s: f64| humantime::format_duration(std::time::Duration::from_secs(s.round() as u64));
            writeln!(
                out,
                "  {}: fans out over {parent}, round-robin: a round through {} records takes {} ({} while many change), so a new child of a record that did not change waits up to that long",
                f.flow,
                args.records,
                human(secs),
                human(busy)
            )?;
            if secs > WARN_ROUND_SECS {
                writeln!(
                    out,
                    "  warning: the round of {} takes over an hour: raise max_per_poll or poll more often",
                    f.flow
                )?;
            }
        }
        writeln!(
            out,
            "  total: {:.0} requests an hour, {:.0} a day = {:.1}% of 200,000/day; {:.1} per 10 s = {:.1}% of 100/10 s",
            loc.requests_per_hour,
            loc.requests_per_day,
            loc.share_of_daily_budget * 100.0,
            loc.requests_per_hour / 360.0,
            loc.share_of_10s_budget * 100.0
        )?;
        if loc.share_of_daily_budget > WARN_SHARE || loc.share_of_10s_budget > WARN_SHARE {
            writeln!(
                out,
                "  warning: over {:.0}% of a budget leaves no room for bursts, retries or other apps on this location",
                WARN_SHARE * 100.0
            )?;
        }
    }
    Ok(())
}
