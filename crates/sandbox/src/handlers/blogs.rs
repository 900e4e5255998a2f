//! Blogs, posts, authors and categories. Blog items use `_id`.

use serde_json::{json, Value};

use super::{field_is, k, merge, new_record, ok, text_matches, to_values, Ctx, HandlerFn, Reply};
use crate::error::ApiError;
use crate::paginate::window;
use crate::store::str_of;

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "blogs.check_url_slug" => check_slug,
        "blogs.list_authors" => authors,
        "blogs.list_categories" => categories,
        "blogs.list_posts" => posts,
        "blogs.list_blogs" => blogs,
        "blogs.create_post" => create_post,
        "blogs.update_post" => update_post,
        _ => return None,
    })
}

fn slug_used(ctx: &Ctx, slug: &str, except: Option<&str>) -> bool {
    !ctx.list(k::BLOG_POSTS, |r| field_is(r, "urlSlug", slug) && except.is_none_or(|e| !field_is(r, "_id", e)))
        .is_empty()
}

fn check_slug(ctx: &Ctx) -> Result<Reply, ApiError> {
    let slug = ctx.q("urlSlug").unwrap_or_default();
    ok(json!({ "exists": slug_used(ctx, slug, ctx.q("postId")) }))
}

fn authors(ctx: &Ctx) -> Result<Reply, ApiError> {
    let all = ctx.list(k::BLOG_AUTHORS, |_| true);
    let (offset, limit) = ctx.offset_query("offset", "limit", 20);
    ok(json!({ "authors": to_values(window(&all, offset, limit)) }))
}

fn categories(ctx: &Ctx) -> Result<Reply, ApiError> {
    let all = ctx.list(k::BLOG_CATEGORIES, |_| true);
    let (offset, limit) = ctx.offset_query("offset", "limit", 20);
    ok(json!({ "categories": to_values(window(&all, offset, limit)) }))
}

fn posts(ctx: &Ctx) -> Result<Reply, ApiError> {
    let blog = ctx.q("blogId").unwrap_or_default().to_string();
    let status = ctx.q("status").map(str::to_string);
    let term = ctx.q("searchTerm").map(str::to_string);
    let all = ctx.list(k::BLOG_POSTS, |r| {
        field_is(r, "blogId", &blog)
            && status.as_deref().is_none_or(|s| field_is(r, "status", s))
            && term.as_deref().is_none_or(|t| text_matches(r, &["title", "description"], t))
    });
    let (offset, limit) = ctx.offset_query("offset", "limit", 20);
    let page: Vec<Value> = window(&all, offset, limit)
        .into_iter()
        .map(|mut p| {
            p.remove("locationId");
            p.remove("blogId");
            p.remove("rawHTML");
            Value::Object(p)
        })
        .collect();
    ok(json!({ "blogs": page }))
}

fn blogs(ctx: &Ctx) -> Result<Reply, ApiError> {
    let term = ctx.q("searchTerm").map(str::to_string);
    let all = ctx.list(k::BLOGS, |r| term.as_deref().is_none_or(|t| text_matches(r, &["name"], t)));
    let (skip, limit) = ctx.offset_query("skip", "limit", 20);
    let page: Vec<Value> =
        window(&all, skip, limit).into_iter().map(|b| json!({ "_id": b.get("_id"), "name": b.get("name") })).collect();
    ok(json!({ "data": page }))
}

fn check_status(ctx: &Ctx) -> Result<(), ApiError> {
    match ctx.b_str("status") {
        Some(s) if !["DRAFT", "PUBLISHED", "SCHEDULED", "ARCHIVED"].contains(&s) => Err(ApiError::unprocessable(vec![
            "status must be one of the following values: DRAFT, PUBLISHED, SCHEDULED, ARCHIVED".into(),
        ])),
        _ => Ok(()),
    }
}

fn create_post(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_status(ctx)?;
    ctx.fetch(k::BLOGS, ctx.b_str("blogId").unwrap_or_default(), "blog")?;
    let slug = ctx.b_str("urlSlug").unwrap_or_default();
    if slug_used(ctx, slug, None) {
        return Err(ApiError::bad_request("URL slug already exists"));
    }
    let mut p = new_record(ctx, ctx.declared_body());
    p.insert("archived".into(), json!(false));
    p.insert("updatedAt".into(), json!(ctx.now()));
    let saved = ctx.insert(k::BLOG_POSTS, p);
    ok(json!({ "data": saved }))
}

fn update_post(ctx: &Ctx) -> Result<Reply, ApiError> {
    check_status(ctx)?;
    let id = ctx.p("postId").to_string();
    if let Some(slug) = ctx.b_str("urlSlug") {
        if slug_used(ctx, slug, Some(&id)) {
            return Err(ApiError::bad_request("URL slug already exists"));
        }
    }
    let fields = ctx.declared_body();
    let now = ctx.now();
    let p = ctx.update(k::BLOG_POSTS, &id, "blog post", |r| {
        merge(r, fields);
        r.insert("archived".into(), json!(str_of(r, "status") == Some("ARCHIVED")));
        r.insert("updatedAt".into(), json!(now));
    })?;
    ok(json!({ "updatedBlogPost": p }))
}
