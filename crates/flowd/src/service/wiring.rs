//! From a resolved config to a running engine: store, GHL client, accounts.

use crate::config::{Config, Credentials};
use crate::exit::UserError;
use engine::{AccountInfo, Engine, EngineConfig, Metrics, StoreTokens};
use std::sync::Arc;

pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn store::Store>> {
    let store = store::create_or_open(&config.store, config.store_backend).map_err(|e| match e {
        store::StoreError::Locked { .. } => UserError::new(format!(
            "the store {} is in use by another flowd process (only one may run per store)",
            config.store.display()
        )),
        other => UserError::new(format!("cannot open the store {}: {other}", config.store.display())),
    })?;
    Ok(store)
}

pub fn build_engine(config: &Config, catalog: Arc<catalog::Catalog>) -> anyhow::Result<Arc<Engine>> {
    build_engine_on(config, catalog, open_store(config)?)
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
    let client = ghl::Client::builder()
        .config(client_config)
        .observer(metrics.clone())
        .token_store(Arc::new(StoreTokens(store.clone())))
        .build()?;
    let mut accounts = Vec::new();
    for (name, a) in &config.accounts {
        let credentials = match &a.credentials {
            Credentials::PrivateToken(t) => ghl::Credentials::PrivateToken(ghl::Secret::new(t.clone())),
            Credentials::OAuth { client_id, client_secret, refresh_token } => {
                // A refresh token from the config seeds the store once; after that the
                // rotated pair in the store is the truth.
                if let Some(rt) = refresh_token {
                    seed_refresh_token(store.as_ref(), name, &a.location_id, rt)?;
                }
                ghl::Credentials::OAuth {
                    app: ghl::OAuthApp {
                        client_id: client_id.clone(),
                        client_secret: ghl::Secret::new(client_secret.clone()),
                    },
                    user_type: Some("Location".into()),
                }
            }
        };
        let mut account = ghl::Account::new(name.clone(), credentials)?.with_resource(a.location_id.clone());
        if let Some(url) = &a.base_url {
            account = account.with_base_url(url)?;
        }
        client.add_account(account);
        accounts.push(AccountInfo { name: name.clone(), location_id: a.location_id.clone() });
    }
    let engine_config = EngineConfig {
        concurrency: config.concurrency,
        poll_concurrency: config.poll_concurrency,
        http_allow_hosts: config.http_allow_hosts.clone(),
        http_allow_private: config.http_allow_private,
        http_max_redirects: config.http_max_redirects as usize,
        http_max_response_bytes: config.http_max_response_bytes,
        retry_base: config.retry.base,
        retry_max: config.retry.max,
        max_attempts: config.retry.attempts.max(1),
        ..EngineConfig::default()
    };
    Ok(Engine::new(catalog, client, store, accounts, crate::flows::process_env(), engine_config, metrics))
}

/// A refresh token written in the config seeds the store once (the first connection);
/// later rotations live in the store only.
pub fn seed_refresh_token(store: &dyn store::Store, name: &str, location_id: &str, rt: &str) -> anyhow::Result<()> {
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
