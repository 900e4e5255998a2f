//! The built-in `http.request` step: push data to the user's own app.
//!
//! Inputs: `method` (default POST), `url`, optional `headers` (map), `query` (map),
//! and `json` (any JSON value) or `body` (text).
//!
//! What it may reach: by default only public addresses. Loopback, private, link-local,
//! unspecified and other special-purpose addresses (IPv4, IPv6 and IPv4-mapped) are
//! refused unless `allow_private`: literal addresses in the URL here, names after DNS
//! resolution in [`PublicResolver`], which the client connects through, so the address
//! checked is the address connected to (a name cannot resolve to a public address for the
//! check and to 127.0.0.1 for the connection). Redirects are not followed unless
//! enabled, and then every hop is checked like the first URL. A response body is read up
//! to a cap (after decompression), never whole into memory first.

use crate::failure::Failure;
use catalog::Method;
use ghl::Outcome;
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a target was refused before anything was sent to it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// Which URLs a step may call.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Host names (or literal addresses) allowed; empty means any.
    pub allow_hosts: Vec<String>,
    /// Loopback, private and link-local addresses allowed too (a local app, tests).
    pub allow_private: bool,
}

impl Targets {
    /// Whether `url` may be called: http(s), in the allow-list, and not a literal
    /// non-public address (names are checked when they are resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{url}`: only http and https URLs can be called"));
        }
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if !self.allow_hosts.is_empty()
            && !self.allow_hosts.iter().any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(bare))
        {
            return Err(format!("host `{host}` is not in http_allow_hosts"));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match literal {
            Some(ip) if !self.allow_private && !is_public(ip) => Err(not_public(host, ip)),
            _ => Ok(()),
        }
    }
}

fn not_public(host: &str, ip: IpAddr) -> String {
    format!(
        "`{host}` is {ip}, a loopback, private or link-local address: http.request calls only public addresses unless `http_allow_private: true`"
    )
}

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24; benchmarking, 198.18.0.0/15.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // IPv4-mapped (::ffff:a.b.c.d) and -compatible (::a.b.c.d) addresses reach the IPv4
    // address they embed; so does NAT64 (64:ff9b::/96).
    if let Some(v4) = ip.to_ipv4() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10.
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // Documentation, 2001:db8::/32.
        || (s[0] == 0x2001 && s[1] == 0xdb8))
}

/// The client's DNS resolver: the system's, with every non-public address dropped
/// (unless private targets are allowed). A name left with no address fails with
/// [`Refused`] and nothing is sent.
pub struct PublicResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found.iter().copied().filter(|a| allow_private || is_public(a.ip())).collect();
            match (kept.is_empty(), found.first()) {
                (true, Some(first)) => Err(Box::new(Refused(not_public(&host, first.ip()))) as _),
                _ => Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The HTTP client `http.request` sends with: no proxy from the environment (it would
/// resolve names itself, past [`PublicResolver`]), addresses filtered, redirects
/// followed only up to `max_redirects`, each hop checked against `targets`.
pub fn client(targets: Arc<Targets>, max_redirects: usize) -> reqwest::Result<reqwest::Client> {
    let redirect = if max_redirects == 0 {
        reqwest::redirect::Policy::none()
    } else {
        let targets = targets.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                let why = format!("more than {max_redirects} redirects (http_max_redirects)");
                return attempt.error(Refused(why));
            }
            match targets.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => {
                    let why = format!("redirected to {}: {why}", attempt.url());
                    attempt.error(Refused(why))
                }
            }
        })
    };
    reqwest::Client::builder()
        .user_agent(concat!("flowd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .no_proxy()
        .dns_resolver(Arc::new(PublicResolver { allow_private: targets.allow_private }))
        .redirect(redirect)
        .build()
}

/// Checks the URL and the host allow-list before anything is recorded or sent.
pub fn check(inputs: &Map<String, Value>, targets: &Targets) -> Result<(), String> {
    let url = inputs.get("url").and_then(Value::as_str).ok_or("`url` is missing")?;
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    targets.check_url(&parsed)?;
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

/// Whether `e` (or what caused it) is a [`Refused`] target.
fn refused(e: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}

/// Sends the step. What a failure means is [`ghl::verdict`]'s rule for `method`, as for
/// GHL steps.
pub(crate) async fn send(
    client: &reqwest::Client,
    inputs: &Map<String, Value>,
    timeout: Duration,
    method: Method,
    max_body: usize,
) -> Result<Value, Failure> {
    let url = inputs.get("url").and_then(Value::as_str).unwrap_or_default();
    let verb = inputs.get("method").and_then(Value::as_str).unwrap_or("POST").to_ascii_uppercase();
    let verb = reqwest::Method::from_bytes(verb.as_bytes())
        .map_err(|_| Failure::Permanent(format!("`{verb}` is not an HTTP method")))?;
    let mut req = client.request(verb, url).timeout(timeout);
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
    let mut response = req.send().await.map_err(|e| {
        let text = format!("{url}: {e}");
        // A refused target (its address, a redirect's) will be refused again: the first
        // request was never sent, or was answered with the redirect. A request that could
        // not be built sent nothing either.
        if let Some(r) = refused(&e) {
            return Failure::of(method, Outcome::Invalid, format!("{url}: {r}"));
        }
        let outcome = if e.is_builder() {
            Outcome::Invalid
        } else if e.is_connect() {
            Outcome::ConnectFailed
        } else if e.is_timeout() {
            Outcome::Timeout
        } else {
            Outcome::Broken
        };
        Failure::of(method, outcome, text)
    })?;
    let status = response.status();
    // Read chunk by chunk (decompressed), never past the cap: a small compressed body
    // can decode to gigabytes.
    let mut bytes = Vec::new();
    let mut oversized = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() > max_body => {
                bytes.extend_from_slice(&chunk[..max_body - bytes.len()]);
                oversized = true;
                break;
            }
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                // The app answered, so it had the request.
                return Err(Failure::of(method, Outcome::Broken, format!("{url}: reading the response: {e}")));
            }
        }
    }
    if oversized && status.is_success() {
        // The app answered success, so it acted: a request not safe to repeat is in
        // doubt rather than dead (a replay would act twice); a safe one would get the same
        // answer again, so it is not retried either.
        let text = format!(
            "{url} answered {status} with a body larger than {max_body} bytes (http_max_response_bytes); it was not kept"
        );
        return Err(if method.is_idempotent() { Failure::Permanent(text) } else { Failure::InDoubt(text) });
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        // Not `json!`: it would serialize `body` into a copy instead of moving it.
        let mut out = serde_json::Map::with_capacity(2);
        out.insert("status".into(), Value::from(status.as_u16()));
        out.insert("body".into(), body);
        return Ok(Value::Object(out));
    }
    let mut message = format!("{url} answered {status}: {}", truncate(&body.to_string(), 300));
    if status.is_redirection() {
        message.push_str(" (redirects are not followed unless http_max_redirects is set)");
    }
    Err(Failure::of(method, Outcome::Status { status: status.as_u16(), retry_after: None }, message))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    /// The checks a redirect's target goes through, as the first URL's: a literal
    /// loopback address (in any spelling) is refused unless private targets are allowed.
    #[test]
    fn literal_non_public_urls_are_refused_unless_allowed() {
        let strict = Targets::default();
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://169.254.169.254/latest/meta-data/",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            assert!(strict.check_url(&parsed).is_err(), "{url}");
        }
        let local = Targets { allow_private: true, ..Targets::default() };
        assert!(local.check_url(&url::Url::parse("http://127.0.0.1:8080/").unwrap()).is_ok());
        let listed = Targets { allow_hosts: vec!["::1".into()], allow_private: true };
        assert!(listed.check_url(&url::Url::parse("http://[::1]:8080/").unwrap()).is_ok());
        assert!(listed.check_url(&url::Url::parse("http://127.0.0.1:8080/").unwrap()).is_err());
    }
}
