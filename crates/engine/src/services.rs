//! What polls and runs use to do their work, owned by the [`crate::Engine`] and lent to
//! them: the store and its writer, the GHL client, the `http.request` client, the
//! settings, the environment templates see, and the metrics.

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::http_step::Targets;
use crate::metrics::Metrics;
use crate::writer::Writer;
use std::collections::BTreeMap;
use std::sync::Arc;
use store::Store;

pub(crate) struct Services {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) writer: Writer,
    pub(crate) client: ghl::Client,
    /// The `http.request` client, or why it could not be built.
    pub(crate) http: Result<reqwest::Client, String>,
    pub(crate) http_targets: Arc<Targets>,
    pub(crate) config: EngineConfig,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) metrics: Arc<Metrics>,
    /// Results of `cache:` GET steps (see `cache`).
    pub(crate) cache: crate::cache::ReadCache,
    /// Set when the store is shared by a cluster of nodes (see `cluster`).
    pub(crate) cluster: Option<Arc<crate::cluster::ClusterState>>,
}

impl Services {
    pub(crate) fn http(&self) -> Result<&reqwest::Client, &str> {
        self.http.as_ref().map_err(String::as_str)
    }
}

/// Runs store work off the async threads (sled flushes block).
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, EngineError>
where
    F: FnOnce() -> Result<T, EngineError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Join(e.to_string()))?
}
