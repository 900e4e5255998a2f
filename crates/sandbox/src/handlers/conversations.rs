//! Conversations and messages: search (cursor on the last item's date), messages by
//! conversation (cursor on the last message id), sending, status, recordings, transcripts.

use serde_json::{json, Value};

use super::{created, field_is, k, new_record, not_found, ok, text_matches, Ctx, HandlerFn, Reply};
use crate::clock::{iso, parse_ms};
use crate::error::ApiError;
use crate::paginate::uint;
use crate::store::{str_of, Record};

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "conversations.search_conversations" => search,
        "conversations.get_conversation" => get_conversation,
        "conversations.get_email" => get_email,
        "conversations.get_message" => get_message,
        "conversations.get_messages" => get_messages,
        "conversations.get_message_recording" => recording,
        "conversations.get_message_transcription" => transcription,
        "conversations.download_transcription" => download_transcription,
        "conversations.update_message_status" => update_status,
        "conversations.agent_typing_indicator" => typing,
        "conversations.send_message" => send_message,
        _ => return None,
    })
}

fn search(ctx: &Ctx) -> Result<Reply, ApiError> {
    let limit = uint(ctx.query.get("limit")).unwrap_or(20);
    if limit > 100 {
        return Err(ApiError::unprocessable(vec!["limit must not be greater than 100".into()]));
    }
    let asc = ctx.q("sort") == Some("asc");
    let after = ctx.query.get("startAfterDate").and_then(parse_ms);
    let contact = ctx.q("contactId").map(str::to_string);
    let query = ctx.q("query").map(str::to_string);
    let id = ctx.q("id").map(str::to_string);
    let assigned = ctx.q("assignedTo").map(|a| a.split(',').map(String::from).collect::<Vec<_>>());
    let last_type = ctx.q("lastMessageType").map(str::to_string);
    let direction = ctx.q("lastMessageDirection").map(str::to_string);
    let status = ctx.q("status").unwrap_or("all").to_string();
    let mut all = ctx.list(k::CONVERSATIONS, |r| {
        contact.as_deref().is_none_or(|c| field_is(r, "contactId", c))
            && id.as_deref().is_none_or(|i| field_is(r, "id", i))
            && query
                .as_deref()
                .is_none_or(|q| text_matches(r, &["fullName", "contactName", "email", "phone", "lastMessageBody"], q))
            && assigned.as_ref().is_none_or(|a| str_of(r, "assignedTo").is_some_and(|x| a.iter().any(|y| y == x)))
            && last_type.as_deref().is_none_or(|t| field_is(r, "lastMessageType", t))
            && direction.as_deref().is_none_or(|d| field_is(r, "lastMessageDirection", d))
            && match status.as_str() {
                "unread" => r.get("unreadCount").and_then(Value::as_i64).unwrap_or(0) > 0,
                "read" => r.get("unreadCount").and_then(Value::as_i64).unwrap_or(0) == 0,
                "starred" => r.get("starred").and_then(Value::as_bool).unwrap_or(false),
                _ => true,
            }
    });
    let date = |r: &Record| r.get("lastMessageDate").and_then(Value::as_i64).unwrap_or(0);
    all.sort_by(|a, b| {
        let o = date(a).cmp(&date(b)).then_with(|| str_of(a, "id").cmp(&str_of(b, "id")));
        if asc {
            o
        } else {
            o.reverse()
        }
    });
    let total = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .filter(|r| after.is_none_or(|a| if asc { date(r) > a } else { date(r) < a }))
        .take(limit)
        .map(Value::Object)
        .collect();
    ok(json!({ "conversations": page, "total": total }))
}

fn get_conversation(ctx: &Ctx) -> Result<Reply, ApiError> {
    let c = ctx.fetch(k::CONVERSATIONS, ctx.p("conversationId"), "conversation")?;
    let mut out = serde_json::Map::new();
    for f in ["contactId", "locationId", "deleted", "inbox", "type", "unreadCount", "assignedTo", "id", "starred"] {
        out.insert(f.into(), c.get(f).cloned().unwrap_or(Value::Null));
    }
    // Search answers the channel by name, the single read by number (the spec's codes).
    if let Some(t) = c.get("type").and_then(Value::as_str) {
        out.insert("type".into(), json!(channel_code(t)));
    }
    ok(Value::Object(out))
}

/// GHL's conversation channel numbers: 1 phone, 2 email, 3 Facebook Messenger, 4 review,
/// 5 group SMS, 6 internal chat.
fn channel_code(t: &str) -> u8 {
    match t {
        "TYPE_EMAIL" => 2,
        "TYPE_FB_MESSENGER" | "TYPE_FACEBOOK" => 3,
        "TYPE_REVIEW" => 4,
        "TYPE_GROUP_SMS" => 5,
        "TYPE_INTERNAL_CHAT" => 6,
        _ => 1,
    }
}

fn get_email(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(Value::Object(ctx.fetch(k::EMAILS, ctx.p("id"), "email")?))
}

fn get_message(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(Value::Object(ctx.fetch(k::MESSAGES, ctx.p("id"), "message")?))
}

fn get_messages(ctx: &Ctx) -> Result<Reply, ApiError> {
    let conv = super::id_of(&ctx.fetch(k::CONVERSATIONS, ctx.p("conversationId"), "conversation")?);
    let limit = uint(ctx.query.get("limit")).unwrap_or(20).clamp(1, 100);
    let types: Option<Vec<String>> = ctx.q("type").map(|t| t.split(',').map(|s| s.trim().to_string()).collect());
    let mut all = ctx.list(k::MESSAGES, |r| {
        field_is(r, "conversationId", &conv)
            && types.as_ref().is_none_or(|ts| str_of(r, "messageType").is_some_and(|m| ts.iter().any(|t| t == m)))
    });
    // Newest first, as GHL pages back through history.
    super::sort_by_time(&mut all, "dateAdded", "id");
    all.reverse();
    let start = match ctx.q("lastMessageId") {
        Some(last) => all.iter().position(|r| field_is(r, "id", last)).map(|i| i + 1).unwrap_or(all.len()),
        None => 0,
    };
    let page: Vec<Record> = all.iter().skip(start).take(limit).cloned().collect();
    let next = start + page.len() < all.len();
    let last = page.last().and_then(|r| r.get("id").cloned()).unwrap_or(Value::Null);
    ok(json!({ "lastMessageId": last, "nextPage": next, "messages": page }))
}

fn call_message(ctx: &Ctx) -> Result<Record, ApiError> {
    let loc = ctx.p("locationId");
    if ctx.who.location_id.as_deref().is_some_and(|l| l != loc) {
        return Err(ApiError::forbidden("The token does not have access to this location"));
    }
    let m = ctx.fetch(k::MESSAGES, ctx.p("messageId"), "message")?;
    if !field_is(&m, "messageType", "TYPE_CALL") {
        return Err(not_found("recording"));
    }
    Ok(m)
}

/// A short WAV file of silence: a valid header and one second of 8 kHz mono 8-bit audio.
fn silent_wav() -> Vec<u8> {
    let samples = 8_000u32;
    let mut w = Vec::with_capacity(44 + samples as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + samples).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8_000u32.to_le_bytes());
    w.extend_from_slice(&8_000u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&samples.to_le_bytes());
    w.resize(44 + samples as usize, 128);
    w
}

fn recording(ctx: &Ctx) -> Result<Reply, ApiError> {
    call_message(ctx)?;
    Ok(Reply::File("audio/x-wav", silent_wav()))
}

fn transcript_lines(m: &Record) -> Vec<String> {
    let body = str_of(m, "body").unwrap_or("Hello, this is a call.").to_string();
    body.split(['.', '?', '!']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

fn transcription(ctx: &Ctx) -> Result<Reply, ApiError> {
    let m = call_message(ctx)?;
    let lines = transcript_lines(&m);
    let first = lines.first().cloned().unwrap_or_default();
    ok(json!({
        "mediaChannel": 1,
        "sentenceIndex": 0,
        "startTime": 0,
        "endTime": 2.5,
        "transcript": first,
        "confidence": 0.93,
    }))
}

fn download_transcription(ctx: &Ctx) -> Result<Reply, ApiError> {
    let m = call_message(ctx)?;
    let text: String = transcript_lines(&m).iter().map(|l| format!("Speaker 1: {l}.\n")).collect();
    Ok(Reply::File("text/plain", text.into_bytes()))
}

fn send_view(conversation: &str, message: &str, email: Option<&str>, status: &str) -> Value {
    json!({
        "conversationId": conversation,
        "emailMessageId": email,
        "messageId": message,
        "messageIds": [message],
        "msg": "Message queued successfully.",
        "forwardData": null,
        "status": status,
    })
}

fn update_status(ctx: &Ctx) -> Result<Reply, ApiError> {
    let status = ctx.b_str("status").unwrap_or_default().to_string();
    if !["delivered", "failed", "pending", "read"].contains(&status.as_str()) {
        return Err(ApiError::unprocessable(vec![
            "status must be one of the following values: delivered, failed, pending, read".into(),
        ]));
    }
    let error = ctx.b("error").cloned();
    let m = ctx.update(k::MESSAGES, ctx.p("messageId"), "message", |r| {
        r.insert("status".into(), json!(status));
        if let Some(e) = error {
            r.insert("error".into(), e);
        }
    })?;
    let conv = str_of(&m, "conversationId").unwrap_or_default();
    ok(send_view(conv, &super::id_of(&m), ctx.b_str("emailMessageId"), &status))
}

fn typing(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.fetch(k::CONVERSATIONS, ctx.b_str("conversationId").unwrap_or_default(), "conversation")?;
    created(json!({ "success": true }))
}

/// `TYPE_SMS` from `SMS`, `TYPE_LIVE_CHAT` from `Live_Chat`.
fn message_type(t: &str) -> String {
    format!("TYPE_{}", t.to_uppercase())
}

fn send_message(ctx: &Ctx) -> Result<Reply, ApiError> {
    let kind = ctx.b_str("type").unwrap_or("SMS").to_string();
    const TYPES: &[&str] = &["SMS", "RCS", "Email", "WhatsApp", "IG", "FB", "Custom", "Live_Chat", "TIKTOK"];
    if !TYPES.contains(&kind.as_str()) {
        return Err(ApiError::unprocessable(vec![format!(
            "type must be one of the following values: {}",
            TYPES.join(", ")
        )]));
    }
    let contact = ctx.fetch(k::CONTACTS, ctx.b_str("contactId").unwrap_or_default(), "contact")?;
    let contact_id = super::id_of(&contact);
    let now_ms = ctx.now_ms();
    let now = iso(now_ms);
    let body = ctx.b_str("message").or_else(|| ctx.b_str("html")).unwrap_or_default().to_string();
    let mtype = message_type(&kind);
    let existing = ctx.list(k::CONVERSATIONS, |r| field_is(r, "contactId", &contact_id)).into_iter().next();
    let conv_id = match existing {
        Some(c) => super::id_of(&c),
        None => {
            let mut c = new_record(ctx, serde_json::Map::new());
            c.insert("contactId".into(), json!(contact_id));
            c.insert("fullName".into(), contact.get("name").cloned().unwrap_or(Value::Null));
            c.insert("contactName".into(), contact.get("name").cloned().unwrap_or(Value::Null));
            c.insert("email".into(), contact.get("email").cloned().unwrap_or(Value::Null));
            c.insert("phone".into(), contact.get("phone").cloned().unwrap_or(Value::Null));
            c.insert("unreadCount".into(), json!(0));
            c.insert("type".into(), json!("TYPE_PHONE"));
            c.insert("deleted".into(), json!(false));
            c.insert("inbox".into(), json!(true));
            c.insert("starred".into(), json!(false));
            c.insert("dateAdded".into(), json!(now_ms));
            ctx.st.store.insert(k::CONVERSATIONS, c)
        }
    };
    let status = ctx.b_str("status").unwrap_or("pending").to_string();
    let mut m = new_record(ctx, serde_json::Map::new());
    m.insert("type".into(), json!(1));
    m.insert("messageType".into(), json!(mtype));
    m.insert("contactId".into(), json!(contact_id));
    m.insert("conversationId".into(), json!(conv_id));
    m.insert("dateAdded".into(), json!(now));
    m.insert("body".into(), json!(body));
    m.insert("direction".into(), json!("outbound"));
    m.insert("status".into(), json!(status));
    m.insert("contentType".into(), json!(if kind == "Email" { "text/html" } else { "text/plain" }));
    m.insert("attachments".into(), ctx.b("attachments").cloned().unwrap_or(json!([])));
    m.insert("source".into(), json!("api"));
    m.insert("userId".into(), Value::Null);
    let message_id = ctx.st.store.insert(k::MESSAGES, m);
    let email_id = if kind == "Email" {
        let mut e = new_record(ctx, serde_json::Map::new());
        e.insert("altId".into(), json!(message_id));
        e.insert("threadId".into(), ctx.b("threadId").cloned().unwrap_or(json!(message_id)));
        e.insert("contactId".into(), json!(contact_id));
        e.insert("conversationId".into(), json!(conv_id));
        e.insert("dateAdded".into(), json!(now));
        e.insert("subject".into(), ctx.b("subject").cloned().unwrap_or(json!("")));
        e.insert("body".into(), json!(body));
        e.insert("direction".into(), json!("outbound"));
        e.insert("status".into(), json!(status));
        e.insert("contentType".into(), json!("text/html"));
        e.insert("attachments".into(), ctx.b("attachments").cloned().unwrap_or(json!([])));
        e.insert("provider".into(), json!("Leadconnector Gmail"));
        e.insert("from".into(), ctx.b("emailFrom").cloned().unwrap_or(json!("sandbox@example.com")));
        e.insert("to".into(), json!([ctx.b_str("emailTo").or(str_of(&contact, "email")).unwrap_or_default()]));
        e.insert("cc".into(), ctx.b("emailCc").cloned().unwrap_or(json!([])));
        e.insert("bcc".into(), ctx.b("emailBcc").cloned().unwrap_or(json!([])));
        e.insert("source".into(), json!("api"));
        let email_id = ctx.st.store.insert(k::EMAILS, e);
        let eid = email_id.clone();
        let _ = ctx.update(k::MESSAGES, &message_id, "message", |r| {
            r.insert("meta".into(), json!({ "email": { "messageIds": [eid] } }));
        });
        Some(email_id)
    } else {
        None
    };
    let preview = body.clone();
    ctx.update(k::CONVERSATIONS, &conv_id, "conversation", |r| {
        r.insert("lastMessageBody".into(), json!(preview));
        r.insert("lastMessageType".into(), json!(mtype));
        r.insert("lastMessageDirection".into(), json!("outbound"));
        r.insert("lastMessageDate".into(), json!(now_ms));
        r.insert("dateUpdated".into(), json!(now_ms));
    })?;
    ok(send_view(&conv_id, &message_id, email_id.as_deref(), &status))
}
