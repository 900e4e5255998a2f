use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use ghl::{
    Account, Client, Credentials, Error, MemoryTokenStore, OAuthApp, Request, Secret, TokenSet, TokenState, TokenStore,
    TokenStoreError,
};
use sandbox::{OAuthClient, Sandbox, SandboxConfig};

use crate::common::*;

const CLIENT_ID: &str = "app-1";
const CLIENT_SECRET: &str = "app-1-secret";

async fn oauth_sandbox() -> Sandbox {
    let sb = start_unlimited(SandboxConfig::default()).await;
    sb.register_oauth_client(OAuthClient {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        scopes: vec![],
    });
    sb
}

fn oauth_account(sb: &Sandbox, id: &str) -> Account {
    let app = OAuthApp { client_id: CLIENT_ID.into(), client_secret: Secret::new(CLIENT_SECRET) };
    Account::new(id, Credentials::OAuth { app, user_type: Some("Location".into()) })
        .and_then(|a| a.with_base_url(&sb.base_url()))
        .expect("account")
        .with_resource(sb.location_id())
}

/// A grant whose access token is unknown to the sandbox; `expires_in` decides whether the
/// client knows it is stale (negative) or learns it from a 401.
fn grant(sb: &Sandbox, expires_in: chrono::Duration) -> TokenSet {
    let refresh = sb.mint_refresh_token(CLIENT_ID, "Location", None).expect("refresh token minted");
    TokenSet {
        access_token: Secret::new("stale-access-token"),
        refresh_token: Some(Secret::new(refresh)),
        expires_at: Utc::now() + expires_in,
        scope: None,
        user_type: Some("Location".into()),
        location_id: Some(sb.location_id().into()),
        company_id: None,
    }
}

fn client_with(store: Arc<dyn TokenStore>, rec: Arc<Recorder>) -> Client {
    Client::builder().config(quick_config()).token_store(store).observer(rec).build().expect("client")
}

fn get_location(sb: &Sandbox) -> Request {
    Request::get("/locations/{locationId}").path_param("locationId", sb.location_id())
}

fn refreshes(sb: &Sandbox) -> usize {
    logged(sb, "/oauth/token").len()
}

async fn concurrent_gets(client: &Client, sb: &Sandbox, n: usize) -> Vec<Result<serde_json::Value, Error>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (c, r) = (client.clone(), get_location(sb));
        tasks.push(tokio::spawn(async move { c.json("oauth", &r).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_callers_with_an_expired_token_cause_one_refresh() {
    let sb = oauth_sandbox().await;
    let store = Arc::new(MemoryTokenStore::new());
    store.save("oauth", &grant(&sb, chrono::Duration::hours(-1))).expect("seed store");
    let rec = Arc::new(Recorder::default());
    let client = client_with(store.clone(), rec.clone());
    client.add_account(oauth_account(&sb, "oauth"));

    for r in concurrent_gets(&client, &sb, 200).await {
        r.expect("every caller succeeds");
    }
    assert_eq!(refreshes(&sb), 1, "exactly one refresh reached the sandbox");
    assert_eq!(store.saves(), 2, "the seed plus the one refreshed pair");
    assert_eq!(rec.counters.snapshot().token_refreshes, 1);
    let saved = store.load("oauth").expect("load").expect("saved");
    assert_ne!(saved.access_token.expose(), "stale-access-token");
    assert!(logged(&sb, "/locations").iter().all(|e| status_of(e) == 200), "no caller used the stale token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_rejected_with_401_share_one_refresh() {
    let sb = oauth_sandbox().await;
    let store = Arc::new(MemoryTokenStore::new());
    // Valid by the clock, refused by the server.
    store.save("oauth", &grant(&sb, chrono::Duration::hours(5))).expect("seed store");
    let client = client_with(store.clone(), Arc::new(Recorder::default()));
    client.add_account(oauth_account(&sb, "oauth"));

    for r in concurrent_gets(&client, &sb, 100).await {
        r.expect("every caller succeeds after the refresh");
    }
    assert_eq!(refreshes(&sb), 1);
    let statuses: Vec<u64> = logged(&sb, "/locations").iter().map(status_of).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 100);
    assert!(statuses.iter().filter(|s| **s == 401).count() <= 100, "each caller re-tried at most once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_rotated_refresh_token_says_reconnect_needed() {
    let sb = oauth_sandbox().await;
    let seed = grant(&sb, chrono::Duration::hours(-1));

    // "Process A" refreshes and rotates the pair.
    let store_a = Arc::new(MemoryTokenStore::new());
    store_a.save("oauth", &seed).expect("seed");
    let a = client_with(store_a.clone(), Arc::new(Recorder::default()));
    a.add_account(oauth_account(&sb, "oauth"));
    a.json("oauth", &get_location(&sb)).await.expect("A refreshes and succeeds");

    // "Process B" kept a copy of the old pair in a store A never wrote to.
    let store_b = Arc::new(MemoryTokenStore::new());
    store_b.save("oauth", &seed).expect("seed");
    let b = client_with(store_b, Arc::new(Recorder::default()));
    b.add_account(oauth_account(&sb, "oauth"));
    let err = b.json("oauth", &get_location(&sb)).await.expect_err("old refresh token is dead");
    assert!(err.is_reconnect_needed(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("must be reconnected"), "{text}");
    assert!(!text.contains(seed.refresh_token.as_ref().map(Secret::expose).unwrap_or("-")), "{text}");

    // Asking again does not hammer GHL with the dead token.
    let before = refreshes(&sb);
    let again = b.json("oauth", &get_location(&sb)).await.expect_err("still dead");
    assert!(again.is_reconnect_needed());
    assert_eq!(refreshes(&sb), before);

    // A still works: its pair is current.
    a.json("oauth", &get_location(&sb)).await.expect("A unaffected");
}

/// Returns a stale snapshot on its first load, as if another process saved a new pair just
/// after this one read the store.
struct StaleOnce {
    inner: MemoryTokenStore,
    stale: Mutex<Option<TokenSet>>,
    stale_served: AtomicBool,
}

impl TokenStore for StaleOnce {
    fn load(&self, account: &str) -> Result<Option<TokenSet>, TokenStoreError> {
        if !self.stale_served.swap(true, Ordering::SeqCst) {
            return Ok(self.stale.lock().expect("lock").clone());
        }
        self.inner.load(account)
    }
    fn save(&self, account: &str, tokens: &TokenSet) -> Result<(), TokenStoreError> {
        self.inner.save(account, tokens)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_rereads_the_store_before_giving_up() {
    let sb = oauth_sandbox().await;
    let seed = grant(&sb, chrono::Duration::hours(-1));
    let shared = Arc::new(StaleOnce {
        inner: MemoryTokenStore::new(),
        stale: Mutex::new(Some(seed.clone())),
        stale_served: AtomicBool::new(false),
    });
    shared.inner.save("oauth", &seed).expect("seed");

    // Another process rotates the pair through the same durable store.
    let other = client_with(Arc::new(ForwardStore(shared.clone())), Arc::new(Recorder::default()));
    shared.stale_served.store(true, Ordering::SeqCst);
    other.add_account(oauth_account(&sb, "oauth"));
    other.json("oauth", &get_location(&sb)).await.expect("other process refreshes");
    shared.stale_served.store(false, Ordering::SeqCst);

    // This process read the store before that and tries the spent refresh token.
    let client = client_with(shared.clone(), Arc::new(Recorder::default()));
    client.add_account(oauth_account(&sb, "oauth"));
    client.json("oauth", &get_location(&sb)).await.expect("recovers with the stored pair");
    let statuses: Vec<u64> = logged(&sb, "/oauth/token").iter().map(status_of).collect();
    assert_eq!(statuses, vec![200, 400], "one refresh, one invalid_grant, no second refresh");
}

struct ForwardStore(Arc<StaleOnce>);
impl TokenStore for ForwardStore {
    fn load(&self, account: &str) -> Result<Option<TokenSet>, TokenStoreError> {
        self.0.load(account)
    }
    fn save(&self, account: &str, tokens: &TokenSet) -> Result<(), TokenStoreError> {
        self.0.save(account, tokens)
    }
}

/// A store whose saves fail: a refreshed pair must not be used before it is durable.
struct BrokenSaves(MemoryTokenStore);
impl TokenStore for BrokenSaves {
    fn load(&self, account: &str) -> Result<Option<TokenSet>, TokenStoreError> {
        self.0.load(account)
    }
    fn save(&self, _: &str, _: &TokenSet) -> Result<(), TokenStoreError> {
        Err(TokenStoreError("disk full".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_not_used_before_they_are_saved() {
    let sb = oauth_sandbox().await;
    let store = BrokenSaves(MemoryTokenStore::new());
    store.0.save("oauth", &grant(&sb, chrono::Duration::hours(-1))).expect("seed");
    let client = client_with(Arc::new(store), Arc::new(Recorder::default()));
    client.add_account(oauth_account(&sb, "oauth"));
    let err = client.json("oauth", &get_location(&sb)).await.expect_err("cannot persist");
    assert!(matches!(err, Error::TokenStore(_)), "{err:?}");
    assert!(logged(&sb, "/locations").is_empty(), "the unsaved token was never sent");
    // The pair GHL issued is held, not refreshed again (that would burn it).
    let again = client.json("oauth", &get_location(&sb)).await.expect_err("still cannot persist");
    assert!(matches!(again, Error::TokenStore(_)));
    assert_eq!(refreshes(&sb), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_connected_account_needs_reconnecting() {
    let sb = oauth_sandbox().await;
    let client = client_with(Arc::new(MemoryTokenStore::new()), Arc::new(Recorder::default()));
    client.add_account(oauth_account(&sb, "oauth"));
    let err = client.json("oauth", &get_location(&sb)).await.expect_err("no tokens");
    assert!(err.is_reconnect_needed(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agency_token_is_exchanged_for_a_location_token() {
    let sb = oauth_sandbox().await;
    let client = client_with(Arc::new(MemoryTokenStore::new()), Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, "agency", "pit-sandbox-agency-token"));
    let t = client.location_token("agency", sb.company_id(), sb.location_id()).await.expect("exchange");
    assert_eq!(t.location_id.as_deref(), Some(sb.location_id()));

    let loc = Account::new(
        "via-agency",
        Credentials::FromAgency {
            agency_account: "agency".into(),
            company_id: sb.company_id().into(),
            location_id: sb.location_id().into(),
        },
    )
    .and_then(|a| a.with_base_url(&sb.base_url()))
    .expect("account")
    .with_resource(sb.location_id());
    client.add_account(loc);
    let body = client.json("via-agency", &get_location(&sb)).await.expect("location call with exchanged token");
    assert!(body.get("location").is_some());
    // Cached: a second call does not exchange again.
    client.json("via-agency", &get_location(&sb)).await.expect("second call");
    assert_eq!(logged(&sb, "/oauth/locationToken").len(), 2, "one explicit, one for the account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_access_token_is_refreshed_before_use() {
    let sb = oauth_sandbox().await;
    sb.set_access_token_ttl(Duration::from_secs(3600));
    let store = Arc::new(MemoryTokenStore::new());
    store.save("oauth", &grant(&sb, chrono::Duration::seconds(60))).expect("seed");
    let client = client_with(store.clone(), Arc::new(Recorder::default()));
    client.add_account(oauth_account(&sb, "oauth"));
    client.json("oauth", &get_location(&sb)).await.expect("ok");
    // Expiring within the skew: refreshed up front, not after a 401.
    assert_eq!(refreshes(&sb), 1);
    assert!(logged(&sb, "/locations").iter().all(|e| status_of(e) == 200));
    client.json("oauth", &get_location(&sb)).await.expect("ok");
    assert_eq!(refreshes(&sb), 1, "the new token lasts an hour");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_health_says_which_account_needs_reconnecting() {
    let sb = oauth_sandbox().await;
    let store = Arc::new(MemoryTokenStore::new());
    store.save("live", &grant(&sb, chrono::Duration::hours(-1))).expect("seed live");
    let mut revoked = grant(&sb, chrono::Duration::hours(-1));
    revoked.refresh_token = Some(Secret::new("a-refresh-token-ghl-revoked"));
    store.save("revoked", &revoked).expect("seed revoked");
    let client = client_with(store, Arc::new(Recorder::default()));
    client.add_account(oauth_account(&sb, "live"));
    client.add_account(oauth_account(&sb, "revoked"));
    client.add_account(pit_account(&sb, "pit", "a-token-ghl-never-issued"));
    let states =
        |client: &Client| client.account_health().into_iter().map(|h| (h.account, h.token)).collect::<Vec<_>>();
    assert!(states(&client).iter().all(|(_, t)| *t == TokenState::Unknown), "{:?}", states(&client));

    client.json("live", &get_location(&sb)).await.expect("live refreshes and succeeds");
    let err = client.json("revoked", &get_location(&sb)).await.expect_err("its refresh token is refused");
    assert!(err.is_reconnect_needed(), "{err:?}");
    let err = client.json("pit", &get_location(&sb)).await.expect_err("the token is refused");
    assert_eq!(err.status(), Some(401), "{err:?}");

    let now = states(&client);
    assert_eq!(now[0], ("live".to_string(), TokenState::Valid));
    assert!(
        matches!(&now[1], (a, TokenState::NeedsReconnect { reason }) if a == "pit" && reason.contains("Private Integration token")),
        "{now:?}"
    );
    assert!(
        matches!(&now[2], (a, TokenState::NeedsReconnect { reason }) if a == "revoked" && reason.contains("refresh token")),
        "{now:?}"
    );
    let json = serde_json::to_value(client.account_health()).expect("serialises");
    assert_eq!(json[2]["state"], "needs_reconnect", "{json}");
    assert!(json[0]["checked_at"].is_string(), "{json}");

    // Reconnecting (a fresh grant stored, the account registered again) clears it.
    let fresh = grant(&sb, chrono::Duration::hours(-1));
    let store2 = Arc::new(MemoryTokenStore::new());
    store2.save("revoked", &fresh).expect("seed");
    let client2 = client_with(store2, Arc::new(Recorder::default()));
    client2.add_account(oauth_account(&sb, "revoked"));
    client2.json("revoked", &get_location(&sb)).await.expect("reconnected");
    assert_eq!(states(&client2), vec![("revoked".to_string(), TokenState::Valid)]);
}
