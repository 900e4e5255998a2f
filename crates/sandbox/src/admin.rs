//! The admin API under `/_sandbox/` (JSON, no auth): inspect requests and counters, reset
//! and seed data, change faults and rate limits at run time, register OAuth clients and
//! mint tokens, and create or change records directly as a user of the GHL UI would.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{OAuthClient, RateLimitConfig};
use crate::error::ApiError;
use crate::faults::FaultSettings;
use crate::handlers::merge;
use crate::seed::{self, Seed};
use crate::server::reseed;
use crate::state::AppState;
use crate::store::{kinds, Record};
use crate::webhooks::{Change, WebhookSettings};

fn reply(status: StatusCode, body: Value) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(e: ApiError) -> Response {
    reply(e.status, e.body("admin"))
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { bytes };
    serde_json::from_slice(text).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SeedBody {
    /// `"demo"`, `"empty"` or a number of contacts.
    #[serde(default)]
    seed: Option<Value>,
}

fn seed_of(v: Option<Value>) -> Result<Option<Seed>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_u64().map(|n| Seed::Contacts(n as usize))),
        Some(Value::String(s)) => s.parse::<Seed>().map(Some).map_err(ApiError::bad_request),
        Some(_) => Err(ApiError::bad_request("seed must be \"demo\", \"empty\" or a number")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FaultBody {
    #[serde(flatten)]
    settings: FaultSettings,
    #[serde(default)]
    rng_seed: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
struct MintBody {
    client_id: String,
    #[serde(default)]
    user_type: Option<String>,
    #[serde(default)]
    location_id: Option<String>,
}

#[derive(Deserialize)]
struct TtlBody {
    seconds: u64,
}

#[derive(Deserialize, Default)]
struct LogQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// Stores a record of `kind`, filling the location, id and timestamps it lacks.
pub fn insert_record(st: &AppState, kind: &str, record: Value) -> Result<Value, ApiError> {
    let kind = st.store.kind(kind).ok_or_else(|| ApiError::not_found(format!("unknown resource kind {kind}")))?;
    let Value::Object(mut r) = record else {
        return Err(ApiError::bad_request("a record must be a JSON object"));
    };
    if !matches!(kind, kinds::LOCATIONS | kinds::COMPANIES | kinds::SNAPSHOTS | kinds::USERS) {
        r.entry("locationId").or_insert(json!(st.location_id));
    }
    let now = st.store.clock.now_iso();
    seed::stamp(kind, &mut r, &now);
    if kind == kinds::CONTACTS {
        crate::handlers::normalise_contact(&mut r);
    }
    let stored = st.store.insert_returning(kind, r);
    st.webhooks.record_changed(kind, Change::Create, &stored, &st.location_id);
    Ok(Value::Object(stored))
}

fn patch_record(st: &AppState, kind: &str, id: &str, fields: Value) -> Result<Value, ApiError> {
    let kind = st.store.kind(kind).ok_or_else(|| ApiError::not_found(format!("unknown resource kind {kind}")))?;
    let Value::Object(fields) = fields else {
        return Err(ApiError::bad_request("a patch must be a JSON object"));
    };
    let now = st.store.clock.now_iso();
    let mut col = st.store.write(kind);
    let r: &mut Record = col.get_mut(id).ok_or_else(|| ApiError::not_found(format!("{kind} {id} not found")))?;
    merge(r, fields);
    if let Some((_, updated)) = seed::stamp_fields(kind) {
        r.insert(updated.into(), json!(now));
    }
    if kind == kinds::CONTACTS {
        crate::handlers::normalise_contact(r);
    }
    let r = r.clone();
    drop(col);
    st.webhooks.record_changed(kind, Change::Update, &r, &st.location_id);
    Ok(Value::Object(r))
}

pub async fn handle(st: Arc<AppState>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path().trim_end_matches('/').to_string();
    let bytes = match axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return error(ApiError::bad_request("body too large")),
    };
    let parts: Vec<&str> = path.trim_start_matches("/_sandbox").trim_start_matches('/').split('/').collect();
    let result = route(&st, &method, &parts, &uri, &bytes);
    match result {
        Ok((status, body)) => reply(status, body),
        Err(e) => error(e),
    }
}

fn route(
    st: &AppState,
    method: &Method,
    parts: &[&str],
    uri: &axum::http::Uri,
    bytes: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let okj = |v: Value| Ok((StatusCode::OK, v));
    match (method.as_str(), parts) {
        ("GET", ["health"]) | ("GET", [""]) => okj(json!({
            "ok": true,
            "operations": st.routes.operations.len(),
            "routes": st.routes.len(),
            "sharedRoutes": st.routes.aliases.iter().map(|(a, b)| json!({ "operation": a, "servedAs": b })).collect::<Vec<_>>(),
            "locationId": st.location_id,
            "companyId": st.company_id,
            "records": st.store.counts(),
        })),
        ("GET", ["operations"]) => okj(Value::Array(
            st.routes
                .operations
                .iter()
                .map(|o| json!({ "key": o.key, "method": o.method.as_str(), "path": o.path, "version": o.version }))
                .collect(),
        )),
        ("GET", ["requests"]) => {
            let q = Query::<LogQuery>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
            let entries = st.log.entries(q.since.unwrap_or(0), q.limit.unwrap_or(1_000));
            okj(json!({ "requests": entries }))
        }
        ("DELETE", ["requests"]) => {
            st.log.clear();
            okj(json!({ "ok": true }))
        }
        ("GET", ["counters"]) => okj(json!({ "counters": st.log.counters() })),
        ("POST", ["reset"]) | ("POST", ["seed"]) => {
            let body: SeedBody = parse(bytes)?;
            let seed = seed_of(body.seed)?.unwrap_or(Seed::Demo);
            reseed(st, seed);
            if parts == ["reset"] {
                st.log.clear();
                st.limiter.reset();
                st.faults.set(FaultSettings::default(), None);
            }
            okj(json!({ "ok": true, "seed": seed.to_string(), "records": st.store.counts() }))
        }
        ("GET", ["faults"]) => okj(serde_json::to_value(st.faults.settings()).unwrap_or(Value::Null)),
        ("PUT", ["faults"]) | ("POST", ["faults"]) => {
            let body: FaultBody = parse(bytes)?;
            st.faults.set(body.settings, body.rng_seed);
            okj(serde_json::to_value(st.faults.settings()).unwrap_or(Value::Null))
        }
        ("DELETE", ["faults"]) => {
            st.faults.set(FaultSettings::default(), None);
            okj(json!({ "ok": true }))
        }
        ("GET", ["ratelimit"]) => okj(serde_json::to_value(st.limiter.config()).unwrap_or(Value::Null)),
        ("PUT", ["ratelimit"]) | ("POST", ["ratelimit"]) => {
            let body: RateLimitConfig = parse(bytes)?;
            st.limiter.set_config(body);
            okj(serde_json::to_value(st.limiter.config()).unwrap_or(Value::Null))
        }
        ("POST", ["oauth", "clients"]) => {
            let client: OAuthClient = parse(bytes)?;
            st.auth.register_client(client.clone());
            Ok((StatusCode::CREATED, json!({ "client_id": client.client_id, "scopes": client.scopes })))
        }
        ("POST", ["oauth", "refresh-tokens"]) => {
            let b: MintBody = parse(bytes)?;
            let t = st.auth.mint_refresh_token(
                &b.client_id,
                b.user_type.as_deref().unwrap_or("Location"),
                b.location_id.as_deref(),
            )?;
            Ok((StatusCode::CREATED, json!({ "refresh_token": t })))
        }
        ("POST", ["oauth", "codes"]) => {
            let b: MintBody = parse(bytes)?;
            let c = st.auth.mint_code(
                &b.client_id,
                b.user_type.as_deref().unwrap_or("Location"),
                b.location_id.as_deref(),
            )?;
            Ok((StatusCode::CREATED, json!({ "code": c })))
        }
        ("PUT", ["oauth", "ttl"]) => {
            let b: TtlBody = parse(bytes)?;
            st.auth.set_access_ttl(Duration::from_secs(b.seconds));
            okj(json!({ "seconds": b.seconds }))
        }
        ("GET", ["records"]) => okj(json!({ "kinds": kinds::ALL, "counts": st.store.counts() })),
        ("GET", ["records", kind]) => {
            let kind =
                st.store.kind(kind).ok_or_else(|| ApiError::not_found(format!("unknown resource kind {kind}")))?;
            let q = Query::<Map<String, Value>>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
            let loc = q.get("locationId").and_then(Value::as_str).map(String::from);
            let records: Vec<Value> = st
                .store
                .read(kind)
                .iter()
                .filter(|r| loc.as_deref().is_none_or(|l| r.get("locationId").and_then(Value::as_str) == Some(l)))
                .cloned()
                .map(Value::Object)
                .collect();
            okj(json!({ "count": records.len(), "records": records }))
        }
        ("POST", ["records", kind]) => {
            let v: Value = parse(bytes)?;
            Ok((StatusCode::CREATED, insert_record(st, kind, v)?))
        }
        ("GET", ["records", kind, id]) => {
            let kind =
                st.store.kind(kind).ok_or_else(|| ApiError::not_found(format!("unknown resource kind {kind}")))?;
            st.store
                .get(kind, id)
                .map(|r| (StatusCode::OK, Value::Object(r)))
                .ok_or_else(|| ApiError::not_found("record not found"))
        }
        ("PATCH", ["records", kind, id]) | ("PUT", ["records", kind, id]) => {
            let v: Value = parse(bytes)?;
            okj(patch_record(st, kind, id, v)?)
        }
        ("DELETE", ["records", kind, id]) => {
            let kind =
                st.store.kind(kind).ok_or_else(|| ApiError::not_found(format!("unknown resource kind {kind}")))?;
            let r = st.store.remove(kind, id).ok_or_else(|| ApiError::not_found("record not found"))?;
            st.webhooks.record_changed(kind, Change::Delete, &r, &st.location_id);
            okj(json!({ "deleted": true, "id": id }))
        }
        ("GET", ["webhooks"]) => okj(json!({ "settings": st.webhooks.settings(), "stats": st.webhooks.stats() })),
        ("PUT", ["webhooks"]) | ("POST", ["webhooks"]) => {
            let body: WebhookSettings = parse(bytes)?;
            st.webhooks.set(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            okj(json!({ "settings": st.webhooks.settings() }))
        }
        ("DELETE", ["webhooks"]) => {
            let _ = st.webhooks.set(WebhookSettings::default());
            okj(json!({ "ok": true }))
        }
        _ => Err(ApiError::not_found(format!("no admin endpoint {method} /_sandbox/{}", parts.join("/")))),
    }
}
