//! The web console over HTTP, as a browser would use it, against a real `flowd run` and
//! the sandbox: login and sessions, CSRF on every action, no CORS, the `Host` check,
//! escaping of what runs hold, redaction, filters and paging, search by contact, and each
//! action (replay one, bulk replay with its dry-run count, in-doubt decisions, releasing
//! and discarding held runs), checked in the store through the API and in GHL (the
//! sandbox).

mod console_support;

use console_support::{api_runs, eventually, start, ADMIN, APP_SECRET, XSS};
use reqwest::header::HeaderMap;
use sandbox::{FaultRule, FaultSettings};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A client that keeps the session cookie, as a browser does, and never follows
/// redirects (the tests look at them).
struct Web {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    /// The CSRF token the page's forms carry.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').expect("end of the value")].to_string()
    }

    fn location(&self) -> &str {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

impl Web {
    fn new(base: &str) -> Web {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Web { base: base.to_string(), http, cookie: None }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        };
        let res = req.send().await.expect("the console answers");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        Page { status, headers, body: res.text().await.expect("body") }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(self.http.post(format!("{}{path}", self.base)).form(form)).await
    }

    async fn login(&mut self, token: &str) -> Page {
        let page = self.post("/login", &[("token", token)]).await;
        if let Some(set) = page.headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            self.cookie = set.split(';').next().map(str::to_string);
        }
        page
    }
}

fn statuses(runs: &[serde_json::Value]) -> Vec<String> {
    runs.iter().map(|r| r["status"].as_str().unwrap_or("").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sessions_csrf_cors_and_host() {
    let rig = start(2, None, true).await;
    let mut web = Web::new(&rig.svc.base);

    // Not logged in: pages go to the login form, actions are refused.
    let page = web.get("/runs").await;
    assert_eq!((page.status, page.location()), (303, "/login"));
    assert_eq!(web.get("/").await.location(), "/runs");
    let page = web.get("/login").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"token\""), "{}", page.body);
    assert_eq!(web.post("/runs/1/replay", &[("csrf", "x")]).await.status, 401);

    // A wrong token: no session.
    let page = web.login("wrong").await;
    assert_eq!(page.status, 401);
    assert!(page.headers.get("set-cookie").is_none());
    assert!(web.cookie.is_none());

    let page = web.login(ADMIN).await;
    assert_eq!((page.status, page.location()), (303, "/runs"));
    let cookie = page.headers.get("set-cookie").and_then(|v| v.to_str().ok()).expect("a session cookie").to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"), "{cookie}");
    assert!(!cookie.contains(ADMIN), "the cookie is a session id, not the token: {cookie}");

    // A page from another origin gets no CORS permission; no page can be framed.
    let page = web.send(web.http.get(format!("{}/runs", web.base)).header("origin", "https://evil.example")).await;
    assert_eq!(page.status, 200);
    assert!(page.headers.keys().all(|k| !k.as_str().starts_with("access-control-")), "{:?}", page.headers);
    let csp = page.headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.headers.get("x-frame-options").and_then(|v| v.to_str().ok()), Some("DENY"));
    let csrf = page.csrf();
    assert_eq!(csrf.len(), 64);

    // Every mutation needs the session's CSRF token: missing or another session's is refused.
    for form in [vec![], vec![("csrf", "0".repeat(64))]] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for path in [
            "/runs/1/replay",
            "/runs/1/resolve",
            "/runs/1/discard",
            "/runs/replay",
            "/flows/guarded/release",
            "/logout",
        ] {
            let page = web.post(path, &form).await;
            assert_eq!(page.status, 403, "{path} without the right CSRF token: {}", page.body);
        }
    }
    let mut other = Web::new(&rig.svc.base);
    other.login(ADMIN).await;
    let other_csrf = other.get("/runs").await.csrf();
    assert_ne!(other_csrf, csrf);
    assert_eq!(web.post("/logout", &[("csrf", &other_csrf)]).await.status, 403);

    // A name re-pointed at 127.0.0.1 (DNS rebinding) is refused before any page.
    let page = web.send(web.http.get(format!("{}/runs", web.base)).header("host", "evil.example")).await;
    assert_eq!(page.status, 421);

    // Static assets are served from the binary.
    let css = web.get("/static/console.css").await;
    assert!(css.status == 200 && css.headers["content-type"].to_str().unwrap_or("").starts_with("text/css"));

    // A flow file rejected on reload is shown with its file, line and column.
    std::fs::write(
        rig.svc.path("flows/broken.yaml"),
        "name: broken\naccount: main\ntrigger:\n  uses: contacts.serch_contacts\n  every: 1m\nsteps: []\n",
    )
    .expect("a broken flow");
    eventually(&rig.svc, "the flows page shows the rejected file", Duration::from_secs(20), || async {
        let page = web.get("/flows").await;
        page.body.contains("Rejected flow files") && page.body.contains("broken.yaml:4:")
    })
    .await;

    // Logging out ends the session on the server: the old cookie is worth nothing.
    let page = web.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((page.status, page.location()), (303, "/login"));
    assert_eq!(web.get("/runs").await.status, 303);
    assert_eq!(other.get("/runs").await.status, 200, "other sessions live on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_the_console_is_off() {
    let rig = start(1, None, false).await;
    let mut web = Web::new(&rig.svc.base);
    assert_eq!(web.get("/login").await.status, 403);
    assert_eq!(web.login("").await.status, 403);
    assert_eq!(web.get("/runs").await.status, 403);
    assert!(web.cookie.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_pages_and_every_action() {
    // 60 contacts plus the XSS one. The first two task creations answer 500: those runs
    // are in doubt (a POST that may have reached GHL); the app refuses every push, so the
    // other runs end dead on their second step.
    let mut faults = FaultSettings::default();
    faults.operations.insert(
        "contacts.create_task".into(),
        FaultRule { error_rate: 1.0, error_status: Some(500), times: Some(2), ..FaultRule::default() },
    );
    let rig = start(60, Some(faults), true).await;
    let svc = &rig.svc;
    eventually(svc, "61 runs of push-contacts ended", Duration::from_secs(60), || async {
        let runs = api_runs(svc, "flow=push-contacts").await;
        runs.len() == 61 && statuses(&runs).iter().all(|s| s == "dead" || s == "in_doubt")
    })
    .await;
    eventually(svc, "61 held runs of guarded", Duration::from_secs(30), || async {
        api_runs(svc, "flow=guarded&status=held").await.len() == 61
    })
    .await;
    let tasks_before = rig.sb.records("tasks").len();
    assert_eq!(tasks_before, 59, "one task per run but the two refused");

    let mut web = Web::new(&svc.base);
    web.login(ADMIN).await;

    // Filters: status, flow, time range; paging 50 at a time.
    let page = web.get("/runs?flow=push-contacts&status=dead").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body.matches("class=\"status dead\"").count(), 50, "a full first page");
    assert!(page.body.contains("Older runs"), "a link to older runs");
    let next = {
        let at = page.body.find("rel=\"next\" href=\"").expect("next link") + "rel=\"next\" href=\"".len();
        page.body[at..page.body[at..].find('"').map(|e| at + e).expect("end")].replace("&amp;", "&")
    };
    assert!(next.contains("status=dead") && next.contains("before="), "the filter is kept: {next}");
    let second = web.get(&next).await;
    assert_eq!(second.body.matches("class=\"status dead\"").count(), 9, "{next}");
    assert!(!second.body.contains("Older runs"));
    let page = web.get("/runs?flow=push-contacts&status=in_doubt").await;
    assert_eq!(page.body.matches("class=\"status in_doubt\"").count(), 2);
    assert_eq!(web.get("/runs?flow=push-contacts&status=succeeded").await.body.matches("<tbody>").count(), 0);
    assert_eq!(
        web.get("/runs?flow=push-contacts&since=1h&status=in_doubt")
            .await
            .body
            .matches("class=\"status in_doubt\"")
            .count(),
        2
    );
    assert!(web.get("/runs?flow=push-contacts&until=1h").await.body.contains("No runs match."));
    let page = web.get("/runs?since=yesterday-ish").await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("is not a time"), "{}", page.body);
    assert_eq!(web.get("/runs?status=bogus").await.status, 400);

    // Search by contact id: the XSS contact's runs, one per flow.
    let xss = rig.sb.records("contacts").into_iter().find(|c| c["firstName"] == XSS).expect("xss contact");
    let xss_id = xss["id"].as_str().expect("id").to_string();
    let page = web.get(&format!("/runs?touched=contact:{xss_id}")).await;
    assert_eq!(page.body.matches("href=\"/runs/").count(), 2, "{}", page.body);
    let bare = web.get(&format!("/runs?touched={xss_id}&flow=push-contacts")).await;
    assert_eq!(bare.body.matches("href=\"/runs/").count(), 1, "a bare id is a contact's");
    let xss_run = api_runs(svc, &format!("flow=push-contacts&touched=contact:{xss_id}")).await.remove(0);
    let xss_run = xss_run["id"].as_u64().expect("id");

    // Markup from a run shows as text, on its page and in the list.
    let page = web.get(&format!("/runs/{xss_run}")).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<script>alert") && !page.body.contains("<img src=x"), "markup from a run is escaped");
    assert!(page.body.contains("&lt;script&gt;alert("), "{}", page.body);
    let list = web.get("/runs?flow=push-contacts").await;
    assert!(!list.body.contains("<script>alert"), "nor in the list");
    assert_eq!(web.get("/runs/999999").await.status, 404);

    // A dead run's page: trigger item, each step's request and response, redacted.
    let run_id = api_runs(svc, "flow=push-contacts&status=dead").await[0]["id"].as_u64().expect("id");
    let page = web.get(&format!("/runs/{run_id}")).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(APP_SECRET), "the app's credential is redacted");
    assert!(page.body.contains("&lt;redacted&gt;"), "{}", page.body);
    for part in ["Trigger item", "contacts.create_task", "/hook", "the app is being deployed", "try 1", " ms"] {
        assert!(page.body.contains(part), "`{part}` on the run page:\n{}", page.body);
    }

    // Replay one run from its failed step: the task is not created again, the push is.
    rig.app.failing.store(false, Ordering::SeqCst);
    let csrf = page.csrf();
    let hits = rig.app.hits.load(Ordering::SeqCst);
    let done = web.post(&format!("/runs/{run_id}/replay"), &[("csrf", &csrf)]).await;
    assert_eq!((done.status, done.location()), (303, format!("/runs/{run_id}").as_str()), "{}", done.body);
    let page = web.get(&format!("/runs/{run_id}")).await;
    assert!(page.body.contains("class=\"status succeeded\""), "{}", page.body);
    assert_eq!(rig.sb.records("tasks").len(), tasks_before, "the task step is not sent again");
    assert_eq!(rig.app.hits.load(Ordering::SeqCst), hits + 1);
    // Again: refused, nothing sent.
    assert_eq!(web.post(&format!("/runs/{run_id}/replay"), &[("csrf", &csrf)]).await.status, 409);

    // In doubt: one marked done (nothing sent), one sent again.
    let doubt = api_runs(svc, "flow=push-contacts&status=in_doubt").await;
    let (a, b) = (doubt[0]["id"].as_u64().expect("id"), doubt[1]["id"].as_u64().expect("id"));
    let page = web.get(&format!("/runs/{a}")).await;
    assert!(page.body.contains("It was done: mark succeeded") && page.body.contains("send again"));
    let r = web.post(&format!("/runs/{a}/resolve"), &[("csrf", &csrf), ("decision", "done")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(rig.sb.records("tasks").len(), tasks_before);
    let r = web.post(&format!("/runs/{b}/resolve"), &[("csrf", &csrf), ("decision", "send_again")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(rig.sb.records("tasks").len(), tasks_before + 1, "sent again: its task now exists");
    let after: Vec<String> =
        api_runs(svc, "flow=push-contacts&status=succeeded").await.iter().map(|r| r["id"].to_string()).collect();
    assert!(after.contains(&a.to_string()) && after.contains(&b.to_string()), "{after:?}");
    assert_eq!(web.post(&format!("/runs/{a}/resolve"), &[("csrf", &csrf), ("decision", "done")]).await.status, 409);

    // Bulk replay: a count first (nothing changes), then the replay.
    let filter = [("csrf", csrf.as_str()), ("flow", "push-contacts"), ("since", "1h"), ("until", ""), ("touched", "")];
    let count = web.post("/runs/replay", &filter).await;
    assert_eq!(count.status, 200);
    assert!(count.body.contains("58 run(s) would be replayed: 58 dead"), "{}", count.body);
    assert_eq!(api_runs(svc, "flow=push-contacts&status=dead").await.len(), 58, "a count replays nothing");
    let mut confirm = filter.to_vec();
    confirm.push(("confirm", "true"));
    let started = web.post("/runs/replay", &confirm).await;
    assert!(started.body.contains("58 run(s) are being replayed"), "{}", started.body);
    eventually(svc, "every push-contacts run succeeded", Duration::from_secs(60), || async {
        statuses(&api_runs(svc, "flow=push-contacts").await).iter().all(|s| s == "succeeded")
    })
    .await;
    assert_eq!(rig.sb.records("tasks").len(), tasks_before + 1, "bulk replay sent no task twice");

    // Held runs: discard one, release the rest.
    let held = api_runs(svc, "flow=guarded&status=held").await;
    let one = held[0]["id"].as_u64().expect("id");
    let page = web.get(&format!("/runs/{one}")).await;
    assert!(page.body.contains("Discard this run") && page.body.contains("Release the flow"));
    assert_eq!(web.post(&format!("/runs/{one}/discard"), &[("csrf", &csrf)]).await.status, 303);
    let page = web.get(&format!("/runs/{one}")).await;
    assert!(page.body.contains("class=\"status dead\"") && page.body.contains("discarded by an operator"));
    assert_eq!(web.post(&format!("/runs/{one}/discard"), &[("csrf", &csrf)]).await.status, 409);
    let released = web.post("/flows/guarded/release", &[("csrf", &csrf)]).await;
    assert!(released.body.contains("Released 60 held run(s) of guarded: 60 succeeded."), "{}", released.body);

    // Flows and health show the engine's figures.
    let flows = web.get("/flows").await;
    assert_eq!(flows.status, 200);
    for part in ["push-contacts", "guarded", "contacts.search_contacts", "polling"] {
        assert!(flows.body.contains(part), "`{part}` on the flows page:\n{}", flows.body);
    }
    let health = web.get("/health").await;
    assert_eq!(health.status, 200);
    assert!(health.body.contains(rig.sb.location_id()) && health.body.contains("writing"), "{}", health.body);
    // The CLI's filters and bulk replay see the same runs, through the running service.
    let (code, out) =
        svc.cli(&["runs", "--touched", &format!("contact:{xss_id}"), "--flow", "push-contacts", "--since", "2h"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 run(s)") && out.contains(&xss_run.to_string()), "{out}");
    let (code, out) = svc.cli(&["replay", "--failed", "--flow", "guarded", "--since", "2h", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 run(s) would be replayed (dry run, nothing sent)"), "{out}");
}

/// The flows page: each flow's schedule, its last poll (time, outcome) and next poll, as
/// `GET /api/flows` has them. The health page: per account, whether its token works (the
/// `lost` account's refresh token is refused by GHL: it needs reconnecting) and its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_show_polls_and_health_shows_each_accounts_token() {
    let rig = start(3, None, true).await;
    let svc = &rig.svc;
    let polled = |name: &'static str| async move {
        let api = api_flows(svc).await;
        api["flows"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .is_some_and(|f| f["last_poll"].is_object() && f["next_poll"].is_string())
    };
    eventually(svc, "push-contacts polled", Duration::from_secs(30), || polled("push-contacts")).await;
    eventually(svc, "lost-account polled", Duration::from_secs(30), || polled("lost-account")).await;
    let mut web = Web::new(&svc.base);
    web.login(ADMIN).await;
    let flows = web.get("/flows").await;
    assert_eq!(flows.status, 200);
    for part in ["Schedule", "Last poll (UTC)", "Next poll (UTC)", "<code>every 1s</code>"] {
        assert!(flows.body.contains(part), "`{part}` on the flows page:\n{}", flows.body);
    }
    let api = api_flows(svc).await;
    let flow = |name: &str| {
        api["flows"].as_array().and_then(|f| f.iter().find(|f| f["name"] == name)).cloned().expect("listed")
    };
    let push = flow("push-contacts");
    assert_eq!(push["schedule"], "every 1s", "{api}");
    assert_eq!(push["last_poll"]["ok"], true, "{api}");
    let lost = flow("lost-account");
    assert_eq!(lost["last_poll"]["ok"], false, "{api}");
    assert!(lost["last_poll"]["error"].as_str().is_some_and(|e| e.contains("reconnect")), "{api}");
    assert!(lost["next_poll"].is_string(), "{api}");
    let row = |name: &str| {
        let at = flows.body.find(&format!(">{name}</a>")).expect("a row");
        flows.body[at..flows.body[at..].find("</tr>").map(|e| at + e).expect("end of row")].to_string()
    };
    let push_row = row("push-contacts");
    assert!(push_row.contains("class=\"status succeeded\">ok</span>") && push_row.contains(" new"), "{push_row}");
    let lost_row = row("lost-account");
    assert!(lost_row.contains("<code>every 1h</code>") && lost_row.contains(">failed</span>"), "{lost_row}");
    let when = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
            .expect("rfc3339")
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    let (last, next) = (when(&lost["last_poll"]["at"]), when(&lost["next_poll"]));
    assert!(lost_row.contains(&last) && lost_row.contains(&next), "last {last}, next {next}: {lost_row}");

    // Health: per account, whether its token works, and its budget.
    let health = web.get("/health").await;
    assert_eq!(health.status, 200);
    let account = |name: &str| {
        let at =
            health.body.find(&format!("<td>{name}</td>")).unwrap_or_else(|| panic!("no {name} in {}", health.body));
        health.body[at..health.body[at..].find("</tr>").map(|e| at + e).expect("end of row")].to_string()
    };
    let main = account("main");
    assert!(main.contains("class=\"status succeeded\">valid</span>"), "{main}");
    let lost = account("lost");
    assert!(lost.contains("class=\"status dead\">needs reconnect</span>") && lost.contains("refresh token"), "{lost}");
}

/// `GET /api/flows` of the running service.
async fn api_flows(svc: &console_support::Service) -> serde_json::Value {
    let res = reqwest::Client::new().get(format!("{}/api/flows", svc.base)).bearer_auth(ADMIN).send().await;
    res.expect("api").json().await.expect("json")
}
