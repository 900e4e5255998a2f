//! The console's HTML, rendered on the server with maud: its `html!` templates are
//! checked at compile time and escape every interpolated value, so nothing a run holds
//! (contact fields, error texts, GHL's answers) can become markup.

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use store::{Run, RunStatus, StepRecord};

pub const CSS: &str = include_str!("console.css");
pub const JS: &str = include_str!("console.js");

/// Where a page is in the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Runs,
    Flows,
    Health,
}

/// The frame of every page after login: navigation, and a logout form carrying the
/// session's CSRF token.
pub fn layout(title: &str, nav: Nav, csrf: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · flowd" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/runs" { "flowd" }
                    nav {
                        a href="/runs" class=[(nav == Nav::Runs).then_some("on")] { "Runs" }
                        a href="/flows" class=[(nav == Nav::Flows).then_some("on")] { "Flows" }
                        a href="/health" class=[(nav == Nav::Health).then_some("on")] { "Health" }
                    }
                    form.logout method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Log out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · flowd" }
                link rel="stylesheet" href="/static/console.css";
            }
            body.login {
                main {
                    h1 { "flowd" }
                    form method="post" action="/login" {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" autofocus required;
                        @if let Some(e) = error { p.error { (e) } }
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// A message page (an error, or what an action did), with a way back.
pub fn message(title: &str, text: &str, back: &str) -> Markup {
    html! {
        h1 { (title) }
        p.message { (text) }
        p { a href=(back) { "Back" } }
    }
}

pub fn status_badge(status: RunStatus) -> Markup {
    html! { span class={ "status " (status.as_str()) } { (status.as_str()) } }
}

/// The runs list's filter as the form shows it (what was typed, not parsed).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FilterForm {
    #[serde(default)]
    pub flow: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub touched: String,
}

impl FilterForm {
    /// The filter as a query string, for links that keep it (paging).
    pub fn query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("flow", &self.flow),
            ("status", &self.status),
            ("since", &self.since),
            ("until", &self.until),
            ("touched", &self.touched),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }

    fn hidden_fields(&self) -> Markup {
        html! {
            input type="hidden" name="flow" value=(self.flow);
            input type="hidden" name="since" value=(self.since);
            input type="hidden" name="until" value=(self.until);
            input type="hidden" name="touched" value=(self.touched);
        }
    }
}

const STATUSES: [&str; 7] = ["failed", "dead", "in_doubt", "held", "running", "pending", "succeeded"];

pub fn runs(form: &FilterForm, flows: &[String], runs: &[Run], older: Option<u64>, csrf: &str) -> Markup {
    html! {
        h1 { "Runs" }
        form.filters method="get" action="/runs" {
            label { "Record " input type="search" name="touched" value=(form.touched) placeholder="contact:ID"; }
            label { "Flow "
                select name="flow" {
                    option value="" { "any" }
                    @for f in flows { option value=(f) selected[*f == form.flow] { (f) } }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[s == form.status] { (s) } }
                }
            }
            label { "Since " input type="text" name="since" value=(form.since) placeholder="2h or 2026-01-31T08:00:00Z" size="16"; }
            label { "Until " input type="text" name="until" value=(form.until) placeholder="RFC 3339" size="16"; }
            button type="submit" { "Filter" }
        }
        @if runs.is_empty() {
            p.empty { "No runs match." }
        } @else {
            table.runs {
                thead { tr { th { "Run" } th { "Flow" } th { "Status" } th { "Tries" } th { "Created (UTC)" } th { "Records" } th { "Error" } } }
                tbody {
                    @for r in runs {
                        tr {
                            td { a href={ "/runs/" (r.id) } { (r.id) } }
                            td { (r.flow) }
                            td { (status_badge(r.status)) }
                            td.num { (r.attempts) }
                            td { (r.created_at.format("%Y-%m-%d %H:%M:%S")) }
                            td.records { @for t in r.touched.iter().take(3) { code { (t) } " " } }
                            td.error { (r.error.as_deref().map(|e| truncate(e, 120)).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        @if let Some(before) = older {
            p.paging { a rel="next" href={ "/runs?" (form.query()) @if !form.query().is_empty() { "&" } "before=" (before) } { "Older runs →" } }
        }
        section.bulk {
            h2 { "Replay many" }
            p { "Replays every dead run this filter selects (flow, time range, record; the status filter is not used). You see how many first." }
            form method="post" action="/runs/replay" {
                input type="hidden" name="csrf" value=(csrf);
                (form.hidden_fields())
                label { input type="checkbox" name="include_in_doubt" value="true"; " also in_doubt runs (their request may have reached GHL)" }
                button type="submit" { "Count runs to replay" }
            }
        }
    }
}

/// The dry-run count of a bulk replay, with the button that does it.
pub fn bulk_confirm(form: &FilterForm, include_in_doubt: bool, dead: usize, in_doubt: usize, csrf: &str) -> Markup {
    let total = dead + if include_in_doubt { in_doubt } else { 0 };
    html! {
        h1 { "Replay many" }
        p.count { (total) " run(s) would be replayed: " (dead) " dead"
            @if include_in_doubt { ", " (in_doubt) " in_doubt" } "." }
        @if !include_in_doubt && in_doubt > 0 {
            p { (in_doubt) " in_doubt run(s) match too and are left out." }
        }
        @if total > 0 {
            form method="post" action="/runs/replay" {
                input type="hidden" name="csrf" value=(csrf);
                (form.hidden_fields())
                @if include_in_doubt { input type="hidden" name="include_in_doubt" value="true"; }
                input type="hidden" name="confirm" value="true";
                button.danger type="submit" { "Replay " (total) " run(s)" }
            }
        }
        p { a href={ "/runs?" (form.query()) } { "Back to the runs" } }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

fn json_block(v: &Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    html! { pre.json { (text) } }
}

/// The trigger item, in a shorter box: the steps below are what an operator reads first.
fn item_block(v: &Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    html! { pre.json.item { (text) } }
}

fn duration(step: &StepRecord) -> String {
    match step.finished_at {
        Some(end) => format!("{} ms", (end - step.started_at).num_milliseconds()),
        None => "not finished".into(),
    }
}

pub fn run(run: &Run, csrf: &str) -> Markup {
    let id = run.id;
    html! {
        h1 { "Run " (id) " " (status_badge(run.status)) }
        dl.facts {
            dt { "Flow" } dd { a href={ "/runs?flow=" (url_part(&run.flow)) } { (run.flow) } }
            dt { "Created" } dd { (run.created_at.to_rfc3339()) }
            dt { "Updated" } dd { (run.updated_at.to_rfc3339()) }
            dt { "Attempts" } dd { (run.attempts) @if run.replays > 0 { " (replayed " (run.replays) "×)" } }
            @if let Some(at) = run.next_retry_at { dt { "Next retry" } dd { (at.to_rfc3339()) } }
            @if let Some(e) = &run.error { dt { "Error" } dd.error { (e) } }
            @if !run.touched.is_empty() {
                dt { "Records" }
                dd { @for t in &run.touched { a href={ "/runs?touched=" (url_part(t)) } { code { (t) } } " " } }
            }
        }
        section.actions {
            @match run.status {
                RunStatus::Dead => {
                    (action(&format!("/runs/{id}/replay"), csrf, "Replay from the failed step", None))
                }
                RunStatus::InDoubt => {
                    p { "A request of this run may have reached GHL. Check there, then:" }
                    (action(&format!("/runs/{id}/resolve"), csrf, "It was done: mark succeeded", Some(("decision", "done"))))
                    (action(&format!("/runs/{id}/resolve"), csrf, "It was not: send again", Some(("decision", "send_again"))))
                }
                RunStatus::Held => {
                    p { "The flood guard held this run." }
                    (action(&format!("/flows/{}/release", url_part(&run.flow)), csrf, "Release the flow's held runs", None))
                    (action(&format!("/runs/{id}/discard"), csrf, "Discard this run", None))
                }
                _ => {}
            }
        }
        h2 { "Trigger item" }
        (item_block(&run.item))
        h2 { "Steps" }
        @if run.steps.is_empty() { p.empty { "No step was sent." } }
        @for s in &run.steps {
            section.stepbox {
                h3 { (s.step) " " span class={ "step " (step_status(s)) } { (step_status(s)) } }
                p.timing { "started " (s.started_at.to_rfc3339()) ", " (duration(s)) ", try " (s.tries) }
                @if let Some(e) = &s.error { p.error { (e) } }
                details open {
                    summary { "Request" }
                    (json_block(&s.request))
                }
                details open {
                    summary { "Response" }
                    @match &s.response { Some(r) => (json_block(r)), None => p.empty { "none recorded" } }
                }
            }
        }
    }
}

fn step_status(s: &StepRecord) -> &'static str {
    match s.status {
        store::StepStatus::Sent => "sent",
        store::StepStatus::Succeeded => "succeeded",
        store::StepStatus::Failed => "failed",
        store::StepStatus::InDoubt => "in_doubt",
        store::StepStatus::Skipped => "skipped",
    }
}

fn action(path: &str, csrf: &str, label: &str, field: Option<(&str, &str)>) -> Markup {
    html! {
        form.action method="post" action=(path) {
            input type="hidden" name="csrf" value=(csrf);
            @if let Some((k, v)) = field { input type="hidden" name=(k) value=(v); }
            button type="submit" { (label) }
        }
    }
}

/// One path segment or query value, percent-encoded.
pub fn url_part(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One flow's row on the flows page.
pub struct FlowRow {
    pub name: String,
    pub account: String,
    pub trigger: String,
    pub paused: Option<String>,
    /// `every 5m`, `cron …`; none for a webhook-only flow.
    pub schedule: Option<String>,
    pub last_poll: Option<engine::LastPoll>,
    pub next_poll: Option<chrono::DateTime<chrono::Utc>>,
    pub runs_last_hour: usize,
    pub failed_last_hour: usize,
    pub held: usize,
    pub watermark_lag: Option<f64>,
    pub polls_ok: f64,
    pub polls_failed: f64,
    /// This flow's share of its location's GHL requests since the service started.
    pub budget_share: Option<f64>,
}

pub fn flows(rows: &[FlowRow], rejected: &[(std::path::PathBuf, Vec<String>)], csrf: &str) -> Markup {
    html! {
        h1 { "Flows" }
        @if !rejected.is_empty() {
            section.rejected {
                h2 { "Rejected flow files" }
                p { "The last reload refused these files; a flow that was running from one keeps its previous version." }
                @for (file, problems) in rejected {
                    h3 { code { (file.display()) } }
                    pre.diagnostics { @for p in problems { (p) "\n" } }
                }
            }
        }
        @if rows.is_empty() { p.empty { "No flow is loaded." } }
        @else {
            table.flows {
                thead { tr {
                    th { "Flow" } th { "Account" } th { "Trigger" } th { "Schedule" } th { "Last poll (UTC)" } th { "Next poll (UTC)" }
                    th { "State" } th { "Runs, last hour" }
                    th { "Failure rate" } th { "Polls ok / failed" } th { "Watermark lag" } th { "Share of requests" } th { "Held" }
                } }
                tbody {
                    @for f in rows {
                        tr {
                            td { a href={ "/runs?flow=" (url_part(&f.name)) } { (f.name) } }
                            td { (f.account) }
                            td { code { (if f.trigger.is_empty() { "webhook" } else { f.trigger.as_str() }) } }
                            td { @match &f.schedule { Some(sch) => code { (sch) }, None => "webhooks" } }
                            td.poll {
                                @match &f.last_poll {
                                    Some(l) if l.ok => { (l.at.format("%Y-%m-%d %H:%M:%S")) " " span.status.succeeded { "ok" } " " (l.items) " item(s), " (l.new) " new" }
                                    Some(l) => { (l.at.format("%Y-%m-%d %H:%M:%S")) " " span.status.dead { "failed" } " " (l.error.as_deref().unwrap_or("")) }
                                    None => "–",
                                }
                            }
                            td.poll { @match f.next_poll { Some(n) => (n.format("%Y-%m-%d %H:%M:%S")), None => "–" } }
                            td { @match &f.paused { Some(p) => span.status.held { "paused: " (p) }, None => "polling" } }
                            td.num { (f.runs_last_hour) }
                            td.num { @if f.runs_last_hour > 0 { (format!("{:.0}%", 100.0 * f.failed_last_hour as f64 / f.runs_last_hour as f64)) } @else { "–" } }
                            td.num { (f.polls_ok) " / " (f.polls_failed) }
                            td.num { @match f.watermark_lag { Some(s) => (format!("{s:.0} s")), None => "–" } }
                            td.num { @match f.budget_share { Some(s) => (format!("{:.0}%", 100.0 * s)), None => "–" } }
                            td.num {
                                (f.held)
                                @if f.held > 0 {
                                    (action(&format!("/flows/{}/release", url_part(&f.name)), csrf, "Release", None))
                                    a href={ "/runs?status=held&flow=" (url_part(&f.name)) } { "see" }
                                }
                            }
                        }
                    }
                }
            }
            p.note { "Runs and failure rate: runs created in the last hour (failed, dead or in doubt now). Polls and share of requests: since the service started." }
        }
    }
}

/// One configured account on the health page.
pub struct AccountRow {
    pub name: String,
    pub location: String,
    pub token: ghl::TokenState,
    pub checked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub budget_used: Option<f64>,
    pub budget_limit: Option<f64>,
}

/// What the health page shows: the accounts' token states as the GHL client last saw
/// them, every figure from the engine's metrics.
pub struct Health<'a> {
    pub store_fault: Option<&'a str>,
    pub accounts: &'a [AccountRow],
    pub deliveries: &'a [(String, f64)],
    pub refreshes: f64,
}

pub fn health(h: &Health) -> Markup {
    let Health { store_fault, accounts, deliveries, refreshes } = *h;
    html! {
        h1 { "Health" }
        h2 { "Store" }
        @match store_fault {
            Some(f) => p.error { "The store cannot write: " (f) },
            None => p { span.status.succeeded { "writing" } },
        }
        h2 { "Accounts" }
        @if accounts.is_empty() { p.empty { "No account is configured." } }
        @else {
            table.accounts {
                thead { tr { th { "Account" } th { "Location" } th { "Token" } th { "Daily budget used" } } }
                tbody {
                    @for a in accounts {
                        tr {
                            td { (a.name) }
                            td { code { (a.location) } }
                            td {
                                @match &a.token {
                                    ghl::TokenState::Valid => span.status.succeeded { "valid" },
                                    ghl::TokenState::NeedsReconnect { reason } => {
                                        span.status.dead { "needs reconnect" } " " (reason)
                                    },
                                    ghl::TokenState::Unknown => span.status.pending { "not used yet" },
                                }
                                @if let Some(at) = a.checked_at { " " small { "(as of " (at.format("%H:%M:%S UTC")) ")" } }
                            }
                            td.num {
                                @match (a.budget_used, a.budget_limit) {
                                    (Some(u), Some(l)) if l > 0.0 => (format!("{u} of {l} ({:.1}%)", 100.0 * u / l)),
                                    (Some(u), _) => (u),
                                    _ => "–",
                                }
                            }
                        }
                    }
                }
            }
            p { "Token: what GHL's last answer to one of the account's requests said. OAuth refreshes since start: " (refreshes) "." }
        }
        h2 { "Webhook receiver" }
        @if deliveries.is_empty() { p.empty { "No delivery since the service started (or no receiver configured)." } }
        @else {
            table {
                thead { tr { th { "Result" } th { "Deliveries" } } }
                tbody { @for (result, n) in deliveries { tr { td { (result) } td.num { (n) } } } }
            }
        }
    }
}
