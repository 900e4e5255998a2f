//! The built-in `http.request` step: push data to the user's own app.
//!
//! Inputs: `method` (default POST), `url`, optional `headers` (map), `query` (map),
//! and `json` (any JSON value) or `body` (text).

use crate::execute::Failure;
use serde_json::{Map, Value};
use std::time::Duration;

/// Checks the URL and the host allow-list before anything is recorded or sent.
pub fn check(inputs: &Map<String, Value>, allow_hosts: &[String]) -> Result<(), String> {
    let url = inputs.get("url").and_then(Value::as_str).ok_or("`url` is missing")?;
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}`: only http and https URLs can be called"));
    }
    let host = parsed.host_str().unwrap_or_default();
    if !allow_hosts.is_empty() && !allow_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(format!("host `{host}` is not in http_allow_hosts"));
    }
    // A header the HTTP library would refuse (a line break rendered into a value) fails
    // the request before anything is sent: it is a permanent error, not a doubt.
    if let Some(Value::Object(headers)) = inputs.get("headers") {
        for (k, v) in headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(format!("header name `{k}` is not valid in HTTP"));
            }
            if reqwest::header::HeaderValue::from_str(&header_text(v)).is_err() {
                return Err(format!(
                    "header `{k}`: its value has a line break or another character not allowed in HTTP"
                ));
            }
        }
    }
    Ok(())
}

/// What replaces a secret in a run record.
pub const REDACTED: &str = "<redacted>";

/// Whether a header or query parameter named `name` carries a credential: the standard
/// ones (`Authorization`, `Proxy-Authorization`, `Cookie`) and any name with `auth`,
/// `token`, `secret`, `key`, `password`, `session`, `cookie` or `signature` in it
/// (`X-Api-Key`, `X-Auth-Token`, `api_key`). A false positive only hides a value from
/// the record; a false negative would keep a credential in every run.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["auth", "token", "secret", "key", "password", "session", "cookie", "signature"].iter().any(|w| name.contains(w))
}

/// The step's inputs as its run record keeps them: credentials in headers, query
/// parameters and the URL's user info replaced by [`REDACTED`]. Runs are listed by the
/// API and kept for weeks; the request itself is sent from the rendered inputs.
pub fn record(inputs: &Map<String, Value>) -> Value {
    let mut out = inputs.clone();
    for field in ["headers", "query"] {
        if let Some(Value::Object(map)) = out.get_mut(field) {
            for (k, v) in map.iter_mut() {
                if is_secret_name(k) {
                    *v = Value::String(REDACTED.into());
                }
            }
        }
    }
    if let Some(Value::String(u)) = out.get_mut("url") {
        if let Ok(mut parsed) = url::Url::parse(u) {
            let mut changed = false;
            if parsed.password().is_some() {
                changed |= parsed.set_password(Some(REDACTED)).is_ok();
            }
            let pairs: Vec<(String, String)> =
                parsed.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            if pairs.iter().any(|(k, _)| is_secret_name(k)) {
                let mut q = parsed.query_pairs_mut();
                q.clear();
                for (k, v) in &pairs {
                    q.append_pair(k, if is_secret_name(k) { REDACTED } else { v });
                }
                drop(q);
                changed = true;
            }
            if changed {
                *u = parsed.to_string();
            }
        }
    }
    Value::Object(out)
}

fn header_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) async fn send(
    client: &reqwest::Client,
    inputs: &Map<String, Value>,
    timeout: Duration,
    idempotent: bool,
) -> Result<Value, Failure> {
    let url = inputs.get("url").and_then(Value::as_str).unwrap_or_default();
    let method = inputs.get("method").and_then(Value::as_str).unwrap_or("POST").to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| Failure::Permanent(format!("`{method}` is not an HTTP method")))?;
    let mut req = client.request(method, url).timeout(timeout);
    if let Some(Value::Object(headers)) = inputs.get("headers") {
        for (k, v) in headers {
            req = req.header(k.as_str(), header_text(v));
        }
    }
    if let Some(Value::Object(query)) = inputs.get("query") {
        let pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect();
        req = req.query(&pairs);
    }
    if let Some(json) = inputs.get("json") {
        req = req.json(json);
    } else if let Some(body) = inputs.get("body") {
        req = req.body(body.as_str().map(str::to_string).unwrap_or_else(|| body.to_string()));
    }
    let response = req.send().await.map_err(|e| {
        let text = format!("{url}: {e}");
        // A request that could not be built, or a connection that never opened, sent
        // nothing; otherwise only a safe method repeats.
        if e.is_builder() {
            Failure::Permanent(text)
        } else if e.is_connect() || idempotent {
            Failure::Retry(text)
        } else {
            Failure::InDoubt(text)
        }
    })?;
    let status = response.status();
    let text = response.text().await.map_err(|e| {
        // The app answered, so it had the request: only a safe one is repeated.
        let text = format!("{url}: reading the response: {e}");
        if idempotent {
            Failure::Retry(text)
        } else {
            Failure::InDoubt(text)
        }
    })?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        // Not `json!`: it would serialize `body` into a copy instead of moving it.
        let mut out = serde_json::Map::with_capacity(2);
        out.insert("status".into(), Value::from(status.as_u16()));
        out.insert("body".into(), body);
        return Ok(Value::Object(out));
    }
    let message = format!("{url} answered {status}: {}", truncate(&body.to_string(), 300));
    if status.as_u16() == 429 || (status.is_server_error() && idempotent) {
        Err(Failure::Retry(message))
    } else if status.is_server_error() {
        // The app had the body and may have acted on it before failing.
        Err(Failure::InDoubt(message))
    } else {
        Err(Failure::Permanent(message))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
