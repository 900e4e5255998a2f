//! Inbound HTTP triggers (`trigger.http`): the app calls flowd on the webhook listener.
//!
//! Every path not taken by the GHL receiver comes here and is looked up among the loaded
//! flows (a reload adds or drops routes at once). A request is authenticated (bearer
//! token, or HMAC-SHA256 over `timestamp + "." + raw body` within a time window,
//! compared in constant time), its body capped, then stored as a run by the engine
//! **before** any 2xx ([`engine::Engine::accept_inbound`]). Without `respond` the answer
//! is 202 `{run_id}` at once; with it the handler waits for the run and answers with the
//! rendered reply. Every outcome is counted in `flowd_inbound_requests_total{flow,result}`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::Utc;
use engine::{Accepted, Engine};
use flow::{HttpTrigger, Idempotency, InboundAuth};
use hmac::{Hmac, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::sync::Arc;
use subtle::ConstantTimeEq;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    flow: String,
    result: &'static str,
}

#[derive(Clone)]
struct Inbound {
    engine: Arc<Engine>,
    requests: Family<Labels, Counter>,
}

/// A router answering every path with the flow whose `trigger.http.path` it is (404
/// otherwise); merged under the GHL receiver's route, as its fallback.
pub fn router(engine: &Arc<Engine>) -> Router {
    let requests: Family<Labels, Counter> = Family::default();
    engine.metrics().register_with(|r| {
        r.register("inbound_requests", "Requests of the app on `trigger.http` routes, by result", requests.clone())
    });
    Router::new().fallback(handle).with_state(Inbound { engine: engine.clone(), requests })
}

async fn handle(State(s): State<Inbound>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let Some(rt) = s.engine.inbound_flow(&path) else {
        s.count("", "not_found");
        return answer(StatusCode::NOT_FOUND, json!({"error": format!("no flow serves {path}")}));
    };
    let Some(http) = rt.trigger.http.as_ref() else {
        return answer(StatusCode::NOT_FOUND, json!({"error": format!("no flow serves {path}")}));
    };
    let (result, response) = serve(&s.engine, &rt, http, req).await;
    s.count(&rt.name, result);
    response
}

impl Inbound {
    fn count(&self, flow: &str, result: &'static str) {
        self.requests.get_or_create(&Labels { flow: flow.to_string(), result }).inc();
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], format!("{body}\n")).into_response()
}

async fn serve(
    engine: &Arc<Engine>,
    rt: &Arc<engine::FlowRuntime>,
    http: &HttpTrigger,
    req: Request,
) -> (&'static str, Response) {
    if req.method() != Method::POST && req.method() != Method::GET {
        return ("bad_method", answer(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "use POST (or GET)"})));
    }
    let too_large = || {
        (
            "too_large",
            answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("the body is over {} bytes", http.max_body)}),
            ),
        )
    };
    let declared =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > http.max_body as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(Body::new(body), http.max_body).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    if let Err((result, why)) = authenticate(&http.auth, &parts.headers, &body) {
        tracing::warn!(flow = %rt.name, reason = result, "inbound request refused: {why}");
        return (result, answer(StatusCode::UNAUTHORIZED, json!({"error": why})));
    }
    let item = match item(http, &parts.headers, parts.uri.query(), &body) {
        Ok(item) => item,
        Err(why) => return ("malformed", answer(StatusCode::BAD_REQUEST, json!({"error": why}))),
    };
    let key = match idempotency_key(http, rt, &parts.headers, &item) {
        Ok(k) => k,
        Err(why) => return ("malformed", answer(StatusCode::BAD_REQUEST, json!({"error": why}))),
    };
    let accepted = match engine.accept_inbound(rt, key, item).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(flow = %rt.name, error = %e, "inbound request could not be stored");
            let mut r = answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "could not be stored; try again"}));
            r.headers_mut().insert("retry-after", HeaderValue::from_static("5"));
            return ("store_failed", r);
        }
    };
    let (id, handle) = match accepted {
        Accepted::Duplicate => return ("duplicate", answer(StatusCode::OK, json!({"duplicate": true}))),
        Accepted::Run { id, handle } => (id, handle),
    };
    let Some(respond) = &http.respond else {
        drop(handle);
        return ("accepted", answer(StatusCode::ACCEPTED, json!({"run_id": id.to_string()})));
    };
    let reply = engine.inbound_reply(rt, respond, id, handle).await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let result = match reply.status {
        504 => "timeout",
        s if s >= 500 => "run_failed",
        _ => "replied",
    };
    let mut response = answer(status, reply.body);
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(n, v);
        }
    }
    (result, response)
}

/// `Err((metric result, why))` when the request does not prove it is the app's.
fn authenticate(auth: &InboundAuth, headers: &HeaderMap, body: &[u8]) -> Result<(), (&'static str, String)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    match auth {
        InboundAuth::Bearer { token } => {
            let given = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            let Some(token) = token else {
                return Err(("unauthorized", "the route's token is not configured".into()));
            };
            match given {
                Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
                Some(_) => Err(("unauthorized", "wrong bearer token".into())),
                None => Err(("unauthorized", "missing `Authorization: Bearer <token>`".into())),
            }
        }
        InboundAuth::Hmac { secret, header: sig_header, timestamp_header, tolerance } => {
            let Some(secret) = secret else {
                return Err(("unauthorized", "the route's secret is not configured".into()));
            };
            let Some(ts) = header(timestamp_header) else {
                return Err(("unauthorized", format!("missing `{timestamp_header}`")));
            };
            let Ok(secs) = ts.parse::<i64>() else {
                return Err(("unauthorized", format!("`{timestamp_header}` must be Unix seconds")));
            };
            let skew = (Utc::now().timestamp() - secs).unsigned_abs();
            if skew > tolerance.as_secs() {
                return Err(("stale", format!("`{timestamp_header}` is {skew}s from now; more than the tolerance")));
            }
            let Some(sig) = header(sig_header) else {
                return Err(("unauthorized", format!("missing `{sig_header}`")));
            };
            let sig = sig.strip_prefix("sha256=").unwrap_or(sig);
            let Ok(given) = hex::decode(sig) else {
                return Err(("unauthorized", format!("`{sig_header}` must be hex")));
            };
            let Some(expected) = hmac_sha256(secret.as_bytes(), &[ts.as_bytes(), b".", body]) else {
                return Err(("unauthorized", "the route's secret cannot key an HMAC".into()));
            };
            if bool::from(given.ct_eq(&expected)) {
                Ok(())
            } else {
                Err(("unauthorized", "bad signature".into()))
            }
        }
    }
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`, by RustCrypto's `hmac`.
/// `None` only if the key were refused, which HMAC never does (any length is a key).
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    for p in parts {
        mac.update(p);
    }
    Some(mac.finalize().into_bytes().into())
}

/// The trigger item: `{body, query, headers}`. A body is JSON (or empty: `null`).
fn item(http: &HttpTrigger, headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> Result<Value, String> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| format!("the body must be JSON: {e}"))?
    };
    let query: Map<String, Value> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let copied: Map<String, Value> = http
        .headers
        .iter()
        .filter_map(|h| headers.get(h).and_then(|v| v.to_str().ok()).map(|v| (h.clone(), Value::String(v.into()))))
        .collect();
    Ok(json!({"body": body, "query": query, "headers": copied}))
}

fn idempotency_key(
    http: &HttpTrigger,
    rt: &engine::FlowRuntime,
    headers: &HeaderMap,
    item: &Value,
) -> Result<Option<String>, String> {
    match &http.idempotency {
        None => Ok(None),
        Some(Idempotency::Header(h)) => Ok(headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string)),
        Some(Idempotency::Key(t)) => {
            let ctx =
                flow::context(&rt.name, item.clone(), rt.account_ctx.clone(), &Default::default(), "", Utc::now());
            match t.render(&ctx) {
                Ok(Value::Null) => Ok(None),
                Ok(Value::String(s)) if s.is_empty() => Ok(None),
                Ok(Value::String(s)) => Ok(Some(s)),
                Ok(other) => Ok(Some(other.to_string())),
                Err(e) => Err(format!("cannot render the idempotency key: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test cases 1 and 6 (a key longer than the block).
    #[test]
    fn hmac_matches_rfc_4231() {
        let t1 = hmac_sha256(&[0x0b; 20], &[b"Hi ", b"There"]).expect("hmac");
        assert_eq!(hex::encode(t1), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        let t6 = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]).expect("hmac");
        assert_eq!(hex::encode(t6), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }
}
