//! The service configuration (`flowd.yaml`): where state and flows live, what to listen
//! on, and the GHL accounts with their credentials given by reference.
//!
//! Secrets are never written into flows. In the config they are referenced: `${ENV_VAR}`
//! (expanded here, the only crate that reads the environment) or a `*_file` path whose
//! contents are the secret. A literal secret in the config is accepted with a warning.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod webhooks;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// A directory for the embedded store, or a `postgres://user@host/db` URL (password by
    /// reference: `store_password` or `store_password_file`).
    #[serde(default = "default_store", deserialize_with = "store_location")]
    pub store: StoreLocation,
    /// The PostgreSQL password (`${PGPASSWORD}`), for a `postgres://` store.
    #[serde(default)]
    pub store_password: Option<String>,
    /// A file holding the PostgreSQL password.
    #[serde(default)]
    pub store_password_file: Option<PathBuf>,
    /// The embedded database a new store is created with (`fjall` or `sled`); an existing
    /// store keeps the one it was created with.
    #[serde(default = "default_store_backend")]
    pub store_backend: store::Backend,
    #[serde(default = "default_flows")]
    pub flows: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_concurrency", deserialize_with = "bounded::usize::<_, 1, 1024>")]
    pub concurrency: usize,
    /// Scheduled polls in progress at once per account (more wait their turn).
    #[serde(default = "default_poll_concurrency", deserialize_with = "bounded::usize::<_, 1, 64>")]
    pub poll_concurrency: usize,
    /// Bearer token for the HTTP API (`/api/...`); without it the API is off.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Hosts `http.request` steps may call; empty means any (with a public address).
    #[serde(default)]
    pub http_allow_hosts: Vec<String>,
    /// Lets `http.request` call loopback, private and link-local addresses (an app on this
    /// host or network); refused by default, after DNS resolution.
    #[serde(default)]
    pub http_allow_private: bool,
    /// Redirects an `http.request` follows, every hop checked like the first URL; 0 (the
    /// default) follows none.
    #[serde(default, deserialize_with = "bounded::u32::<_, 0, 10>")]
    pub http_max_redirects: u32,
    /// The largest `http.request` response body read (decompressed); a larger one fails
    /// the step.
    #[serde(
        default = "default_http_max_response",
        deserialize_with = "bounded::usize::<_, 1024, { 64 * 1024 * 1024 }>"
    )]
    pub http_max_response_bytes: usize,
    /// Entries the read cache of `cache:` GET steps keeps at most (docs/inbound.md).
    #[serde(default = "default_read_cache_entries", deserialize_with = "bounded::usize::<_, 1, 10_000_000>")]
    pub read_cache_entries: usize,
    /// Catalog extension files.
    #[serde(default)]
    pub catalog_dir: Option<PathBuf>,
    #[serde(default)]
    pub accounts: BTreeMap<String, RawAccount>,
    /// Requests per window flowd allows itself per location (GHL's: 100 per 10 s and
    /// 200,000 a day); flowd also follows the limits GHL announces in its headers.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// How long to wait for in-flight steps on shutdown.
    #[serde(default = "default_shutdown", deserialize_with = "bounded::duration::<_, 0, HOUR>")]
    pub shutdown_timeout: Duration,
    /// Longest a GHL request (body included) may take before it counts as failed.
    #[serde(default = "default_request_timeout", deserialize_with = "bounded::duration::<_, 100, HOUR>")]
    pub request_timeout: Duration,
    /// How failed runs are retried.
    #[serde(default)]
    pub retry: RawRetry,
    /// The GHL webhook receiver; off when absent.
    #[serde(default)]
    pub webhooks: Option<webhooks::RawWebhooks>,
    /// This node, when several share a `postgres://` store (docs/operating.md).
    #[serde(default)]
    pub cluster: Option<RawCluster>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// The node's name, stable across restarts and unique in the cluster (`${HOSTNAME}`);
    /// default: the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// How long a node's leases and claims last without a heartbeat: a node that dies is
    /// replaced within it.
    #[serde(default = "default_lease", deserialize_with = "bounded::duration::<_, 1_000, HOUR>")]
    pub lease: Duration,
}

fn default_lease() -> Duration {
    store::pg::DEFAULT_LEASE_TTL
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub location_id: String,
    #[serde(default)]
    pub base_url: Option<String>,
    /// A Private Integration token (`${ENV_VAR}` or literal).
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the Private Integration token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub oauth: Option<RawOAuth>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The first refresh token; afterwards the rotated pair lives in the store.
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
}

/// Failed runs (429, 5xx, timeouts) are executed again after `base`, doubling up to
/// `max`, at most `attempts` executions in all; then they are dead (and can be replayed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[serde(default = "default_retry_base", deserialize_with = "bounded::duration::<_, 100, DAY>")]
    pub base: Duration,
    #[serde(default = "default_retry_max", deserialize_with = "bounded::duration::<_, 100, { 7 * DAY }>")]
    pub max: Duration,
    #[serde(default = "default_retry_attempts", deserialize_with = "bounded::u32::<_, 1, 100>")]
    pub attempts: u32,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry { base: default_retry_base(), max: default_retry_max(), attempts: default_retry_attempts() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    #[serde(deserialize_with = "bounded::u32::<_, 1, 100_000>")]
    pub requests: u32,
    #[serde(deserialize_with = "bounded::duration::<_, 1000, HOUR>")]
    pub per: Duration,
    #[serde(default, deserialize_with = "bounded::some_u32::<_, 1, 100_000_000>")]
    pub daily: Option<u32>,
}

/// Milliseconds, for the bounds of durations.
pub(crate) const HOUR: u64 = 3_600_000;
pub(crate) const DAY: u64 = 24 * HOUR;

/// The largest secret file (a token, a key) read: a secret is a few hundred bytes, and a
/// path such as /dev/zero must not be read without end.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The largest config file read.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Why [`read_capped`] failed.
enum ReadFailed {
    Io(std::io::Error),
    TooLarge,
}

/// Reads a UTF-8 file of at most `max` bytes; larger is an error, without reading past it.
fn read_capped(path: &Path, max: u64) -> Result<String, ReadFailed> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(ReadFailed::Io)?;
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text).map_err(ReadFailed::Io)?;
    if text.len() as u64 > max {
        return Err(ReadFailed::TooLarge);
    }
    Ok(text)
}

/// [`read_capped`] with its failure as a message naming the file.
pub(crate) fn read_limited(path: &Path, max: u64) -> Result<String, String> {
    read_capped(path, max).map_err(|e| match e {
        ReadFailed::Io(e) => format!("cannot read {}: {e}", path.display()),
        ReadFailed::TooLarge => format!("{} is larger than {} KiB", path.display(), max / 1024),
    })
}

/// What `store:` names: a directory or a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Dir(PathBuf),
    /// A `postgres://` URL without a password.
    Postgres(String),
}

/// A configuration with every reference resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The embedded store's directory (unused when `postgres` is set).
    pub store: PathBuf,
    /// The PostgreSQL store, when `store:` is a `postgres://` URL.
    pub postgres: Option<store::PgOptions>,
    pub store_backend: store::Backend,
    pub flows: PathBuf,
    pub listen: SocketAddr,
    pub concurrency: usize,
    pub poll_concurrency: usize,
    pub admin_token: Option<String>,
    pub http_allow_hosts: Vec<String>,
    pub http_allow_private: bool,
    pub http_max_redirects: u32,
    pub http_max_response_bytes: usize,
    pub read_cache_entries: usize,
    pub catalog_dir: Option<PathBuf>,
    pub accounts: BTreeMap<String, Account>,
    pub rate_limit: Option<RawRateLimit>,
    pub shutdown_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RawRetry,
    pub webhooks: Option<webhooks::Webhooks>,
    /// This node of a cluster: set for every `postgres://` store (see [`Config::node_store`]).
    pub node: Option<store::NodeOptions>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub location_id: String,
    pub base_url: Option<String>,
    pub credentials: Credentials,
}

#[derive(Clone)]
pub enum Credentials {
    PrivateToken(String),
    OAuth { client_id: String, client_secret: String, refresh_token: Option<String> },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::PrivateToken(_) => f.write_str("PrivateToken(<redacted>)"),
            Credentials::OAuth { client_id, .. } => write!(f, "OAuth {{ client_id: {client_id:?}, .. }}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: String, line: u64, column: u64, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Reads and resolves a config file. `env` looks up environment variables (injected so
/// tests need not touch the process environment).
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let text = read_capped(path, MAX_CONFIG_FILE).map_err(|e| match e {
        ReadFailed::Io(source) => ConfigError::Read { path: path.display().to_string(), source },
        ReadFailed::TooLarge => ConfigError::Invalid {
            path: path.display().to_string(),
            message: format!("a config is at most {} KiB", MAX_CONFIG_FILE / 1024),
        },
    })?;
    let raw: RawConfig = serde_saphyr::from_str(&text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        let message = e.to_string();
        let message = message.lines().next().unwrap_or_default();
        let message = message.strip_prefix("error: ").unwrap_or(message);
        let message = match message.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
            Some((_, m)) => m,
            None => message,
        };
        ConfigError::Syntax { path: path.display().to_string(), line, column, message: message.to_string() }
    })?;
    resolve(path, raw, env)
}

fn resolve(path: &Path, raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let invalid = |message: String| ConfigError::Invalid { path: path.display().to_string(), message };
    let mut warnings = Vec::new();
    let rel = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };

    let listen: SocketAddr = raw
        .listen
        .parse()
        .map_err(|_| invalid(format!("listen: `{}` is not an address like 127.0.0.1:8686", raw.listen)))?;
    if !listen.ip().is_loopback() {
        warnings.push(format!(
            "listen: {listen} is not a loopback address: /metrics, /healthz and /readyz (no token) and the /api (admin_token) are reachable from the network"
        ));
    }
    let secret =
        |what: &str, value: &Option<String>, file: &Option<PathBuf>, warnings: &mut Vec<String>| match (value, file) {
            (Some(_), Some(_)) => Err(invalid(format!("{what}: give either the value or the `_file`, not both"))),
            (Some(v), None) => {
                if !v.contains("${") {
                    warnings.push(format!("{what} is written in the config; prefer ${{ENV_VAR}} or a `_file`"));
                }
                expand(v, env).map(Some).map_err(|m| invalid(format!("{what}: {m}")))
            }
            (None, Some(f)) => {
                let f = rel(f);
                read_limited(&f, MAX_SECRET_FILE)
                    .map(|s| Some(s.trim().to_string()))
                    .map_err(|e| invalid(format!("{what}: {e}")))
            }
            (None, None) => Ok(None),
        };

    let mut accounts = BTreeMap::new();
    for (name, a) in raw.accounts {
        let what = |field: &str| format!("accounts.{name}.{field}");
        let token = secret(&what("token"), &a.token, &a.token_file, &mut warnings)?;
        let credentials = match (token, a.oauth) {
            (Some(_), Some(_)) => return Err(invalid(format!("accounts.{name}: give `token` or `oauth`, not both"))),
            (Some(t), None) if t.is_empty() => return Err(invalid(format!("{} is empty", what("token")))),
            (Some(t), None) => Credentials::PrivateToken(t),
            (None, Some(o)) => {
                let client_secret =
                    secret(&what("oauth.client_secret"), &o.client_secret, &o.client_secret_file, &mut warnings)?
                        .ok_or_else(|| invalid(format!("{} is missing", what("oauth.client_secret"))))?;
                let refresh_token =
                    secret(&what("oauth.refresh_token"), &o.refresh_token, &o.refresh_token_file, &mut warnings)?;
                Credentials::OAuth { client_id: o.client_id, client_secret, refresh_token }
            }
            (None, None) => {
                return Err(invalid(format!(
                    "accounts.{name}: credentials missing: give `token: ${{GHL_TOKEN}}`, `token_file` or `oauth`"
                )))
            }
        };
        if let Some(url) = &a.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(format!("{}: `{url}` is not an http(s) URL", what("base_url"))));
            }
        }
        accounts.insert(name.clone(), Account { location_id: a.location_id, base_url: a.base_url, credentials });
    }
    let webhooks = raw
        .webhooks
        .as_ref()
        .map(|w| webhooks::resolve(w, base, listen, env, &mut warnings))
        .transpose()
        .map_err(invalid)?;
    let admin_token = match &raw.admin_token {
        Some(t) => Some(expand(t, env).map_err(|m| invalid(format!("admin_token: {m}")))?),
        None => None,
    };
    let store_password = secret("store_password", &raw.store_password, &raw.store_password_file, &mut warnings)?;
    let (store_dir, postgres) = match &raw.store {
        StoreLocation::Dir(d) => {
            if store_password.is_some() {
                return Err(invalid("store_password: the store is a directory, not a PostgreSQL URL".into()));
            }
            (rel(d), None)
        }
        StoreLocation::Postgres(url) => (
            rel(&default_store_dir()),
            Some(store::PgOptions { password: store_password, ..store::PgOptions::new(url) }),
        ),
    };
    let node = match (&postgres, &raw.cluster) {
        (None, Some(_)) => {
            return Err(invalid("cluster: nodes share a `postgres://` store; this `store:` is a directory".into()))
        }
        (None, None) => None,
        (Some(_), cluster) => {
            let cluster = cluster.clone().unwrap_or(RawCluster { node: None, lease: default_lease() });
            let name = match &cluster.node {
                Some(n) => expand(n, env).map_err(|m| invalid(format!("cluster.node: {m}")))?,
                None => gethostname::gethostname().to_string_lossy().into_owned(),
            };
            if name.is_empty()
                || name.len() > 100
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(format!("cluster.node: {name:?}: use 1 to 100 letters, digits, `-`, `_` or `.`")));
            }
            Some(store::NodeOptions { name, lease_ttl: cluster.lease, polls: true })
        }
    };
    Ok(Config {
        path: path.to_path_buf(),
        store: store_dir,
        postgres,
        store_backend: raw.store_backend,
        flows: rel(&raw.flows),
        listen,
        concurrency: raw.concurrency,
        poll_concurrency: raw.poll_concurrency,
        admin_token,
        http_allow_hosts: raw.http_allow_hosts,
        http_allow_private: raw.http_allow_private,
        http_max_redirects: raw.http_max_redirects,
        http_max_response_bytes: raw.http_max_response_bytes,
        read_cache_entries: raw.read_cache_entries,
        catalog_dir: raw.catalog_dir.map(|d| rel(&d)),
        accounts,
        rate_limit: raw.rate_limit,
        shutdown_timeout: raw.shutdown_timeout,
        request_timeout: raw.request_timeout,
        retry: raw.retry,
        webhooks,
        node,
        warnings,
    })
}

impl Config {
    /// The PostgreSQL options for a process that executes runs: a cluster node. The service
    /// is the node named in the config; any other command (`flowd replay`, `flowd run
    /// --once`) is a node of its own, named after the config's and `role`, so that it never
    /// supersedes the service running beside it.
    pub fn node_store(&self, role: Option<&str>) -> Option<store::PgOptions> {
        let mut pg = self.postgres.clone()?;
        let mut node = self.node.clone()?;
        if let Some(role) = role {
            node.name = format!("{}.{role}-{}", node.name, std::process::id());
            // `--once` polls what it gets a lease on; the other commands only execute runs.
            node.polls = role == "once";
        }
        pg.application_name = format!("flowd {}", node.name);
        pg.node = Some(node);
        Some(pg)
    }

    /// The store as messages name it: its directory, or its URL (never with a password).
    pub fn store_name(&self) -> String {
        match &self.postgres {
            Some(pg) => store::pg::redacted_url(&pg.url),
            None => self.store.display().to_string(),
        }
    }
}

/// Expands `${NAME}` references; an unset variable is an error, not an empty string.
pub fn expand(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in `{value}`"));
        };
        let name = &after[..end];
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable `{name}` is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn default_read_cache_entries() -> usize {
    engine::EngineConfig::default().read_cache_entries
}
fn default_http_max_response() -> usize {
    engine::EngineConfig::default().http_max_response_bytes
}
fn default_store() -> StoreLocation {
    StoreLocation::Dir(default_store_dir())
}
fn default_store_dir() -> PathBuf {
    PathBuf::from("./flowd-data")
}
fn default_store_backend() -> store::Backend {
    store::Backend::FOR_NEW_STORES
}
fn default_flows() -> PathBuf {
    PathBuf::from("./flows")
}
fn default_listen() -> String {
    "127.0.0.1:8686".into()
}
fn default_concurrency() -> usize {
    16
}
fn default_poll_concurrency() -> usize {
    engine::EngineConfig::default().poll_concurrency
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_retry_base() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(3600)
}
fn default_retry_attempts() -> u32 {
    5
}
fn default_shutdown() -> Duration {
    Duration::from_secs(10)
}

/// The store's directory, or a `postgres://` URL. Another scheme is refused (a URL taken
/// as a relative directory name would put the store somewhere nobody expects), and so is a
/// password inside the URL: it would be in the config in clear, and passwords come by
/// reference (`store_password: ${PGPASSWORD}` or `store_password_file`).
fn store_location<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StoreLocation, D::Error> {
    let s = String::deserialize(d)?;
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(StoreLocation::Dir(PathBuf::from(s)));
    };
    if scheme != "postgres" && scheme != "postgresql" {
        return Err(serde::de::Error::custom(format!(
            "`{scheme}://…` is a URL flowd cannot use: `store` is a directory for the embedded database, or a postgres:// URL"
        )));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':')) {
        return Err(serde::de::Error::custom(
            "the store URL holds a password: remove it and give `store_password: ${PGPASSWORD}` or `store_password_file`",
        ));
    }
    if s.contains("password=") {
        return Err(serde::de::Error::custom(
            "the store URL holds a password parameter: give `store_password: ${PGPASSWORD}` or `store_password_file`",
        ));
    }
    Ok(StoreLocation::Postgres(s))
}

/// Numbers and durations within bounds, checked as the YAML is read so that a value out
/// of range is reported at its line and column.
mod bounded {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    fn within<'de, D: Deserializer<'de>>(v: u64, min: u64, max: u64) -> Result<u64, D::Error> {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(serde::de::Error::custom(format!("{v} is out of range: give {min} to {max}")))
        }
    }

    pub fn usize<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(d: D) -> Result<usize, D::Error> {
        let v = within::<D>(u64::deserialize(d)?, MIN, MAX)?;
        usize::try_from(v).map_err(serde::de::Error::custom)
    }

    pub fn u32<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(d: D) -> Result<u32, D::Error> {
        let v = within::<D>(u64::deserialize(d)?, MIN, MAX)?;
        u32::try_from(v).map_err(serde::de::Error::custom)
    }

    pub fn some_u32<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(d: D) -> Result<Option<u32>, D::Error> {
        u32::<D, MIN, MAX>(d).map(Some)
    }

    /// A duration written as `10s`, `5m`, `1h30m`, between `MIN_MS` and `MAX_MS`.
    pub fn duration<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let v = super::humantime_serde_compat::deserialize(d)?;
        let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            Err(serde::de::Error::custom(format!("{} is out of range: give {} to {}", show(v), show(min), show(max))))
        }
    }
}

/// Durations written as `10s`, `5m`, `1h30m`.
pub(crate) mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration ({e})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "GHL_TOKEN" => Some("pit-123".into()),
            _ => None,
        }
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("flowd.yaml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn resolves_env_references_and_relative_paths() {
        let (dir, path) = write(
            "store: ./data\nflows: ./flows\naccounts:\n  main:\n    location_id: loc_demo\n    base_url: http://127.0.0.1:8787\n    token: ${GHL_TOKEN}\n",
        );
        let c = load(&path, &env).expect("valid");
        assert_eq!(c.store, dir.path().join("./data"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8686");
        assert_eq!(c.poll_concurrency, engine::EngineConfig::default().poll_concurrency);
        assert!(matches!(&c.accounts["main"].credentials, Credentials::PrivateToken(t) if t == "pit-123"));
        assert!(c.warnings.is_empty());
        assert!(!format!("{:?}", c.accounts["main"]).contains("pit-123"));
    }

    #[test]
    fn reports_unset_variables_missing_credentials_and_bad_yaml() {
        let (_d, path) = write("accounts:\n  main:\n    location_id: l\n    token: ${NOPE}\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.ends_with("accounts.main.token: environment variable `NOPE` is not set"), "{e}");

        let (_d, path) = write("accounts:\n  main:\n    location_id: l\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("accounts.main: credentials missing"), "{e}");

        let (_d, path) = write("poll_concurrency: 0\naccounts: {}\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("flowd.yaml:1:19: 0 is out of range: give 1 to 64"), "{e}");

        let (_d, path) = write("listen: 127.0.0.1:8686\nacounts: {}\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("flowd.yaml:2:1: unknown field `acounts`"), "{e}");
    }

    #[test]
    fn http_request_targets_are_closed_by_default_and_listen_off_loopback_is_warned() {
        let (_d, path) = write("accounts: {}\n");
        let c = load(&path, &env).expect("valid");
        assert!(!c.http_allow_private);
        assert_eq!((c.http_max_redirects, c.http_max_response_bytes), (0, 1024 * 1024));
        let (_d, path) = write(
            "listen: 0.0.0.0:8686\nhttp_allow_private: true\nhttp_max_redirects: 3\nhttp_max_response_bytes: 4096\naccounts: {}\n",
        );
        let c = load(&path, &env).expect("valid");
        assert!(c.http_allow_private);
        assert_eq!((c.http_max_redirects, c.http_max_response_bytes), (3, 4096));
        assert!(c.warnings.iter().any(|w| w.contains("0.0.0.0:8686 is not a loopback address")), "{:?}", c.warnings);
        let (_d, path) = write("http_max_redirects: 11\naccounts: {}\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("flowd.yaml:1:21: 11 is out of range: give 0 to 10"), "{e}");
    }

    #[test]
    fn numbers_out_of_range_are_refused_at_their_place() {
        for (yaml, at) in [
            ("concurrency: 18446744073709551615\n", "flowd.yaml:1:14: "),
            ("concurrency: 0\n", "flowd.yaml:1:14: "),
            ("poll_concurrency: 100000\n", "flowd.yaml:1:19: "),
            ("retry:\n  attempts: 4294967295\n", "flowd.yaml:2:13: "),
            ("retry:\n  base: 0s\n", "flowd.yaml:2:9: "),
            ("request_timeout: 100000h\n", "flowd.yaml:1:18: "),
            ("shutdown_timeout: 9999999999s\n", "flowd.yaml:1:19: "),
            ("rate_limit:\n  requests: 0\n  per: 10s\n", "flowd.yaml:2:13: "),
            ("rate_limit:\n  requests: 100\n  per: 0s\n", "flowd.yaml:3:8: "),
            ("rate_limit:\n  requests: 100\n  per: 10s\n  daily: 0\n", "flowd.yaml:4:10: "),
        ] {
            let (_d, path) = write(yaml);
            let e = load(&path, &env).unwrap_err().to_string();
            assert!(e.contains(at) && e.contains("out of range"), "{yaml}: {e}");
        }
        let (_d, path) = write("concurrency: 1024\npoll_concurrency: 64\nretry:\n  attempts: 100\n");
        assert!(load(&path, &env).is_ok());
    }

    /// The example in docs/config.md is a config that loads, as written.
    #[test]
    fn the_documented_example_loads() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md")).expect("doc");
        let start = doc.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
        let block = &doc[start..start + doc[start..].find("```").expect("closed")];
        let (_d, path) = write(block);
        let key = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
        let env = |name: &str| match name {
            "GHL_WEBHOOK_KEY" => Some(key.to_string()),
            "FLOWD_ADMIN_TOKEN" | "GHL_TOKEN" | "GHL_CLIENT_SECRET" | "GHL_REFRESH_TOKEN" => Some(format!("{name}-v")),
            _ => None,
        };
        let c = load(&path, &env).unwrap_or_else(|e| panic!("{e}"));
        let hooks = c.webhooks.expect("webhooks");
        assert_eq!(hooks.path, "/hooks/ghl");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_postgres_store_url_takes_its_password_by_reference() {
        let (_d, path) =
            write("flows: ./flows\nstore: postgres://flowd@db.example/flowd\nstore_password: ${PG_SECRET}\n");
        let env = |k: &str| (k == "PG_SECRET").then(|| "s3cret".to_string());
        let c = load(&path, &env).unwrap_or_else(|e| panic!("{e}"));
        let pg = c.postgres.clone().expect("a postgres store");
        assert_eq!(pg.url, "postgres://flowd@db.example/flowd");
        assert_eq!(pg.password.as_deref(), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "the password never shows");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_store_url_with_a_password_or_another_scheme_is_refused() {
        let (_d, path) = write("flows: ./flows\nstore: postgres://u:pw@db.example/flowd\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("flowd.yaml:2:8: the store URL holds a password"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
        let (_d, path) = write("flows: ./flows\nstore: mysql://db.example/flowd\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("flowd.yaml:2:8: `mysql://…` is a URL flowd cannot use"), "{e}");
    }

    #[test]
    fn secret_files_are_read_up_to_a_limit() {
        let (dir, path) = write("accounts:\n  a:\n    location_id: l\n    token_file: /dev/zero\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("accounts.a.token: /dev/zero is larger than 64 KiB"), "{e}");
        std::fs::write(dir.path().join("big"), "x".repeat(64 * 1024 + 1)).expect("write");
        let (_d2, path) = write(&format!(
            "accounts:\n  a:\n    location_id: l\n    oauth:\n      client_id: c\n      client_secret_file: {}\n",
            dir.path().join("big").display()
        ));
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("larger than 64 KiB"), "{e}");
    }

    #[test]
    fn reads_token_files_and_warns_on_literal_secrets() {
        let (dir, path) = write(
            "accounts:\n  a:\n    location_id: l\n    token_file: tok\n  b:\n    location_id: l\n    token: literal\n",
        );
        std::fs::write(dir.path().join("tok"), "from-file\n").expect("write");
        let c = load(&path, &env).expect("valid");
        assert!(matches!(&c.accounts["a"].credentials, Credentials::PrivateToken(t) if t == "from-file"));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn a_cluster_node_is_named_and_needs_a_postgres_store() {
        let (_d, path) = write("store: postgres://flowd@db/flowd\ncluster:\n  node: ${NODE}\n  lease: 5s\n");
        let named = |n: &str| -> Option<String> { (n == "NODE").then(|| "web-1".into()) };
        let c = load(&path, &named).expect("valid");
        let node = c.node.clone().expect("a node");
        assert_eq!((node.name.as_str(), node.lease_ttl), ("web-1", Duration::from_secs(5)));
        let replay = c.node_store(Some("replay")).and_then(|pg| pg.node).expect("a node of its own");
        assert_eq!(replay.name, format!("web-1.replay-{}", std::process::id()));
        // Without `cluster:`, the host name.
        let (_d, path) = write("store: postgres://flowd@db/flowd\n");
        assert!(!load(&path, &env).expect("valid").node.expect("a node").name.is_empty());
        let (_d, path) = write("store: ./data\ncluster:\n  node: a\n");
        let e = load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("postgres://"), "{e}");
        let (_d, path) = write("store: postgres://flowd@db/flowd\ncluster:\n  node: a/b\n");
        assert!(load(&path, &env).unwrap_err().to_string().contains("cluster.node"));
        let (_d, path) = write("store: postgres://flowd@db/flowd\ncluster:\n  lease: 10ms\n");
        assert!(load(&path, &env).is_err(), "a lease under 1s is refused");
    }

    /// The config the compose example's nodes read loads as written.
    #[test]
    fn the_compose_example_config_loads() {
        let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/compose/flowd.yaml"));
        let text = std::fs::read_to_string(example).expect("packaging/compose/flowd.yaml");
        // The password file is compose's secret mount; here a file of the test's.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pg"), "secret\n").expect("password");
        let text = text.replace("/run/secrets/pg_password", &dir.path().join("pg").display().to_string());
        assert_ne!(text, std::fs::read_to_string(example).unwrap_or_default(), "the example reads the compose secret");
        let path = dir.path().join("flowd.yaml");
        std::fs::write(&path, text).expect("config");
        let vars = |n: &str| -> Option<String> {
            match n {
                "FLOWD_NODE" => Some("flowd-1".into()),
                "GHL_TOKEN" => Some("pit-x".into()),
                "GHL_LOCATION_ID" => Some("loc".into()),
                _ => None,
            }
        };
        let c = load(&path, &vars).expect("the compose config loads");
        assert_eq!(c.node.map(|n| n.name).as_deref(), Some("flowd-1"));
        assert!(c.postgres.is_some());
    }
}
