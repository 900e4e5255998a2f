//! Three cluster nodes (each its own PostgreSQL store handle and GHL client) and 200
//! concurrent callers with an expired OAuth token: one refresh across the cluster, and every
//! node uses the rotated pair the refresher committed (GHL's refresh tokens work once).
//!
//! Needs `FLOWD_TEST_POSTGRES` (README, "Tests"): fails without it under CI=true.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use engine::StoreTokens;
use ghl::{Account, Client, ClientConfig, Credentials, OAuthApp, RateLimit, Request, Secret, TokenSet};
use sandbox::{OAuthClient, RateLimitConfig, Sandbox, SandboxConfig};
use serde_json::Value;
use store::{NodeOptions, PgOptions, PgStore, Store};

const CLIENT_ID: &str = "app-1";
const CLIENT_SECRET: &str = "app-1-secret";

fn pg_url() -> Option<String> {
    match std::env::var("FLOWD_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and FLOWD_TEST_POSTGRES is not set: this test needs a PostgreSQL database")
        }
        _ => {
            eprintln!("not run: needs FLOWD_TEST_POSTGRES=postgres://… (README: `.ci/with-postgres cargo test`)");
            None
        }
    }
}

struct Schema(String, String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = PgStore::drop_schema(&self.0, &self.1);
    }
}

fn client(sb: &Sandbox, store: Arc<dyn Store>) -> Client {
    let app = OAuthApp { client_id: CLIENT_ID.into(), client_secret: Secret::new(CLIENT_SECRET) };
    let account = Account::new("oauth", Credentials::OAuth { app, user_type: Some("Location".into()) })
        .and_then(|a| a.with_base_url(&sb.base_url()))
        .expect("account")
        .with_resource(sb.location_id());
    let config = ClientConfig {
        rate_limit: RateLimit { adapt_to_headers: false, ..RateLimit::per(100_000, Duration::from_secs(1)) },
        ..ClientConfig::default()
    };
    let client = Client::builder().config(config).token_store(Arc::new(StoreTokens(store))).build().expect("client");
    client.add_account(account);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_callers_on_three_nodes_with_an_expired_token_cause_one_refresh() {
    let Some(url) = pg_url() else { return };
    let sb =
        Sandbox::start(SandboxConfig::default().with_rate_limit(RateLimitConfig::disabled())).await.expect("sandbox");
    sb.register_oauth_client(OAuthClient {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        scopes: vec![],
    });
    let schema = format!("flowd_refresh_{}", uuid_like());
    let _cleanup = Schema(url.clone(), schema.clone());
    let nodes: Vec<Arc<dyn Store>> = (0..3)
        .map(|n| {
            let options = PgOptions {
                schema: Some(schema.clone()),
                node: Some(NodeOptions { name: format!("node{n}"), lease_ttl: Duration::from_secs(30), polls: true }),
                ..PgOptions::new(&url)
            };
            let s: Arc<dyn Store> = Arc::new(PgStore::connect(&options, store::pg::Create::Yes).expect("node"));
            s
        })
        .collect();
    let refresh = sb.mint_refresh_token(CLIENT_ID, "Location", None).expect("refresh token");
    let expired = TokenSet {
        access_token: Secret::new("expired-access-token"),
        refresh_token: Some(Secret::new(refresh)),
        expires_at: Utc::now() - chrono::Duration::hours(1),
        scope: None,
        user_type: Some("Location".into()),
        location_id: Some(sb.location_id().into()),
        company_id: None,
    };
    nodes[0].put_tokens("oauth", &serde_json::to_value(&expired).expect("json")).expect("seed");
    let clients: Vec<Client> = nodes.iter().map(|s| client(&sb, s.clone())).collect();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = clients[i % 3].clone();
        let req = Request::get("/locations/{locationId}").path_param("locationId", sb.location_id());
        tasks.push(tokio::spawn(async move { c.json("oauth", &req).await }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.expect("task") {
            failed.push(e.to_string());
        }
    }
    assert!(failed.is_empty(), "{} of 200 calls failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    let refreshes: Vec<Value> =
        sb.requests().into_iter().filter(|e| e.get("path").and_then(Value::as_str) == Some("/oauth/token")).collect();
    assert_eq!(refreshes.len(), 1, "one refresh across the three nodes: {refreshes:?}");
    let stored: TokenSet =
        serde_json::from_value(nodes[2].get_tokens("oauth").expect("read").expect("tokens")).expect("decode");
    assert!(stored.expires_at > Utc::now(), "the rotated pair is what the store holds");
}

fn uuid_like() -> String {
    format!("{}_{}", std::process::id(), Utc::now().timestamp_micros())
}
