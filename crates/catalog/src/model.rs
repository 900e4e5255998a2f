//! The shape of one catalog entry, exactly as it is written in `catalog/*.yaml`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One GHL v2 operation: a polling trigger or an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Stable key, `<module>.<snake_name>`; flows refer to operations by it.
    pub key: String,
    pub name: String,
    pub description: String,
    pub kind: Kind,
    pub category: String,
    pub method: Method,
    /// Path template exactly as in the official spec, trailing slashes included.
    pub path: String,
    /// Value of the `Version` header this operation's module requires.
    pub version: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Which token kinds GHL accepts for this operation.
    #[serde(default)]
    pub tokens: Vec<TokenKind>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deprecated: bool,
    /// Request body media type when it is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Response media type when it is not JSON (file downloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_type: Option<String>,
    #[serde(default)]
    pub params: Vec<Param>,
    /// When set, the request body is this body parameter's value itself (a bare JSON
    /// array, for example) rather than an object of the body parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_root: Option<String>,
    /// The spec requires a request body even when no body parameter is given (an update
    /// with every field optional, a DELETE whose body schema is empty): flowd then sends `{}`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl Operation {
    /// The parameters that go in one place of the request.
    pub fn params_in(&self, location: ParamIn) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(move |p| p.location == location)
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Names of the `{placeholders}` in the path template, in order.
    pub fn path_placeholders(&self) -> Vec<&str> {
        path_placeholders(&self.path)
    }

    /// Where this entry deliberately differs from the official spec, and why: `(parameter,
    /// reason)`.
    pub fn amendments(&self) -> Vec<(&str, &str)> {
        self.params.iter().filter_map(|p| p.amended.as_deref().map(|why| (p.name.as_str(), why))).collect()
    }
}

/// Names of the `{placeholders}` in a path template, in order.
pub fn path_placeholders(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Trigger,
    Action,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Trigger => "trigger",
            Kind::Action => "action",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// Whether repeating the request cannot create a second effect (RFC 9110 section 9.2.2).
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Patch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A sub-account (location) OAuth token or Private Integration token.
    Location,
    /// An agency (company) token.
    Agency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    pub name: String,
    #[serde(rename = "in")]
    pub location: ParamIn,
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Element type, for arrays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ParamType>,
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub enum_values: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Set when this parameter deliberately differs from the official spec (a spec defect
    /// that makes real values impossible): why, and what GHL takes instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amended: Option<String>,
}

impl Param {
    /// The value in this parameter's declared type, items of a list included, when the
    /// conversion loses nothing ([`ParamType::convert`]); `None` when it cannot.
    pub fn convert(&self, value: &Value) -> Option<Value> {
        let converted = self.ty.convert(value)?;
        match (self.items, converted) {
            (Some(item), Value::Array(list)) => {
                list.iter().map(|v| item.convert(v)).collect::<Option<Vec<Value>>>().map(Value::Array)
            }
            (_, v) => Some(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamIn {
    Path,
    Query,
    Body,
}

impl ParamIn {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamIn::Path => "path",
            ParamIn::Query => "query",
            ParamIn::Body => "body",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    /// The spec gives no type (for example `startAfterDate`).
    Any,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Array => "array",
            ParamType::Object => "object",
            ParamType::Any => "any",
        }
    }

    /// Whether a JSON value is of exactly this type (for enum values in definitions).
    pub fn accepts_exactly(self, value: &Value) -> bool {
        match (self, value) {
            (ParamType::String, v) => v.is_string(),
            (ParamType::Integer | ParamType::Number | ParamType::Boolean, Value::String(_)) => false,
            (t, v) => t.accepts(v),
        }
    }

    /// The value in this type's JSON form when the conversion loses nothing: a number or
    /// boolean becomes its text for a string; a string holding a JSON number becomes that
    /// number (an integer only when it has no fraction); `"true"`/`"false"` become booleans.
    /// `None` when the value has another shape (an object for a string, `"abc"` for a number).
    pub fn convert(self, value: &Value) -> Option<Value> {
        match (self, value) {
            (ParamType::Any, v) => Some(v.clone()),
            (ParamType::String, Value::String(_)) => Some(value.clone()),
            (ParamType::String, Value::Number(n)) => Some(Value::String(n.to_string())),
            (ParamType::String, Value::Bool(b)) => Some(Value::String(b.to_string())),
            (ParamType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(value.clone()),
            (ParamType::Integer, Value::String(s)) => {
                let n = s.parse::<serde_json::Number>().ok().filter(|n| n.is_i64() || n.is_u64())?;
                Some(Value::Number(n))
            }
            (ParamType::Number, Value::Number(_)) => Some(value.clone()),
            (ParamType::Number, Value::String(s)) => s.parse::<serde_json::Number>().ok().map(Value::Number),
            (ParamType::Boolean, Value::Bool(_)) => Some(value.clone()),
            (ParamType::Boolean, Value::String(s)) if s == "true" || s == "false" => Some(Value::Bool(s == "true")),
            (ParamType::Array, Value::Array(_)) | (ParamType::Object, Value::Object(_)) => Some(value.clone()),
            _ => None,
        }
    }

    /// Whether a JSON value is acceptable for this type. Numbers and booleans given as
    /// strings are accepted where GHL itself accepts them (query strings are all text).
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (ParamType::Any, _) => true,
            (ParamType::String, Value::String(_)) => true,
            (ParamType::String, Value::Number(_) | Value::Bool(_)) => true,
            (ParamType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (ParamType::Integer, Value::String(s)) => s.parse::<i64>().is_ok(),
            (ParamType::Number, Value::Number(_)) => true,
            (ParamType::Number, Value::String(s)) => s.parse::<f64>().is_ok(),
            (ParamType::Boolean, Value::Bool(_)) => true,
            (ParamType::Boolean, Value::String(s)) => s == "true" || s == "false",
            (ParamType::Array, Value::Array(_)) => true,
            (ParamType::Object, Value::Object(_)) => true,
            _ => false,
        }
    }
}

/// How to poll a trigger and tell its items apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// JSONPath of the items in the response body (the record itself for single-record triggers).
    pub items: String,
    /// Where an item's identity comes from.
    pub id: IdSource,
    /// Field that changes whenever the item changes, when the resource has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Default dedupe mode; a flow may override it.
    pub dedupe: DedupeMode,
    pub shape: Shape,
    pub pagination: Pagination,
    /// Fields an item is documented to carry; flows' templates are checked against them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// How a poll asks for only what changed. Every built-in trigger declares it; an
    /// extension file may leave it out ([`TriggerSpec::read_spec`] then derives it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadSpec>,
}

impl TriggerSpec {
    /// The declared read strategy, or for an entry without one the strategy its
    /// pagination implies: one record, time windows, or a full read.
    pub fn read_spec(&self) -> std::borrow::Cow<'_, ReadSpec> {
        use std::borrow::Cow;
        match &self.read {
            Some(r) => Cow::Borrowed(r),
            None => Cow::Owned(match self.pagination {
                Pagination::SingleRecord | Pagination::SingleFile => ReadSpec::Single,
                Pagination::TimeWindow { .. } => ReadSpec::Window,
                _ => ReadSpec::Full { why: "no read strategy declared".into() },
            }),
        }
    }
}

/// A trigger's read strategy: what one poll asks the endpoint for, and so what it costs.
///
/// `search`, `since` and `sorted` are incremental: for the dedupe modes they list, a poll
/// asks only for records whose time field is at or after the trigger's watermark minus the
/// flow's lookback, so an idle poll costs one request whatever the size of the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReadSpec {
    /// One record by id: one request per poll.
    Single,
    /// A fixed span of time queried in windows: as many requests as windows.
    Window,
    /// Every page on every poll, because the endpoint can neither sort, filter by time nor
    /// resume: the cost grows with the collection. `why` says what the spec lacks.
    Full { why: String },
    /// GHL's advanced search (POST body): a `range` filter on the time field appended to
    /// `filters_param`, `sort_param` ascending on it, pages by `pagination` (a cursor, as
    /// page numbers stop at `max_records`). Full reads use the same cursor without the filter.
    Search {
        filters_param: String,
        sort_param: String,
        pagination: Pagination,
        /// Page-number paging reaches at most this many records.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_records: Option<u32>,
        modes: std::collections::BTreeMap<DedupeMode, ModeRead>,
    },
    /// The endpoint starts after a time given in `param` (epoch milliseconds) and returns
    /// records in ascending order of the time field.
    Since { modes: std::collections::BTreeMap<DedupeMode, ModeRead> },
    /// With `set`, the endpoint returns newest first: a poll stops at the first record
    /// older than the cutoff.
    Sorted { modes: std::collections::BTreeMap<DedupeMode, ModeRead> },
}

impl ReadSpec {
    pub fn strategy(&self) -> &'static str {
        match self {
            ReadSpec::Single => "single",
            ReadSpec::Window => "window",
            ReadSpec::Full { .. } => "full",
            ReadSpec::Search { .. } => "search",
            ReadSpec::Since { .. } => "since",
            ReadSpec::Sorted { .. } => "sorted",
        }
    }

    /// How the strategy reads for a dedupe mode, when it reads incrementally for it.
    pub fn mode(&self, mode: DedupeMode) -> Option<&ModeRead> {
        match self {
            ReadSpec::Search { modes, .. } | ReadSpec::Since { modes } | ReadSpec::Sorted { modes } => modes.get(&mode),
            _ => None,
        }
    }

    /// The dedupe modes read incrementally.
    pub fn modes(&self) -> Vec<DedupeMode> {
        match self {
            ReadSpec::Search { modes, .. } | ReadSpec::Since { modes } | ReadSpec::Sorted { modes } => {
                modes.keys().copied().collect()
            }
            _ => Vec::new(),
        }
    }
}

/// How an incremental strategy reads for one dedupe mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRead {
    /// The item's time field the read filters or orders on (`dateAdded`, `dateUpdated`).
    pub field: String,
    /// `since`: the request parameter that takes the cutoff, in epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// Request parameters set to fixed values (a sort order, for example).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set: std::collections::BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdSource {
    /// A field of the item (`id`, `_id`).
    Field(String),
    /// The request parameter of that name (file downloads carry no id of their own).
    Param(String),
    /// The item is a scalar and is its own id (free slots).
    ItemValue,
    /// The item has no id: a hash of its content is its identity.
    ContentHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupeMode {
    /// Fire once per unseen id.
    New,
    /// Fire per (id, updated-at): on creation and on every update.
    Updated,
    /// Fire per (id, hash of the content): whenever anything in the item changes.
    Changed,
}

impl DedupeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DedupeMode::New => "new",
            DedupeMode::Updated => "updated",
            DedupeMode::Changed => "changed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// The items path selects one record.
    Single,
    /// The items path selects a list of records.
    List,
}

/// How the next page of a list is requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// The whole list comes in one response.
    None,
    /// One record, fetched by id.
    SingleRecord,
    /// A file download, fetched by id.
    SingleFile,
    /// `offset_param += limit` until a short page (or `has_more` is false).
    Offset {
        #[serde(rename = "in")]
        location: ParamIn,
        offset_param: String,
        limit_param: String,
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_limit: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        has_more: Option<String>,
    },
    /// `page_param` counts pages from 1 until a short page.
    Page {
        #[serde(rename = "in")]
        location: ParamIn,
        page_param: String,
        limit_param: String,
        limit: u32,
    },
    /// Each request parameter in `cursor` takes the value at a JSONPath of the previous response.
    Cursor {
        #[serde(rename = "in")]
        location: ParamIn,
        limit_param: String,
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_limit: Option<u32>,
        cursor: std::collections::BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        has_more: Option<String>,
    },
    /// `param` takes the value of `field` in the last item of the previous page.
    LastItem {
        #[serde(rename = "in")]
        location: ParamIn,
        param: String,
        field: String,
        limit_param: String,
        limit: u32,
    },
    /// No paging: a window of time given by two parameters is queried and slid forward.
    TimeWindow { start_param: String, end_param: String, unit: TimeUnit, max_span_days: u32 },
}

impl Pagination {
    pub fn style(&self) -> &'static str {
        match self {
            Pagination::None => "none",
            Pagination::SingleRecord => "single_record",
            Pagination::SingleFile => "single_file",
            Pagination::Offset { .. } => "offset",
            Pagination::Page { .. } => "page",
            Pagination::Cursor { .. } => "cursor",
            Pagination::LastItem { .. } => "last_item",
            Pagination::TimeWindow { .. } => "time_window",
        }
    }

    /// Request parameters the paginator sets itself.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Pagination::None | Pagination::SingleRecord | Pagination::SingleFile => vec![],
            Pagination::Offset { offset_param, limit_param, .. } => vec![offset_param, limit_param],
            Pagination::Page { page_param, limit_param, .. } => vec![page_param, limit_param],
            Pagination::Cursor { limit_param, cursor, .. } => {
                let mut v: Vec<&str> = cursor.keys().map(String::as_str).collect();
                v.push(limit_param);
                v
            }
            Pagination::LastItem { param, limit_param, .. } => vec![param, limit_param],
            Pagination::TimeWindow { start_param, end_param, .. } => vec![start_param, end_param],
        }
    }

    /// JSONPaths this pagination reads from responses.
    pub fn json_paths(&self) -> Vec<&str> {
        match self {
            Pagination::Offset { has_more, .. } => has_more.iter().map(String::as_str).collect(),
            Pagination::Cursor { cursor, has_more, .. } => {
                cursor.values().map(String::as_str).chain(has_more.iter().map(String::as_str)).collect()
            }
            _ => vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    EpochMs,
}

/// What an action returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// JSONPath of the result in the response body; later steps see it as `steps.<id>`.
    pub result: String,
    /// Top-level keys of the response as the spec spells them (typos included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::ParamType;
    use serde_json::json;

    #[test]
    fn conversions_to_the_declared_type_lose_nothing() {
        let cases = [
            (ParamType::String, json!(25), Some(json!("25"))),
            (ParamType::String, json!(1.5), Some(json!("1.5"))),
            (ParamType::String, json!(false), Some(json!("false"))),
            (ParamType::String, json!({"a": 1}), None),
            (ParamType::String, json!([1]), None),
            (ParamType::Integer, json!("12"), Some(json!(12))),
            (ParamType::Integer, json!("1.5"), None),
            (ParamType::Integer, json!("12abc"), None),
            (ParamType::Integer, json!(" 12"), None),
            (ParamType::Integer, json!(2.5), None),
            (ParamType::Number, json!("2.5"), Some(json!(2.5))),
            (ParamType::Number, json!("007"), None),
            (ParamType::Number, json!(true), None),
            (ParamType::Boolean, json!("true"), Some(json!(true))),
            (ParamType::Boolean, json!("yes"), None),
            (ParamType::Boolean, json!(1), None),
            (ParamType::Object, json!("Email"), None),
            (ParamType::Any, json!("x"), Some(json!("x"))),
        ];
        for (ty, input, want) in cases {
            assert_eq!(ty.convert(&input), want, "{input} as {}", ty.as_str());
        }
    }
}
