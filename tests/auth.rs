//! `flowd auth oauth` and `flowd auth check` with the built binary against the sandbox:
//! the test plays the browser (reads the printed install URL, mints a code at the sandbox's
//! admin API, calls the loopback redirect itself).

mod support;

use sandbox::{OAuthClient, RateLimitConfig, Sandbox, SandboxConfig, Seed, OTHER_LOCATION_ID};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const PIT: &str = "pit-auth-test";
const SECRET: &str = "app-secret-auth-test";

async fn sandbox(clients: &[(&str, &[&str])]) -> Sandbox {
    let mut config = SandboxConfig::default().with_seed(Seed::Contacts(3)).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![PIT.into()];
    config.oauth_clients = clients
        .iter()
        .map(|(id, scopes)| OAuthClient {
            client_id: id.to_string(),
            client_secret: SECRET.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
        .collect();
    Sandbox::start(config).await.expect("sandbox")
}

/// A directory with `flowd.yaml` (the given accounts) and task flows for some accounts.
fn setup(sb: &Sandbox, accounts: &str, flow_accounts: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    for account in flow_accounts {
        std::fs::write(dir.path().join("flows").join(format!("{account}.yaml")), task_flow(account)).expect("flow");
    }
    let accounts = accounts.replace("BASE", &sb.base_url()).replace("LOC", sb.location_id());
    std::fs::write(dir.path().join("flowd.yaml"), format!("store: ./data\nflows: ./flows\naccounts:\n{accounts}"))
        .expect("config");
    dir
}

fn task_flow(account: &str) -> String {
    format!(
        r#"name: tasks-{account}
account: {account}
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
  every: 1m
  start: all
steps:
  - id: task
    uses: contacts.create_task
    with: {{ contactId: "{{{{ trigger.id }}}}", title: "Call {{{{ trigger.firstName }}}}", dueDate: "2030-01-01T10:00:00Z", completed: false }}
"#
    )
}

fn oauth_account(name: &str, client_id: &str, refresh_env: Option<&str>) -> String {
    let rt = refresh_env.map(|e| format!("\n      refresh_token: ${{{e}}}")).unwrap_or_default();
    format!(
        "  {name}:\n    location_id: LOC\n    base_url: BASE\n    oauth:\n      client_id: {client_id}\n      client_secret: ${{AUTH_TEST_SECRET}}{rt}\n"
    )
}

fn pit_account(name: &str, token: &str, location: &str) -> String {
    format!("  {name}:\n    location_id: {location}\n    base_url: BASE\n    token: {token}\n")
}

fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(support::flowd_bin());
    c.args(args).current_dir(dir).env("AUTH_TEST_SECRET", SECRET).env_remove("FLOWD_CONFIG").kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

async fn flowd(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = command(dir, args, env).output();
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("flowd finishes").expect("flowd runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

async fn admin(sb: &Sandbox, path: &str, body: Value) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{}/_sandbox/{path}", sb.base_url()))
        .json(&body)
        .send()
        .await
        .expect("admin call");
    assert!(res.status().is_success(), "admin {path}: {}", res.status());
    res.json().await.expect("admin json")
}

fn check_json(o: &Output) -> Vec<Value> {
    let (stdout, stderr) = text(o);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"))
}

fn by_account<'a>(reports: &'a [Value], name: &str) -> &'a Value {
    reports.iter().find(|r| r["account"] == name).unwrap_or_else(|| panic!("no report for {name}: {reports:?}"))
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_connects_through_the_loopback_redirect_and_run_uses_the_stored_tokens() {
    let scopes: &[&str] = &["contacts.readonly", "contacts.write", "locations.readonly"];
    let sb = sandbox(&[("app-e2e", scopes)]).await;
    let dir = setup(&sb, &oauth_account("oa", "app-e2e", None), &["oa"]);
    let authorize = format!("{}/oauth/chooselocation", sb.base_url());
    let mut child = command(
        dir.path(),
        &[
            "auth",
            "oauth",
            "--account",
            "oa",
            "--config",
            "flowd.yaml",
            "--authorize-url",
            &authorize,
            "--timeout",
            "60s",
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("flowd starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the install URL is printed in time")
            .expect("stdout readable")
            .unwrap_or_else(|| panic!("flowd exited before printing the URL:\n{printed}"));
        printed.push_str(&line);
        printed.push('\n');
        if let Some(u) = line.trim().strip_prefix(&authorize) {
            break reqwest::Url::parse(&format!("{authorize}{u}")).expect("a URL");
        }
    };
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "app-e2e");
    let asked: Vec<&str> = q["scope"].split(' ').collect();
    assert_eq!(asked, scopes, "the flow's scopes plus locations.readonly");
    let redirect = &q["redirect_uri"];
    assert!(redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/oauth/callback"), "{redirect}");
    let state = &q["state"];

    // The consent screen: GHL issues a code and redirects the browser.
    let code = admin(&sb, "oauth/codes", json!({ "client_id": "app-e2e", "location_id": sb.location_id() })).await;
    let code = code["code"].as_str().expect("code");
    let http = reqwest::Client::new();
    let forged = http.get(redirect).query(&[("code", "forged"), ("state", "not-ours")]).send().await.expect("get");
    assert_eq!(forged.status().as_u16(), 400, "a redirect with another state is ignored");
    let res = http.get(redirect).query(&[("code", code), ("state", state)]).send().await.expect("redirect");
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.text().await.expect("body").contains("is connected"));

    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").expect("status");
    while let Ok(Some(line)) = lines.next_line().await {
        printed.push_str(&line);
        printed.push('\n');
    }
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).await.expect("stderr");
    assert!(status.success(), "{printed}\n{stderr}");
    assert!(printed.contains("Connected account `oa`"), "{printed}");
    assert!(printed.contains(&format!("location:   {}", sb.location_id())), "{printed}");
    assert!(printed.contains("scopes:     contacts.readonly contacts.write locations.readonly"), "{printed}");

    // The tokens are in the store, and were never printed.
    {
        let store = store::open(store_path(dir.path())).expect("store");
        let tokens = store.get_tokens("oa").expect("read").expect("tokens stored");
        for key in ["access_token", "refresh_token"] {
            let secret = tokens[key].as_str().expect("a token");
            assert!(!secret.is_empty() && !printed.contains(secret) && !stderr.contains(secret), "{key} printed");
        }
    }

    // `flowd run --once` works with the connected account: one task per contact.
    let out = flowd(dir.path(), &["run", "--once", "--config", "flowd.yaml"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(sb.records("tasks").len(), 3, "{stdout}");

    // And `auth check` finds it healthy with every scope its flow needs.
    let out = flowd(dir.path(), &["auth", "check", "--config", "flowd.yaml"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("oa: ok (OAuth, location"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_working_invalid_and_forbidden_private_tokens() {
    let sb = sandbox(&[]).await;
    let accounts = [
        pit_account("good", PIT, "LOC"),
        pit_account("bad", "pit-revoked", "LOC"),
        pit_account("elsewhere", PIT, OTHER_LOCATION_ID),
    ]
    .concat();
    let dir = setup(&sb, &accounts, &["good"]);

    let out = flowd(dir.path(), &["auth", "check", "--config", "flowd.yaml", "--json"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("2 of 3 account(s) need attention"), "{stderr}");
    let reports = check_json(&out);
    let good = by_account(&reports, "good");
    assert_eq!(good["status"], "ok", "{good}");
    assert_eq!(good["location_name"], "Sandbox Demo Location");
    assert_eq!(good["credentials"], "private_token");
    assert!(good["scopes_needed"]["contacts.write"].to_string().contains("tasks-good"), "{good}");
    assert!(good["notes"].to_string().contains("does not tell its scopes"), "{good}");
    let bad = by_account(&reports, "bad");
    assert_eq!(bad["status"], "invalid_token", "{bad}");
    assert!(bad["detail"].as_str().unwrap_or_default().contains("401"), "{bad}");
    assert_eq!(by_account(&reports, "elsewhere")["status"], "forbidden");

    // One account, as text; the token never appears.
    let out = flowd(dir.path(), &["auth", "check", "--config", "flowd.yaml", "--account", "good"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("good: ok (Private Integration token, location"), "{stdout}");
    assert!(!stdout.contains(PIT) && !stderr.contains(PIT));
    // A PIT-only check does not need (or create) the store.
    assert!(!store_path(dir.path()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_reconnect_needed_and_missing_scopes_and_code_reconnects() {
    let sb = sandbox(&[("app-full", &[]), ("app-narrow", &["contacts.readonly", "locations.readonly"])]).await;
    // A refresh token that was already used elsewhere: rotated away.
    let spent = sb.mint_refresh_token("app-full", "Location", None).expect("refresh token");
    let res = reqwest::Client::new()
        .post(format!("{}/oauth/token", sb.base_url()))
        .form(&[
            ("client_id", "app-full"),
            ("client_secret", SECRET),
            ("grant_type", "refresh_token"),
            ("refresh_token", &spent),
        ])
        .send()
        .await
        .expect("refresh");
    assert!(res.status().is_success());
    let narrow = sb.mint_refresh_token("app-narrow", "Location", None).expect("refresh token");
    let accounts = [
        oauth_account("rotated", "app-full", Some("RT_ROTATED")),
        oauth_account("narrow", "app-narrow", Some("RT_NARROW")),
    ]
    .concat();
    let dir = setup(&sb, &accounts, &["rotated", "narrow"]);
    let env = [("RT_ROTATED", spent.as_str()), ("RT_NARROW", narrow.as_str())];

    let out = flowd(dir.path(), &["auth", "check", "--config", "flowd.yaml", "--json"], &env).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let reports = check_json(&out);
    let rotated = by_account(&reports, "rotated");
    assert_eq!(rotated["status"], "reconnect_needed", "{rotated}");
    assert!(rotated["detail"].as_str().unwrap_or_default().contains("flowd auth oauth --account rotated"));
    let n = by_account(&reports, "narrow");
    assert_eq!(n["status"], "missing_scopes", "{n}");
    assert_eq!(n["scopes_missing"], json!(["contacts.write"]));
    assert_eq!(n["scopes_granted"], json!(["contacts.readonly", "locations.readonly"]));
    assert_eq!(n["scopes_needed"]["contacts.write"], json!(["tasks-narrow"]));
    for t in [&spent, &narrow] {
        assert!(!text(&out).0.contains(t.as_str()));
    }

    // The text report says the same, and the narrow grant's rotated tokens were kept.
    let out = flowd(dir.path(), &["auth", "check", "--config", "flowd.yaml"], &env).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("rotated: reconnect needed (OAuth"), "{stdout}");
    assert!(stdout.contains("narrow: missing scopes (OAuth"), "{stdout}");
    assert!(stdout.contains("missing scope contacts.write, needed by flow `tasks-narrow`"), "{stdout}");

    // Reconnecting with a code (the --no-wait path) fixes the rotated account.
    let code = admin(&sb, "oauth/codes", json!({ "client_id": "app-full" })).await;
    let code = code["code"].as_str().expect("code");
    let args = ["auth", "oauth", "--config", "flowd.yaml", "--account", "rotated", "--code", code];
    let out = flowd(dir.path(), &args, &env).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Connected account `rotated`"), "{stdout}");
    // The same code again: single use, a clear message.
    let out = flowd(dir.path(), &args, &env).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("exchanging the authorization code for account `rotated` failed"), "{stderr}");
    let out = flowd(dir.path(), &["auth", "check", "--config", "flowd.yaml", "--account", "rotated"], &env).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_message_and_exit_2() {
    let sb = sandbox(&[("app", &[])]).await;
    let accounts = [pit_account("pit", PIT, "LOC"), oauth_account("oa", "app", None)].concat();
    let dir = setup(&sb, &accounts, &[]);
    let cases: &[(&[&str], &str)] = &[
        (&["auth", "oauth", "--config", "flowd.yaml", "--account", "nope"], "no account `nope` (accounts: oa, pit)"),
        (&["auth", "oauth", "--config", "flowd.yaml", "--account", "pit"], "uses a Private Integration token"),
        (&["auth", "oauth", "--config", "flowd.yaml", "--account", "oa", "--no-wait"], "--no-wait needs a fixed"),
        (
            &["auth", "oauth", "--config", "flowd.yaml", "--account", "oa", "--redirect-uri", "https://app.test/cb"],
            "add --no-wait",
        ),
        (&["auth", "check", "--config", "flowd.yaml", "--account", "nope"], "no account `nope`"),
        (&["auth", "check", "--config", "missing.yaml"], "cannot read missing.yaml"),
    ];
    for (args, expected) in cases {
        let out = flowd(dir.path(), args, &[]).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}\n{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // --no-wait with a fixed redirect prints the URL and how to finish, then exits.
    let out = flowd(
        dir.path(),
        &["auth", "oauth", "--config", "flowd.yaml", "--account", "oa", "--no-wait", "--redirect-port", "8799"],
        &[],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("https://marketplace.gohighlevel.com/v2/oauth/chooselocation?response_type=code"));
    assert!(stdout.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A8799%2Foauth%2Fcallback"), "{stdout}");
    assert!(stdout.contains("--code CODE"), "{stdout}");

    // While a service holds the store: PIT accounts are still checked, OAuth ones are
    // explained (not refreshed from here), and connecting says to stop the service.
    let held = store::create_or_open(store_path(dir.path()), store::Backend::FOR_NEW_STORES).expect("store");
    let out = flowd(dir.path(), &["auth", "check", "--config", "flowd.yaml"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("pit: ok"), "{stdout}");
    assert!(stdout.contains("oa: not checked (OAuth"), "{stdout}");
    assert!(stdout.contains("is in use by a running flowd"), "{stdout}");
    let out = flowd(dir.path(), &["auth", "oauth", "--config", "flowd.yaml", "--account", "oa"], &[]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("stop it, connect the account, and start it again"), "{stderr}");
    drop(held);
}
