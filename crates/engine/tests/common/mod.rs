//! A sandbox, a real sled store in a temp dir, and an engine wired to both.
#![allow(dead_code)]

use engine::{AccountInfo, Engine, EngineConfig, Metrics};
use sandbox::{Sandbox, SandboxConfig, Seed};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub const TOKEN: &str = "pit-engine-test";

pub struct Harness {
    pub sandbox: Sandbox,
    pub engine: Arc<Engine>,
    pub dir: tempfile::TempDir,
}

pub async fn sandbox(seed: Seed) -> Sandbox {
    let mut config = SandboxConfig::default().with_seed(seed).with_rate_limit(sandbox::RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    Sandbox::start(config).await.expect("sandbox starts")
}

pub fn engine_for(sb: &Sandbox, store_dir: &Path, config: EngineConfig) -> Arc<Engine> {
    let store = store::create_or_open(store_dir, store::Backend::FOR_NEW_STORES).expect("store");
    engine_on(sb, store, config)
}

/// An engine on a store the test opened (a PostgreSQL node, say).
pub fn engine_on(sb: &Sandbox, store: Arc<dyn store::Store>, config: EngineConfig) -> Arc<Engine> {
    let metrics = Arc::new(Metrics::new());
    let client = ghl::Client::builder().observer(metrics.clone()).build().expect("client");
    let account = ghl::Account::new("main", ghl::Credentials::PrivateToken(ghl::Secret::new(TOKEN)))
        .expect("account")
        .with_base_url(&sb.base_url())
        .expect("base url")
        .with_resource(sb.location_id());
    client.add_account(account);
    let catalog = Arc::new(catalog::Catalog::builtin().expect("catalog"));
    let accounts = vec![AccountInfo { name: "main".into(), location_id: sb.location_id().into() }];
    let mut env = BTreeMap::new();
    env.insert("APP".into(), "test".into());
    Engine::new(catalog, client, store, accounts, env, config, metrics)
}

pub fn compile(text: &str) -> flow::CompiledFlow {
    let catalog = catalog::Catalog::builtin().expect("catalog");
    let env = flow::CompileEnv { env: BTreeMap::new(), accounts: vec!["main".into()] };
    let (flow, diags) = flow::load("test.yaml", text, &catalog, &env);
    let errors: Vec<_> = diags.iter().filter(|d| d.severity == flow::Severity::Error).collect();
    assert!(errors.is_empty(), "{}", flow::render_all(&diags));
    flow.expect("compiled")
}

pub fn fast_retries() -> EngineConfig {
    EngineConfig {
        retry_base: std::time::Duration::from_millis(10),
        retry_max: std::time::Duration::from_millis(50),
        max_attempts: 3,
        ..EngineConfig::default()
    }
}

pub async fn harness(seed: Seed, flows: &[&str], config: EngineConfig) -> Harness {
    let sb = sandbox(seed).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), config);
    engine.set_flows(flows.iter().map(|f| compile(f)).collect()).expect("flows load");
    Harness { sandbox: sb, engine, dir }
}

/// A contact as a user would add it in GHL.
pub fn new_contact(sb: &Sandbox, n: usize) -> serde_json::Value {
    sb.insert_record(
        "contacts",
        serde_json::json!({
            "locationId": sb.location_id(),
            "firstName": format!("New{n}"),
            "lastName": "Person",
            "email": format!("new{n}@example.com"),
        }),
    )
    .expect("contact inserted")
}

/// A sandbox whose contact search shows writes `lag` late, as GHL's does.
pub async fn lagging_sandbox(seed: Seed, lag: std::time::Duration) -> Sandbox {
    let mut config = SandboxConfig::default()
        .with_seed(seed)
        .with_rate_limit(sandbox::RateLimitConfig::disabled())
        .with_index_lag(lag);
    config.tokens = vec![TOKEN.into()];
    Sandbox::start(config).await.expect("sandbox starts")
}

/// Requests the sandbox has served for one operation so far.
pub fn requests_for(sb: &Sandbox, op: &str) -> usize {
    sb.requests().iter().filter(|r| r["op"] == op).count()
}
