//! Valid inputs for catalog operations against a demo-seeded sandbox.

use std::collections::HashMap;

use catalog::{Operation, Pagination, Param, ParamIn, ParamType, TokenKind};
use reqwest::{Method, RequestBuilder};
use sandbox::Sandbox;
use serde_json::{json, Value};

use super::{first_id, AGENCY_TOKEN, TOKEN};

/// Ids of seeded records the requests refer to.
pub struct Ids {
    pub m: HashMap<&'static str, String>,
}

impl Ids {
    pub fn of(sb: &Sandbox) -> Ids {
        let mut m = HashMap::new();
        let contact = first_id(sb, "contacts", |_| true);
        let appt = first_id(sb, "events", |e| e["isBlockSlot"] == false && e["contactId"] == contact.as_str());
        m.insert("contact", contact.clone());
        m.insert("task", first_id(sb, "tasks", |t| t["contactId"] == contact.as_str()));
        m.insert("note", first_id(sb, "notes", |t| t["contactId"] == contact.as_str()));
        m.insert("business", first_id(sb, "businesses", |_| true));
        m.insert("calendar", first_id(sb, "calendars", |_| true));
        m.insert("group", first_id(sb, "calendarGroups", |_| true));
        m.insert("appointment", appt.clone());
        m.insert("block", first_id(sb, "events", |e| e["isBlockSlot"] == true));
        m.insert("apptNote", first_id(sb, "appointmentNotes", |n| n["appointmentId"] == appt.as_str()));
        m.insert("notification", first_id(sb, "calendarNotifications", |_| true));
        m.insert("resource", first_id(sb, "calendarResources", |r| r["resourceType"] == "equipments"));
        m.insert("campaign", first_id(sb, "campaigns", |_| true));
        m.insert("workflow", first_id(sb, "workflows", |_| true));
        m.insert("conversation", first_id(sb, "conversations", |c| c["contactId"] == contact.as_str()));
        m.insert("message", first_id(sb, "messages", |x| x["messageType"] == "TYPE_SMS"));
        m.insert("call", first_id(sb, "messages", |x| x["messageType"] == "TYPE_CALL"));
        m.insert("email", first_id(sb, "emails", |_| true));
        m.insert("opportunity", first_id(sb, "opportunities", |_| true));
        m.insert("pipeline", first_id(sb, "pipelines", |_| true));
        m.insert("customValue", first_id(sb, "customValues", |_| true));
        m.insert("association", first_id(sb, "associations", |_| true));
        let relation = sb.records("relations").into_iter().next().expect("relation");
        m.insert("relation", relation["id"].as_str().expect("id").to_string());
        m.insert("relationRecord", relation["firstRecordId"].as_str().expect("id").to_string());
        m.insert("blog", first_id(sb, "blogs", |_| true));
        m.insert("post", first_id(sb, "blogPosts", |_| true));
        m.insert("author", first_id(sb, "blogAuthors", |_| true));
        m.insert("category", first_id(sb, "blogCategories", |_| true));
        let email = sb.record("contacts", &contact).expect("contact")["email"].clone();
        m.insert("contactEmail", email.as_str().expect("email").to_string());
        Ids { m }
    }

    pub fn get(&self, k: &str) -> Value {
        json!(self.m[k])
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A valid value for a parameter: a seeded id where the name refers to a record, the
/// paginator's start values, else the catalog's example, else a value of the right type.
pub fn value_for(op: &Operation, p: &Param, ids: &Ids, sb: &Sandbox) -> Value {
    let key = op.key.as_str();
    const DAY: i64 = 86_400_000;
    if let Some(Pagination::Offset { offset_param, limit_param, limit, .. }) =
        op.trigger.as_ref().map(|t| &t.pagination)
    {
        if &p.name == offset_param {
            return json!(0);
        }
        if &p.name == limit_param {
            return json!(limit);
        }
    }
    if let Some(Pagination::Page { page_param, limit_param, limit, .. }) = op.trigger.as_ref().map(|t| &t.pagination) {
        if &p.name == page_param {
            return json!(1);
        }
        if &p.name == limit_param {
            return json!(limit);
        }
    }
    let id = |k: &str| ids.get(k);
    match (key, p.name.as_str()) {
        (_, "locationId" | "location_id") => json!(sb.location_id()),
        (_, "companyId") => json!(sb.company_id()),
        (_, "contactId") => id("contact"),
        (_, "taskId") => id("task"),
        ("contacts.get_contact_note" | "contacts.update_note" | "contacts.delete_note", "id") => id("note"),
        ("conversations.get_email", "id") => id("email"),
        ("conversations.get_message", "id") => id("message"),
        (
            "calendars.get_calendar_resource"
            | "calendars.update_calendar_resource"
            | "calendars.delete_calendar_resource",
            "id",
        ) => id("resource"),
        (k, "id") if k.starts_with("opportunities.") => id("opportunity"),
        ("locations.update_custom_value", "id") => id("customValue"),
        (_, "businessId") => id("business"),
        (_, "calendarId") => id("calendar"),
        (_, "calendarIds") => json!([ids.m["calendar"]]),
        (_, "groupId") => id("group"),
        ("calendars.update_block_slot", "eventId") => id("block"),
        (_, "eventId" | "appointmentId") => id("appointment"),
        (_, "noteId") => id("apptNote"),
        (_, "notificationId") => id("notification"),
        (_, "resourceType") => json!("equipments"),
        (_, "campaignId") => id("campaign"),
        (_, "workflowId") => id("workflow"),
        (_, "conversationId") => id("conversation"),
        ("conversations.update_message_status", "messageId") => id("message"),
        (_, "messageId") => id("call"),
        (_, "pipelineId") => id("pipeline"),
        ("users.delete_user", "userId") => json!("usr_sales2"),
        (_, "userId") => json!("usr_sales1"),
        (_, "assignedTo" | "assignedUserId") => json!("usr_sales1"),
        (_, "followers") => json!(["usr_sales1"]),
        (_, "locationIds") => json!([sb.location_id()]),
        (_, "associationId") => id("association"),
        (_, "relationId") => id("relation"),
        (_, "recordId") => id("relationRecord"),
        ("associations.create_relation", "firstRecordId") => id("contact"),
        ("associations.create_relation", "secondRecordId") => id("business"),
        (_, "key_name") => json!("contact_business"),
        (_, "objectKey") => json!("contact"),
        (_, "blogId") => id("blog"),
        (_, "postId") => id("post"),
        (_, "author") => id("author"),
        (_, "categories") => json!([ids.m["category"]]),
        ("blogs.check_url_slug", "urlSlug") => json!("post-0"),
        ("blogs.create_post", "urlSlug") => json!("a-brand-new-post"),
        ("blogs.update_post", "urlSlug") => json!("an-updated-post"),
        (k, "status") if k.starts_with("blogs.") => json!("PUBLISHED"),
        ("opportunities.update_opportunity_status", "status") => json!("won"),
        (k, "status") if k.starts_with("opportunities.") => json!("open"),
        (_, "type") if key == "contacts.bulk_update_tags" => json!("add"),
        (_, "contacts" | "ids") => json!([ids.m["contact"]]),
        (_, "email") => json!(ids.m["contactEmail"]),
        (_, "emails") => json!("sam@example.com,riley@example.com,jordan@example.com"),
        ("calendars.create_calendar_notification", "items") => {
            json!([{ "channel": "email", "receiverType": "contact", "notificationType": "booked" }])
        }
        (_, "startDate" | "startTime") if p.location == ParamIn::Query => json!((now_ms() - 10 * DAY).to_string()),
        (_, "endDate" | "endTime") if p.location == ParamIn::Query => json!((now_ms() + 10 * DAY).to_string()),
        _ => match &p.example {
            // An example that contradicts its declared type shows the form GHL takes.
            Some(e) => e.clone(),
            _ => match p.ty {
                ParamType::String | ParamType::Any => json!("sandbox"),
                ParamType::Integer | ParamType::Number => json!(10),
                ParamType::Boolean => json!(true),
                ParamType::Array => json!([]),
                ParamType::Object => json!({}),
            },
        },
    }
}

/// Optional parameters sent anyway because the operation is pointless without them.
pub fn wanted(op: &Operation, p: &Param) -> bool {
    p.required
        || p.location == ParamIn::Path
        || (matches!(op.key.as_str(), "contacts.get_duplicate_contact" | "contacts.find_contact") && p.name == "email")
}

pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The request for `op` with valid inputs; `overrides` replace or add parameters.
pub fn request(
    c: &reqwest::Client,
    sb: &Sandbox,
    op: &Operation,
    ids: &Ids,
    overrides: &[(String, Value)],
) -> RequestBuilder {
    let mut path = op.path.clone();
    let mut query: Vec<(String, String)> = Vec::new();
    let mut body = serde_json::Map::new();
    for p in op.params.iter().filter(|p| wanted(op, p)) {
        if overrides.iter().any(|(n, _)| *n == p.name) {
            continue;
        }
        let v = value_for(op, p, ids, sb);
        match p.location {
            ParamIn::Path => path = path.replace(&format!("{{{}}}", p.name), &text(&v)),
            ParamIn::Query => query.push((p.name.clone(), text(&v))),
            ParamIn::Body => {
                body.insert(p.name.clone(), v);
            }
        }
    }
    for (name, v) in overrides {
        let place = op.param(name).map(|p| p.location).unwrap_or(ParamIn::Query);
        match place {
            ParamIn::Path => path = path.replace(&format!("{{{name}}}"), &text(v)),
            ParamIn::Query => query.push((name.clone(), text(v))),
            ParamIn::Body => {
                body.insert(name.clone(), v.clone());
            }
        }
    }
    let method = Method::from_bytes(op.method.as_str().as_bytes()).expect("method");
    let token = if op.tokens.is_empty() || op.tokens.contains(&TokenKind::Location) { TOKEN } else { AGENCY_TOKEN };
    let mut rb = c
        .request(method, format!("{}{}", sb.base_url(), path))
        .bearer_auth(token)
        .header("Version", &op.version)
        .query(&query);
    if let Some(root) = &op.body_root {
        rb = rb.json(&body.get(root).cloned().unwrap_or(Value::Null));
    } else if !body.is_empty() || op.body_required || op.params_in(ParamIn::Body).next().is_some() {
        // A client sends the operation's body even when no field is set: `{}`, as flowd does.
        rb = rb.json(&body);
    }
    rb
}
