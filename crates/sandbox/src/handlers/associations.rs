//! Associations (types of links between objects) and relations (links between records).

use serde_json::{json, Value};

use super::{created, field_is, k, merge, new_record, ok, strings, to_values, Ctx, HandlerFn, Reply};
use crate::error::ApiError;
use crate::paginate::window;
use crate::store::{str_of, Record};

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "associations.find_associations" => find,
        "associations.get_association" => get,
        "associations.get_association_by_key" => by_key,
        "associations.get_association_by_object_key" => by_object_key,
        "associations.get_relations_by_record" => relations_by_record,
        "associations.create_association" => create,
        "associations.update_association" => update,
        "associations.delete_association" => delete,
        "associations.create_relation" => create_relation,
        "associations.delete_relation" => delete_relation,
        _ => return None,
    })
}

fn find(ctx: &Ctx) -> Result<Reply, ApiError> {
    let all = ctx.list(k::ASSOCIATIONS, |_| true);
    let (skip, limit) = ctx.offset_query("skip", "limit", 20);
    ok(Value::Array(to_values(window(&all, skip, limit))))
}

fn get(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(Value::Object(ctx.fetch(k::ASSOCIATIONS, ctx.p("associationId"), "association")?))
}

fn by_key(ctx: &Ctx) -> Result<Reply, ApiError> {
    let key = ctx.p("key_name").to_string();
    let found = ctx.list(k::ASSOCIATIONS, |r| field_is(r, "key", &key)).into_iter().next();
    ok(Value::Object(found.ok_or_else(|| super::not_found("association"))?))
}

fn by_object_key(ctx: &Ctx) -> Result<Reply, ApiError> {
    let key = ctx.p("objectKey").to_string();
    let all =
        ctx.list(k::ASSOCIATIONS, |r| field_is(r, "firstObjectKey", &key) || field_is(r, "secondObjectKey", &key));
    ok(Value::Array(to_values(all)))
}

fn relations_by_record(ctx: &Ctx) -> Result<Reply, ApiError> {
    let record = ctx.p("recordId").to_string();
    let only: Vec<String> = strings(ctx.query.get("associationIds"));
    let all = ctx.list(k::RELATIONS, |r| {
        (field_is(r, "firstRecordId", &record) || field_is(r, "secondRecordId", &record))
            && (only.is_empty() || str_of(r, "associationId").is_some_and(|a| only.iter().any(|o| o == a)))
    });
    let (skip, limit) = ctx.offset_query("skip", "limit", 20);
    ok(Value::Array(to_values(window(&all, skip, limit))))
}

fn create(ctx: &Ctx) -> Result<Reply, ApiError> {
    let key = ctx.b_str("key").unwrap_or_default().to_string();
    if !ctx.list(k::ASSOCIATIONS, |r| field_is(r, "key", &key)).is_empty() {
        return Err(ApiError::bad_request("Association with this key already exists"));
    }
    let mut a = new_record(ctx, ctx.declared_body());
    a.insert("associationType".into(), json!("USER_DEFINED"));
    created(Value::Object(ctx.insert(k::ASSOCIATIONS, a)))
}

fn update(ctx: &Ctx) -> Result<Reply, ApiError> {
    let fields = ctx.declared_body();
    ok(Value::Object(ctx.update(k::ASSOCIATIONS, ctx.p("associationId"), "association", |r| merge(r, fields))?))
}

fn delete(ctx: &Ctx) -> Result<Reply, ApiError> {
    let id = ctx.p("associationId").to_string();
    ctx.delete(k::ASSOCIATIONS, &id, "association")?;
    let gone: Vec<String> = ctx
        .st
        .store
        .read(k::RELATIONS)
        .iter()
        .filter(|r| field_is(r, "associationId", &id))
        .map(super::id_of)
        .collect();
    for r in gone {
        ctx.st.store.remove(k::RELATIONS, &r);
    }
    ok(json!({ "deleted": true, "id": id, "message": "Association deleted successfully" }))
}

fn create_relation(ctx: &Ctx) -> Result<Reply, ApiError> {
    let assoc = ctx.fetch(k::ASSOCIATIONS, ctx.b_str("associationId").unwrap_or_default(), "association")?;
    let mut r = new_record(ctx, ctx.declared_body());
    for f in ["key", "firstObjectLabel", "firstObjectKey", "secondObjectLabel", "secondObjectKey", "associationType"] {
        r.insert(f.into(), assoc.get(f).cloned().unwrap_or(Value::Null));
    }
    created(Value::Object(ctx.insert(k::RELATIONS, r)))
}

fn delete_relation(ctx: &Ctx) -> Result<Reply, ApiError> {
    let r: Record = ctx.delete(k::RELATIONS, ctx.p("relationId"), "relation")?;
    ok(Value::Object(r))
}
