//! One handler per catalog operation, grouped by API module. Handlers are plain functions
//! over a [`Ctx`]; generic record helpers live here, endpoint-specific logic in the modules.

mod associations;
mod blogs;
mod businesses;
mod calendars;
mod contacts;
mod conversations;
mod locations;
mod opportunities;
mod users;

use axum::http::StatusCode;
use catalog::{Operation, ParamIn};
use serde_json::{json, Map, Value};

use crate::auth::{Principal, PrincipalKind};
use crate::error::ApiError;
use crate::paginate;
use crate::routes::PathParams;
use crate::state::AppState;
use crate::store::{str_of, Record};

pub type HandlerFn = fn(&Ctx) -> Result<Reply, ApiError>;

/// What a handler answers.
#[derive(Debug)]
pub enum Reply {
    Json(StatusCode, Value),
    /// JSON the handler serialised itself, straight from the store, because building a
    /// `Value` first would copy every record of a large page. Only for replies that
    /// change nothing: no webhook is derived from it.
    Serialized(StatusCode, Vec<u8>),
    /// JSON serialised from a record as it was stored, which moved into the store
    /// uncopied; `id` names the record for the webhook the change derives.
    Stored {
        status: StatusCode,
        bytes: Vec<u8>,
        id: String,
    },
    /// A file download (recordings, transcripts).
    File(&'static str, Vec<u8>),
}

pub fn ok(v: Value) -> Result<Reply, ApiError> {
    Ok(Reply::Json(StatusCode::OK, v))
}

pub fn created(v: Value) -> Result<Reply, ApiError> {
    Ok(Reply::Json(StatusCode::CREATED, v))
}

/// A reply serialised here rather than through a `Value`; `capacity` is a guess of its
/// size, so a large page is written without repeatedly growing the buffer.
pub fn serialized(status: StatusCode, body: &impl serde::Serialize, capacity: usize) -> Result<Reply, ApiError> {
    Ok(Reply::Serialized(status, json_bytes(body, capacity)?))
}

fn json_bytes(body: &impl serde::Serialize, capacity: usize) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut bytes, body).map_err(|e| ApiError::internal(format!("serialising the reply: {e}")))?;
    Ok(bytes)
}

/// The handler for an operation key; `None` means the catalog has an operation this crate
/// does not serve, which the route table turns into a start-up error.
pub fn handler_for(key: &str) -> Option<HandlerFn> {
    let (module, _) = key.split_once('.')?;
    match module {
        "contacts" | "workflows" | "campaigns" => contacts::handler(key),
        "businesses" => businesses::handler(key),
        "calendars" => calendars::handler(key),
        "conversations" => conversations::handler(key),
        "opportunities" => opportunities::handler(key),
        "users" | "snapshots" | "companies" => users::handler(key),
        "locations" | "custom_fields" => locations::handler(key),
        "associations" => associations::handler(key),
        "blogs" => blogs::handler(key),
        _ => None,
    }
}

/// One request, parsed and authenticated.
pub struct Ctx<'a> {
    pub st: &'a AppState,
    pub op: &'a Operation,
    pub path: &'a PathParams,
    pub query: &'a Map<String, Value>,
    pub body: &'a Value,
    pub who: &'a Principal,
}

impl<'a> Ctx<'a> {
    /// A path parameter (always present once routed).
    pub fn p(&self, name: &str) -> &str {
        self.path.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }

    pub fn q(&self, name: &str) -> Option<&str> {
        self.query.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
    }

    pub fn b(&self, name: &str) -> Option<&Value> {
        self.body.get(name).filter(|v| !v.is_null())
    }

    pub fn b_str(&self, name: &str) -> Option<&str> {
        self.b(name).and_then(Value::as_str)
    }

    /// The location a request works in: the token's, else the one it names.
    pub fn loc(&self) -> String {
        if let Some(l) = &self.who.location_id {
            return l.clone();
        }
        self.q("locationId")
            .or_else(|| self.b_str("locationId"))
            .map(String::from)
            .unwrap_or_else(|| self.st.location_id.clone())
    }

    pub fn now(&self) -> String {
        self.st.store.clock.now_iso()
    }

    pub fn now_ms(&self) -> i64 {
        self.st.store.clock.now_ms()
    }

    fn check_owner(&self, r: &Record, noun: &str) -> Result<(), ApiError> {
        if self.who.kind == PrincipalKind::Company {
            return Ok(());
        }
        match str_of(r, "locationId") {
            Some(l) if Some(l) != self.who.location_id.as_deref() => {
                Err(ApiError::forbidden(format!("The token does not have access to this {noun}")))
            }
            _ => Ok(()),
        }
    }

    /// A record by id: 404 if absent, 403 if it belongs to another location.
    pub fn fetch(&self, kind: &str, id: &str, noun: &str) -> Result<Record, ApiError> {
        let r = self.st.store.get(kind, id).ok_or_else(|| not_found(noun))?;
        self.check_owner(&r, noun)?;
        Ok(r)
    }

    /// The id of a record the caller may see: 404 if absent, 403 if it belongs to another
    /// location. Like [`Ctx::fetch`] without copying the record.
    pub fn existing_id(&self, kind: &str, id: &str, noun: &str) -> Result<String, ApiError> {
        let col = self.st.store.read(kind);
        let r = col.get(id).ok_or_else(|| not_found(noun))?;
        self.check_owner(r, noun)?;
        Ok(id_of(r))
    }

    /// Changes a record in place under the collection's write lock; returns the new record.
    pub fn update(
        &self,
        kind: &str,
        id: &str,
        noun: &str,
        change: impl FnOnce(&mut Record),
    ) -> Result<Record, ApiError> {
        self.update_with(kind, id, noun, |r| {
            change(r);
            r.clone()
        })
    }

    /// Like [`Ctx::update`], returning what `change` takes from the record instead of a
    /// copy of all of it.
    pub fn update_with<T>(
        &self,
        kind: &str,
        id: &str,
        noun: &str,
        change: impl FnOnce(&mut Record) -> T,
    ) -> Result<T, ApiError> {
        let mut col = self.st.store.write(kind);
        let r = col.get_mut(id).ok_or_else(|| not_found(noun))?;
        self.check_owner(r, noun)?;
        Ok(change(r))
    }

    pub fn delete(&self, kind: &str, id: &str, noun: &str) -> Result<Record, ApiError> {
        let mut col = self.st.store.write(kind);
        let r = col.get(id).ok_or_else(|| not_found(noun))?;
        self.check_owner(r, noun)?;
        col.remove(id).ok_or_else(|| not_found(noun))
    }

    /// Records of the caller's location matching `keep`, in insertion order.
    pub fn list(&self, kind: &str, keep: impl Fn(&Record) -> bool) -> Vec<Record> {
        let loc = self.loc();
        self.st
            .store
            .read(kind)
            .iter()
            .filter(|r| str_of(r, "locationId").is_none_or(|l| l == loc) && keep(r))
            .cloned()
            .collect()
    }

    /// Body fields this operation declares, as given.
    pub fn declared_body(&self) -> Map<String, Value> {
        let mut out = Map::new();
        for p in self.op.params_in(ParamIn::Body) {
            if let Some(v) = self.b(&p.name) {
                out.insert(p.name.clone(), v.clone());
            }
        }
        out
    }

    /// Offset paging read from the query with the operation's own parameter names.
    pub fn offset_query(&self, offset: &str, limit: &str, default_limit: usize) -> (usize, usize) {
        paginate::offset_limit(self.query, offset, limit, default_limit)
    }

    /// Stores a new record; returns it as stored (with its id).
    pub fn insert(&self, kind: &str, record: Record) -> Record {
        self.st.store.insert_returning(kind, record)
    }

    /// Stores a new record and answers `201 { key: record }` from it: the reply is
    /// serialised before the record moves into the store, so nothing is copied.
    pub fn create_wrapped(&self, kind: &str, key: &str, mut record: Record) -> Result<Reply, ApiError> {
        let id = self.st.store.assign_id(kind, &mut record);
        // `{ key: record }`, from the record itself.
        let bytes = json_bytes(&std::collections::BTreeMap::from([(key, &record)]), 512)?;
        self.st.store.insert(kind, record);
        Ok(Reply::Stored { status: StatusCode::CREATED, bytes, id })
    }
}

pub fn not_found(noun: &str) -> ApiError {
    ApiError::not_found(format!("{} not found", capitalise(noun)))
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Merges `fields` into `r`.
pub fn merge(r: &mut Record, fields: Map<String, Value>) {
    for (k, v) in fields {
        r.insert(k, v);
    }
}

/// A new record with the given fields, in the caller's location.
pub fn new_record(ctx: &Ctx, fields: Map<String, Value>) -> Record {
    let mut r = Record::new();
    r.insert("locationId".into(), json!(ctx.loc()));
    merge(&mut r, fields);
    r
}

pub fn to_values(records: Vec<Record>) -> Vec<Value> {
    records.into_iter().map(Value::Object).collect()
}

/// Whether `r[field]` equals the string `want`.
pub fn field_is(r: &Record, field: &str, want: &str) -> bool {
    str_of(r, field) == Some(want)
}

/// Case-insensitive "contains" over a few text fields.
pub fn text_matches(r: &Record, fields: &[&str], needle: &str) -> bool {
    let needle = needle.to_lowercase();
    fields.iter().any(|f| str_of(r, f).is_some_and(|v| v.to_lowercase().contains(&needle)))
}

/// Sorted by a timestamp field (ISO text or epoch ms) then id, ascending.
pub fn sort_by_time(records: &mut [Record], field: &str, id_field: &str) {
    records.sort_by(|a, b| {
        let ta = a.get(field).and_then(crate::clock::parse_ms).unwrap_or(0);
        let tb = b.get(field).and_then(crate::clock::parse_ms).unwrap_or(0);
        ta.cmp(&tb).then_with(|| str_of(a, id_field).cmp(&str_of(b, id_field)))
    });
}

pub fn id_of(r: &Record) -> String {
    str_of(r, "id").or_else(|| str_of(r, "_id")).unwrap_or_default().to_string()
}

/// Adds the strings of `add` to the array at `r[field]`, returning the ones that were new.
pub fn add_to_set(r: &mut Record, field: &str, add: &[String]) -> Vec<String> {
    let mut current: Vec<String> = strings(r.get(field));
    let mut added = Vec::new();
    for a in add {
        if !current.iter().any(|c| c.eq_ignore_ascii_case(a)) {
            current.push(a.clone());
            added.push(a.clone());
        }
    }
    r.insert(field.into(), json!(current));
    added
}

/// Removes the strings of `remove` from `r[field]`, returning the ones that were there.
pub fn remove_from_set(r: &mut Record, field: &str, remove: &[String]) -> Vec<String> {
    let current: Vec<String> = strings(r.get(field));
    let (gone, kept): (Vec<String>, Vec<String>) =
        current.into_iter().partition(|c| remove.iter().any(|x| x.eq_ignore_ascii_case(c)));
    r.insert(field.into(), json!(kept));
    gone
}

/// Strings of a JSON array (or a comma list in one string).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        Some(Value::String(s)) => s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect(),
        _ => Vec::new(),
    }
}

/// Makes sure a referenced record exists in the caller's location (400 like GHL otherwise).
pub fn require_ref(ctx: &Ctx, kind: &str, id: Option<&str>, noun: &str) -> Result<(), ApiError> {
    match id {
        Some(id) => ctx.fetch(kind, id, noun).map(|_| ()),
        None => Ok(()),
    }
}

use crate::store::kinds as k;
pub use contacts::normalise_contact;
