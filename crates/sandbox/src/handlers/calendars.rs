//! Calendars, groups, appointments, blocked slots, free slots, appointment notes,
//! notifications and resources.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{created, field_is, k, merge, new_record, not_found, ok, require_ref, to_values, Ctx, HandlerFn, Reply};
use crate::clock::{iso, parse_ms};
use crate::error::ApiError;
use crate::paginate::{uint, window};
use crate::store::{str_of, Record};

pub fn handler(key: &str) -> Option<HandlerFn> {
    Some(match key {
        "calendars.list_calendar_groups" => list_groups,
        "calendars.list_calendars" => list_calendars,
        "calendars.get_calendar" => get_calendar,
        "calendars.get_free_slots" => free_slots,
        "calendars.list_calendar_events" => list_events,
        "calendars.list_blocked_slots" => list_blocked,
        "calendars.get_appointment" => get_appointment,
        "calendars.list_appointment_notes" => list_appointment_notes,
        "calendars.list_calendar_notifications" => list_notifications,
        "calendars.get_calendar_notification" => get_notification,
        "calendars.list_calendar_resources" => list_resources,
        "calendars.get_calendar_resource" => get_resource,
        "calendars.create_calendar_group" => create_group,
        "calendars.update_calendar_group" => update_group,
        "calendars.update_group_status" => group_status,
        "calendars.delete_calendar_group" => delete_group,
        "calendars.validate_group_slug" => validate_slug,
        "calendars.create_calendar" => create_calendar,
        "calendars.update_calendar" => update_calendar,
        "calendars.delete_calendar" => delete_calendar,
        "calendars.create_appointment" => create_appointment,
        "calendars.update_appointment" => update_appointment,
        "calendars.delete_event" => delete_event,
        "calendars.create_block_slot" => create_block_slot,
        "calendars.update_block_slot" => update_block_slot,
        "calendars.create_appointment_note" => create_appointment_note,
        "calendars.update_appointment_note" => update_appointment_note,
        "calendars.delete_appointment_note" => delete_appointment_note,
        "calendars.create_calendar_notification" => create_notifications,
        "calendars.update_calendar_notification" => update_notification,
        "calendars.delete_calendar_notification" => delete_notification,
        "calendars.create_calendar_resource" => create_resource,
        "calendars.update_calendar_resource" => update_resource,
        "calendars.delete_calendar_resource" => delete_resource,
        _ => return None,
    })
}

const DAY_MS: i64 = 86_400_000;

/// An event as the API shows it (the block-slot marker is internal).
pub fn public_event(mut e: Record) -> Record {
    e.remove("isBlockSlot");
    e
}

fn is_block(r: &Record) -> bool {
    r.get("isBlockSlot").and_then(Value::as_bool).unwrap_or(false)
}

fn list_groups(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "groups": to_values(ctx.list(k::CALENDAR_GROUPS, |_| true)) }))
}

fn list_calendars(ctx: &Ctx) -> Result<Reply, ApiError> {
    let group = ctx.q("groupId").map(str::to_string);
    let list = ctx.list(k::CALENDARS, |r| group.as_deref().is_none_or(|g| field_is(r, "groupId", g)));
    ok(json!({ "calendars": to_values(list) }))
}

fn get_calendar(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "calendar": ctx.fetch(k::CALENDARS, ctx.p("calendarId"), "calendar")? }))
}

fn window_ms(ctx: &Ctx, start: &str, end: &str) -> Result<(i64, i64), ApiError> {
    let s = ctx.query.get(start).and_then(parse_ms);
    let e = ctx.query.get(end).and_then(parse_ms);
    match (s, e) {
        (Some(s), Some(e)) if e >= s => Ok((s, e)),
        (Some(_), Some(_)) => Err(ApiError::unprocessable(vec![format!("{end} must be after {start}")])),
        _ => Err(ApiError::unprocessable(vec![format!("{start} and {end} must be epoch milliseconds")])),
    }
}

/// Free slots: every `slotDuration` minutes from 09:00 to 17:00 UTC on each day of the
/// window, minus the times taken by the calendar's appointments and blocked slots.
fn free_slots(ctx: &Ctx) -> Result<Reply, ApiError> {
    let cal = ctx.fetch(k::CALENDARS, ctx.p("calendarId"), "calendar")?;
    let (start, end) = window_ms(ctx, "startDate", "endDate")?;
    if end - start > 31 * DAY_MS {
        return Err(ApiError::unprocessable(vec!["The date range must not exceed 31 days".into()]));
    }
    let minutes = cal.get("slotDuration").and_then(Value::as_i64).filter(|m| *m > 0).unwrap_or(30);
    let cal_id = super::id_of(&cal);
    let busy: Vec<(i64, i64)> = ctx
        .list(k::EVENTS, |r| field_is(r, "calendarId", &cal_id))
        .iter()
        .filter_map(|e| Some((e.get("startTime").and_then(parse_ms)?, e.get("endTime").and_then(parse_ms)?)))
        .collect();
    let mut days: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut day = start - start.rem_euclid(DAY_MS);
    while day <= end {
        let mut t = day + 9 * 3_600_000;
        let close = day + 17 * 3_600_000;
        while t + minutes * 60_000 <= close {
            let slot_end = t + minutes * 60_000;
            if t >= start && t <= end && !busy.iter().any(|(s, e)| t < *e && slot_end > *s) {
                days.entry(iso(day)[..10].to_string()).or_default().push(iso(t));
            }
            t = slot_end;
        }
        day += DAY_MS;
    }
    let mut out = Map::new();
    for (d, slots) in days {
        out.insert(d, json!({ "slots": slots }));
    }
    ok(Value::Object(out))
}

fn events_in_window(ctx: &Ctx, blocked: bool) -> Result<Vec<Value>, ApiError> {
    let (start, end) = window_ms(ctx, "startTime", "endTime")?;
    let cal = ctx.q("calendarId").map(str::to_string);
    let user = ctx.q("userId").map(str::to_string);
    let group = ctx.q("groupId").map(str::to_string);
    let group_cals: Option<Vec<String>> = group
        .as_ref()
        .map(|g| ctx.list(k::CALENDARS, |r| field_is(r, "groupId", g)).iter().map(super::id_of).collect());
    let mut list = ctx.list(k::EVENTS, |r| {
        let t = r.get("startTime").and_then(parse_ms).unwrap_or(i64::MIN);
        is_block(r) == blocked
            && t >= start
            && t <= end
            && cal.as_deref().is_none_or(|c| field_is(r, "calendarId", c))
            && user.as_deref().is_none_or(|u| field_is(r, "assignedUserId", u))
            && group_cals.as_ref().is_none_or(|cs| str_of(r, "calendarId").is_some_and(|c| cs.iter().any(|x| x == c)))
    });
    super::sort_by_time(&mut list, "startTime", "id");
    Ok(list.into_iter().map(|e| Value::Object(public_event(e))).collect())
}

fn list_events(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "events": events_in_window(ctx, false)? }))
}

fn list_blocked(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(json!({ "events": events_in_window(ctx, true)? }))
}

fn get_appointment(ctx: &Ctx) -> Result<Reply, ApiError> {
    let e = ctx.fetch(k::EVENTS, ctx.p("eventId"), "appointment")?;
    if is_block(&e) {
        return Err(not_found("appointment"));
    }
    ok(json!({ "event": public_event(e) }))
}

fn appointment(ctx: &Ctx) -> Result<Record, ApiError> {
    let e = ctx.fetch(k::EVENTS, ctx.p("appointmentId"), "appointment")?;
    if is_block(&e) {
        return Err(not_found("appointment"));
    }
    Ok(e)
}

fn list_appointment_notes(ctx: &Ctx) -> Result<Reply, ApiError> {
    let appt = super::id_of(&appointment(ctx)?);
    let limit = uint(ctx.query.get("limit")).unwrap_or(10);
    if limit > 20 {
        return Err(ApiError::unprocessable(vec!["limit must not be greater than 20".into()]));
    }
    let offset = uint(ctx.query.get("offset")).unwrap_or(0);
    let all = ctx.list(k::APPOINTMENT_NOTES, |r| field_is(r, "appointmentId", &appt));
    let page = window(&all, offset, limit);
    let has_more = offset + page.len() < all.len();
    let notes: Vec<Value> = page
        .into_iter()
        .map(|mut n| {
            n.remove("appointmentId");
            Value::Object(n)
        })
        .collect();
    ok(json!({ "notes": notes, "hasMore": has_more }))
}

fn note_view(mut n: Record) -> Value {
    n.remove("appointmentId");
    Value::Object(n)
}

fn create_appointment_note(ctx: &Ctx) -> Result<Reply, ApiError> {
    let appt = appointment(ctx)?;
    let mut n = new_record(ctx, ctx.declared_body());
    n.insert("appointmentId".into(), json!(super::id_of(&appt)));
    n.insert("contactId".into(), appt.get("contactId").cloned().unwrap_or(Value::Null));
    n.insert("dateAdded".into(), json!(ctx.now()));
    let user = n.get("userId").cloned().unwrap_or(Value::Null);
    n.insert("createdBy".into(), json!({ "id": user, "name": Value::Null }));
    created(json!({ "note": note_view(ctx.insert(k::APPOINTMENT_NOTES, n)) }))
}

fn appointment_note(ctx: &Ctx) -> Result<Record, ApiError> {
    let appt = super::id_of(&appointment(ctx)?);
    let n = ctx.fetch(k::APPOINTMENT_NOTES, ctx.p("noteId"), "note")?;
    if !field_is(&n, "appointmentId", &appt) {
        return Err(not_found("note"));
    }
    Ok(n)
}

fn update_appointment_note(ctx: &Ctx) -> Result<Reply, ApiError> {
    appointment_note(ctx)?;
    let fields = ctx.declared_body();
    let n = ctx.update(k::APPOINTMENT_NOTES, ctx.p("noteId"), "note", |r| merge(r, fields))?;
    ok(json!({ "note": note_view(n) }))
}

fn delete_appointment_note(ctx: &Ctx) -> Result<Reply, ApiError> {
    appointment_note(ctx)?;
    ctx.delete(k::APPOINTMENT_NOTES, ctx.p("noteId"), "note")?;
    ok(json!({ "success": true }))
}

fn list_notifications(ctx: &Ctx) -> Result<Reply, ApiError> {
    let cal = super::id_of(&ctx.fetch(k::CALENDARS, ctx.p("calendarId"), "calendar")?);
    let flag = |name: &str| ctx.q(name).map(|v| v == "true");
    let active = flag("isActive");
    let deleted = flag("deleted").unwrap_or(false);
    let all = ctx.list(k::CALENDAR_NOTIFICATIONS, |r| {
        field_is(r, "calendarId", &cal)
            && active.is_none_or(|a| r.get("isActive").and_then(Value::as_bool) == Some(a))
            && r.get("deleted").and_then(Value::as_bool).unwrap_or(false) == deleted
    });
    let (skip, limit) = ctx.offset_query("skip", "limit", 100);
    ok(Value::Array(window(&all, skip, limit).into_iter().map(notification_view).collect()))
}

fn notification_view(mut n: Record) -> Value {
    n.remove("calendarId");
    n.remove("locationId");
    Value::Object(n)
}

fn notification(ctx: &Ctx) -> Result<Record, ApiError> {
    let n = ctx.fetch(k::CALENDAR_NOTIFICATIONS, ctx.p("notificationId"), "notification")?;
    if !field_is(&n, "calendarId", ctx.p("calendarId")) {
        return Err(not_found("notification"));
    }
    Ok(n)
}

fn get_notification(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(notification_view(notification(ctx)?))
}

fn create_notifications(ctx: &Ctx) -> Result<Reply, ApiError> {
    let cal = super::id_of(&ctx.fetch(k::CALENDARS, ctx.p("calendarId"), "calendar")?);
    // The spec's body is an array of notifications; a single object is accepted too.
    let items: Vec<Value> = match ctx.body {
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![ctx.body.clone()],
        _ => Vec::new(),
    };
    if items.is_empty() {
        return Err(ApiError::unprocessable(vec!["body must be a non-empty array of notifications".into()]));
    }
    let mut out = Vec::new();
    for item in items {
        let mut n = new_record(ctx, item.as_object().cloned().unwrap_or_default());
        n.remove("_id");
        n.insert("calendarId".into(), json!(cal));
        n.entry("isActive").or_insert(json!(true));
        n.entry("deleted").or_insert(json!(false));
        n.entry("channel").or_insert(json!("email"));
        n.entry("receiverType").or_insert(json!("contact"));
        n.entry("notificationType").or_insert(json!("booked"));
        out.push(notification_view(ctx.insert(k::CALENDAR_NOTIFICATIONS, n)));
    }
    ok(Value::Array(out))
}

fn update_notification(ctx: &Ctx) -> Result<Reply, ApiError> {
    notification(ctx)?;
    let fields = ctx.declared_body();
    ctx.update(k::CALENDAR_NOTIFICATIONS, ctx.p("notificationId"), "notification", |r| merge(r, fields))?;
    ok(json!({ "message": "Notification updated successfully" }))
}

fn delete_notification(ctx: &Ctx) -> Result<Reply, ApiError> {
    notification(ctx)?;
    // GHL marks notifications deleted rather than erasing them (`deleted=true` lists them).
    ctx.update(k::CALENDAR_NOTIFICATIONS, ctx.p("notificationId"), "notification", |r| {
        r.insert("deleted".into(), json!(true));
    })?;
    ok(json!({ "message": "Notification deleted successfully" }))
}

fn check_resource_type(ctx: &Ctx) -> Result<String, ApiError> {
    let t = ctx.p("resourceType");
    if t != "equipments" && t != "rooms" {
        return Err(ApiError::unprocessable(vec![
            "resourceType must be one of the following values: equipments, rooms".into(),
        ]));
    }
    Ok(t.to_string())
}

fn list_resources(ctx: &Ctx) -> Result<Reply, ApiError> {
    let t = check_resource_type(ctx)?;
    let all = ctx.list(k::CALENDAR_RESOURCES, |r| field_is(r, "resourceType", &t));
    let (skip, limit) = ctx.offset_query("skip", "limit", 20);
    ok(Value::Array(to_values(window(&all, skip, limit))))
}

fn resource(ctx: &Ctx) -> Result<Record, ApiError> {
    let t = check_resource_type(ctx)?;
    let r = ctx.fetch(k::CALENDAR_RESOURCES, ctx.p("id"), "resource")?;
    if !field_is(&r, "resourceType", &t) {
        return Err(not_found("resource"));
    }
    Ok(r)
}

fn get_resource(ctx: &Ctx) -> Result<Reply, ApiError> {
    ok(Value::Object(resource(ctx)?))
}

fn create_resource(ctx: &Ctx) -> Result<Reply, ApiError> {
    let t = check_resource_type(ctx)?;
    let mut r = new_record(ctx, ctx.declared_body());
    r.insert("resourceType".into(), json!(t));
    r.entry("isActive").or_insert(json!(true));
    created(Value::Object(ctx.insert(k::CALENDAR_RESOURCES, r)))
}

fn update_resource(ctx: &Ctx) -> Result<Reply, ApiError> {
    resource(ctx)?;
    let fields = ctx.declared_body();
    let r = ctx.update(k::CALENDAR_RESOURCES, ctx.p("id"), "resource", |r| merge(r, fields))?;
    ok(Value::Object(r))
}

fn delete_resource(ctx: &Ctx) -> Result<Reply, ApiError> {
    resource(ctx)?;
    ctx.delete(k::CALENDAR_RESOURCES, ctx.p("id"), "resource")?;
    ok(json!({ "success": true }))
}

fn slug_taken(ctx: &Ctx, slug: &str, except: Option<&str>) -> bool {
    !ctx.list(k::CALENDAR_GROUPS, |r| field_is(r, "slug", slug) && except.is_none_or(|e| !field_is(r, "id", e)))
        .is_empty()
}

fn create_group(ctx: &Ctx) -> Result<Reply, ApiError> {
    let slug = ctx.b_str("slug").unwrap_or_default().to_string();
    if slug_taken(ctx, &slug, None) {
        return Err(ApiError::bad_request("Slug is already in use"));
    }
    let mut g = new_record(ctx, ctx.declared_body());
    g.entry("isActive").or_insert(json!(true));
    created(json!({ "group": ctx.insert(k::CALENDAR_GROUPS, g) }))
}

fn update_group(ctx: &Ctx) -> Result<Reply, ApiError> {
    let id = ctx.p("groupId");
    if let Some(slug) = ctx.b_str("slug") {
        if slug_taken(ctx, slug, Some(id)) {
            return Err(ApiError::bad_request("Slug is already in use"));
        }
    }
    let fields = ctx.declared_body();
    let g = ctx.update(k::CALENDAR_GROUPS, id, "group", |r| merge(r, fields))?;
    ok(json!({ "group": g }))
}

fn group_status(ctx: &Ctx) -> Result<Reply, ApiError> {
    let active = ctx.b("isActive").and_then(Value::as_bool).unwrap_or(false);
    ctx.update(k::CALENDAR_GROUPS, ctx.p("groupId"), "group", |r| {
        r.insert("isActive".into(), json!(active));
    })?;
    ok(json!({ "success": true }))
}

fn delete_group(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.delete(k::CALENDAR_GROUPS, ctx.p("groupId"), "group")?;
    ok(json!({ "success": true }))
}

fn validate_slug(ctx: &Ctx) -> Result<Reply, ApiError> {
    let slug = ctx.b_str("slug").unwrap_or_default();
    ok(json!({ "available": !slug_taken(ctx, slug, None) }))
}

fn create_calendar(ctx: &Ctx) -> Result<Reply, ApiError> {
    require_ref(ctx, k::CALENDAR_GROUPS, ctx.b_str("groupId"), "group")?;
    let mut c = new_record(ctx, ctx.declared_body());
    c.entry("isActive").or_insert(json!(true));
    c.entry("calendarType").or_insert(json!("event"));
    c.entry("slotDuration").or_insert(json!(30));
    c.entry("slotDurationUnit").or_insert(json!("mins"));
    c.entry("teamMembers").or_insert(json!([]));
    ok(json!({ "calendar": ctx.insert(k::CALENDARS, c) }))
}

fn update_calendar(ctx: &Ctx) -> Result<Reply, ApiError> {
    let fields = ctx.declared_body();
    let c = ctx.update(k::CALENDARS, ctx.p("calendarId"), "calendar", |r| merge(r, fields))?;
    ok(json!({ "calendar": c }))
}

fn delete_calendar(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.delete(k::CALENDARS, ctx.p("calendarId"), "calendar")?;
    ok(json!({ "success": true }))
}

/// Normalises `startTime`/`endTime` given as ISO text or epoch ms to ISO text.
fn normalise_times(r: &mut Record, default_minutes: i64) {
    let start = r.get("startTime").and_then(parse_ms);
    if let Some(s) = start {
        r.insert("startTime".into(), json!(iso(s)));
        let end = r.get("endTime").and_then(parse_ms).unwrap_or(s + default_minutes * 60_000);
        r.insert("endTime".into(), json!(iso(end)));
    }
}

fn appointment_view(e: &Record) -> Value {
    let mut out = Map::new();
    for f in [
        "calendarId",
        "locationId",
        "contactId",
        "startTime",
        "endTime",
        "title",
        "meetingLocationType",
        "appointmentStatus",
        "assignedUserId",
        "address",
        "isRecurring",
        "rrule",
        "id",
    ] {
        out.insert(f.into(), e.get(f).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

fn create_appointment(ctx: &Ctx) -> Result<Reply, ApiError> {
    let cal = ctx.fetch(k::CALENDARS, ctx.b_str("calendarId").unwrap_or_default(), "calendar")?;
    ctx.fetch(k::CONTACTS, ctx.b_str("contactId").unwrap_or_default(), "contact")?;
    let minutes = cal.get("slotDuration").and_then(Value::as_i64).unwrap_or(30);
    let now = ctx.now();
    let mut e = new_record(ctx, ctx.declared_body());
    normalise_times(&mut e, minutes);
    e.entry("title").or_insert(json!("Appointment"));
    e.entry("appointmentStatus").or_insert(json!("confirmed"));
    e.entry("isRecurring").or_insert(json!(false));
    e.entry("users").or_insert(json!([]));
    // Booked through the API: GHL records the source as a third party.
    e.insert("createdBy".into(), json!({ "userId": Value::Null, "source": "third_party" }));
    e.insert("groupId".into(), cal.get("groupId").cloned().unwrap_or(Value::Null));
    e.insert("dateAdded".into(), json!(now));
    e.insert("dateUpdated".into(), json!(now));
    e.insert("isBlockSlot".into(), json!(false));
    let saved = ctx.insert(k::EVENTS, e);
    ok(appointment_view(&saved))
}

fn update_appointment(ctx: &Ctx) -> Result<Reply, ApiError> {
    require_ref(ctx, k::CALENDARS, ctx.b_str("calendarId"), "calendar")?;
    let id = ctx.p("eventId");
    let e = ctx.fetch(k::EVENTS, id, "appointment")?;
    if is_block(&e) {
        return Err(not_found("appointment"));
    }
    let fields = ctx.declared_body();
    let now = ctx.now();
    let e = ctx.update(k::EVENTS, id, "appointment", |r| {
        merge(r, fields);
        normalise_times(r, 30);
        r.insert("dateUpdated".into(), json!(now));
    })?;
    ok(appointment_view(&e))
}

fn delete_event(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.delete(k::EVENTS, ctx.p("eventId"), "event")?;
    created(json!({ "succeeded": true }))
}

fn block_view(e: &Record) -> Value {
    let mut out = Map::new();
    for f in ["id", "locationId", "title", "startTime", "endTime", "calendarId", "assignedUserId"] {
        out.insert(f.into(), e.get(f).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

fn create_block_slot(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.fetch(k::CALENDARS, ctx.b_str("calendarId").unwrap_or_default(), "calendar")?;
    let now = ctx.now();
    let mut e = new_record(ctx, ctx.declared_body());
    if e.get("startTime").is_none() {
        e.insert("startTime".into(), json!(now));
    }
    normalise_times(&mut e, 60);
    e.entry("title").or_insert(json!("Blocked"));
    e.entry("users").or_insert(json!([]));
    e.insert("dateAdded".into(), json!(now));
    e.insert("dateUpdated".into(), json!(now));
    e.insert("isBlockSlot".into(), json!(true));
    created(block_view(&ctx.insert(k::EVENTS, e)))
}

fn update_block_slot(ctx: &Ctx) -> Result<Reply, ApiError> {
    let id = ctx.p("eventId");
    let e = ctx.fetch(k::EVENTS, id, "block slot")?;
    if !is_block(&e) {
        return Err(not_found("block slot"));
    }
    let fields = ctx.declared_body();
    let now = ctx.now();
    let e = ctx.update(k::EVENTS, id, "block slot", |r| {
        merge(r, fields);
        normalise_times(r, 60);
        r.insert("dateUpdated".into(), json!(now));
    })?;
    created(block_view(&e))
}
