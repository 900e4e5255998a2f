//! Users (location and agency level), snapshots and the company.

use serde_json::{json, Map, Value};

use super::{created, k, merge, ok, strings, text_matches, to_values, Ctx, HandlerFn, Reply};
use crate::auth::PrincipalKind;
use crate::error::ApiError;
use crate::paginate::{uint, window};
use crate::store::{str_of, Record};

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "users.search_users" => search,
        "users.filter_users_by_email" => filter_by_email,
        "users.get_user" => get,
        "users.list_users_by_location" => by_location,
        "users.create_user" => create,
        "users.update_user" => update,
        "users.delete_user" => delete,
        "snapshots.list_snapshots" => snapshots,
        "companies.get_company" => company,
        _ => return None,
    })
}

fn location_ids(u: &Record) -> Vec<String> {
    strings(u.get("roles").and_then(|r| r.get("locationIds")))
}

/// Users the caller may see: an agency sees its company's; a location its own members.
fn visible(ctx: &Ctx, keep: impl Fn(&Record) -> bool) -> Vec<Record> {
    let company = ctx.who.company_id.clone();
    let loc = ctx.who.location_id.clone();
    ctx.st
        .store
        .read(k::USERS)
        .iter()
        .filter(|u| str_of(u, "companyId") == Some(company.as_str()))
        .filter(|u| loc.as_ref().is_none_or(|l| location_ids(u).contains(l)))
        .filter(|u| !u.get("deleted").and_then(Value::as_bool).unwrap_or(false))
        .filter(|u| keep(u))
        .cloned()
        .collect()
}

fn check_company(ctx: &Ctx, company: Option<&str>) -> Result<(), ApiError> {
    match company {
        Some(c) if c != ctx.who.company_id => {
            Err(ApiError::forbidden("The token does not have access to this company"))
        }
        _ => Ok(()),
    }
}

fn search(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_company(ctx, ctx.q("companyId"))?;
    let query = ctx.q("query").map(str::to_string);
    let location = ctx.q("locationId").map(str::to_string);
    let role = ctx.q("role").map(str::to_string);
    let kind = ctx.q("type").map(str::to_string);
    let ids = ctx.q("ids").map(|s| s.split(',').map(|x| x.trim().to_string()).collect::<Vec<_>>());
    let mut all = visible(ctx, |u| {
        query.as_deref().is_none_or(|q| text_matches(u, &["name", "email", "firstName", "lastName"], q))
            && location.as_ref().is_none_or(|l| location_ids(u).contains(l))
            && role
                .as_deref()
                .is_none_or(|r| u.get("roles").and_then(|x| x.get("role")).and_then(Value::as_str) == Some(r))
            && kind
                .as_deref()
                .is_none_or(|t| u.get("roles").and_then(|x| x.get("type")).and_then(Value::as_str) == Some(t))
            && ids.as_ref().is_none_or(|ids| str_of(u, "id").is_some_and(|id| ids.iter().any(|x| x == id)))
    });
    if let Some(field) = ctx.q("sort") {
        let field = field.to_string();
        all.sort_by(|a, b| {
            let key = |r: &Record| r.get(&field).map(|v| v.to_string()).unwrap_or_default();
            key(a).cmp(&key(b)).then_with(|| str_of(a, "id").cmp(&str_of(b, "id")))
        });
        if ctx.q("sortDirection") == Some("desc") {
            all.reverse();
        }
    }
    let (skip, limit) = ctx.offset_query("skip", "limit", 25);
    let count = all.len();
    ok(json!({ "users": to_values(window(&all, skip, limit)), "count": count }))
}

fn filter_by_email(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_company(ctx, ctx.b_str("companyId"))?;
    let emails: Vec<String> = strings(ctx.b("emails")).into_iter().map(|e| e.to_lowercase()).collect();
    let all = visible(ctx, |u| str_of(u, "email").is_some_and(|e| emails.contains(&e.to_lowercase())));
    let skip = uint(ctx.b("skip")).unwrap_or(0);
    let limit = uint(ctx.b("limit")).unwrap_or(25);
    let count = all.len();
    ok(json!({ "users": to_values(window(&all, skip, limit)), "count": count }))
}

fn user(ctx: &Ctx) -> Result<Record, ApiError> {
    let id = ctx.p("userId");
    visible(ctx, |u| str_of(u, "id") == Some(id)).into_iter().next().ok_or_else(|| super::not_found("user"))
}

fn get(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(Value::Object(user(ctx)?))
}

fn by_location(ctx: &Ctx) -> Result<Reply, ApiError> {
    let loc = ctx.loc();
    ok(json!({ "users": to_values(visible(ctx, |u| location_ids(u).contains(&loc))) }))
}

fn shape(ctx: &Ctx, mut fields: Map<String, Value>, base: Option<Record>) -> Record {
    let mut u = base.unwrap_or_default();
    let role = fields.remove("role");
    let kind = fields.remove("type");
    let locations = fields.remove("locationIds");
    fields.remove("password");
    merge(&mut u, fields);
    let mut roles = u.get("roles").cloned().unwrap_or_else(|| json!({}));
    if let Some(obj) = roles.as_object_mut() {
        if let Some(r) = role {
            obj.insert("role".into(), r);
        }
        if let Some(t) = kind {
            obj.insert("type".into(), t);
        }
        if let Some(l) = locations {
            obj.insert("locationIds".into(), l);
        }
    }
    u.insert("roles".into(), roles);
    let first = str_of(&u, "firstName").unwrap_or_default().to_string();
    let last = str_of(&u, "lastName").unwrap_or_default().to_string();
    u.insert("name".into(), json!(format!("{first} {last}").trim().to_string()));
    u.entry("companyId").or_insert(json!(ctx.who.company_id));
    u.entry("deleted").or_insert(json!(false));
    u.entry("permissions").or_insert(json!({}));
    u.entry("scopes").or_insert(json!([]));
    u.entry("extension").or_insert(json!(""));
    u.entry("phone").or_insert(Value::Null);
    u.entry("lcPhone").or_insert(json!({}));
    u.entry("platformLanguage").or_insert(json!("en_US"));
    u
}

fn create(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_company(ctx, ctx.b_str("companyId"))?;
    if ctx.who.kind == PrincipalKind::Location {
        let mine = ctx.who.location_id.clone().unwrap_or_default();
        if strings(ctx.b("locationIds")).iter().any(|l| *l != mine) {
            return Err(ApiError::forbidden("The token does not have access to this location"));
        }
    }
    let email = ctx.b_str("email").unwrap_or_default().to_lowercase();
    if !visible(ctx, |u| str_of(u, "email").is_some_and(|e| e.to_lowercase() == email)).is_empty() {
        return Err(ApiError::bad_request("User with this email already exists"));
    }
    let u = shape(ctx, ctx.declared_body(), None);
    created(Value::Object(ctx.insert(k::USERS, u)))
}

fn update(ctx: &Ctx) -> Result<Reply, ApiError> {
    let current = user(ctx)?;
    check_company(ctx, ctx.b_str("companyId"))?;
    let u = shape(ctx, ctx.declared_body(), Some(current));
    let id = super::id_of(&u);
    ctx.st.store.insert(k::USERS, u.clone());
    let _ = id;
    ok(Value::Object(u))
}

fn delete(ctx: &Ctx) -> Result<Reply, ApiError> {
    let u = user(ctx)?;
    ctx.st.store.remove(k::USERS, &super::id_of(&u));
    ok(
        json!({ "succeded": true, "message": "Queued deleting user with e-mail address and name. It will be deleted in a few minutes." }),
    )
}

fn snapshots(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_company(ctx, ctx.q("companyId"))?;
    let company = ctx.who.company_id.clone();
    let list: Vec<Record> = ctx
        .st
        .store
        .read(k::SNAPSHOTS)
        .iter()
        .filter(|s| str_of(s, "companyId") == Some(company.as_str()))
        .cloned()
        .collect();
    let list = list
        .into_iter()
        .map(|mut s| {
            s.remove("companyId");
            s
        })
        .collect();
    ok(json!({ "snapshots": to_values(list) }))
}

fn company(ctx: &Ctx) -> Result<Reply, ApiError> {
    let id = ctx.p("companyId");
    check_company(ctx, Some(id))?;
    let c = ctx.st.store.get(k::COMPANIES, id).ok_or_else(|| super::not_found("company"))?;
    ok(json!({ "company": c }))
}
