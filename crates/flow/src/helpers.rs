//! Template helpers, as plain functions over JSON values.
//!
//! One implementation serves both paths: the fast evaluator in `template.rs` calls
//! [`Helper::call`] directly (so `"{{ default trigger.tags (json x) }}"` keeps its JSON
//! type), and the handlebars registry used for block templates wraps the same function.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use handlebars::JsonTruthy;
use jsonpath_rust::JsonPath;
use serde_json::Value;

use crate::template::RenderError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Helper {
    Json,
    Default,
    DateFormat,
    DateAdd,
    Upper,
    Lower,
    Title,
    Capitalize,
    JsonPath,
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    And,
    Or,
    Not,
    Len,
    Lookup,
}

/// Hash arguments `date_add` understands.
pub const DATE_ADD_UNITS: &[&str] = &["weeks", "days", "hours", "minutes", "seconds"];

impl Helper {
    pub const ALL: &'static [Helper] = &[
        Helper::Json,
        Helper::Default,
        Helper::DateFormat,
        Helper::DateAdd,
        Helper::Upper,
        Helper::Lower,
        Helper::Title,
        Helper::Capitalize,
        Helper::JsonPath,
        Helper::Eq,
        Helper::Ne,
        Helper::Gt,
        Helper::Gte,
        Helper::Lt,
        Helper::Lte,
        Helper::And,
        Helper::Or,
        Helper::Not,
        Helper::Len,
        Helper::Lookup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Helper::Json => "json",
            Helper::Default => "default",
            Helper::DateFormat => "date_format",
            Helper::DateAdd => "date_add",
            Helper::Upper => "upper",
            Helper::Lower => "lower",
            Helper::Title => "title",
            Helper::Capitalize => "capitalize",
            Helper::JsonPath => "jsonpath",
            Helper::Eq => "eq",
            Helper::Ne => "ne",
            Helper::Gt => "gt",
            Helper::Gte => "gte",
            Helper::Lt => "lt",
            Helper::Lte => "lte",
            Helper::And => "and",
            Helper::Or => "or",
            Helper::Not => "not",
            Helper::Len => "len",
            Helper::Lookup => "lookup",
        }
    }

    pub fn by_name(name: &str) -> Option<Helper> {
        Helper::ALL.iter().copied().find(|h| h.name() == name)
    }

    /// Whether handlebars already ships this helper; those are not re-registered so block
    /// templates behave exactly as handlebars documents them.
    pub(crate) fn is_handlebars_builtin(self) -> bool {
        matches!(
            self,
            Helper::Eq
                | Helper::Ne
                | Helper::Gt
                | Helper::Gte
                | Helper::Lt
                | Helper::Lte
                | Helper::And
                | Helper::Or
                | Helper::Not
                | Helper::Len
                | Helper::Lookup
        )
    }

    /// (min, max) positional arguments.
    pub fn arity(self) -> (usize, usize) {
        match self {
            Helper::Json | Helper::Upper | Helper::Lower | Helper::Title | Helper::Capitalize => (1, 1),
            Helper::Not | Helper::Len | Helper::DateAdd => (1, 1),
            Helper::Default | Helper::DateFormat | Helper::JsonPath | Helper::Lookup => (2, 2),
            Helper::Eq | Helper::Ne | Helper::Gt | Helper::Gte | Helper::Lt | Helper::Lte => (2, 2),
            Helper::And | Helper::Or => (2, usize::MAX),
        }
    }

    pub fn hash_keys(self) -> &'static [&'static str] {
        match self {
            Helper::DateAdd => DATE_ADD_UNITS,
            _ => &[],
        }
    }

    /// Whether a missing argument is an error (strict mode) or passed on as null: `default`
    /// exists to handle absent values, and `not` of a missing field is true, as `if:` reads
    /// a missing field as false (GHL leaves empty fields out, so
    /// `{{ not steps.find.contact }}` means "none found").
    pub(crate) fn tolerates_missing(self) -> bool {
        matches!(self, Helper::Default | Helper::Not)
    }

    pub fn call(self, params: &[Cow<'_, Value>], hash: &[(&str, Cow<'_, Value>)]) -> Result<Value, RenderError> {
        let (min, max) = self.arity();
        if params.len() < min || params.len() > max {
            return Err(self.err(format!("takes {} argument(s), got {}", arity_text(min, max), params.len())));
        }
        let p = |i: usize| -> &Value { params[i].as_ref() };
        Ok(match self {
            Helper::Json => Value::String(serde_json::to_string(p(0)).map_err(|e| self.err(e.to_string()))?),
            Helper::Default => {
                let v = p(0);
                if v.is_null() || v.as_str() == Some("") {
                    p(1).clone()
                } else {
                    v.clone()
                }
            }
            Helper::DateFormat => {
                let t = parse_time(p(0)).ok_or_else(|| self.err(format!("`{}` is not a date", short(p(0)))))?;
                let fmt = p(1).as_str().ok_or_else(|| self.err("the format must be a string".into()))?;
                let mut out = String::new();
                // chrono reports a bad format specifier as a fmt::Error instead of text.
                write!(out, "{}", t.format(fmt)).map_err(|_| self.err(format!("bad date format `{fmt}`")))?;
                Value::String(out)
            }
            Helper::DateAdd => {
                let t = parse_time(p(0)).ok_or_else(|| self.err(format!("`{}` is not a date", short(p(0)))))?;
                let mut t = Some(t);
                for (key, amount) in hash {
                    let n = amount
                        .as_i64()
                        .or_else(|| amount.as_str().and_then(|s| s.trim().parse().ok()))
                        .ok_or_else(|| self.err(format!("{key}= must be an integer")))?;
                    let delta = match *key {
                        "weeks" => TimeDelta::try_weeks(n),
                        "days" => TimeDelta::try_days(n),
                        "hours" => TimeDelta::try_hours(n),
                        "minutes" => TimeDelta::try_minutes(n),
                        "seconds" => TimeDelta::try_seconds(n),
                        other => return Err(self.err(format!("unknown unit `{other}`"))),
                    };
                    t = t.and_then(|t| delta.and_then(|d| t.checked_add_signed(d)));
                }
                let t = t.ok_or_else(|| self.err("date out of range".into()))?;
                Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            }
            Helper::Upper => Value::String(text(p(0)).to_uppercase()),
            Helper::Lower => Value::String(text(p(0)).to_lowercase()),
            Helper::Title => Value::String(title_case(&text(p(0)))),
            Helper::Capitalize => Value::String(capitalize(&text(p(0)))),
            Helper::JsonPath => {
                let path = p(1).as_str().ok_or_else(|| self.err("the path must be a string".into()))?;
                let found = p(0).query(path).map_err(|e| self.err(format!("bad JSONPath `{path}`: {e}")))?;
                found.first().map(|v| (*v).clone()).unwrap_or(Value::Null)
            }
            Helper::Eq => Value::Bool(loose_eq(p(0), p(1))),
            Helper::Ne => Value::Bool(!loose_eq(p(0), p(1))),
            Helper::Gt => Value::Bool(compare(p(0), p(1)).is_some_and(|o| o.is_gt())),
            Helper::Gte => Value::Bool(compare(p(0), p(1)).is_some_and(|o| o.is_ge())),
            Helper::Lt => Value::Bool(compare(p(0), p(1)).is_some_and(|o| o.is_lt())),
            Helper::Lte => Value::Bool(compare(p(0), p(1)).is_some_and(|o| o.is_le())),
            Helper::And => Value::Bool(params.iter().all(|v| truthy(v))),
            Helper::Or => Value::Bool(params.iter().any(|v| truthy(v))),
            Helper::Not => Value::Bool(!truthy(p(0))),
            Helper::Len => Value::from(match p(0) {
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                Value::String(s) => s.chars().count(),
                _ => 0,
            }),
            Helper::Lookup => match (p(0), p(1)) {
                (Value::Object(o), k) => o.get(text(k).as_ref()).cloned().unwrap_or(Value::Null),
                (Value::Array(a), k) => k
                    .as_u64()
                    .or_else(|| k.as_str().and_then(|s| s.parse().ok()))
                    .and_then(|i| a.get(i as usize))
                    .cloned()
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            },
        })
    }

    fn err(self, message: String) -> RenderError {
        RenderError::Helper { helper: self.name(), message }
    }
}

fn arity_text(min: usize, max: usize) -> String {
    if min == max {
        min.to_string()
    } else if max == usize::MAX {
        format!("at least {min}")
    } else {
        format!("{min} to {max}")
    }
}

/// Truthiness as handlebars `{{#if}}` sees it: false, null, 0, "", [] and {} are false.
pub fn truthy(v: &Value) -> bool {
    v.is_truthy(false)
}

/// A value as text, the way handlebars writes it into a string.
pub fn text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(handlebars::JsonRender::render(other)),
    }
}

fn short(v: &Value) -> String {
    let s = text(v);
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.into_owned()
    }
}

/// RFC 3339 strings, plain dates (midnight UTC) and epoch milliseconds, which is what GHL
/// returns in different places.
pub fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
            }
            s.parse::<i64>().ok().and_then(DateTime::from_timestamp_millis)
        }
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_word_start = true;
    for c in s.chars() {
        if at_word_start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        at_word_start = c.is_whitespace() || c == '-' || c == '_';
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Numbers compare by value (1 == 1.0), everything else structurally.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Adapts a [`Helper`] to handlebars, for templates that need the full engine (blocks).
pub(crate) struct HandlebarsHelper(pub Helper);

impl handlebars::HelperDef for HandlebarsHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &handlebars::Helper<'rc>,
        _: &'reg handlebars::Handlebars<'reg>,
        _: &'rc handlebars::Context,
        _: &mut handlebars::RenderContext<'reg, 'rc>,
    ) -> Result<handlebars::ScopedJson<'rc>, handlebars::RenderError> {
        let params: Vec<Cow<'_, Value>> = h.params().iter().map(|p| Cow::Borrowed(p.value())).collect();
        let hash: Vec<(&str, Cow<'_, Value>)> = h.hash().iter().map(|(k, v)| (*k, Cow::Borrowed(v.value()))).collect();
        self.0
            .call(&params, &hash)
            .map(handlebars::ScopedJson::Derived)
            .map_err(|e| handlebars::RenderErrorReason::Other(e.to_string()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(h: Helper, params: &[Value], hash: &[(&str, Value)]) -> Result<Value, RenderError> {
        let p: Vec<Cow<'_, Value>> = params.iter().map(Cow::Borrowed).collect();
        let hs: Vec<(&str, Cow<'_, Value>)> = hash.iter().map(|(k, v)| (*k, Cow::Borrowed(v))).collect();
        h.call(&p, &hs)
    }

    #[test]
    fn dates() {
        let now = json!("2024-02-28T10:00:00Z");
        assert_eq!(
            call(Helper::DateAdd, std::slice::from_ref(&now), &[("days", json!(2)), ("hours", json!(1))]).unwrap(),
            json!("2024-03-01T11:00:00Z")
        );
        assert_eq!(
            call(Helper::DateAdd, std::slice::from_ref(&now), &[("minutes", json!(-30))]).unwrap(),
            json!("2024-02-28T09:30:00Z")
        );
        assert_eq!(call(Helper::DateFormat, &[now.clone(), json!("%Y-%m-%d")], &[]).unwrap(), json!("2024-02-28"));
        assert_eq!(call(Helper::DateFormat, &[json!(1_700_000_000_000i64), json!("%Y")], &[]).unwrap(), json!("2023"));
        assert!(call(Helper::DateFormat, &[now.clone(), json!("%Q")], &[]).is_err());
        assert!(call(Helper::DateAdd, &[json!("soon")], &[]).is_err());
        assert!(call(Helper::DateAdd, &[now], &[("days", json!(i64::MAX))]).is_err());
    }

    #[test]
    fn text_helpers() {
        assert_eq!(call(Helper::Upper, &[json!("ann")], &[]).unwrap(), json!("ANN"));
        assert_eq!(call(Helper::Lower, &[json!("ANN")], &[]).unwrap(), json!("ann"));
        assert_eq!(call(Helper::Title, &[json!("ann MARIE-lee")], &[]).unwrap(), json!("Ann Marie-Lee"));
        assert_eq!(call(Helper::Capitalize, &[json!("ann marie")], &[]).unwrap(), json!("Ann marie"));
        assert_eq!(call(Helper::Json, &[json!({"a": [1]})], &[]).unwrap(), json!("{\"a\":[1]}"));
    }

    #[test]
    fn default_and_logic() {
        assert_eq!(call(Helper::Default, &[Value::Null, json!("x")], &[]).unwrap(), json!("x"));
        assert_eq!(call(Helper::Default, &[json!(""), json!("x")], &[]).unwrap(), json!("x"));
        assert_eq!(call(Helper::Default, &[json!(0), json!("x")], &[]).unwrap(), json!(0));
        assert_eq!(call(Helper::Eq, &[json!(1), json!(1.0)], &[]).unwrap(), json!(true));
        assert_eq!(call(Helper::Gt, &[json!(2), json!(1)], &[]).unwrap(), json!(true));
        assert_eq!(call(Helper::And, &[json!(1), json!([])], &[]).unwrap(), json!(false));
        assert_eq!(call(Helper::Len, &[json!([1, 2])], &[]).unwrap(), json!(2));
        assert!(call(Helper::Not, &[], &[]).is_err());
    }

    #[test]
    fn jsonpath() {
        let v = json!({"customFields": [{"id": "a", "value": 7}]});
        assert_eq!(call(Helper::JsonPath, &[v.clone(), json!("$.customFields[0].value")], &[]).unwrap(), json!(7));
        assert_eq!(call(Helper::JsonPath, &[v.clone(), json!("$.nope")], &[]).unwrap(), Value::Null);
        assert!(call(Helper::JsonPath, &[v, json!("$[")], &[]).is_err());
    }
}
