//! What an `http.request` step may reach, against real servers on 127.0.0.1: local
//! addresses are refused by default (literal or by name, after DNS resolution) and
//! reached with `http_allow_private`; redirects are not followed unless enabled, and then
//! every hop is checked; a response body is read up to the cap, decompressed.

mod common;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::any;
use common::*;
use sandbox::Seed;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use store::{NewRun, RunStatus};

/// The user's app: `/hook` counts hits, `/to-target` redirects to `/hook` at the URL
/// given, `/big` answers 2 MiB, `/bomb` a small gzip body that decodes to 8 MiB.
async fn app(redirect_to: Option<String>) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let target = redirect_to.unwrap_or_else(|| format!("http://127.0.0.1:{port}/hook"));
    let bomb = {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b'a'; 8 * 1024 * 1024]).expect("gzip");
        gz.finish().expect("gzip")
    };
    let app = axum::Router::new()
        .route(
            "/hook",
            any(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(serde_json::json!({"ok": true})) }
            }),
        )
        .route("/to-target", any(move || async move { axum::response::Redirect::temporary(&target) }))
        .route("/big", any(|| async { "x".repeat(2 * 1024 * 1024) }))
        .route(
            "/bomb",
            any(move || {
                let bomb = bomb.clone();
                async move {
                    ([(header::CONTENT_ENCODING, "gzip"), (header::CONTENT_TYPE, "text/plain")], bomb).into_response()
                }
            }),
        );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("127.0.0.1:{port}"), hits, server)
}

fn flow(method: &str, url: &str) -> String {
    format!(
        r#"
name: push
account: main
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
steps:
  - id: push
    uses: http.request
    with: {{ method: {method}, url: "{url}", json: {{ id: "{{{{ trigger.id }}}}" }} }}
"#
    )
}

/// Executes one run of `flow` under `config`: its status and error.
async fn run(config: engine::EngineConfig, flow_text: &str) -> (RunStatus, String, store::Run) {
    let h = harness(Seed::Contacts(1), &[flow_text], config).await;
    let contact = h.sandbox.records("contacts").pop().expect("contact");
    let id = h.engine.store().create_run(&NewRun::new("push", contact)).expect("run");
    let status = h.engine.execute(id).await.expect("execute");
    let run = h.engine.store().get_run(id).expect("store").expect("run");
    (status, run.error.clone().unwrap_or_default(), run)
}

fn local() -> engine::EngineConfig {
    engine::EngineConfig { http_allow_private: true, ..fast_retries() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_addresses_are_refused_by_default_and_reached_with_the_opt_in() {
    let (addr, hits, server) = app(None).await;
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default().to_string();
    for url in [
        format!("http://{addr}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://0.0.0.0:{port}/hook"),
    ] {
        let (status, error, run) = run(fast_retries(), &flow("POST", &url)).await;
        assert_eq!(status, RunStatus::Dead, "{url}: {error}");
        assert!(error.contains("http_allow_private"), "{url}: {error}");
        assert!(run.steps.iter().all(|s| s.status != store::StepStatus::InDoubt), "{url}: {run:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the local app");

    for url in [format!("http://{addr}/hook"), format!("http://localhost:{port}/hook")] {
        let (status, error, _) = run(local(), &flow("POST", &url)).await;
        assert_eq!(status, RunStatus::Succeeded, "{url}: {error}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_unless_enabled_and_every_hop_is_checked() {
    // An app on `localhost` that redirects to 127.0.0.1, which the allow-list does not name.
    let (target, target_hits, target_server) = app(None).await;
    let (origin, _, origin_server) = app(Some(format!("http://{target}/hook"))).await;
    let origin_port = origin.rsplit_once(':').map(|(_, p)| p).unwrap_or_default().to_string();
    let start = format!("http://localhost:{origin_port}/to-target");

    // Redirects off (the default): the step gets the redirect, and is dead.
    let (status, error, _) = run(local(), &flow("GET", &start)).await;
    assert_eq!(status, RunStatus::Dead, "{error}");
    assert!(error.contains("307") && error.contains("http_max_redirects"), "{error}");
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);

    // Redirects on, allow-list `localhost`: the hop to 127.0.0.1 is refused.
    let listed = engine::EngineConfig { http_allow_hosts: vec!["localhost".into()], http_max_redirects: 5, ..local() };
    let (status, error, _) = run(listed, &flow("GET", &start)).await;
    assert_eq!(status, RunStatus::Dead, "{error}");
    assert!(error.contains("redirected to") && error.contains("http_allow_hosts"), "{error}");
    assert_eq!(target_hits.load(Ordering::SeqCst), 0, "the redirect's target was never reached");

    // Redirects on and every host allowed: followed to the target.
    let open = engine::EngineConfig { http_max_redirects: 5, ..local() };
    let (status, error, _) = run(open, &flow("GET", &start)).await;
    assert_eq!(status, RunStatus::Succeeded, "{error}");
    assert_eq!(target_hits.load(Ordering::SeqCst), 1);
    target_server.abort();
    origin_server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_are_capped_after_decompression() {
    let (addr, _, server) = app(None).await;
    for path in ["big", "bomb"] {
        // A GET can be asked again and would get the same answer: dead.
        let (status, error, run) = run(local(), &flow("GET", &format!("http://{addr}/{path}"))).await;
        assert_eq!(status, RunStatus::Dead, "{path}: {error}");
        assert!(error.contains("larger than 1048576 bytes"), "{path}: {error}");
        let record = serde_json::to_string(&run).expect("json");
        assert!(record.len() < 64 * 1024, "{path}: the body is not in the run record ({} bytes)", record.len());
    }
    // A POST the app answered 200 has acted: in doubt, not dead (a replay would repeat it).
    let (status, error, _) = run(local(), &flow("POST", &format!("http://{addr}/bomb"))).await;
    assert_eq!(status, RunStatus::InDoubt, "{error}");
    // The cap is configurable.
    let roomy = engine::EngineConfig { http_max_response_bytes: 16 * 1024 * 1024, ..local() };
    let (status, error, _) = run(roomy, &flow("GET", &format!("http://{addr}/bomb"))).await;
    assert_eq!(status, RunStatus::Succeeded, "{error}");
    server.abort();
}
