//! Contacts, their tasks, notes, tags, followers and campaign/workflow enrolment; plus
//! the workflows and campaigns lists.

use axum::http::StatusCode;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};

use super::{
    add_to_set, created, field_is, k, merge, new_record, not_found, ok, remove_from_set, require_ref, serialized,
    strings, text_matches, to_values, Ctx, HandlerFn, Reply,
};
use crate::clock::parse_ms;
use crate::error::ApiError;
use crate::paginate::{uint, window};
use crate::store::{str_of, Record};

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "contacts.get_contact" => get_contact,
        "contacts.search_contacts" => search_contacts,
        "contacts.get_contacts_by_business" => contacts_by_business,
        "contacts.get_duplicate_contact" | "contacts.find_contact" => duplicate_contact,
        "contacts.get_contact_appointments" => contact_appointments,
        "contacts.get_contact_tasks" => contact_tasks,
        "contacts.get_contact_task" => contact_task,
        "contacts.get_contact_notes" => contact_notes,
        "contacts.get_contact_note" => contact_note,
        "contacts.list_contacts_deprecated" => list_contacts,
        "contacts.create_contact" => create_contact,
        "contacts.update_contact" => update_contact,
        "contacts.delete_contact" => delete_contact,
        "contacts.upsert_contact" => upsert_contact,
        "contacts.add_tags" => add_tags,
        "contacts.remove_tags" => remove_tags,
        "contacts.bulk_update_tags" => bulk_tags,
        "contacts.create_task" => create_task,
        "contacts.update_task" => update_task,
        "contacts.complete_task" => complete_task,
        "contacts.delete_task" => delete_task,
        "contacts.create_note" => create_note,
        "contacts.update_note" => update_note,
        "contacts.delete_note" => delete_note,
        "contacts.add_to_campaign" => add_to_campaign,
        "contacts.remove_from_campaign" => remove_from_campaign,
        "contacts.remove_from_all_campaigns" => remove_from_all_campaigns,
        "contacts.add_followers" => add_followers,
        "contacts.remove_followers" => remove_followers,
        "workflows.list_workflows" => list_workflows,
        "workflows.add_contact_to_workflow" => workflow_enrol,
        "workflows.remove_contact_from_workflow" => workflow_enrol,
        "campaigns.list_campaigns" => list_campaigns,
        _ => return None,
    })
}

const CONTACT: &str = "contact";

/// A field GHL always fills on a contact, and its default.
type FieldDefault = (&'static str, fn() -> Value);

/// Defaults are built only when missing: this runs on every contact written.
const CONTACT_DEFAULTS: [FieldDefault; 7] = [
    ("tags", || json!([])),
    ("customFields", || json!([])),
    ("followers", || json!([])),
    ("attachments", || json!("")),
    ("type", || json!("lead")),
    ("dnd", || json!(false)),
    ("source", || json!("public api")),
];

/// Fills the derived fields GHL keeps on a contact (names, lower-case copies, defaults).
pub fn normalise_contact(r: &mut Record) {
    let first = str_of(r, "firstName").unwrap_or_default().to_string();
    let last = str_of(r, "lastName").unwrap_or_default().to_string();
    if (!first.is_empty() || !last.is_empty()) && r.get("name").is_none_or(Value::is_null) {
        r.insert("name".into(), json!(format!("{first} {last}").trim().to_string()));
    }
    let full = str_of(r, "name").map(str::to_lowercase);
    r.insert("firstNameLowerCase".into(), json!(first.to_lowercase()));
    r.insert("lastNameLowerCase".into(), json!(last.to_lowercase()));
    r.insert("fullNameLowerCase".into(), json!(full.unwrap_or_default()));
    let email = str_of(r, "email").map(str::to_lowercase);
    r.insert("emailLowerCase".into(), email.map(Value::String).unwrap_or(Value::Null));
    for (field, default) in CONTACT_DEFAULTS {
        if r.get(field).is_none_or(Value::is_null) {
            r.insert(field.into(), default());
        }
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// A contact of the location with this email or phone (GHL's duplicate rule).
fn find_duplicate(ctx: &Ctx, email: Option<&str>, phone: Option<&str>) -> Option<Record> {
    let loc = ctx.loc();
    let email = email.map(str::to_lowercase);
    let phone = phone.map(digits).filter(|p| !p.is_empty());
    let col = ctx.st.store.read(k::CONTACTS);
    let found = col
        .iter()
        .find(|r| {
            field_is(r, "locationId", &loc)
                && (email.as_deref().is_some_and(|e| str_of(r, "emailLowerCase") == Some(e))
                    || phone.as_deref().is_some_and(|p| str_of(r, "phone").map(digits).as_deref() == Some(p)))
        })
        .cloned();
    found
}

fn get_contact(ctx: &Ctx) -> Result<Reply, ApiError> {
    let c = ctx.fetch(k::CONTACTS, ctx.p("contactId"), CONTACT)?;
    ok(json!({ "contact": c }))
}

fn duplicate_contact(ctx: &Ctx) -> Result<Reply, ApiError> {
    let email = ctx.q("email");
    let number = ctx.q("number");
    let c = if email.is_none() && number.is_none() { None } else { find_duplicate(ctx, email, number) };
    ok(json!({ "contact": c }))
}

fn create_contact(ctx: &Ctx) -> Result<Reply, ApiError> {
    if let Some(dup) = find_duplicate(ctx, ctx.b_str("email"), ctx.b_str("phone")) {
        let mut e = ApiError::bad_request("This location does not allow duplicated contacts.");
        e.message = json!(format!(
            "This location does not allow duplicated contacts. Existing contact id: {}",
            str_of(&dup, "id").unwrap_or_default()
        ));
        return Err(e);
    }
    let now = ctx.now();
    let mut r = new_record(ctx, ctx.declared_body());
    r.insert("dateAdded".into(), json!(now));
    r.insert("dateUpdated".into(), json!(now));
    r.insert("deleted".into(), json!(false));
    normalise_contact(&mut r);
    ctx.create_wrapped(k::CONTACTS, "contact", r)
}

fn touch(ctx: &Ctx, r: &mut Record) {
    r.insert("dateUpdated".into(), json!(ctx.now()));
}

fn update_contact(ctx: &Ctx) -> Result<Reply, ApiError> {
    let fields = ctx.declared_body();
    let c = ctx.update(k::CONTACTS, ctx.p("contactId"), CONTACT, |r| {
        merge(r, fields);
        normalise_contact(r);
        touch(ctx, r);
    })?;
    ok(json!({ "succeded": true, "contact": c }))
}

fn delete_contact(ctx: &Ctx) -> Result<Reply, ApiError> {
    let id = ctx.p("contactId").to_string();
    ctx.delete(k::CONTACTS, &id, CONTACT)?;
    // Tasks and notes go with their contact, as in GHL.
    for kind in [k::TASKS, k::NOTES] {
        let ids: Vec<String> =
            ctx.st.store.read(kind).iter().filter(|r| field_is(r, "contactId", &id)).map(super::id_of).collect();
        let mut col = ctx.st.store.write(kind);
        for t in ids {
            col.remove(&t);
        }
    }
    ok(json!({ "succeded": true }))
}

fn upsert_contact(ctx: &Ctx) -> Result<Reply, ApiError> {
    let trace = ctx.st.trace_id();
    let fields = ctx.declared_body();
    let allow_dup = ctx.b("createNewIfDuplicateAllowed").and_then(Value::as_bool).unwrap_or(false);
    let existing = if allow_dup { None } else { find_duplicate(ctx, ctx.b_str("email"), ctx.b_str("phone")) };
    match existing {
        Some(e) => {
            let id = super::id_of(&e);
            let c = ctx.update(k::CONTACTS, &id, CONTACT, |r| {
                merge(r, fields);
                r.remove("createNewIfDuplicateAllowed");
                normalise_contact(r);
                touch(ctx, r);
            })?;
            ok(json!({ "new": false, "contact": c, "traceId": trace }))
        }
        None => {
            let now = ctx.now();
            let mut r = new_record(ctx, fields);
            r.remove("createNewIfDuplicateAllowed");
            r.insert("dateAdded".into(), json!(now));
            r.insert("dateUpdated".into(), json!(now));
            normalise_contact(&mut r);
            ok(json!({ "new": true, "contact": ctx.insert(k::CONTACTS, r), "traceId": trace }))
        }
    }
}

/// A filter `{field, operator, value}` or a group `{group: "AND"|"OR", filters: [...]}`.
fn filter_matches(r: &Record, f: &Value) -> bool {
    if let Some(group) = f.get("filters").and_then(Value::as_array) {
        let or = f.get("group").and_then(Value::as_str).is_some_and(|g| g.eq_ignore_ascii_case("OR"));
        return if or {
            group.iter().any(|g| filter_matches(r, g))
        } else {
            group.iter().all(|g| filter_matches(r, g))
        };
    }
    let Some(field) = f.get("field").and_then(Value::as_str) else { return true };
    let op = f.get("operator").and_then(Value::as_str).unwrap_or("eq");
    let want = f.get("value").cloned().unwrap_or(Value::Null);
    let have = r.get(field).cloned().unwrap_or(Value::Null);
    let text = |v: &Value| match v {
        Value::String(s) => s.to_lowercase(),
        Value::Null => String::new(),
        other => other.to_string().to_lowercase(),
    };
    let eq = |h: &Value, w: &Value| match (h, w) {
        (Value::Array(items), Value::Array(ws)) => ws.iter().all(|w| items.iter().any(|i| text(i) == text(w))),
        (Value::Array(items), w) => items.iter().any(|i| text(i) == text(w)),
        (h, Value::Array(ws)) => ws.iter().any(|w| text(h) == text(w)),
        (h, w) => text(h) == text(w),
    };
    let num = |v: &Value| parse_ms(v).or_else(|| v.as_f64().map(|f| f as i64));
    match op {
        "eq" => eq(&have, &want),
        "not_eq" => !eq(&have, &want),
        "contains" => text(&have).contains(&text(&want)),
        "not_contains" => !text(&have).contains(&text(&want)),
        "exists" => !have.is_null() && !text(&have).is_empty() && have != json!([]),
        "not_exists" => have.is_null() || text(&have).is_empty() || have == json!([]),
        "range" => {
            let Some(h) = num(&have) else { return false };
            let bound = |k: &str| want.get(k).and_then(num);
            bound("gt").is_none_or(|b| h > b)
                && bound("gte").is_none_or(|b| h >= b)
                && bound("lt").is_none_or(|b| h < b)
                && bound("lte").is_none_or(|b| h <= b)
        }
        _ => true,
    }
}

/// `POST /contacts/search` as GHL documents it (`../shared/ghl-api/docs/contacts-search.md`):
/// `pageLimit` required (at most 500); `page` or `searchAfter`, never both; page numbers
/// reach 10,000 records at most; without `sort` the order is a fixed shuffle, not time;
/// records appear only [`crate::SandboxConfig::index_lag`] after their last write.
fn search_contacts(ctx: &Ctx) -> Result<Reply, ApiError> {
    let page_limit = match ctx.b("pageLimit") {
        None => return Err(ApiError::unprocessable(vec!["pageLimit should not be empty".into()])),
        Some(v) => uint(Some(v)).unwrap_or(0),
    };
    if page_limit == 0 || page_limit > 500 {
        return Err(ApiError::unprocessable(vec!["pageLimit must not be greater than 500".into()]));
    }
    let search_after = match ctx.b("searchAfter") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.len() == 2 => Some(a.clone()),
        Some(_) => {
            return Err(ApiError::unprocessable(vec!["searchAfter must be the searchAfter of a contact".into()]))
        }
    };
    if search_after.is_some() && ctx.b("page").is_some() {
        return Err(ApiError::unprocessable(vec!["page and searchAfter cannot be used together".into()]));
    }
    let page = uint(ctx.b("page")).unwrap_or(1).max(1);
    if search_after.is_none() && page.saturating_mul(page_limit) > MAX_PAGED_RECORDS {
        return Err(ApiError::unprocessable(vec![format!(
            "page * pageLimit must not exceed {MAX_PAGED_RECORDS}; use searchAfter to read further"
        )]));
    }
    let query = ctx.b_str("query").map(str::to_lowercase);
    if query.as_ref().is_some_and(|q| q.chars().count() > 75) {
        return Err(ApiError::unprocessable(vec!["query must be shorter than or equal to 75 characters".into()]));
    }
    let filters: Vec<Value> = match ctx.b("filters") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(f)) => f.clone(),
        Some(_) => return Err(ApiError::unprocessable(vec!["filters must be an array".into()])),
    };
    for f in &filters {
        check_filter(f).map_err(|m| ApiError::unprocessable(vec![m]))?;
    }
    let sort = match ctx.b("sort") {
        None | Some(Value::Null) => None,
        Some(Value::Array(s)) if s.is_empty() => None,
        Some(Value::Array(s)) => {
            let first = &s[0];
            let Some(field) = first.get("field").and_then(Value::as_str) else {
                return Err(ApiError::unprocessable(vec!["sort.field should not be empty".into()]));
            };
            let desc = match first.get("direction").and_then(Value::as_str) {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(_) => return Err(ApiError::unprocessable(vec!["sort.direction must be one of asc, desc".into()])),
            };
            Some((field.to_string(), desc))
        }
        Some(_) => return Err(ApiError::unprocessable(vec!["sort must be an array".into()])),
    };
    let loc = ctx.loc();
    // The index holds what was written at least `index_lag` ago.
    let lag = ctx.st.index_lag_ms;
    let indexed_by = ctx.st.store.clock.wall_ms() - lag;
    let col = ctx.st.store.read(k::CONTACTS);
    let matches = |r: &Record| {
        field_is(r, "locationId", &loc)
            && (lag == 0 || last_write_ms(r) <= indexed_by)
            && query
                .as_ref()
                .is_none_or(|q| text_matches(r, &["name", "email", "phone", "companyName", "firstName", "lastName"], q))
            && filters.iter().all(|f| filter_matches(r, f))
    };
    // Each key is built once, not per comparison: a location can hold 10,000s.
    let mut hits: Vec<(SortKey, &str, &Record)> = col
        .iter()
        .filter(|r| matches(r))
        .map(|r| {
            let key = match &sort {
                Some((field, _)) => SortKey::of(r, field),
                None => SortKey::Num(shuffle(str_of(r, "id").unwrap_or_default())),
            };
            (key, str_of(r, "id").unwrap_or_default(), r)
        })
        .collect();
    let desc = sort.as_ref().is_some_and(|(_, d)| *d);
    hits.sort_by(|a, b| {
        let o = (&a.0, a.1).cmp(&(&b.0, b.1));
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    let total = hits.len();
    let start = match &search_after {
        // Strictly after the cursor in this order, whether or not that contact still exists.
        Some(after) => {
            let key = SortKey::from_cursor(&after[0]);
            let id = after[1].as_str().unwrap_or_default();
            hits.partition_point(|(k, i, _)| {
                let o = (k, *i).cmp(&(&key, id));
                if desc {
                    o == std::cmp::Ordering::Greater
                } else {
                    o != std::cmp::Ordering::Greater
                }
            })
        }
        None => (page - 1).saturating_mul(page_limit),
    };
    let contacts: Vec<SearchHit> = hits
        .iter()
        .skip(start)
        .take(page_limit)
        .map(|(key, id, r)| SearchHit { record: r, cursor: (key.to_cursor(), id) })
        .collect();
    // Written straight from the store under its read lock: a page can be 500 contacts.
    let capacity = 64 + contacts.len() * SEARCH_HIT_BYTES;
    serialized(StatusCode::OK, &SearchPage { contacts, total }, capacity)
}

/// Page-number paging of the search reaches this many records at most.
const MAX_PAGED_RECORDS: usize = 10_000;

/// Contact fields that hold dates: they sort and compare as instants, not as text.
const DATE_FIELDS: &[&str] = &["dateAdded", "dateUpdated", "dateOfBirth", "lastActivity"];

/// When a contact was last written (what the search index lags behind).
fn last_write_ms(r: &Record) -> i64 {
    r.get("dateUpdated").or_else(|| r.get("dateAdded")).and_then(parse_ms).unwrap_or(0)
}

/// A fixed pseudo-random rank per id (FNV-1a), so unsorted results are in no time order
/// but page the same way on every request.
fn shuffle(id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// A search hit's sort value: instants for date fields, else lowercase text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SortKey {
    Num(i64),
    Text(String),
}

impl SortKey {
    fn of(r: &Record, field: &str) -> SortKey {
        let v = r.get(field).unwrap_or(&Value::Null);
        if DATE_FIELDS.contains(&field) {
            return SortKey::Num(parse_ms(v).unwrap_or(0));
        }
        match v {
            Value::Number(n) => SortKey::Num(n.as_i64().unwrap_or(0)),
            Value::String(s) => SortKey::Text(s.to_lowercase()),
            Value::Null => SortKey::Text(String::new()),
            other => SortKey::Text(other.to_string().to_lowercase()),
        }
    }

    fn from_cursor(v: &Value) -> SortKey {
        match v {
            Value::Number(n) => SortKey::Num(n.as_i64().unwrap_or(0)),
            Value::String(s) => SortKey::Text(s.clone()),
            _ => SortKey::Text(String::new()),
        }
    }

    fn to_cursor(&self) -> Value {
        match self {
            SortKey::Num(n) => Value::from(*n),
            SortKey::Text(s) => Value::from(s.as_str()),
        }
    }
}

/// The operators GHL's search documents; anything else is refused, as GHL does.
fn check_filter(f: &Value) -> Result<(), String> {
    if let Some(group) = f.get("filters") {
        let Some(group) = group.as_array() else { return Err("filters.filters must be an array".into()) };
        return group.iter().try_for_each(check_filter);
    }
    let Some(field) = f.get("field").and_then(Value::as_str) else {
        return Err("filters.field should not be empty".into());
    };
    let op = f.get("operator").and_then(Value::as_str).unwrap_or_default();
    let value = f.get("value");
    match op {
        "eq" | "not_eq" | "contains" | "not_contains" => match value {
            Some(Value::String(s)) if s.chars().count() > 75 => {
                Err(format!("filters: the value for {field} is longer than 75 characters"))
            }
            Some(Value::Null) | None => Err(format!("filters: {op} on {field} needs a value")),
            Some(_) => Ok(()),
        },
        "exists" | "not_exists" => Ok(()),
        "range" => {
            let Some(bounds) = value.and_then(Value::as_object) else {
                return Err(format!("filters: range on {field} needs an object of gt, gte, lt, lte"));
            };
            if bounds.is_empty() || bounds.keys().any(|k| !matches!(k.as_str(), "gt" | "gte" | "lt" | "lte")) {
                return Err(format!("filters: range on {field} takes only gt, gte, lt, lte"));
            }
            if bounds.values().any(|b| parse_ms(b).is_none() && !b.is_number()) {
                return Err(format!("filters: range bounds on {field} must be dates or numbers"));
            }
            Ok(())
        }
        other => Err(format!(
            "filters: operator `{other}` must be one of eq, not_eq, contains, not_contains, exists, not_exists, range"
        )),
    }
}

/// About the size of one serialised contact, to size a search page's buffer up front.
const SEARCH_HIT_BYTES: usize = 1024;

/// A search reply: `{"contacts": [...], "total": n}`.
#[derive(serde::Serialize)]
struct SearchPage<'a> {
    contacts: Vec<SearchHit<'a>>,
    total: usize,
}

/// A stored contact plus its `searchAfter` cursor (`[sort value, id]`), serialised as the
/// record with that field set would be (`Map::insert` order: an existing `searchAfter`
/// keeps its place, a new one comes last), without copying the record.
struct SearchHit<'a> {
    record: &'a Record,
    cursor: (Value, &'a str),
}

impl Serialize for SearchHit<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const FIELD: &str = "searchAfter";
        let has_field = self.record.contains_key(FIELD);
        let mut map = serializer.serialize_map(Some(self.record.len() + usize::from(!has_field)))?;
        for (key, value) in self.record {
            if key == FIELD {
                map.serialize_entry(key, &self.cursor)?;
            } else {
                map.serialize_entry(key, value)?;
            }
        }
        if !has_field {
            map.serialize_entry(FIELD, &self.cursor)?;
        }
        map.end()
    }
}

fn contacts_by_business(ctx: &Ctx) -> Result<Reply, ApiError> {
    let business = ctx.p("businessId").to_string();
    let query = ctx.q("query").map(str::to_string);
    let all = ctx.list(k::CONTACTS, |r| {
        field_is(r, "businessId", &business)
            && query.as_deref().is_none_or(|q| text_matches(r, &["name", "email", "phone"], q))
    });
    let (skip, limit) = ctx.offset_query("skip", "limit", 25);
    let count = all.len();
    ok(json!({ "contacts": to_values(window(&all, skip, limit)), "count": count }))
}

fn list_contacts(ctx: &Ctx) -> Result<Reply, ApiError> {
    let limit = uint(ctx.query.get("limit")).unwrap_or(20);
    if limit > 100 {
        return Err(ApiError::unprocessable(vec!["limit must not be greater than 100".into()]));
    }
    let query = ctx.q("query").map(str::to_string);
    let loc = ctx.loc();
    // Sort references under the read lock and clone only the page: the list may be huge.
    let col = ctx.st.store.read(k::CONTACTS);
    let mut all: Vec<(i64, &str, &Record)> = col
        .iter()
        .filter(|r| field_is(r, "locationId", &loc))
        .filter(|r| query.as_deref().is_none_or(|q| text_matches(r, &["name", "email", "phone", "companyName"], q)))
        .map(|r| (r.get("dateAdded").and_then(parse_ms).unwrap_or(0), str_of(r, "id").unwrap_or_default(), r))
        .collect();
    all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let total = all.len();
    let after_ms = ctx.query.get("startAfter").and_then(parse_ms);
    let after_id = ctx.q("startAfterId").unwrap_or_default();
    let start = match after_ms {
        Some(ms) => all.partition_point(|(t, id, _)| (*t, *id) <= (ms, after_id)),
        None => 0,
    };
    let page: Vec<Record> = all.iter().skip(start).take(limit.max(1)).map(|(_, _, r)| (*r).clone()).collect();
    drop(all);
    drop(col);
    let more = start + page.len() < total;
    let last = page.last();
    let (next_ms, next_id) = match (more, last) {
        (true, Some(l)) => (l.get("dateAdded").and_then(parse_ms).map(Value::from), l.get("id").cloned()),
        _ => (None, None),
    };
    let next_url = match (&next_ms, &next_id) {
        (Some(ms), Some(id)) => json!(format!(
            "/contacts/?locationId={}&startAfter={}&startAfterId={}&limit={}",
            ctx.loc(),
            ms,
            id.as_str().unwrap_or_default(),
            limit
        )),
        _ => Value::Null,
    };
    let current = start / limit.max(1) + 1;
    ok(json!({
        "contacts": to_values(page),
        "count": total,
        "meta": {
            "total": total,
            "nextPageUrl": next_url,
            "startAfterId": next_id,
            "startAfter": next_ms,
            "currentPage": current,
            "nextPage": if more { json!(current + 1) } else { Value::Null },
            "prevPage": if current > 1 { json!(current - 1) } else { Value::Null },
        }
    }))
}

fn contact_appointments(ctx: &Ctx) -> Result<Reply, ApiError> {
    let id = ctx.fetch(k::CONTACTS, ctx.p("contactId"), CONTACT).map(|c| super::id_of(&c))?;
    let events = ctx.list(k::EVENTS, |r| {
        field_is(r, "contactId", &id) && !r.get("isBlockSlot").and_then(Value::as_bool).unwrap_or(false)
    });
    let events: Vec<Value> = events.into_iter().map(|e| Value::Object(super::calendars::public_event(e))).collect();
    ok(json!({ "events": events }))
}

fn children(ctx: &Ctx, kind: &str) -> Result<Vec<Record>, ApiError> {
    let id = ctx.fetch(k::CONTACTS, ctx.p("contactId"), CONTACT).map(|c| super::id_of(&c))?;
    Ok(ctx.list(kind, |r| field_is(r, "contactId", &id)))
}

/// A task or note by id that must belong to the contact in the path.
fn child(ctx: &Ctx, kind: &str, id: &str, noun: &str) -> Result<Record, ApiError> {
    let r = ctx.fetch(kind, id, noun)?;
    if !field_is(&r, "contactId", ctx.p("contactId")) {
        return Err(not_found(noun));
    }
    Ok(r)
}

fn contact_tasks(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "tasks": to_values(children(ctx, k::TASKS)?) }))
}

fn contact_task(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "task": child(ctx, k::TASKS, ctx.p("taskId"), "task")? }))
}

fn contact_notes(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "notes": to_values(children(ctx, k::NOTES)?) }))
}

fn contact_note(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "note": child(ctx, k::NOTES, ctx.p("id"), "note")? }))
}

fn add_tags(ctx: &Ctx) -> Result<Reply, ApiError> {
    let tags = strings(ctx.b("tags"));
    let tags = ctx.update_with(k::CONTACTS, ctx.p("contactId"), CONTACT, |r| {
        add_to_set(r, "tags", &tags);
        touch(ctx, r);
        r.get("tags").cloned()
    })?;
    created(json!({ "tags": tags.unwrap_or(json!([])) }))
}

fn remove_tags(ctx: &Ctx) -> Result<Reply, ApiError> {
    let tags = strings(ctx.b("tags"));
    let tags = ctx.update_with(k::CONTACTS, ctx.p("contactId"), CONTACT, |r| {
        remove_from_set(r, "tags", &tags);
        touch(ctx, r);
        r.get("tags").cloned()
    })?;
    ok(json!({ "tags": tags.unwrap_or(json!([])) }))
}

fn bulk_tags(ctx: &Ctx) -> Result<Reply, ApiError> {
    let kind = ctx.p("type");
    if kind != "add" && kind != "remove" {
        return Err(ApiError::unprocessable(vec!["type must be one of the following values: add, remove".into()]));
    }
    let tags = strings(ctx.b("tags"));
    let remove_all =
        matches!(ctx.b("removeAllTags"), Some(Value::Bool(true))) || ctx.b_str("removeAllTags") == Some("true");
    let mut errors = Vec::new();
    for id in strings(ctx.b("contacts")) {
        let res = ctx.update(k::CONTACTS, &id, CONTACT, |r| {
            if kind == "add" {
                add_to_set(r, "tags", &tags);
            } else if remove_all {
                r.insert("tags".into(), json!([]));
            } else {
                remove_from_set(r, "tags", &tags);
            }
            touch(ctx, r);
        });
        if let Err(e) = res {
            errors.push(format!("{id}: {}", e.message.as_str().unwrap_or("failed")));
        }
    }
    created(json!({ "succeded": errors.is_empty(), "errorCount": errors.len(), "responses": errors }))
}

/// The contact is left as it is (its `dateUpdated` too): GHL documents no change to a
/// contact when a task or note is added, and a client must not count on one.
fn create_task(ctx: &Ctx) -> Result<Reply, ApiError> {
    let contact_id = ctx.existing_id(k::CONTACTS, ctx.p("contactId"), CONTACT)?;
    let mut r = new_record(ctx, ctx.declared_body());
    r.insert("contactId".into(), Value::String(contact_id));
    if r.get("completed").is_none() {
        r.insert("completed".into(), Value::Bool(false));
    }
    r.insert("dateAdded".into(), Value::String(ctx.now()));
    ctx.create_wrapped(k::TASKS, "task", r)
}

fn update_task(ctx: &Ctx) -> Result<Reply, ApiError> {
    child(ctx, k::TASKS, ctx.p("taskId"), "task")?;
    let fields = ctx.declared_body();
    let t = ctx.update(k::TASKS, ctx.p("taskId"), "task", |r| merge(r, fields))?;
    ok(json!({ "task": t }))
}

fn complete_task(ctx: &Ctx) -> Result<Reply, ApiError> {
    child(ctx, k::TASKS, ctx.p("taskId"), "task")?;
    let done = ctx.b("completed").and_then(Value::as_bool).unwrap_or(true);
    let t = ctx.update(k::TASKS, ctx.p("taskId"), "task", |r| {
        r.insert("completed".into(), json!(done));
    })?;
    ok(json!({ "task": t }))
}

fn delete_task(ctx: &Ctx) -> Result<Reply, ApiError> {
    child(ctx, k::TASKS, ctx.p("taskId"), "task")?;
    ctx.delete(k::TASKS, ctx.p("taskId"), "task")?;
    ok(json!({ "succeded": true }))
}

fn create_note(ctx: &Ctx) -> Result<Reply, ApiError> {
    let contact = ctx.fetch(k::CONTACTS, ctx.p("contactId"), CONTACT)?;
    let mut r = new_record(ctx, ctx.declared_body());
    r.insert("contactId".into(), json!(super::id_of(&contact)));
    r.insert("dateAdded".into(), json!(ctx.now()));
    ctx.create_wrapped(k::NOTES, "note", r)
}

fn update_note(ctx: &Ctx) -> Result<Reply, ApiError> {
    child(ctx, k::NOTES, ctx.p("id"), "note")?;
    let fields = ctx.declared_body();
    let n = ctx.update(k::NOTES, ctx.p("id"), "note", |r| merge(r, fields))?;
    ok(json!({ "note": n }))
}

fn delete_note(ctx: &Ctx) -> Result<Reply, ApiError> {
    child(ctx, k::NOTES, ctx.p("id"), "note")?;
    ctx.delete(k::NOTES, ctx.p("id"), "note")?;
    ok(json!({ "succeded": true }))
}

fn add_to_campaign(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.fetch(k::CONTACTS, ctx.p("contactId"), CONTACT)?;
    ctx.fetch(k::CAMPAIGNS, ctx.p("campaignId"), "campaign")?;
    created(json!({ "succeded": true }))
}

fn remove_from_campaign(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.fetch(k::CONTACTS, ctx.p("contactId"), CONTACT)?;
    ctx.fetch(k::CAMPAIGNS, ctx.p("campaignId"), "campaign")?;
    ok(json!({ "succeded": true }))
}

fn remove_from_all_campaigns(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.fetch(k::CONTACTS, ctx.p("contactId"), CONTACT)?;
    ok(json!({ "succeded": true }))
}

fn add_followers(ctx: &Ctx) -> Result<Reply, ApiError> {
    let followers = strings(ctx.b("followers"));
    let mut added = Vec::new();
    let c = ctx.update(k::CONTACTS, ctx.p("contactId"), CONTACT, |r| {
        added = add_to_set(r, "followers", &followers);
        touch(ctx, r);
    })?;
    created(json!({ "followers": c.get("followers").cloned().unwrap_or(json!([])), "followersAdded": added }))
}

fn remove_followers(ctx: &Ctx) -> Result<Reply, ApiError> {
    let followers = strings(ctx.b("followers"));
    let mut removed = Vec::new();
    let c = ctx.update(k::CONTACTS, ctx.p("contactId"), CONTACT, |r| {
        removed = remove_from_set(r, "followers", &followers);
        touch(ctx, r);
    })?;
    ok(json!({ "followers": c.get("followers").cloned().unwrap_or(json!([])), "followersRemoved": removed }))
}

fn list_workflows(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "workflows": to_values(ctx.list(k::WORKFLOWS, |_| true)) }))
}

fn workflow_enrol(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.fetch(k::CONTACTS, ctx.p("contactId"), CONTACT)?;
    require_ref(ctx, k::WORKFLOWS, Some(ctx.p("workflowId")), "workflow")?;
    ok(json!({ "succeded": true }))
}

fn list_campaigns(ctx: &Ctx) -> Result<Reply, ApiError> {
    let status = ctx.q("status").map(str::to_string);
    let list = ctx.list(k::CAMPAIGNS, |r| status.as_deref().is_none_or(|s| field_is(r, "status", s)));
    ok(json!({ "campaigns": to_values(list) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply built the plain way, the record cloned with `searchAfter` inserted: what
    /// the direct serialisation must equal.
    fn cloned_hit(r: &Record) -> Value {
        let mut c = r.clone();
        let added = r.get("dateAdded").and_then(parse_ms).unwrap_or(0);
        c.insert("searchAfter".into(), json!([added, str_of(r, "id").unwrap_or_default()]));
        Value::Object(c)
    }

    #[test]
    fn search_hits_serialise_like_the_cloned_record() {
        let records = [
            json!({"id": "a", "dateAdded": "2024-01-02T03:04:05.678Z", "name": "Ann \"A\"", "tags": ["x"]}),
            json!({"searchAfter": "old", "id": "b", "dateAdded": 17, "n": 1.5}),
            json!({"name": "no id or date"}),
        ];
        for v in records {
            let Value::Object(r) = v else { panic!("object") };
            let added = SortKey::of(&r, "dateAdded").to_cursor();
            let hit = SearchHit { record: &r, cursor: (added, str_of(&r, "id").unwrap_or_default()) };
            let page = SearchPage { contacts: vec![hit], total: 9 };
            let direct = serde_json::to_vec(&page).expect("serialise");
            let via_value =
                serde_json::to_vec(&json!({ "contacts": [cloned_hit(&r)], "total": 9 })).expect("serialise");
            assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&via_value));
        }
    }
}
