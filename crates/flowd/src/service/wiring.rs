//! From the command line and a resolved config to what the commands use: the config
//! itself, the catalog, the store, the GHL accounts and the engine. Each is made here
//! and only here, so every command follows the same rules: which catalog directory
//! wins, how a store held by another process or missing is reported, how an account's
//! credentials become a GHL account.

use crate::config::{Account, Config, Credentials};
use crate::exit::{Failed, UserError};
use engine::{AccountInfo, Engine, EngineConfig, Metrics, StoreTokens};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads and resolves a config file, `${VAR}` references from the process environment.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(crate::config::load(path, &|k| std::env::var(k).ok())?)
}

/// The catalog a command works with: the built-in operations plus the extension files
/// of `--catalog-dir` (or `FLOWD_CATALOG_DIR`) when given, else of the config's
/// `catalog_dir` when the command reads a config. The command line wins so that one
/// run can try other definitions without editing the config.
pub fn catalog(cli_dir: Option<&Path>, config: Option<&Config>) -> anyhow::Result<catalog::Catalog> {
    let loaded = match cli_dir.or_else(|| config.and_then(|c| c.catalog_dir.as_deref())) {
        Some(dir) => catalog::Catalog::with_extensions(dir),
        None => catalog::Catalog::builtin(),
    };
    loaded.map_err(|e| UserError::new(e.to_string()).into())
}

/// How a command opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// The service and `auth oauth`: a missing store is created (with the config's
    /// `store_backend`).
    CreateIfMissing,
    /// Commands that read what a service recorded: a missing store is an error.
    Existing,
}

/// What opening the store found: the store, or that another process (a running
/// `flowd run`) holds it, which some commands answer by asking that process instead.
pub enum Opened {
    Ready(Arc<dyn store::Store>),
    InUse(StoreInUse),
}

/// Another process holds the store (only one may open it).
#[derive(Debug, Clone)]
pub struct StoreInUse {
    pub path: PathBuf,
}

impl std::fmt::Display for StoreInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the store {} is in use by a running flowd (only one process may open it)", self.path.display())
    }
}

impl Opened {
    /// The store, or a failure that says what to do while another process holds it.
    pub fn or_in_use(self, what_to_do: &str) -> anyhow::Result<Arc<dyn store::Store>> {
        match self {
            Opened::Ready(s) => Ok(s),
            Opened::InUse(in_use) => Err(Failed::new(format!("{in_use}: {what_to_do}")).into()),
        }
    }
}

/// Opens the config's store; a store another process holds is [`Opened::InUse`], every
/// other problem an error ([`store_error`]).
pub fn open_store(config: &Config, how: Open) -> anyhow::Result<Opened> {
    open_store_as(config, how, None)
}

/// As [`open_store`]; a `postgres://` store is opened as the cluster node `node` (see
/// [`Config::node_store`]) when one is given.
pub fn open_store_as(config: &Config, how: Open, node: Option<store::PgOptions>) -> anyhow::Result<Opened> {
    if let Some(pg) = node.as_ref().or(config.postgres.as_ref()) {
        // Any number of processes share a PostgreSQL store: it is never "in use".
        let create = match how {
            Open::CreateIfMissing => store::pg::Create::Yes,
            Open::Existing => store::pg::Create::No,
        };
        return match store::PgStore::connect(pg, create) {
            Ok(s) => Ok(Opened::Ready(Arc::new(s))),
            Err(e) => Err(store_error(config, e)),
        };
    }
    let opened = match how {
        Open::CreateIfMissing => store::create_or_open(&config.store, config.store_backend),
        Open::Existing => store::open(&config.store),
    };
    match opened {
        Ok(s) => Ok(Opened::Ready(s)),
        Err(store::StoreError::Locked { .. }) => Ok(Opened::InUse(StoreInUse { path: config.store.clone() })),
        Err(e) => Err(store_error(config, e)),
    }
}

/// An error from opening (or copying) the config's store, as the user sees it: bad
/// input when the config's `store:` names no store or a directory that is not one, a
/// failure otherwise (in use, damaged, unreadable).
pub fn store_error(config: &Config, e: store::StoreError) -> anyhow::Error {
    match e {
        store::StoreError::Locked { .. } => {
            Failed::new(format!("{}: stop it first", StoreInUse { path: config.store.clone() })).into()
        }
        e @ (store::StoreError::NotFound { .. } | store::StoreError::NotAStore { .. }) => {
            UserError::new(format!("{}: `store:` {e}", config.path.display())).into()
        }
        other => Failed::new(format!("cannot open the store {}: {other}", config.store_name())).into(),
    }
}

/// The GHL account for the config's account `name`: credentials, location, base URL.
pub fn ghl_account(config: &Config, name: &str, a: &Account) -> anyhow::Result<ghl::Account> {
    let credentials = match &a.credentials {
        Credentials::PrivateToken(t) => ghl::Credentials::PrivateToken(ghl::Secret::new(t.clone())),
        Credentials::OAuth { client_id, client_secret, .. } => ghl::Credentials::OAuth {
            app: ghl::OAuthApp { client_id: client_id.clone(), client_secret: ghl::Secret::new(client_secret.clone()) },
            user_type: Some("Location".into()),
        },
    };
    let invalid = |e: ghl::Error| UserError::new(format!("{}: accounts.{name}: {e}", config.path.display()));
    let mut account = ghl::Account::new(name, credentials).map_err(invalid)?.with_resource(a.location_id.clone());
    if let Some(url) = &a.base_url {
        account = account.with_base_url(url).map_err(invalid)?;
    }
    Ok(account)
}

/// Adds the config's account `name` to `client`. With a store, a refresh token written
/// in the config seeds it first (see [`seed_refresh_token`]).
pub fn add_account(
    client: &ghl::Client,
    store: Option<&dyn store::Store>,
    config: &Config,
    name: &str,
    a: &Account,
) -> anyhow::Result<AccountInfo> {
    if let (Some(store), Credentials::OAuth { refresh_token: Some(rt), .. }) = (store, &a.credentials) {
        seed_refresh_token(store, name, &a.location_id, rt)?;
    }
    client.add_account(ghl_account(config, name, a)?);
    Ok(AccountInfo { name: name.to_string(), location_id: a.location_id.clone() })
}

/// The engine of `flowd run`: over the config's store, created if missing; on a
/// `postgres://` store, the config's cluster node (`role` names a command's own node, see
/// [`Config::node_store`]).
pub fn build_engine(
    config: &Config,
    catalog: Arc<catalog::Catalog>,
    role: Option<&str>,
) -> anyhow::Result<Arc<Engine>> {
    let store = open_store_as(config, Open::CreateIfMissing, config.node_store(role))?
        .or_in_use("stop the other process first")?;
    build_engine_on(config, catalog, store)
}

/// An engine over a store that is already open.
pub fn build_engine_on(
    config: &Config,
    catalog: Arc<catalog::Catalog>,
    store: Arc<dyn store::Store>,
) -> anyhow::Result<Arc<Engine>> {
    let metrics = Arc::new(Metrics::new());
    let defaults = ghl::ClientConfig::default();
    let mut client_config = ghl::ClientConfig {
        request_timeout: config.request_timeout,
        // Every run in flight may hold a connection; a smaller idle pool closes the
        // surplus after each request and the next run pays a new connection (and TLS).
        pool_max_idle_per_host: config.concurrency.max(defaults.pool_max_idle_per_host),
        ..defaults
    };
    if let Some(rl) = &config.rate_limit {
        client_config.rate_limit = ghl::RateLimit {
            burst_max: rl.requests,
            burst_interval: rl.per,
            daily_max: rl.daily.unwrap_or(client_config.rate_limit.daily_max),
            ..client_config.rate_limit
        };
    }
    let mut client = ghl::Client::builder()
        .config(client_config)
        .observer(metrics.clone())
        .token_store(Arc::new(StoreTokens(store.clone())));
    // Nodes of a cluster spend each location's budget together (docs/operating.md).
    if store.cluster().is_some() {
        client = client.shared_budget(Arc::new(engine::StoreBudget(store.clone())));
    }
    let client = client.build()?;
    let mut accounts = Vec::new();
    for (name, a) in &config.accounts {
        accounts.push(add_account(&client, Some(store.as_ref()), config, name, a)?);
    }
    let engine_config = EngineConfig {
        concurrency: config.concurrency,
        poll_concurrency: config.poll_concurrency,
        http_allow_hosts: config.http_allow_hosts.clone(),
        http_allow_private: config.http_allow_private,
        http_max_redirects: config.http_max_redirects as usize,
        http_max_response_bytes: config.http_max_response_bytes,
        read_cache_entries: config.read_cache_entries,
        retry_base: config.retry.base,
        retry_max: config.retry.max,
        max_attempts: config.retry.attempts.max(1),
        ..EngineConfig::default()
    };
    Ok(Engine::new(catalog, client, store, accounts, crate::flows::process_env(), engine_config, metrics))
}

/// A refresh token written in the config seeds the store once (the first connection);
/// later rotations live in the store only.
fn seed_refresh_token(store: &dyn store::Store, name: &str, location_id: &str, rt: &str) -> anyhow::Result<()> {
    if store.get_tokens(name)?.is_none() {
        let seed = ghl::TokenSet {
            access_token: ghl::Secret::new(""),
            refresh_token: Some(ghl::Secret::new(rt)),
            expires_at: chrono::DateTime::UNIX_EPOCH,
            scope: None,
            user_type: Some("Location".into()),
            location_id: Some(location_id.to_string()),
            company_id: None,
        };
        store.put_tokens(name, &serde_json::to_value(&seed)?)?;
    }
    Ok(())
}
