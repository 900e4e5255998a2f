//! Inbound HTTP triggers (`trigger.http`: the app calls flowd), the reply a flow sends
//! back (`trigger.http.respond`), and the read cache of GET steps (`cache:` on a step).
//!
//! Secrets are never written into flows: `auth` names them as `${ENV_VAR}`, resolved here
//! from the [`CompileEnv`] like every other environment reference. An unset variable is a
//! warning at its line and column (so `flowd check` and `flowd test` work without the
//! secrets) and the route then refuses every request: it never accepts an empty secret.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::compile::{CompileEnv, CompiledTrigger, Start, DEFAULT_EVERY, DEFAULT_LOOKBACK, DEFAULT_MAX_NEW};
use crate::diagnostic::Sink;
use crate::parse::{self, pos, At, Node, TriggerDoc};
use crate::schedule::Schedule;
use crate::template::{RenderError, ValueTemplate};
use crate::validate::{self, Scope};

/// Keys of `trigger.http`.
pub(crate) const HTTP_KEYS: &[&str] = &["path", "auth", "idempotency", "max_body", "headers", "respond"];
const RESPOND_KEYS: &[&str] = &["status", "body", "headers", "timeout"];
/// What an inbound trigger's item holds: `{body, query, headers}`.
pub(crate) const ITEM_FIELDS: &[&str] = &["body", "query", "headers"];
/// Body cap when the flow gives none.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
const MAX_MAX_BODY: usize = 16 * 1024 * 1024;
/// How long the caller waits for a reply when `respond` gives no `timeout`.
pub const DEFAULT_RESPOND_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPOND_TIMEOUT: Duration = Duration::from_secs(300);
/// Clock skew allowed in a signed request's timestamp when `auth.hmac` gives none.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
const MAX_CACHE: Duration = Duration::from_secs(86_400);

/// `trigger.http`: a route on the webhook listener that starts the flow.
#[derive(Debug, Clone)]
pub struct HttpTrigger {
    /// The route, e.g. `/app/contact`; unique across flows.
    pub path: String,
    pub auth: InboundAuth,
    pub idempotency: Option<Idempotency>,
    /// Bodies larger than this are refused with 413.
    pub max_body: usize,
    /// Request headers copied into the item (lower-cased names).
    pub headers: Vec<String>,
    /// Answer the caller with the run's result instead of 202 at once.
    pub respond: Option<Respond>,
}

/// How a caller proves it is the app.
#[derive(Clone)]
pub enum InboundAuth {
    /// HMAC-SHA256 over `timestamp + "." + raw body`, hex, in `header`; the Unix
    /// timestamp (seconds) in `timestamp_header`, within `tolerance` of now.
    /// `secret` is `None` when its variable is unset: every request is refused.
    Hmac { secret: Option<String>, header: String, timestamp_header: String, tolerance: Duration },
    /// `Authorization: Bearer <token>`; `None` as for `Hmac`.
    Bearer { token: Option<String> },
}

impl fmt::Debug for InboundAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundAuth::Hmac { header, timestamp_header, tolerance, .. } => f
                .debug_struct("Hmac")
                .field("secret", &"<redacted>")
                .field("header", header)
                .field("timestamp_header", timestamp_header)
                .field("tolerance", tolerance)
                .finish(),
            InboundAuth::Bearer { .. } => f.debug_struct("Bearer").field("token", &"<redacted>").finish(),
        }
    }
}

/// Where a request's idempotency key comes from: requests with the same key start one run.
#[derive(Debug, Clone)]
pub enum Idempotency {
    /// A request header (lower-cased name); a request without it gets a fresh key.
    Header(String),
    /// A template over the item (`{{ trigger.body.orderId }}`).
    Key(ValueTemplate),
}

/// `respond`: the reply rendered over `trigger` and `steps.*` once the run has ended.
#[derive(Debug, Clone)]
pub struct Respond {
    pub status: ValueTemplate,
    pub body: ValueTemplate,
    pub headers: Vec<(String, ValueTemplate)>,
    /// Past it the caller gets 504 with the run id; the run goes on.
    pub timeout: Duration,
}

/// A rendered reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Respond {
    /// Renders the reply for `ctx` (a run's context with its steps' results).
    pub fn render(&self, ctx: &Value) -> Result<Reply, RenderError> {
        let status = match self.status.render(ctx)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        let status = status.and_then(|s| u16::try_from(s).ok()).filter(|s| (200..600).contains(s)).unwrap_or(500);
        let body = self.body.render(ctx)?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, t) in &self.headers {
            let v = t.render(ctx)?;
            headers.push((name.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())));
        }
        Ok(Reply { status, body, headers })
    }

    /// The reply as JSON `{status, body, headers}`, what an inline test's
    /// `expect: { respond: ... }` is compared with.
    pub fn render_json(&self, ctx: &Value) -> Result<Value, RenderError> {
        let r = self.render(ctx)?;
        let headers: Map<String, Value> = r.headers.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        Ok(serde_json::json!({"status": r.status, "body": r.body, "headers": headers}))
    }
}

/// Compiles `trigger.http`; the item fields are `body`, `query` and `headers`.
pub(crate) fn compile_http_trigger(
    t: &TriggerDoc,
    node: &Spanned<Node>,
    env: &CompileEnv,
    step_ids: &[String],
    sink: &mut Sink,
) -> (Option<CompiledTrigger>, Vec<String>) {
    let fields: Vec<String> = ITEM_FIELDS.iter().map(|f| f.to_string()).collect();
    let others = [
        ("uses", t.uses.as_ref().map(|a| a.pos)),
        ("with", t.with.as_ref().map(|a| a.pos)),
        ("every", t.every.as_ref().map(|a| a.pos)),
        ("cron", t.cron.as_ref().map(|a| a.pos)),
        ("dedupe", t.dedupe.as_ref().map(|a| a.pos)),
        ("start", t.start.as_ref().map(|a| a.pos)),
        ("max_new", t.max_new.as_ref().map(|a| a.pos)),
        ("lookback", t.lookback.as_ref().map(|a| a.pos)),
        ("sweep", t.sweep.as_ref().map(|a| a.pos)),
        ("webhook", t.webhook.as_ref().map(|a| a.pos)),
        ("coalesce", t.coalesce.as_ref().map(|a| a.pos)),
        ("reconcile", t.reconcile.as_ref().map(|r| r.pos)),
    ];
    let mut ok = true;
    for (key, at) in others {
        if let Some(at) = at {
            sink.error(at, format!("`{key}` does not apply to an `http` trigger"))
                .help("an `http` trigger fires when the app calls flowd; it has nothing to poll");
            ok = false;
        }
    }
    let Some(entries) = parse::mapping(node, "`trigger.http`", sink) else { return (None, fields) };
    let mut path = None;
    let mut auth = None;
    let mut idempotency = None;
    let mut max_body = DEFAULT_MAX_BODY;
    let mut headers = Vec::new();
    let mut respond = None;
    let item_scope = Scope {
        trigger_fields: Some(&fields),
        parent_fields: None,
        earlier_steps: &[],
        all_steps: step_ids,
        env,
        item: false,
    };
    for (key, value) in entries {
        let name = format!("trigger.http.{}", key.value);
        match key.value.as_str() {
            "path" => match parse::string(value, &name, sink) {
                Some(p) if valid_path(&p.value) => path = Some(p.value),
                Some(p) => {
                    sink.error(p.pos, format!("`{}` is not a route path", p.value))
                        .help("write an absolute path of letters, digits and `-_./`, e.g. `/app/contact`");
                    ok = false;
                }
                None => ok = false,
            },
            "auth" => match compile_auth(value, env, sink) {
                Some(a) => auth = Some(a),
                None => ok = false,
            },
            "idempotency" => match compile_idempotency(value, &item_scope, sink) {
                Some(i) => idempotency = Some(i),
                None => ok = false,
            },
            "max_body" => match parse::string(value, &name, sink).map(|s| (parse_size(&s.value), s)) {
                Some((Some(n), _)) if n > 0 && n <= MAX_MAX_BODY => max_body = n,
                Some((_, s)) => {
                    sink.error(s.pos, format!("invalid size `{}`", s.value))
                        .help("write a size up to 16MiB, such as `64KiB`, `1MiB` or `4096`");
                    ok = false;
                }
                None => ok = false,
            },
            "headers" => match parse::sequence(value, &name, sink) {
                Some(items) => {
                    for i in items {
                        match parse::string(i, "a header name", sink) {
                            Some(h) if valid_header(&h.value) => headers.push(h.value.to_ascii_lowercase()),
                            Some(h) => {
                                sink.error(h.pos, format!("`{}` is not a header name", h.value));
                                ok = false;
                            }
                            None => ok = false,
                        }
                    }
                }
                None => ok = false,
            },
            "respond" => {
                let scope = Scope {
                    trigger_fields: Some(&fields),
                    parent_fields: None,
                    earlier_steps: step_ids,
                    all_steps: step_ids,
                    env,
                    item: false,
                };
                match compile_respond(value, &scope, sink) {
                    Some(r) => respond = Some(r),
                    None => ok = false,
                }
            }
            other => {
                parse::unknown_key(&key, other, HTTP_KEYS, " in `trigger.http`", sink);
                ok = false;
            }
        }
    }
    if path.is_none() && ok {
        sink.error(pos(node), "`trigger.http` needs a `path`, e.g. `/app/contact`");
        ok = false;
    }
    if auth.is_none() && ok {
        sink.error(pos(node), "`trigger.http` needs `auth`: the app must prove who it is")
            .help("`auth: { bearer: \"${APP_TOKEN}\" }` or `auth: { hmac: { secret: \"${APP_HMAC_SECRET}\" } }`");
        ok = false;
    }
    let (Some(path), Some(auth), true) = (path, auth, ok) else { return (None, fields) };
    let Ok(schedule) = Schedule::every(DEFAULT_EVERY) else { return (None, fields) };
    let http = HttpTrigger { path, auth, idempotency, max_body, headers, respond };
    let compiled = CompiledTrigger {
        op: String::new(),
        with: ValueTemplate::object(Vec::new()),
        schedule,
        dedupe: catalog::DedupeMode::New,
        start: Start::Now,
        max_new: DEFAULT_MAX_NEW,
        lookback: DEFAULT_LOOKBACK,
        sweep: None,
        webhook: None,
        http: Some(http),
        fan_out: None,
    };
    (Some(compiled), fields)
}

fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.contains("//")
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && !p.split('/').any(|seg| seg == "." || seg == "..")
}

fn valid_header(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `64KiB`, `1MiB`, `2MB`, `4096`.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1024,
        "kb" => 1000,
        "mib" | "m" => 1024 * 1024,
        "mb" => 1_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A secret written as `${NAME}`, from the environment flows see: `Some(None)` when the
/// variable is unset (warned), `None` when it is not written as a reference (an error).
fn secret(node: &Spanned<Node>, what: &str, env: &CompileEnv, sink: &mut Sink) -> Option<Option<String>> {
    let s = parse::string(node, what, sink)?;
    let name = s.value.trim().strip_prefix("${").and_then(|r| r.strip_suffix('}'));
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        sink.error(s.pos, format!("`{what}` must name an environment variable, like `${{APP_SECRET}}`"))
            .help("secrets are never written into flows");
        return None;
    };
    match env.env.get(name) {
        Some(v) if !v.is_empty() => Some(Some(v.clone())),
        _ => {
            sink.warning(s.pos, format!("environment variable `{name}` is not set (or empty)"))
                .help("until it is set in flowd's environment, this route refuses every request (401)");
            Some(None)
        }
    }
}

fn compile_auth(node: &Spanned<Node>, env: &CompileEnv, sink: &mut Sink) -> Option<InboundAuth> {
    let entries = parse::mapping(node, "`trigger.http.auth`", sink)?;
    if entries.len() != 1 {
        sink.error(pos(node), "`auth` takes one of `hmac` or `bearer`");
        return None;
    }
    let (key, value) = &entries[0];
    match key.value.as_str() {
        "bearer" => secret(value, "auth.bearer", env, sink).map(|token| InboundAuth::Bearer { token }),
        "hmac" => {
            let entries = parse::mapping(value, "`auth.hmac`", sink)?;
            let mut secret_v = None;
            let mut header = "x-flowd-signature".to_string();
            let mut timestamp_header = "x-flowd-timestamp".to_string();
            let mut tolerance = DEFAULT_TOLERANCE;
            let mut ok = true;
            for (k, v) in entries {
                match k.value.as_str() {
                    "secret" => secret_v = secret(v, "auth.hmac.secret", env, sink),
                    "header" | "timestamp_header" => match parse::string(v, &k.value, sink) {
                        Some(h) if valid_header(&h.value) => {
                            if k.value == "header" {
                                header = h.value.to_ascii_lowercase();
                            } else {
                                timestamp_header = h.value.to_ascii_lowercase();
                            }
                        }
                        _ => {
                            sink.error(pos(v), format!("`auth.hmac.{}` must be a header name", k.value));
                            ok = false;
                        }
                    },
                    "tolerance" => match parse::string(v, "auth.hmac.tolerance", sink)
                        .map(|s| (humantime::parse_duration(s.value.trim()), s))
                    {
                        Some((Ok(d), _)) if d >= Duration::from_secs(1) && d <= Duration::from_secs(3600) => {
                            tolerance = d
                        }
                        Some((_, s)) => {
                            sink.error(s.pos, format!("invalid tolerance `{}`", s.value))
                                .help("a duration between 1s and 1h, such as `5m`");
                            ok = false;
                        }
                        None => ok = false,
                    },
                    other => {
                        parse::unknown_key(
                            &k,
                            other,
                            &["secret", "header", "timestamp_header", "tolerance"],
                            " in `auth.hmac`",
                            sink,
                        );
                        ok = false;
                    }
                }
            }
            if secret_v.is_none() && ok && !entries_have(value, "secret") {
                sink.error(pos(value), "`auth.hmac` needs a `secret`, like `${APP_HMAC_SECRET}`");
                ok = false;
            }
            match (secret_v, ok) {
                (Some(secret), true) => Some(InboundAuth::Hmac { secret, header, timestamp_header, tolerance }),
                _ => None,
            }
        }
        other => {
            parse::unknown_key(key, other, &["hmac", "bearer"], " in `trigger.http.auth`", sink);
            None
        }
    }
}

fn entries_have(node: &Spanned<Node>, key: &str) -> bool {
    matches!(&node.value, Node::Map(e) if e.iter().any(|(k, _)| k.value.0 == key))
}

fn compile_idempotency(node: &Spanned<Node>, scope: &Scope<'_>, sink: &mut Sink) -> Option<Idempotency> {
    let entries = parse::mapping(node, "`trigger.http.idempotency`", sink)?;
    if entries.len() != 1 {
        sink.error(pos(node), "`idempotency` takes one of `header` or `key`");
        return None;
    }
    let (key, value) = &entries[0];
    match key.value.as_str() {
        "header" => match parse::string(value, "idempotency.header", sink) {
            Some(h) if valid_header(&h.value) => Some(Idempotency::Header(h.value.to_ascii_lowercase())),
            Some(h) => {
                sink.error(h.pos, format!("`{}` is not a header name", h.value));
                None
            }
            None => None,
        },
        "key" => validate::template_of(value, scope, sink).map(Idempotency::Key),
        other => {
            parse::unknown_key(key, other, &["header", "key"], " in `trigger.http.idempotency`", sink);
            None
        }
    }
}

fn compile_respond(node: &Spanned<Node>, scope: &Scope<'_>, sink: &mut Sink) -> Option<Respond> {
    let entries = parse::mapping(node, "`trigger.http.respond`", sink)?;
    let mut status = ValueTemplate::literal(Value::from(200));
    let mut body = None;
    let mut headers = Vec::new();
    let mut timeout = DEFAULT_RESPOND_TIMEOUT;
    let mut ok = true;
    for (key, value) in entries {
        match key.value.as_str() {
            "status" => match (&value.value, validate::template_of(value, scope, sink)) {
                (Node::Int(n), _) if !(200..600).contains(n) => {
                    sink.error(pos(value), format!("`respond.status` {n} is not an HTTP status (200-599)"));
                    ok = false;
                }
                (Node::UInt(n), _) if !(200..600).contains(n) => {
                    sink.error(pos(value), format!("`respond.status` {n} is not an HTTP status (200-599)"));
                    ok = false;
                }
                (_, Some(t)) => status = t,
                (_, None) => ok = false,
            },
            "body" => match validate::template_of(value, scope, sink) {
                Some(t) => body = Some(t),
                None => ok = false,
            },
            "headers" => match parse::mapping(value, "`respond.headers`", sink) {
                Some(m) => {
                    for (k, v) in m {
                        if !valid_header(&k.value) {
                            sink.error(k.pos, format!("`{}` is not a header name", k.value));
                            ok = false;
                            continue;
                        }
                        match validate::template_of(v, scope, sink) {
                            Some(t) => headers.push((k.value.to_ascii_lowercase(), t)),
                            None => ok = false,
                        }
                    }
                }
                None => ok = false,
            },
            "timeout" => {
                match parse::string(value, "respond.timeout", sink)
                    .map(|s| (humantime::parse_duration(s.value.trim()), s))
                {
                    Some((Ok(d), _)) if d > Duration::ZERO && d <= MAX_RESPOND_TIMEOUT => timeout = d,
                    Some((_, s)) => {
                        sink.error(s.pos, format!("invalid timeout `{}`", s.value))
                            .help("a duration up to 5m, such as `10s`; keep it below the listener's `request_timeout`");
                        ok = false;
                    }
                    None => ok = false,
                }
            }
            other => {
                parse::unknown_key(&key, other, RESPOND_KEYS, " in `respond`", sink);
                ok = false;
            }
        }
    }
    let body = body.unwrap_or_else(|| ValueTemplate::literal(Value::Null));
    ok.then_some(Respond { status, body, headers, timeout })
}

/// A trigger operation that reads one record by id (`contacts.get_contact`): a step may
/// call it too, to read that record once (the request/reply flows' reads).
pub fn reads_one_record(op: &catalog::Operation) -> bool {
    op.method == catalog::Method::Get
        && op.trigger.as_ref().is_some_and(|t| matches!(t.pagination, catalog::Pagination::SingleRecord))
}

/// `cache:` on a step: only a GET catalog step can be cached; the duration is bounded.
pub(crate) fn compile_cache(cache: &At<String>, get_step: Result<(), String>, sink: &mut Sink) -> Option<Duration> {
    if let Err(why) = get_step {
        sink.error(cache.pos, format!("`cache` applies to GHL read steps only: {why}"))
            .help("a cached step is answered from memory; only GET operations are safe to reuse");
        return None;
    }
    match humantime::parse_duration(cache.value.trim()) {
        Ok(d) if d > Duration::ZERO && d <= MAX_CACHE => Some(d),
        Ok(_) => {
            sink.error(cache.pos, format!("`cache: {}` must be between 1s and 24h", cache.value));
            None
        }
        Err(e) => {
            sink.error(cache.pos, format!("invalid duration `{}`: {e}", cache.value))
                .help("write a duration such as `30s` or `5m`");
            None
        }
    }
}

/// Where an inline test's `expect: { respond: ... }` failed, if it did.
pub(crate) fn check_respond(respond: Option<&Respond>, want: &Value, ctx: &Value) -> Option<String> {
    let Some(r) = respond else {
        return Some("expect.respond: the flow has no `trigger.http.respond`".into());
    };
    match r.render_json(ctx) {
        Ok(got) => crate::compile::subset_mismatch(want, &got, "respond"),
        Err(e) => Some(format!("respond: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_paths() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
        assert_eq!(parse_size("lots"), None);
        assert!(valid_path("/app/contact-viewed"));
        assert!(!valid_path("app"));
        assert!(!valid_path("/app/../x"));
        assert!(!valid_path("/app/{id}"));
    }
}
