//! A request description, independent of any HTTP library, and how it becomes a URL.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use catalog::{Method, ParamType};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};
use url::Url;

use crate::error::Error;

/// Default GHL API host.
pub const DEFAULT_BASE_URL: &str = "https://services.leadconnectorhq.com";

/// Version header value most modules use; calendars and conversations use `2021-04-15`.
pub const DEFAULT_VERSION: &str = "2021-07-28";

/// What to call: everything except the credentials, which come from the account.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    /// Path template as in the catalog: `/contacts/{contactId}`.
    pub path: String,
    pub path_params: BTreeMap<String, Value>,
    /// Query parameters; an array value repeats the key, `null` omits it.
    pub query: Vec<(String, Value)>,
    pub body: Option<Value>,
    /// Send the body form-encoded rather than as JSON.
    pub form: bool,
    /// `Version` header value (from the catalog entry).
    pub version: String,
    /// The location (or company) whose rate limit this request spends; defaults to the
    /// account's own resource.
    pub location: Option<String>,
    /// Declared types of the operation's query and body parameters, so values the client
    /// sets itself (page numbers, offsets, limits) go out in the type the operation takes.
    pub param_types: BTreeMap<String, ParamType>,
    /// Who spends the request: the location's limiter takes turns between flows, and the
    /// metrics count requests by flow and purpose.
    pub origin: Origin,
}

/// The flow a request serves and why it is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `None` for requests outside a flow (the CLI, tests); those take no turn.
    pub flow: Option<Arc<str>>,
    pub purpose: Purpose,
}

impl Origin {
    pub fn new(flow: impl Into<Arc<str>>, purpose: Purpose) -> Self {
        Origin { flow: Some(flow.into()), purpose }
    }
}

/// Why a request is sent, as the metrics name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A trigger's read.
    Poll,
    /// A flow step's call.
    Step,
    /// An OAuth refresh or a location-token exchange.
    Token,
    /// Anything else (the CLI, tests).
    #[default]
    Other,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [Purpose::Poll, Purpose::Step, Purpose::Token, Purpose::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Poll => "poll",
            Purpose::Step => "step",
            Purpose::Token => "token",
            Purpose::Other => "other",
        }
    }
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Request {
            method,
            path: path.into(),
            path_params: BTreeMap::new(),
            query: Vec::new(),
            body: None,
            form: false,
            version: DEFAULT_VERSION.to_owned(),
            location: None,
            origin: Origin::default(),
            param_types: BTreeMap::new(),
        }
    }

    /// Method, path template and Version header of a catalog operation; the caller adds
    /// the values.
    pub fn for_operation(op: &catalog::Operation) -> Self {
        let mut r = Request::new(op.method, op.path.clone()).version(op.version.clone());
        r.param_types = op
            .params
            .iter()
            .filter(|p| p.location != catalog::ParamIn::Path && p.ty != ParamType::Any)
            .map(|p| (p.name.clone(), p.ty))
            .collect();
        r
    }

    /// `value` in the declared type of parameter `name` when it converts losslessly
    /// (`25` for a string parameter is sent as `"25"`), otherwise unchanged.
    pub fn typed(&self, name: &str, value: Value) -> Value {
        match self.param_types.get(name) {
            Some(ty) => ty.convert(&value).unwrap_or(value),
            None => value,
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Request::new(Method::Get, path)
    }

    pub fn post(path: impl Into<String>) -> Self {
        Request::new(Method::Post, path)
    }

    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    pub fn path_param(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.path_params.insert(name.into(), value.into());
        self
    }

    pub fn query(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.set_query(name, value.into());
        self
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn form(mut self, body: Value) -> Self {
        self.body = Some(body);
        self.form = true;
        self
    }

    pub fn location(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    pub fn origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Replaces every value of query parameter `name`.
    pub fn set_query(&mut self, name: impl Into<String>, value: Value) {
        let name = name.into();
        self.query.retain(|(k, _)| *k != name);
        self.query.push((name, value));
    }

    /// Sets a top-level field of the JSON body, creating the body object when there is none.
    pub fn set_body_field(&mut self, name: &str, value: Value) -> Result<(), Error> {
        let body = self.body.get_or_insert_with(|| Value::Object(Map::new()));
        match body {
            Value::Object(map) => {
                map.insert(name.to_owned(), value);
                Ok(())
            }
            _ => Err(Error::InvalidRequest(format!("cannot set body field {name}: the body is not a JSON object"))),
        }
    }

    /// The full URL: base + rendered path + query.
    pub fn url(&self, base: &Url) -> Result<Url, Error> {
        let path = render_path(&self.path, &self.path_params)?;
        let mut url = base.clone();
        let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url.set_query(None);
        url.set_fragment(None);
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &self.query {
                for s in query_strings(v) {
                    pairs.append_pair(k, &s);
                }
            }
        }
        Ok(url)
    }
}

/// Everything but unreserved characters is escaped, so a value stays one path segment: it
/// can never add a `/`, a `..`, a query or a fragment, nor reach another host.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~').remove(b'.');

/// Fills `{name}` placeholders with percent-encoded values.
pub fn render_path(template: &str, params: &BTreeMap<String, Value>) -> Result<String, Error> {
    if !template.starts_with('/') {
        return Err(Error::InvalidRequest(format!("path {template:?} must start with '/'")));
    }
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(Error::InvalidRequest(format!("unclosed placeholder in path {template:?}")));
        };
        let name = &after[..end];
        let value = params
            .get(name)
            .and_then(scalar_string)
            .ok_or_else(|| Error::InvalidRequest(format!("path parameter {name} is missing or not a scalar")))?;
        // An empty, `.` or `..` segment would change which resource the path names (the URL
        // parser resolves dot segments), so those are refused rather than encoded.
        if value.is_empty() || value == "." || value == ".." {
            return Err(Error::InvalidRequest(format!("path parameter {name} has an unusable value {value:?}")));
        }
        let encoded = utf8_percent_encode(&value, SEGMENT).to_string();
        out.push_str(&encoded);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Query strings for one value: arrays repeat, objects go as JSON text, null is omitted.
fn query_strings(v: &Value) -> Vec<String> {
    match v {
        Value::Null => vec![],
        Value::Array(items) => items.iter().flat_map(query_strings).collect(),
        Value::Object(_) => vec![v.to_string()],
        other => scalar_string(other).into_iter().collect(),
    }
}

/// Form fields for a form-encoded body.
pub(crate) fn form_pairs(body: &Value) -> Result<Vec<(String, String)>, Error> {
    let Value::Object(map) = body else {
        return Err(Error::InvalidRequest("a form body must be a JSON object".into()));
    };
    Ok(map.iter().flat_map(|(k, v)| query_strings(v).into_iter().map(move |s| (k.clone(), s))).collect())
}

/// A successful response body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// JSON (an empty body is `Null`).
    Json(Value),
    /// A textual download (`text/*`, XML, CSV).
    Text { content_type: String, text: String },
    /// Anything else (audio recordings, images, PDFs).
    Bytes { content_type: String, bytes: Bytes },
}

impl Body {
    pub(crate) fn decode(content_type: Option<&str>, bytes: Bytes) -> Result<Body, Error> {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim().to_owned();
        if bytes.iter().all(u8::is_ascii_whitespace) && (essence.is_empty() || is_json(&essence)) {
            return Ok(Body::Json(Value::Null));
        }
        if essence.is_empty() || is_json(&essence) {
            return serde_json::from_slice(&bytes)
                .map(Body::Json)
                .map_err(|e| Error::Decode(format!("invalid JSON ({essence}): {e}")));
        }
        let textual = essence.starts_with("text/") || essence.ends_with("+xml") || essence == "application/xml";
        if textual {
            if let Ok(text) = String::from_utf8(bytes.to_vec()) {
                return Ok(Body::Text { content_type: essence, text });
            }
        }
        Ok(Body::Bytes { content_type: essence, bytes })
    }

    /// The body as JSON: JSON as is, text as a string, bytes as
    /// `{"contentType": .., "base64": ..}` so a flow step can still carry a download.
    pub fn into_value(self) -> Value {
        match self {
            Body::Json(v) => v,
            Body::Text { text, .. } => Value::String(text),
            Body::Bytes { content_type, bytes } => serde_json::json!({
                "contentType": content_type,
                "size": bytes.len(),
                "base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
            }),
        }
    }
}

fn is_json(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Url {
        Url::parse("https://services.leadconnectorhq.com").unwrap()
    }

    fn url_for(id: &str) -> Url {
        Request::get("/contacts/{contactId}").path_param("contactId", id).url(&base()).unwrap()
    }

    #[test]
    fn renders_placeholders() {
        let r = Request::get("/calendars/{calendarId}/free-slots")
            .path_param("calendarId", "cal_1")
            .query("startDate", 1700000000000u64)
            .query("userIds", json!(["u1", "u 2"]))
            .query("skipped", Value::Null);
        let u = r.url(&base()).unwrap();
        assert_eq!(
            u.as_str(),
            "https://services.leadconnectorhq.com/calendars/cal_1/free-slots?startDate=1700000000000&userIds=u1&userIds=u+2"
        );
    }

    #[test]
    fn hostile_path_values_stay_one_segment() {
        for (value, expect) in [
            ("../admin", "/contacts/..%2Fadmin"),
            ("a/b", "/contacts/a%2Fb"),
            ("x?y=1", "/contacts/x%3Fy%3D1"),
            ("x#frag", "/contacts/x%23frag"),
            ("100%", "/contacts/100%25"),
            ("%2e%2e", "/contacts/%252e%252e"),
            ("@evil.com", "/contacts/%40evil.com"),
            ("//evil.com", "/contacts/%2F%2Fevil.com"),
            ("a b", "/contacts/a%20b"),
        ] {
            let u = url_for(value);
            assert_eq!(u.host_str(), Some("services.leadconnectorhq.com"), "{value}");
            assert_eq!(u.path(), expect, "{value}");
            assert_eq!(u.query(), None, "{value}");
            assert_eq!(u.fragment(), None, "{value}");
        }
    }

    #[test]
    fn dot_segments_and_missing_values_are_refused() {
        for bad in ["", ".", ".."] {
            let r = Request::get("/contacts/{contactId}").path_param("contactId", bad);
            assert!(matches!(r.url(&base()), Err(Error::InvalidRequest(_))), "{bad:?}");
        }
        let r = Request::get("/contacts/{contactId}");
        assert!(matches!(r.url(&base()), Err(Error::InvalidRequest(_))));
        let r = Request::get("/contacts/{contactId}").path_param("contactId", json!({"a": 1}));
        assert!(matches!(r.url(&base()), Err(Error::InvalidRequest(_))));
        let r = Request::get("/contacts/{contactId").path_param("contactId", "x");
        assert!(matches!(r.url(&base()), Err(Error::InvalidRequest(_))));
        let r = Request::get("contacts");
        assert!(matches!(r.url(&base()), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn builds_from_a_catalog_operation() {
        let cat = catalog::Catalog::builtin().unwrap();
        let op = cat.get("calendars.list_calendar_events").unwrap();
        let r = Request::for_operation(op);
        assert_eq!((r.method, r.path.as_str(), r.version.as_str()), (Method::Get, "/calendars/events", "2021-04-15"));
    }

    #[test]
    fn base_url_with_path_prefix_is_kept() {
        let b = Url::parse("http://127.0.0.1:9/prefix/").unwrap();
        let u = Request::get("/contacts/").url(&b).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9/prefix/contacts/");
    }

    #[test]
    fn body_fields_and_form_pairs() {
        let mut r = Request::post("/contacts/search");
        r.set_body_field("page", json!(2)).unwrap();
        assert_eq!(r.body, Some(json!({"page": 2})));
        let mut bad = Request::post("/x").body(json!([1]));
        assert!(bad.set_body_field("page", json!(1)).is_err());
        let pairs = form_pairs(&json!({"a": "1", "b": 2, "c": null})).unwrap();
        assert_eq!(pairs, vec![("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert!(form_pairs(&json!("x")).is_err());
    }

    #[test]
    fn decodes_bodies_by_content_type() {
        let j = Body::decode(Some("application/json; charset=utf-8"), Bytes::from_static(b"{\"a\":1}")).unwrap();
        assert_eq!(j, Body::Json(json!({"a": 1})));
        assert_eq!(Body::decode(Some("application/json"), Bytes::new()).unwrap(), Body::Json(Value::Null));
        let t = Body::decode(Some("text/plain"), Bytes::from_static(b"hello")).unwrap();
        assert_eq!(t.clone().into_value(), json!("hello"));
        let b = Body::decode(Some("audio/x-wav"), Bytes::from_static(b"RIFF\0\x01")).unwrap();
        let v = b.into_value();
        assert_eq!(v["contentType"], json!("audio/x-wav"));
        assert_eq!(v["base64"], json!("UklGRgAB"));
        assert!(matches!(Body::decode(Some("application/json"), Bytes::from_static(b"{oops")), Err(Error::Decode(_))));
    }
}
