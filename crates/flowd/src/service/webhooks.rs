//! The GHL webhook receiver of `flowd run`, on its own listener (the one endpoint that
//! faces the internet), and the engine task that turns what it stores into runs.

use crate::config::webhooks::Webhooks;
use engine::Engine;
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// How long open deliveries may take to finish after a shutdown signal.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Receiver {
    server: JoinHandle<()>,
    processor: JoinHandle<()>,
}

impl Receiver {
    pub async fn join(self) {
        let _ = self.server.await;
        let _ = self.processor.await;
    }
}

pub async fn start(
    config: &Webhooks,
    engine: &Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Receiver> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for webhooks on {}: {e}", config.listen))?;
    let metrics = Arc::new(webhooks::WebhookMetrics::default());
    engine.metrics().register_with(|r| metrics.register(r));
    let wake = Arc::new(Notify::new());
    let receiver = webhooks::Receiver {
        verifier: config.verifier.clone(),
        store: engine.store().clone(),
        metrics,
        wake: wake.clone(),
    };
    // Events stored by an earlier process are picked up by the processor's first pass.
    let processor = engine.start_webhooks(wake, shutdown.clone());
    // The app's `trigger.http` routes share the listener that faces the internet.
    let app = webhooks::router(receiver, &config.path).merge(super::inbound::router(engine));
    tracing::info!(listen = %config.listen, path = %config.path, "receiving GHL webhooks");
    let limits = super::listener::Limits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        request_timeout: config.request_timeout,
    };
    let server = tokio::spawn(super::listener::serve(listener, app, limits, shutdown, DRAIN));
    Ok(Receiver { server, processor })
}
