//! Walking a list endpoint page by page as a stream of items.
//!
//! [`Pager`] is the pure part (which parameters the next request carries, which items a
//! response holds, whether another page follows) so every style is unit-tested without a
//! server; [`Client::paginate`] drives it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use catalog::{Pagination, ParamIn, TimeUnit};
use chrono::{DateTime, Utc};
use futures::Stream;
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

use crate::client::Client;
use crate::error::Error;
use crate::request::{Body, Request};

/// A stream of items, each a JSON value; it ends after the first error.
pub type ItemStream = Pin<Box<dyn Stream<Item = Result<Value, Error>> + Send>>;

/// Predicate that ends a stream early.
pub type StopWhen = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// Bounds and inputs of one walk.
#[derive(Clone)]
pub struct PageOptions {
    /// Requests at most this many pages (the stream then ends quietly).
    pub max_pages: u32,
    /// Yields at most this many items.
    pub max_items: usize,
    /// Page size instead of the catalog default, capped at the style's `max_limit`.
    pub page_size: Option<u32>,
    /// The `[start, end]` range a `time_window` endpoint is queried for.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Ends the stream at the first item for which it returns true, without yielding it
    /// and without fetching further pages (for example "older than what I saw last time").
    pub stop_when: Option<StopWhen>,
}

impl Default for PageOptions {
    fn default() -> Self {
        PageOptions { max_pages: 100, max_items: 10_000, page_size: None, window: None, stop_when: None }
    }
}

impl std::fmt::Debug for PageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageOptions")
            .field("max_pages", &self.max_pages)
            .field("max_items", &self.max_items)
            .field("page_size", &self.page_size)
            .field("window", &self.window)
            .field("stop_when", &self.stop_when.is_some())
            .finish()
    }
}

/// A pre-parsed JSONPath.
#[derive(Debug, Clone)]
pub struct JsonPath {
    text: String,
    query: JpQuery,
    /// For a path of the form `$.a.b[*]` (every catalog items path but a few), the field
    /// names: its items can then be moved out of a page instead of cloned.
    array_fields: Option<Vec<String>>,
    /// For a path of the form `$.a.b`, the field names (see [`JsonPath::take_first`]).
    fields: Option<Vec<String>>,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let query = parse_json_path(text).map_err(|e| Error::InvalidRequest(format!("JSONPath {text:?}: {e}")))?;
        Ok(JsonPath { text: text.to_owned(), query, array_fields: array_fields(text), fields: plain_fields(text) })
    }

    /// What [`JsonPath::select`] selects, minus nulls, moved out of `v` when the path allows.
    pub fn take_all(&self, mut v: Value) -> Vec<Value> {
        if let Some(fields) = &self.array_fields {
            let mut at = &mut v;
            for f in fields {
                match at.get_mut(f.as_str()) {
                    Some(next) => at = next,
                    None => return Vec::new(),
                }
            }
            return match at.take() {
                Value::Array(items) => items.into_iter().filter(|i| !i.is_null()).collect(),
                Value::Object(m) => m.into_iter().map(|(_, i)| i).filter(|i| !i.is_null()).collect(),
                _ => Vec::new(),
            };
        }
        self.select(&v).into_iter().filter(|i| !i.is_null()).cloned().collect()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Every value the path selects.
    pub fn select<'a>(&self, v: &'a Value) -> Vec<&'a Value> {
        match js_path_process(&self.query, v) {
            Ok(refs) => refs.into_iter().map(|r| r.val()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The first selected value, if any and not null.
    pub fn first<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        self.select(v).into_iter().find(|x| !x.is_null())
    }

    /// [`JsonPath::first`], moved out of `v` when the path is a plain `$.a.b` (a step's
    /// result path, such as `$.task`) instead of copied; `Err(v)` when nothing matches.
    pub fn take_first(&self, mut v: Value) -> Result<Value, Value> {
        if let Some(fields) = &self.fields {
            let mut at = &mut v;
            for f in fields {
                match at.get_mut(f.as_str()) {
                    Some(next) => at = next,
                    None => return Err(v),
                }
            }
            return if at.is_null() { Err(v) } else { Ok(at.take()) };
        }
        match self.first(&v) {
            Some(found) => Ok(found.clone()),
            None => Err(v),
        }
    }
}

#[derive(Debug, Clone)]
enum Style {
    Single,
    Offset {
        location: ParamIn,
        offset_param: String,
        limit_param: String,
        limit: u32,
        has_more: Option<JsonPath>,
    },
    Page {
        location: ParamIn,
        page_param: String,
        limit_param: String,
        limit: u32,
    },
    Cursor {
        location: ParamIn,
        limit_param: String,
        limit: u32,
        cursor: Vec<(String, JsonPath)>,
        has_more: Option<JsonPath>,
    },
    LastItem {
        location: ParamIn,
        param: String,
        field: String,
        limit_param: String,
        limit: u32,
    },
    Window {
        start_param: String,
        end_param: String,
        windows: Vec<(i64, i64)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Next {
    First,
    Offset(u64),
    Page(u64),
    Cursor(Vec<(String, Value)>),
    LastItem(Value),
    Window(usize),
    Done,
}

/// The pure page-walking state machine.
#[derive(Debug, Clone)]
pub struct Pager {
    style: Style,
    items: JsonPath,
    next: Next,
    pages: u32,
}

const MS_PER_DAY: i64 = 86_400_000;

impl Pager {
    pub fn new(pagination: &Pagination, items_path: &str, opts: &PageOptions) -> Result<Self, Error> {
        let size = |limit: u32, max: Option<u32>| -> u32 {
            let want = opts.page_size.unwrap_or(limit).max(1);
            max.map_or(want, |m| want.min(m.max(1)))
        };
        let style = match pagination {
            Pagination::None | Pagination::SingleRecord | Pagination::SingleFile => Style::Single,
            Pagination::Offset { location, offset_param, limit_param, limit, max_limit, has_more } => Style::Offset {
                location: *location,
                offset_param: offset_param.clone(),
                limit_param: limit_param.clone(),
                limit: size(*limit, *max_limit),
                has_more: has_more.as_deref().map(JsonPath::parse).transpose()?,
            },
            Pagination::Page { location, page_param, limit_param, limit } => Style::Page {
                location: *location,
                page_param: page_param.clone(),
                limit_param: limit_param.clone(),
                limit: size(*limit, None),
            },
            Pagination::Cursor { location, limit_param, limit, max_limit, cursor, has_more } => Style::Cursor {
                location: *location,
                limit_param: limit_param.clone(),
                limit: size(*limit, *max_limit),
                cursor: cursor
                    .iter()
                    .map(|(k, p)| Ok((k.clone(), JsonPath::parse(p)?)))
                    .collect::<Result<_, Error>>()?,
                has_more: has_more.as_deref().map(JsonPath::parse).transpose()?,
            },
            Pagination::LastItem { location, param, field, limit_param, limit } => Style::LastItem {
                location: *location,
                param: param.clone(),
                field: field.clone(),
                limit_param: limit_param.clone(),
                limit: size(*limit, None),
            },
            Pagination::TimeWindow { start_param, end_param, unit, max_span_days } => {
                let Some((start, end)) = opts.window else {
                    return Err(Error::InvalidRequest("a time-window endpoint needs PageOptions::window".into()));
                };
                let TimeUnit::EpochMs = unit;
                Style::Window {
                    start_param: start_param.clone(),
                    end_param: end_param.clone(),
                    windows: split_windows(start.timestamp_millis(), end.timestamp_millis(), *max_span_days)?,
                }
            }
        };
        if let Style::Offset { location: ParamIn::Path, .. }
        | Style::Page { location: ParamIn::Path, .. }
        | Style::Cursor { location: ParamIn::Path, .. }
        | Style::LastItem { location: ParamIn::Path, .. } = style
        {
            return Err(Error::InvalidRequest("paging parameters cannot go in the path".into()));
        }
        Ok(Pager { style, items: JsonPath::parse(items_path)?, next: Next::First, pages: 0 })
    }

    pub fn is_done(&self) -> bool {
        self.next == Next::Done
    }

    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// The request for the next page, or `None` when the walk is over.
    pub fn next_request(&self, base: &Request) -> Result<Option<Request>, Error> {
        let mut r = base.clone();
        match (&self.style, &self.next) {
            (_, Next::Done) => return Ok(None),
            (Style::Single, _) => {}
            (Style::Offset { location, offset_param, limit_param, limit, .. }, next) => {
                let offset = if let Next::Offset(o) = next { *o } else { 0 };
                set(&mut r, *location, limit_param, Value::from(*limit))?;
                set(&mut r, *location, offset_param, Value::from(offset))?;
            }
            (Style::Page { location, page_param, limit_param, limit }, next) => {
                let page = if let Next::Page(p) = next { *p } else { 1 };
                set(&mut r, *location, limit_param, Value::from(*limit))?;
                set(&mut r, *location, page_param, Value::from(page))?;
            }
            (Style::Cursor { location, limit_param, limit, .. }, next) => {
                set(&mut r, *location, limit_param, Value::from(*limit))?;
                if let Next::Cursor(values) = next {
                    for (k, v) in values {
                        set(&mut r, *location, k, v.clone())?;
                    }
                }
            }
            (Style::LastItem { location, param, limit_param, limit, .. }, next) => {
                set(&mut r, *location, limit_param, Value::from(*limit))?;
                if let Next::LastItem(v) = next {
                    set(&mut r, *location, param, v.clone())?;
                }
            }
            (Style::Window { start_param, end_param, windows }, next) => {
                let i = if let Next::Window(i) = next { *i } else { 0 };
                let Some(&(s, e)) = windows.get(i) else { return Ok(None) };
                r.set_query(start_param.clone(), Value::from(s));
                r.set_query(end_param.clone(), Value::from(e));
            }
        }
        Ok(Some(r))
    }

    /// Takes one response: returns its items and works out the next request.
    pub fn absorb(&mut self, body: Body) -> Result<Vec<Value>, Error> {
        self.pages += 1;
        let json = match body {
            Body::Json(v) => v,
            other => {
                // A download is its own single item.
                self.next = Next::Done;
                return Ok(vec![other.into_value()]);
            }
        };
        let selected = self.items.select(&json);
        let n = selected.iter().filter(|v| !v.is_null()).count();
        let last = selected.iter().rev().find(|v| !v.is_null()).copied();
        let flag = |p: &Option<JsonPath>| p.as_ref().and_then(|p| p.first(&json)).and_then(truthy);
        self.next = match (&self.style, &self.next) {
            (_, Next::Done) | (Style::Single, _) => Next::Done,
            (Style::Offset { limit, has_more, .. }, next) => {
                let offset = if let Next::Offset(o) = next { *o } else { 0 };
                if n == 0 || !flag(has_more).unwrap_or(n >= *limit as usize) {
                    Next::Done
                } else {
                    // By what arrived, not by what was asked: a server that caps the page
                    // below our limit but says "more" would otherwise make us skip items.
                    Next::Offset(offset + n as u64)
                }
            }
            (Style::Page { limit, .. }, next) => {
                let page = if let Next::Page(p) = next { *p } else { 1 };
                if n < *limit as usize {
                    Next::Done
                } else {
                    Next::Page(page + 1)
                }
            }
            (Style::Cursor { limit, cursor, has_more, .. }, next) => {
                let values: Vec<(String, Value)> =
                    cursor.iter().filter_map(|(k, p)| p.first(&json).map(|v| (k.clone(), v.clone()))).collect();
                let more = flag(has_more).unwrap_or(n >= *limit as usize);
                if n == 0 || !more || values.is_empty() {
                    Next::Done
                } else if matches!(next, Next::Cursor(prev) if *prev == values) {
                    return Err(Error::Pagination(format!(
                        "page {} returned the same cursor as the page before; stopping instead of looping",
                        self.pages
                    )));
                } else {
                    Next::Cursor(values)
                }
            }
            (Style::LastItem { limit, field, .. }, next) => {
                if n < *limit as usize {
                    Next::Done
                } else {
                    let last = last.and_then(|i| i.get(field)).filter(|v| !v.is_null()).cloned();
                    match last {
                        None => {
                            return Err(Error::Pagination(format!(
                                "the last item of page {} has no {field:?} to continue from",
                                self.pages
                            )))
                        }
                        Some(v) if matches!(next, Next::LastItem(prev) if *prev == v) => {
                            return Err(Error::Pagination(format!(
                                "page {} ended on the same {field:?} as the page before; stopping instead of looping",
                                self.pages
                            )))
                        }
                        Some(v) => Next::LastItem(v),
                    }
                }
            }
            (Style::Window { windows, .. }, next) => {
                let i = if let Next::Window(i) = next { *i } else { 0 };
                if i + 1 < windows.len() {
                    Next::Window(i + 1)
                } else {
                    Next::Done
                }
            }
        };
        // The page is not needed any more: its items move out rather than being copied.
        Ok(self.items.take_all(json))
    }
}

/// The field names of a `$.a.b[*]` or `$[*]` path (plain names only), else `None`.
fn array_fields(text: &str) -> Option<Vec<String>> {
    plain_fields(text.strip_suffix("[*]")?)
}

/// The field names of a path `$`, `$.a` or `$.a.b…` whose names are plain identifiers.
fn plain_fields(text: &str) -> Option<Vec<String>> {
    let rest = text.strip_prefix('$')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let fields = rest.strip_prefix('.')?;
    let names: Vec<String> = fields.split('.').map(str::to_owned).collect();
    let plain = |n: &String| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    names.iter().all(plain).then_some(names)
}

fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        // `nextPage` style fields: a number or URL means "there is more".
        Value::Number(_) | Value::String(_) => Some(true),
        _ => None,
    }
}

/// Sets a paging parameter in the type the operation declares for it (some endpoints
/// take `skip` and `limit` as strings and refuse numbers).
fn set(r: &mut Request, location: ParamIn, name: &str, value: Value) -> Result<(), Error> {
    let value = r.typed(name, value);
    match location {
        ParamIn::Query => {
            r.set_query(name.to_owned(), value);
            Ok(())
        }
        ParamIn::Body => r.set_body_field(name, value),
        ParamIn::Path => Err(Error::InvalidRequest(format!("paging parameter {name} cannot go in the path"))),
    }
}

/// Cuts `[start, end]` (inclusive, epoch ms) into disjoint inclusive windows of at most
/// `max_span_days`, so an item on a boundary is returned once.
fn split_windows(start: i64, end: i64, max_span_days: u32) -> Result<Vec<(i64, i64)>, Error> {
    if end < start {
        return Err(Error::InvalidRequest("time window ends before it starts".into()));
    }
    let span = i64::from(max_span_days.max(1)) * MS_PER_DAY;
    let mut out = Vec::new();
    let mut s = start;
    while s <= end {
        let e = s.saturating_add(span - 1).min(end);
        out.push((s, e));
        if out.len() > 10_000 {
            return Err(Error::InvalidRequest("time window spans too many sub-windows".into()));
        }
        s = e + 1;
    }
    Ok(out)
}

struct Walk {
    client: Client,
    account: String,
    base: Request,
    pager: Pager,
    opts: PageOptions,
    buffer: VecDeque<Value>,
    yielded: usize,
    finished: bool,
}

impl Client {
    /// Streams the items of a list endpoint. `base` carries everything but the paging
    /// parameters; `items_path` selects the items in each response (the catalog's
    /// `trigger.items`). Pages are fetched lazily: dropping the stream stops the walk.
    pub fn paginate(
        &self,
        account: &str,
        base: Request,
        pagination: &Pagination,
        items_path: &str,
        opts: PageOptions,
    ) -> Result<ItemStream, Error> {
        let pager = Pager::new(pagination, items_path, &opts)?;
        let walk = Walk {
            client: self.clone(),
            account: account.to_owned(),
            base,
            pager,
            opts,
            buffer: VecDeque::new(),
            yielded: 0,
            finished: false,
        };
        Ok(Box::pin(futures::stream::unfold(walk, step)))
    }
}

async fn step(mut w: Walk) -> Option<(Result<Value, Error>, Walk)> {
    loop {
        if w.finished || w.yielded >= w.opts.max_items {
            return None;
        }
        if let Some(item) = w.buffer.pop_front() {
            if w.opts.stop_when.as_ref().is_some_and(|stop| stop(&item)) {
                return None;
            }
            w.yielded += 1;
            return Some((Ok(item), w));
        }
        if w.pager.pages() >= w.opts.max_pages {
            if !w.pager.is_done() {
                tracing::warn!(pages = w.pager.pages(), path = %w.base.path, "pagination stopped at max_pages; later pages were not read");
            }
            return None;
        }
        let req = match w.pager.next_request(&w.base) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                w.finished = true;
                return Some((Err(e), w));
            }
        };
        let page = match w.client.inner().send(&w.account, &req).await {
            Ok(body) => w.pager.absorb(body),
            Err(e) => Err(e),
        };
        match page {
            Ok(items) => w.buffer.extend(items),
            Err(e) => {
                w.finished = true;
                return Some((Err(e), w));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn a_result_moved_out_of_a_response_is_the_first_value_the_path_selects() {
        let docs = [
            json!({"task": {"id": "t1", "title": "Hi"}, "traceId": "x"}),
            json!({"task": null}),
            json!({"data": {"task": {"id": 2}}}),
            json!({"task": [1, 2]}),
            json!([{"task": 1}]),
            json!(null),
            json!({}),
        ];
        let paths = ["$", "$.task", "$.data.task", "$.task[0]", "$..id", "$.missing"];
        for path in paths {
            let p = JsonPath::parse(path).unwrap();
            for doc in &docs {
                let want = p.first(doc).cloned().ok_or_else(|| doc.clone());
                assert_eq!(p.take_first(doc.clone()), want, "{path} over {doc}");
            }
        }
    }

    #[test]
    fn items_moved_out_of_a_page_are_the_items_the_path_selects() {
        let docs = [
            json!({"contacts": [{"id": 1}, null, {"id": 2}], "total": 2}),
            json!({"contacts": {"a": {"id": 1}, "b": {"id": 2}}}),
            json!({"contacts": "nope"}),
            json!({"data": {"items": [1, 2, 3]}}),
            json!([{"id": 1}, {"id": 2}]),
            json!({}),
        ];
        let paths = ["$.contacts[*]", "$.data.items[*]", "$[*]", "$.contacts", "$..id", "$.contacts[0]"];
        for path in paths {
            let p = JsonPath::parse(path).unwrap();
            for doc in &docs {
                let want: Vec<Value> = p.select(doc).into_iter().filter(|v| !v.is_null()).cloned().collect();
                assert_eq!(p.take_all(doc.clone()), want, "{path} over {doc}");
            }
        }
        assert!(JsonPath::parse("$.contacts[*]").unwrap().array_fields.is_some());
        assert!(JsonPath::parse("$[*]").unwrap().array_fields.is_some());
        assert!(JsonPath::parse("$..id").unwrap().array_fields.is_none());
        assert!(JsonPath::parse("$['a b'][*]").unwrap().array_fields.is_none());
    }

    fn offset(has_more: Option<&str>) -> Pagination {
        Pagination::Offset {
            location: ParamIn::Query,
            offset_param: "skip".into(),
            limit_param: "limit".into(),
            limit: 2,
            max_limit: Some(3),
            has_more: has_more.map(str::to_owned),
        }
    }

    fn q(r: &Request, k: &str) -> Option<Value> {
        r.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    /// Feeds pages to a pager and records the requests it makes.
    fn walk(p: &mut Pager, pages: &[Value]) -> (Vec<Request>, Vec<Value>, Option<Error>) {
        let base = Request::get("/x");
        let (mut reqs, mut items) = (Vec::new(), Vec::new());
        for page in pages {
            match p.next_request(&base).unwrap() {
                Some(r) => reqs.push(r),
                None => break,
            }
            match p.absorb(Body::Json(page.clone())) {
                Ok(i) => items.extend(i),
                Err(e) => return (reqs, items, Some(e)),
            }
        }
        assert!(p.is_done() || reqs.len() == pages.len());
        (reqs, items, None)
    }

    #[test]
    fn offset_pages_until_short_page() {
        let mut p = Pager::new(&offset(None), "$.items[*]", &PageOptions::default()).unwrap();
        let pages = [json!({"items": [1, 2]}), json!({"items": [3, 4]}), json!({"items": [5]}), json!({"items": [9]})];
        let (reqs, items, err) = walk(&mut p, &pages);
        assert!(err.is_none());
        assert_eq!(items, vec![json!(1), json!(2), json!(3), json!(4), json!(5)]);
        assert_eq!(reqs.len(), 3);
        assert_eq!(q(&reqs[2], "skip"), Some(json!(4)));
        assert_eq!(q(&reqs[0], "limit"), Some(json!(2)));
        assert!(p.is_done());
    }

    #[test]
    fn offset_obeys_has_more_and_page_size_cap() {
        let opts = PageOptions { page_size: Some(50), ..Default::default() };
        let mut p = Pager::new(&offset(Some("$.hasMore")), "$.items[*]", &opts).unwrap();
        let pages = [json!({"items": [1, 2, 3], "hasMore": true}), json!({"items": [4, 5, 6], "hasMore": false})];
        let (reqs, items, _) = walk(&mut p, &pages);
        assert_eq!(q(&reqs[0], "limit"), Some(json!(3)), "capped at max_limit");
        assert_eq!(items.len(), 6);
        assert!(p.is_done());
    }

    #[test]
    fn offset_advances_by_what_arrived() {
        let mut p = Pager::new(&offset(Some("$.hasMore")), "$.items[*]", &PageOptions::default()).unwrap();
        let pages = [json!({"items": [1], "hasMore": true}), json!({"items": [2], "hasMore": false})];
        let (reqs, items, _) = walk(&mut p, &pages);
        assert_eq!(q(&reqs[1], "skip"), Some(json!(1)));
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn page_style_in_body_counts_from_one() {
        let pg = Pagination::Page {
            location: ParamIn::Body,
            page_param: "page".into(),
            limit_param: "pageLimit".into(),
            limit: 2,
        };
        let mut p = Pager::new(&pg, "$.contacts[*]", &PageOptions::default()).unwrap();
        let pages = [json!({"contacts": [{"id": 1}, {"id": 2}]}), json!({"contacts": []})];
        let (reqs, items, _) = walk(&mut p, &pages);
        assert_eq!(reqs[0].body, Some(json!({"pageLimit": 2, "page": 1})));
        assert_eq!(reqs[1].body, Some(json!({"pageLimit": 2, "page": 2})));
        assert_eq!(items.len(), 2);
        assert!(p.is_done());
    }

    fn cursor() -> Pagination {
        let mut c = BTreeMap::new();
        c.insert("startAfter".to_owned(), "$.meta.startAfter".to_owned());
        c.insert("startAfterId".to_owned(), "$.meta.startAfterId".to_owned());
        Pagination::Cursor {
            location: ParamIn::Query,
            limit_param: "limit".into(),
            limit: 2,
            max_limit: None,
            cursor: c,
            has_more: None,
        }
    }

    #[test]
    fn cursor_follows_values_and_stops_on_repeat() {
        let mut p = Pager::new(&cursor(), "$.contacts[*]", &PageOptions::default()).unwrap();
        let pages = [
            json!({"contacts": [1, 2], "meta": {"startAfter": 10, "startAfterId": "b"}}),
            json!({"contacts": [3, 4], "meta": {"startAfter": 20, "startAfterId": "d"}}),
            json!({"contacts": [3, 4], "meta": {"startAfter": 20, "startAfterId": "d"}}),
        ];
        let (reqs, items, err) = walk(&mut p, &pages);
        assert_eq!(q(&reqs[0], "startAfter"), None);
        assert_eq!(q(&reqs[1], "startAfter"), Some(json!(10)));
        assert_eq!(q(&reqs[2], "startAfterId"), Some(json!("d")));
        assert_eq!(items.len(), 4);
        assert!(matches!(err, Some(Error::Pagination(m)) if m.contains("same cursor")));
    }

    #[test]
    fn cursor_stops_without_cursor_or_on_has_more_false() {
        let mut p = Pager::new(&cursor(), "$.contacts[*]", &PageOptions::default()).unwrap();
        let (_, items, _) = walk(&mut p, &[json!({"contacts": [1, 2], "meta": {}})]);
        assert_eq!(items.len(), 2);
        assert!(p.is_done());
        let mut c = BTreeMap::new();
        c.insert("lastMessageId".to_owned(), "$.messages.lastMessageId".to_owned());
        let pg = Pagination::Cursor {
            location: ParamIn::Query,
            limit_param: "limit".into(),
            limit: 2,
            max_limit: None,
            cursor: c,
            has_more: Some("$.messages.nextPage".into()),
        };
        let mut p = Pager::new(&pg, "$.messages.messages[*]", &PageOptions::default()).unwrap();
        let page = json!({"messages": {"messages": [1, 2], "lastMessageId": "m2", "nextPage": false}});
        let (_, items, _) = walk(&mut p, &[page]);
        assert_eq!(items.len(), 2);
        assert!(p.is_done());
    }

    #[test]
    fn last_item_uses_field_and_detects_loops() {
        let pg = Pagination::LastItem {
            location: ParamIn::Query,
            param: "startAfterDate".into(),
            field: "lastMessageDate".into(),
            limit_param: "limit".into(),
            limit: 2,
        };
        let mut p = Pager::new(&pg, "$.conversations[*]", &PageOptions::default()).unwrap();
        let a = json!({"conversations": [{"lastMessageDate": 5}, {"lastMessageDate": 4}]});
        let b = json!({"conversations": [{"lastMessageDate": 3}]});
        let (reqs, items, err) = walk(&mut p, &[a.clone(), b]);
        assert!(err.is_none());
        assert_eq!(q(&reqs[1], "startAfterDate"), Some(json!(4)));
        assert_eq!(items.len(), 3);
        let mut p = Pager::new(&pg, "$.conversations[*]", &PageOptions::default()).unwrap();
        let (_, _, err) = walk(&mut p, &[a.clone(), a]);
        assert!(matches!(err, Some(Error::Pagination(_))));
    }

    #[test]
    fn time_windows_are_disjoint_and_cover_the_range() {
        let w = split_windows(0, 3 * MS_PER_DAY, 1).unwrap();
        assert_eq!(
            w,
            vec![
                (0, MS_PER_DAY - 1),
                (MS_PER_DAY, 2 * MS_PER_DAY - 1),
                (2 * MS_PER_DAY, 3 * MS_PER_DAY - 1),
                (3 * MS_PER_DAY, 3 * MS_PER_DAY)
            ]
        );
        assert!(split_windows(5, 4, 1).is_err());
        let pg = Pagination::TimeWindow {
            start_param: "startTime".into(),
            end_param: "endTime".into(),
            unit: TimeUnit::EpochMs,
            max_span_days: 31,
        };
        assert!(Pager::new(&pg, "$.events[*]", &PageOptions::default()).is_err());
        let start = DateTime::from_timestamp_millis(0).unwrap();
        let end = DateTime::from_timestamp_millis(40 * MS_PER_DAY).unwrap();
        let opts = PageOptions { window: Some((start, end)), ..Default::default() };
        let mut p = Pager::new(&pg, "$.events[*]", &opts).unwrap();
        let (reqs, items, _) = walk(&mut p, &[json!({"events": [1]}), json!({"events": [2]}), json!({"events": [3]})]);
        assert_eq!(reqs.len(), 2);
        assert_eq!(q(&reqs[1], "startTime"), Some(json!(31 * MS_PER_DAY)));
        assert_eq!(q(&reqs[1], "endTime"), Some(json!(40 * MS_PER_DAY)));
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn single_record_and_download() {
        let mut p = Pager::new(&Pagination::SingleRecord, "$.contact", &PageOptions::default()).unwrap();
        let (reqs, items, _) = walk(&mut p, &[json!({"contact": {"id": "c1"}}), json!({})]);
        assert_eq!(reqs.len(), 1);
        assert_eq!(items, vec![json!({"id": "c1"})]);
        let mut p = Pager::new(&Pagination::SingleFile, "$", &PageOptions::default()).unwrap();
        let items = p.absorb(Body::Text { content_type: "text/plain".into(), text: "hi".into() }).unwrap();
        assert_eq!(items, vec![json!("hi")]);
        assert!(p.is_done());
    }

    #[test]
    fn bad_paths_and_locations_are_refused() {
        assert!(Pager::new(&Pagination::None, "$[", &PageOptions::default()).is_err());
        let pg =
            Pagination::Page { location: ParamIn::Path, page_param: "p".into(), limit_param: "l".into(), limit: 1 };
        assert!(Pager::new(&pg, "$", &PageOptions::default()).is_err());
    }
}
