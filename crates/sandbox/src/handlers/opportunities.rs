//! Opportunities and pipelines. Search pages with the `startAfter`/`startAfterId` cursor
//! GHL returns in `meta`.

use serde_json::{json, Value};

use super::{
    add_to_set, created, field_is, k, merge, new_record, ok, remove_from_set, require_ref, strings, text_matches,
    to_values, Ctx, HandlerFn, Reply,
};
use crate::clock::parse_ms;
use crate::error::ApiError;
use crate::paginate::uint;
use crate::store::{str_of, Record};

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "opportunities.search_opportunities" => search,
        "opportunities.get_opportunity" => get,
        "opportunities.list_pipelines" => pipelines,
        "opportunities.create_opportunity" => create,
        "opportunities.update_opportunity" => update,
        "opportunities.delete_opportunity" => delete,
        "opportunities.update_opportunity_status" => status,
        "opportunities.upsert_opportunity" => upsert,
        "opportunities.add_followers" => add_followers,
        "opportunities.remove_followers" => remove_followers,
        _ => return None,
    })
}

const STATUSES: &[&str] = &["open", "won", "lost", "abandoned"];

fn check_status(s: Option<&str>) -> Result<(), ApiError> {
    match s {
        Some(s) if !STATUSES.contains(&s) => Err(ApiError::unprocessable(vec![format!(
            "status must be one of the following values: {}",
            STATUSES.join(", ")
        )])),
        _ => Ok(()),
    }
}

/// An opportunity with its contact summary, as GHL embeds it.
fn view(ctx: &Ctx, mut o: Record) -> Value {
    let contact = str_of(&o, "contactId").and_then(|c| ctx.st.store.get(k::CONTACTS, c));
    let summary = contact.map(|c| {
        json!({
            "id": c.get("id"), "name": c.get("name"), "companyName": c.get("companyName"),
            "email": c.get("email"), "phone": c.get("phone"), "tags": c.get("tags"),
        })
    });
    o.insert("contact".into(), summary.unwrap_or(Value::Null));
    Value::Object(o)
}

fn search(ctx: &Ctx) -> Result<Reply, ApiError> {
    let limit = uint(ctx.query.get("limit")).unwrap_or(20);
    if limit == 0 || limit > 100 {
        return Err(ApiError::unprocessable(vec!["limit must not be greater than 100".into()]));
    }
    let f = |name: &str| ctx.q(name).map(str::to_string);
    let (pipeline, stage, contact, status, assigned, id, q) =
        (f("pipeline_id"), f("pipeline_stage_id"), f("contact_id"), f("status"), f("assigned_to"), f("id"), f("q"));
    let mut all = ctx.list(k::OPPORTUNITIES, |r| {
        pipeline.as_deref().is_none_or(|p| field_is(r, "pipelineId", p))
            && stage.as_deref().is_none_or(|s| field_is(r, "pipelineStageId", s))
            && contact.as_deref().is_none_or(|c| field_is(r, "contactId", c))
            && status.as_deref().is_none_or(|s| s == "all" || field_is(r, "status", s))
            && assigned.as_deref().is_none_or(|a| field_is(r, "assignedTo", a))
            && id.as_deref().is_none_or(|i| field_is(r, "id", i))
            && q.as_deref().is_none_or(|q| text_matches(r, &["name"], q))
    });
    super::sort_by_time(&mut all, "createdAt", "id");
    if ctx.q("order") == Some("added_desc") {
        all.reverse();
    }
    let desc = ctx.q("order") == Some("added_desc");
    let total = all.len();
    let after = ctx.query.get("startAfter").and_then(parse_ms);
    let after_id = ctx.q("startAfterId").unwrap_or_default().to_string();
    let start = match (after, ctx.q("startAfterId")) {
        (Some(ms), _) => all
            .iter()
            .position(|r| {
                let t = r.get("createdAt").and_then(parse_ms).unwrap_or(0);
                let id = str_of(r, "id").unwrap_or_default();
                if desc {
                    t < ms || (t == ms && id < after_id.as_str())
                } else {
                    t > ms || (t == ms && id > after_id.as_str())
                }
            })
            .unwrap_or(all.len()),
        (None, Some(id)) => all.iter().position(|r| field_is(r, "id", id)).map(|i| i + 1).unwrap_or(all.len()),
        (None, None) => uint(ctx.query.get("page")).unwrap_or(1).max(1).saturating_sub(1).saturating_mul(limit),
    };
    let page: Vec<Record> = all.iter().skip(start).take(limit).cloned().collect();
    let more = start + page.len() < total;
    let current = start / limit + 1;
    let (next_ms, next_id) = match (more, page.last()) {
        (true, Some(l)) => (l.get("createdAt").and_then(parse_ms).map(Value::from), l.get("id").cloned()),
        _ => (None, None),
    };
    let next_url = match (&next_ms, &next_id) {
        (Some(ms), Some(id)) => json!(format!(
            "/opportunities/search?location_id={}&startAfter={}&startAfterId={}&limit={}",
            ctx.loc(),
            ms,
            id.as_str().unwrap_or_default(),
            limit
        )),
        _ => Value::Null,
    };
    let opportunities: Vec<Value> = page.into_iter().map(|o| view(ctx, o)).collect();
    ok(json!({
        "opportunities": opportunities,
        "meta": {
            "total": total,
            "nextPageUrl": next_url,
            "startAfterId": next_id,
            "startAfter": next_ms,
            "currentPage": current,
            "nextPage": if more { json!(current + 1) } else { Value::Null },
            "prevPage": if current > 1 { json!(current - 1) } else { Value::Null },
        },
        "aggregations": {},
    }))
}

fn get(ctx: &Ctx) -> Result<Reply, ApiError> {
    let o = ctx.fetch(k::OPPORTUNITIES, ctx.p("id"), "opportunity")?;
    ok(json!({ "opportunity": view(ctx, o) }))
}

fn pipelines(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "pipelines": to_values(ctx.list(k::PIPELINES, |_| true)) }))
}

/// The stage must belong to the pipeline; without one, the pipeline's first stage.
fn stage_for(ctx: &Ctx, pipeline: &str, stage: Option<&str>) -> Result<Value, ApiError> {
    let p = ctx.fetch(k::PIPELINES, pipeline, "pipeline")?;
    let stages = p.get("stages").and_then(Value::as_array).cloned().unwrap_or_default();
    match stage {
        Some(s) if stages.iter().any(|x| x.get("id").and_then(Value::as_str) == Some(s)) => Ok(json!(s)),
        Some(_) => Err(ApiError::bad_request("Pipeline stage does not belong to the pipeline")),
        None => Ok(stages.first().and_then(|s| s.get("id").cloned()).unwrap_or(Value::Null)),
    }
}

fn fill_new(ctx: &Ctx, o: &mut Record) {
    let now = ctx.now();
    o.entry("status").or_insert(json!("open"));
    o.entry("monetaryValue").or_insert(json!(0));
    o.entry("source").or_insert(json!("api"));
    o.entry("followers").or_insert(json!([]));
    o.entry("customFields").or_insert(json!([]));
    o.entry("lostReasonId").or_insert(Value::Null);
    for f in ["createdAt", "updatedAt", "lastStatusChangeAt", "lastStageChangeAt", "lastActionDate"] {
        o.insert(f.into(), json!(now));
    }
}

fn create(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_status(ctx.b_str("status"))?;
    let pipeline = ctx.b_str("pipelineId").unwrap_or_default();
    let stage = stage_for(ctx, pipeline, ctx.b_str("pipelineStageId"))?;
    ctx.fetch(k::CONTACTS, ctx.b_str("contactId").unwrap_or_default(), "contact")?;
    let mut o = new_record(ctx, ctx.declared_body());
    o.insert("pipelineStageId".into(), stage);
    fill_new(ctx, &mut o);
    let saved = ctx.insert(k::OPPORTUNITIES, o);
    Ok(Reply::Json(axum::http::StatusCode::CREATED, json!({ "opportunity": view(ctx, saved) })))
}

fn apply_update(ctx: &Ctx, id: &str, fields: serde_json::Map<String, Value>) -> Result<Record, ApiError> {
    let now = ctx.now();
    ctx.update(k::OPPORTUNITIES, id, "opportunity", |r| {
        if fields.get("status").is_some_and(|s| Some(s) != r.get("status")) {
            r.insert("lastStatusChangeAt".into(), json!(now));
        }
        if fields.get("pipelineStageId").is_some_and(|s| Some(s) != r.get("pipelineStageId")) {
            r.insert("lastStageChangeAt".into(), json!(now));
        }
        merge(r, fields);
        r.insert("updatedAt".into(), json!(now));
        r.insert("lastActionDate".into(), json!(now));
    })
}

fn update(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_status(ctx.b_str("status"))?;
    let id = ctx.p("id");
    let current = ctx.fetch(k::OPPORTUNITIES, id, "opportunity")?;
    if ctx.b_str("pipelineId").is_some() || ctx.b_str("pipelineStageId").is_some() {
        let pipeline = ctx.b_str("pipelineId").or(str_of(&current, "pipelineId")).unwrap_or_default();
        stage_for(ctx, pipeline, ctx.b_str("pipelineStageId"))?;
    }
    require_ref(ctx, k::USERS, ctx.b_str("assignedTo"), "user")?;
    let o = apply_update(ctx, id, ctx.declared_body())?;
    ok(json!({ "opportunity": view(ctx, o) }))
}

fn delete(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.delete(k::OPPORTUNITIES, ctx.p("id"), "opportunity")?;
    ok(json!({ "succeded": true }))
}

fn status(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_status(ctx.b_str("status"))?;
    let mut fields = serde_json::Map::new();
    fields.insert("status".into(), json!(ctx.b_str("status")));
    if let Some(l) = ctx.b("lostReasonId") {
        fields.insert("lostReasonId".into(), l.clone());
    }
    apply_update(ctx, ctx.p("id"), fields)?;
    ok(json!({ "succeded": true }))
}

fn upsert(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_status(ctx.b_str("status"))?;
    let pipeline = ctx.b_str("pipelineId").unwrap_or_default();
    stage_for(ctx, pipeline, ctx.b_str("pipelineStageId"))?;
    let mut fields = ctx.declared_body();
    let followers = strings(fields.remove("followers").as_ref());
    let remove_all = matches!(fields.remove("isRemoveAllFollowers"), Some(Value::Bool(true)));
    let action = fields.remove("followersActionType").and_then(|v| v.as_str().map(String::from));
    let apply_followers = |r: &mut Record| {
        if remove_all {
            r.insert("followers".into(), json!([]));
        }
        match action.as_deref() {
            Some("remove") => {
                remove_from_set(r, "followers", &followers);
            }
            _ => {
                add_to_set(r, "followers", &followers);
            }
        }
    };
    let existing = ctx.b_str("id").and_then(|id| ctx.st.store.get(k::OPPORTUNITIES, id));
    match existing {
        Some(e) => {
            let id = super::id_of(&e);
            fields.remove("id");
            apply_update(ctx, &id, fields)?;
            let o = ctx.update(k::OPPORTUNITIES, &id, "opportunity", apply_followers)?;
            ok(json!({ "opportunity": view(ctx, o), "new": false }))
        }
        None => {
            fields.remove("id");
            let stage = stage_for(ctx, pipeline, ctx.b_str("pipelineStageId"))?;
            let mut o = new_record(ctx, fields);
            o.insert("pipelineStageId".into(), stage);
            o.entry("name").or_insert(json!("Untitled opportunity"));
            o.entry("contactId").or_insert(Value::Null);
            fill_new(ctx, &mut o);
            apply_followers(&mut o);
            let saved = ctx.insert(k::OPPORTUNITIES, o);
            ok(json!({ "opportunity": view(ctx, saved), "new": true }))
        }
    }
}

fn add_followers(ctx: &Ctx) -> Result<Reply, ApiError> {
    let followers = strings(ctx.b("followers"));
    let mut added = Vec::new();
    let o = ctx.update(k::OPPORTUNITIES, ctx.p("id"), "opportunity", |r| {
        added = add_to_set(r, "followers", &followers);
    })?;
    created(json!({ "followers": o.get("followers").cloned().unwrap_or(json!([])), "followersAdded": added }))
}

fn remove_followers(ctx: &Ctx) -> Result<Reply, ApiError> {
    let followers = strings(ctx.b("followers"));
    let all = ctx.q("isRemoveAllFollowers") == Some("true");
    let mut removed = Vec::new();
    let o = ctx.update(k::OPPORTUNITIES, ctx.p("id"), "opportunity", |r| {
        removed = if all {
            let every = strings(r.get("followers"));
            remove_from_set(r, "followers", &every)
        } else {
            remove_from_set(r, "followers", &followers)
        };
    })?;
    ok(json!({ "followers": o.get("followers").cloned().unwrap_or(json!([])), "followersRemoved": removed }))
}
