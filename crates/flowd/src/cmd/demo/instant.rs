//! The demo's instant triggers: the sandbox signs and sends GHL webhooks to a receiver
//! on 127.0.0.1, and the engine fires webhook flows as the events land, before any poll.

use super::Totals;
use base64::Engine as _;
use engine::Engine;
use sandbox::{Sandbox, WebhookSettings};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{RunFilter, RunStatus};
use tokio::sync::{watch, Notify};

/// Throw-away key of the demo: the sandbox signs with it, the receiver trusts it.
const DEMO_KEY: [u8; 32] = [0x42; 32];

pub struct Webhooks {
    url: String,
    _stop: watch::Sender<bool>,
    reported: HashSet<store::RunId>,
}

impl Webhooks {
    pub async fn start(sb: &Sandbox, engine: &Arc<Engine>) -> anyhow::Result<Webhooks> {
        let key = ed25519_dalek::SigningKey::from_bytes(&DEMO_KEY);
        let verifier = webhooks::Verifier::new(vec![key.verifying_key()], Vec::new(), Duration::from_secs(300));
        let wake = Arc::new(Notify::new());
        let receiver = webhooks::Receiver {
            verifier: Arc::new(verifier),
            store: engine.store().clone(),
            metrics: Arc::new(webhooks::WebhookMetrics::default()),
            wake: wake.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}{}", listener.local_addr()?, webhooks::DEFAULT_PATH);
        let app = webhooks::router(receiver, webhooks::DEFAULT_PATH);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let (stop, rx) = watch::channel(false);
        drop(engine.start_webhooks(wake, rx));
        let signing_key = base64::engine::general_purpose::STANDARD.encode(DEMO_KEY);
        sb.set_webhooks(WebhookSettings {
            url: Some(url.clone()),
            signing_key: Some(signing_key),
            ..Default::default()
        })?;
        Ok(Webhooks { url, _stop: stop, reported: HashSet::new() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Prints the runs webhooks fired since the last call, once they have finished.
    pub async fn report(&mut self, engine: &Arc<Engine>, totals: &mut Totals) {
        let t = Instant::now();
        let store = engine.store().clone();
        // Webhooks land within milliseconds; give the stragglers a moment.
        let mut runs = Vec::new();
        while t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let pending = store.list_unprocessed_webhooks(1).map(|v| !v.is_empty()).unwrap_or(false);
            runs = store.list_runs(&RunFilter::default()).unwrap_or_default();
            let busy = runs
                .iter()
                .any(|r| !self.reported.contains(&r.id) && matches!(r.status, RunStatus::Pending | RunStatus::Running));
            if !pending && !busy {
                break;
            }
        }
        let hooked: Vec<&store::Run> = runs
            .iter()
            .rev()
            .filter(|r| !self.reported.contains(&r.id))
            // A run a webhook fired carries the event, webhookId and all, as its item.
            .filter(|r| r.item.get("webhookId").is_some())
            .collect();
        if hooked.is_empty() {
            println!("   webhooks: nothing fired");
        }
        for r in hooked {
            self.reported.insert(r.id);
            totals.runs += 1;
            totals.steps += r.steps.len();
            let ok = r.status == RunStatus::Succeeded;
            if !ok {
                totals.failures += 1;
            }
            let steps: Vec<&str> = r.steps.iter().map(|s| s.step.as_str()).collect();
            let what = r.item["type"].as_str().unwrap_or("event");
            println!(
                "   {} {} run {} (webhook {what}): {} [{}]",
                if ok { "ok  " } else { "FAIL" },
                r.flow,
                r.id,
                steps.join(" -> "),
                r.status
            );
        }
    }
}
