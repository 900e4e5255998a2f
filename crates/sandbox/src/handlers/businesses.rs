//! Businesses and the bulk "set business of contacts" action.

use serde_json::{json, Value};

use super::{created, field_is, k, merge, new_record, ok, strings, to_values, Ctx, HandlerFn, Reply};
use crate::error::ApiError;
use crate::paginate::window;

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "businesses.get_business" => get,
        "businesses.list_businesses" => list,
        "businesses.create_business" => create,
        "businesses.update_business" => update,
        "businesses.delete_business" => delete,
        "businesses.bulk_update_contacts_business" => bulk_contacts,
        _ => return None,
    })
}

fn get(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "business": ctx.fetch(k::BUSINESSES, ctx.p("businessId"), "business")? }))
}

fn list(ctx: &Ctx) -> Result<Reply, ApiError> {
    let all = ctx.list(k::BUSINESSES, |_| true);
    let (skip, limit) = ctx.offset_query("skip", "limit", 100);
    ok(json!({ "businesses": to_values(window(&all, skip, limit)) }))
}

fn create(ctx: &Ctx) -> Result<Reply, ApiError> {
    let now = ctx.now();
    let mut b = new_record(ctx, ctx.declared_body());
    b.insert("createdAt".into(), json!(now));
    b.insert("updatedAt".into(), json!(now));
    b.insert("createdBy".into(), json!({ "source": "INTEGRATION", "sourceId": "sandbox" }));
    b.insert("updatedBy".into(), json!({ "source": "INTEGRATION", "sourceId": "sandbox" }));
    created(json!({ "success": true, "buiseness": ctx.insert(k::BUSINESSES, b) }))
}

fn update(ctx: &Ctx) -> Result<Reply, ApiError> {
    let fields = ctx.declared_body();
    let now = ctx.now();
    let b = ctx.update(k::BUSINESSES, ctx.p("businessId"), "business", |r| {
        merge(r, fields);
        r.insert("updatedAt".into(), json!(now));
    })?;
    ok(json!({ "success": true, "buiseness": b }))
}

fn delete(ctx: &Ctx) -> Result<Reply, ApiError> {
    let id = ctx.p("businessId").to_string();
    ctx.delete(k::BUSINESSES, &id, "business")?;
    let mut contacts = ctx.st.store.write(k::CONTACTS);
    for c in contacts.iter_mut().filter(|c| field_is(c, "businessId", &id)) {
        c.insert("businessId".into(), Value::Null);
    }
    ok(json!({ "success": true }))
}

fn bulk_contacts(ctx: &Ctx) -> Result<Reply, ApiError> {
    let business = ctx.b_str("businessId").unwrap_or_default().to_string();
    ctx.fetch(k::BUSINESSES, &business, "business")?;
    let ids = strings(ctx.b("ids"));
    let now = ctx.now();
    let mut done = Vec::new();
    for id in &ids {
        let ok = ctx.update(k::CONTACTS, id, "contact", |r| {
            r.insert("businessId".into(), json!(business));
            r.insert("dateUpdated".into(), json!(now));
        });
        if ok.is_ok() {
            done.push(id.clone());
        }
    }
    ok(json!({ "success": done.len() == ids.len(), "ids": done }))
}
