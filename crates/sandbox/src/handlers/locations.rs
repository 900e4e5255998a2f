//! Locations (sub-accounts), their custom fields and custom values.

use serde_json::{json, Value};

use super::{field_is, k, merge, ok, text_matches, to_values, Ctx, HandlerFn, Reply};
use crate::auth::PrincipalKind;
use crate::error::ApiError;
use crate::paginate::window;
use crate::store::{str_of, Record};

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "locations.list_locations" => list,
        "locations.get_location" => get,
        "locations.create_location" => create,
        "locations.update_custom_value" => update_custom_value,
        "custom_fields.list_custom_fields" => custom_fields,
        _ => return None,
    })
}

fn list(ctx: &Ctx) -> Result<Reply, ApiError> {
    if let Some(c) = ctx.q("companyId") {
        if c != ctx.who.company_id {
            return Err(ApiError::forbidden("The token does not have access to this company"));
        }
    }
    let company = ctx.who.company_id.clone();
    let only = ctx.who.location_id.clone();
    let email = ctx.q("email").map(str::to_string);
    let mut all: Vec<Record> = ctx
        .st
        .store
        .read(k::LOCATIONS)
        .iter()
        .filter(|l| str_of(l, "companyId") == Some(company.as_str()))
        .filter(|l| only.as_deref().is_none_or(|o| field_is(l, "id", o)))
        .filter(|l| email.as_deref().is_none_or(|e| text_matches(l, &["email"], e)))
        .cloned()
        .collect();
    if ctx.q("order") == Some("desc") {
        all.reverse();
    }
    let (skip, limit) = ctx.offset_query("skip", "limit", 10);
    ok(json!({ "locations": to_values(window(&all, skip, limit)) }))
}

fn get(ctx: &Ctx) -> Result<Reply, ApiError> {
    let l = ctx.st.store.get(k::LOCATIONS, ctx.p("locationId")).ok_or_else(|| super::not_found("location"))?;
    if str_of(&l, "companyId") != Some(ctx.who.company_id.as_str()) {
        return Err(ApiError::forbidden("The token does not have access to this location"));
    }
    ok(json!({ "location": l }))
}

fn create(ctx: &Ctx) -> Result<Reply, ApiError> {
    if ctx.who.kind != PrincipalKind::Company || ctx.b_str("companyId") != Some(ctx.who.company_id.as_str()) {
        return Err(ApiError::forbidden("The token does not have access to this company"));
    }
    let mut l = Record::new();
    merge(&mut l, ctx.declared_body());
    l.remove("snapshotId");
    for f in ["email", "domain", "address", "city", "state", "country", "postalCode", "website", "timezone", "phone"] {
        l.entry(f).or_insert(Value::Null);
    }
    l.entry("settings").or_insert(json!({}));
    l.entry("social").or_insert(json!({}));
    let saved = ctx.insert(k::LOCATIONS, l);
    ok(Value::Object(saved))
}

fn update_custom_value(ctx: &Ctx) -> Result<Reply, ApiError> {
    let loc = ctx.p("locationId").to_string();
    let name = ctx.b_str("name").unwrap_or_default().to_string();
    let value = ctx.b("value").cloned().unwrap_or(Value::Null);
    let current = ctx.fetch(k::CUSTOM_VALUES, ctx.p("id"), "custom value")?;
    if !field_is(&current, "locationId", &loc) {
        return Err(super::not_found("custom value"));
    }
    let v = ctx.update(k::CUSTOM_VALUES, ctx.p("id"), "custom value", |r| {
        r.insert("name".into(), json!(name));
        r.insert("value".into(), value);
    })?;
    ok(json!({ "customValue": v }))
}

fn custom_fields(ctx: &Ctx) -> Result<Reply, ApiError> {
    let model = ctx.q("model").unwrap_or("all").to_string();
    let list = ctx.list(k::CUSTOM_FIELDS, |r| model == "all" || field_is(r, "model", &model));
    ok(json!({ "customFields": to_values(list) }))
}
