//! A canary secret must appear in no log line and no error, whatever happens.
//!
//! Its own test binary: it installs a global TRACE subscriber that captures everything the
//! client and its HTTP stack log (the sandbox's own logs are filtered out: it is the other
//! side and is not under test here).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use ghl::{
    Account, Client, ClientConfig, Credentials, MemoryTokenStore, OAuthApp, RateLimit, Request, RetryPolicy, Secret,
    TokenSet, TokenStore, TokenStoreError,
};
use sandbox::{FaultRule, FaultSettings, OAuthClient, RateLimitConfig, Sandbox, SandboxConfig};
use tracing_subscriber::EnvFilter;

const CANARY_PIT: &str = "canary-pit-3f9a1c";
const CANARY_SECRET: &str = "canary-secret-77b2e0";
const CANARY_ACCESS: &str = "canary-access-5d41ab";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Remembers every token set saved, so the test can look for the rotated tokens too.
#[derive(Default)]
struct Recording {
    inner: MemoryTokenStore,
    all: Mutex<Vec<TokenSet>>,
}

impl TokenStore for Recording {
    fn load(&self, account: &str) -> Result<Option<TokenSet>, TokenStoreError> {
        self.inner.load(account)
    }
    fn save(&self, account: &str, tokens: &TokenSet) -> Result<(), TokenStoreError> {
        self.all.lock().map_err(|_| TokenStoreError("poisoned".into()))?.push(tokens.clone());
        self.inner.save(account, tokens)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_tokens_never_appear_in_logs_or_errors() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("trace,sandbox=off"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("subscriber");

    let sb = Sandbox::start(
        SandboxConfig { tokens: vec![CANARY_PIT.into()], ..SandboxConfig::default() }
            .with_rate_limit(RateLimitConfig { enabled: true, burst_max: 5, burst_interval_ms: 500, daily_max: 1000 }),
    )
    .await
    .expect("sandbox");
    sb.register_oauth_client(OAuthClient {
        client_id: "app".into(),
        client_secret: CANARY_SECRET.into(),
        scopes: vec![],
    });
    let first_refresh = sb.mint_refresh_token("app", "Location", None).expect("refresh token");

    let store = Arc::new(Recording::default());
    let seed = TokenSet {
        access_token: Secret::new(CANARY_ACCESS),
        refresh_token: Some(Secret::new(first_refresh.clone())),
        expires_at: Utc::now() + chrono::Duration::hours(1),
        scope: None,
        user_type: Some("Location".into()),
        location_id: Some(sb.location_id().into()),
        company_id: None,
    };
    store.inner.save("oauth", &seed).expect("seed");
    let config = ClientConfig {
        retry: RetryPolicy { max_attempts: 4, base: Duration::from_millis(5), cap: Duration::from_millis(20) },
        // Looser than the sandbox so that 429s happen and are logged too.
        rate_limit: RateLimit { adapt_to_headers: false, ..RateLimit::per(1000, Duration::from_secs(1)) },
        ..ClientConfig::default()
    };
    let client = Client::builder().config(config).token_store(store.clone()).build().expect("client");
    let base = sb.base_url();
    let pit = |id: &str, token: &str| {
        Account::new(id, Credentials::PrivateToken(Secret::new(token)))
            .and_then(|a| a.with_base_url(&base))
            .expect("account")
            .with_resource(sb.location_id())
    };
    let app = |secret: &str| OAuthApp { client_id: "app".into(), client_secret: Secret::new(secret) };
    let oauth = |id: &str, secret: &str| {
        Account::new(id, Credentials::OAuth { app: app(secret), user_type: Some("Location".into()) })
            .and_then(|a| a.with_base_url(&base))
            .expect("account")
            .with_resource(sb.location_id())
    };
    client.add_account(pit("pit", CANARY_PIT));
    client.add_account(pit("wrong-pit", &format!("{CANARY_PIT}-wrong")));
    client.add_account(oauth("oauth", CANARY_SECRET));
    client.add_account(oauth("bad-secret", &format!("{CANARY_SECRET}-wrong")));
    store.inner.save("bad-secret", &seed).expect("seed");

    let mut shown = Vec::new();
    let mut record = |r: Result<serde_json::Value, ghl::Error>| {
        if let Err(e) = r {
            shown.push(format!("{e} {e:?}"));
        }
    };
    let loc = Request::get("/locations/{locationId}").path_param("locationId", sb.location_id());
    let missing = Request::get("/contacts/{contactId}").path_param("contactId", "missing");

    // Success, 404, bad token, OAuth refresh after a 401 (the canary access token is unknown
    // to the sandbox), invalid client secret.
    record(client.json("pit", &loc).await);
    record(client.json("pit", &missing).await);
    record(client.json("wrong-pit", &loc).await);
    record(client.json("oauth", &loc).await);
    record(client.json("bad-secret", &loc).await);
    // Faults: 5xx, dropped connections, 429s from bursts.
    sb.set_faults(
        FaultSettings {
            global: FaultRule { error_rate: 0.3, drop_rate: 0.2, ..FaultRule::default() },
            ..FaultSettings::default()
        },
        Some(5),
    );
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (c, r) = (client.clone(), loc.clone());
        let account = if i % 2 == 0 { "pit" } else { "oauth" };
        tasks.push(tokio::spawn(async move { c.json(account, &r).await }));
    }
    for t in tasks {
        record(t.await.expect("task"));
    }
    sb.set_faults(FaultSettings::default(), None);
    // A rotated refresh token reused by a second client: reconnect needed.
    let stale = Arc::new(MemoryTokenStore::new());
    stale
        .save("oauth", &TokenSet { expires_at: Utc::now() - chrono::Duration::hours(1), ..seed.clone() })
        .expect("seed");
    let other = Client::builder().token_store(stale).build().expect("client");
    other.add_account(oauth("oauth", CANARY_SECRET));
    let dead = other.json("oauth", &loc).await;
    assert!(dead.as_ref().is_err_and(ghl::Error::is_reconnect_needed), "{dead:?}");
    record(dead);
    // Debug of everything that holds a secret.
    shown.push(format!("{client:?} {:?} {:?} {seed:?}", client.account("oauth"), client.account("pit")));

    tokio::time::sleep(Duration::from_millis(50)).await;
    let logs = String::from_utf8_lossy(&buffer.0.lock().expect("buffer")).into_owned();
    assert!(logs.lines().count() > 50, "the subscriber captured the client's logs:\n{logs}");
    assert!(logs.contains("GHL response"), "client events are captured");
    assert!(logs.contains("hyper_util") || logs.contains("reqwest"), "the HTTP stack's events are captured");
    assert!(shown.len() > 5, "errors were produced: {shown:?}");

    let mut secrets: Vec<String> = vec![CANARY_PIT.into(), CANARY_SECRET.into(), CANARY_ACCESS.into(), first_refresh];
    for t in store.all.lock().expect("lock").iter() {
        secrets.push(t.access_token.expose().to_owned());
        secrets.extend(t.refresh_token.iter().map(|r| r.expose().to_owned()));
    }
    assert!(secrets.len() >= 6, "refreshes happened: {secrets:?}");
    let everything = format!("{logs}\n{}", shown.join("\n"));
    for s in &secrets {
        assert!(!everything.contains(s.as_str()), "secret {s} leaked");
    }
    // The canaries share a prefix: nothing starting with it may show either.
    assert!(!everything.contains("canary-"), "a canary leaked");
}
