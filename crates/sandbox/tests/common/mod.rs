//! Helpers shared by the sandbox's HTTP tests: start a sandbox, call it like a GHL client.
#![allow(dead_code)]

pub mod inputs;
pub mod spec;

use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use serde_json::Value;

pub const TOKEN: &str = "pit-sandbox-token";
pub const AGENCY_TOKEN: &str = "pit-sandbox-agency-token";
pub const V_CONTACTS: &str = "2021-07-28";
pub const V_CALENDARS: &str = "2021-04-15";

pub async fn start(seed: Seed) -> Sandbox {
    let config = SandboxConfig { seed, rate_limit: RateLimitConfig::disabled(), ..SandboxConfig::default() };
    Sandbox::start(config).await.expect("sandbox starts")
}

pub fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

/// A request with the default PIT and a Version header.
pub fn req(c: &Client, sb: &Sandbox, method: Method, path: &str, version: &str) -> RequestBuilder {
    c.request(method, format!("{}{}", sb.base_url(), path)).bearer_auth(TOKEN).header("Version", version)
}

pub async fn send(rb: RequestBuilder) -> (u16, Value) {
    let resp = rb.send().await.expect("response");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

pub async fn get(c: &Client, sb: &Sandbox, path: &str, version: &str) -> (u16, Value) {
    send(req(c, sb, Method::GET, path, version)).await
}

pub fn first_id(sb: &Sandbox, kind: &str, keep: impl Fn(&Value) -> bool) -> String {
    sb.records(kind)
        .into_iter()
        .filter(|r| r["locationId"] == sb.location_id() || r.get("locationId").is_none())
        .find(|r| keep(r))
        .and_then(|r| r.get("id").or_else(|| r.get("_id")).and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| panic!("a seeded {kind} record"))
}
