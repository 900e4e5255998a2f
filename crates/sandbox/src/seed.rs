//! Initial data: a realistic small demo account, N bare contacts for benchmarks, or nothing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::clock::iso;
use crate::store::{kinds as k, Record, Store};

/// What the store holds at start (and after a reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Seed {
    Empty,
    #[default]
    Demo,
    /// The location, its users and this many contacts (nothing else).
    Contacts(usize),
}

impl FromStr for Seed {
    type Err = String;

    /// `demo`, `empty`, or a number of contacts.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "demo" => Ok(Seed::Demo),
            "empty" => Ok(Seed::Empty),
            n => n
                .parse::<usize>()
                .map(Seed::Contacts)
                .map_err(|_| format!("seed must be demo, empty or a number, not `{s}`")),
        }
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Empty => f.write_str("empty"),
            Seed::Demo => f.write_str("demo"),
            Seed::Contacts(n) => write!(f, "{n}"),
        }
    }
}

/// A second location of the same company, so tests can check location binding (403).
pub const OTHER_LOCATION_ID: &str = "loc_other";

/// Fields a kind stamps with its creation and update times.
pub fn stamp_fields(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        k::CONTACTS | k::EVENTS => Some(("dateAdded", "dateUpdated")),
        k::OPPORTUNITIES | k::BUSINESSES | k::WORKFLOWS | k::BLOG_POSTS | k::BLOG_AUTHORS | k::BLOG_CATEGORIES => {
            Some(("createdAt", "updatedAt"))
        }
        _ => None,
    }
}

/// Fills timestamps a record of `kind` lacks.
pub fn stamp(kind: &str, r: &mut Record, now: &str) {
    if let Some((created, updated)) = stamp_fields(kind) {
        r.entry(created).or_insert(json!(now));
        r.insert(updated.into(), json!(now));
    } else if matches!(kind, k::NOTES | k::TASKS | k::APPOINTMENT_NOTES | k::MESSAGES) {
        r.entry("dateAdded").or_insert(json!(now));
    }
}

fn obj(v: Value) -> Record {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

const FIRST: &[&str] =
    &["Ava", "Liam", "Mia", "Noah", "Emma", "Oliver", "Sophia", "Elijah", "Isabella", "Lucas", "Amelia", "Mason"];
const LAST: &[&str] = &["Smith", "Johnson", "Garcia", "Brown", "Davis", "Miller", "Lopez", "Wilson", "Moore"];
const CITIES: &[(&str, &str)] = &[("Austin", "TX"), ("Denver", "CO"), ("Miami", "FL"), ("Seattle", "WA")];
const TAGS: &[&str] = &["lead", "customer", "vip", "newsletter", "webinar"];

/// A contact in GHL's shape; `minute` orders `dateAdded` (older first).
pub fn contact(store: &Store, location: &str, n: usize, added_ms: i64) -> Record {
    let first = FIRST[n % FIRST.len()];
    let last = LAST[(n / FIRST.len()) % LAST.len()];
    let (city, state) = CITIES[n % CITIES.len()];
    let name = format!("{first} {last}");
    let email = format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase(), n);
    let added = iso(added_ms);
    obj(json!({
        "id": store.ids.next(),
        "locationId": location,
        "name": name,
        "firstName": first,
        "lastName": last,
        "firstNameLowerCase": first.to_lowercase(),
        "lastNameLowerCase": last.to_lowercase(),
        "fullNameLowerCase": name.to_lowercase(),
        "email": email,
        "emailLowerCase": email,
        "phone": format!("+1512555{:04}", n % 10_000),
        "companyName": Value::Null,
        "timezone": "America/Chicago",
        "dnd": false,
        "dndSettings": {},
        "type": match n % 4 { 0 => "customer", _ => "lead" },
        "source": "sandbox seed",
        "assignedTo": Value::Null,
        "address1": format!("{} Main St", 100 + n),
        "city": city,
        "state": state,
        "country": "US",
        "postalCode": format!("{:05}", 73_301 + n % 500),
        "website": Value::Null,
        "tags": [TAGS[n % TAGS.len()]],
        "dateOfBirth": Value::Null,
        "dateAdded": added,
        "dateUpdated": added,
        "attachments": "",
        "customFields": [],
        "followers": [],
        "businessId": Value::Null,
        "deleted": false,
    }))
}

/// Fills the store. `now_ms` anchors seeded dates in the recent past.
pub fn apply(store: &Store, seed: Seed, location: &str, company: &str, now_ms: i64) {
    match seed {
        Seed::Empty => {}
        Seed::Contacts(n) => {
            base(store, location, company);
            let start = now_ms - n as i64 * 1_000 - 1_000;
            let mut col = store.write(k::CONTACTS);
            for i in 0..n {
                let c = contact(store, location, i, start + i as i64 * 1_000);
                let id = c.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                col.insert(id, c);
            }
        }
        Seed::Demo => demo(store, location, company, now_ms),
    }
}

/// The company, the location (plus a second one) and a few users.
fn base(store: &Store, location: &str, company: &str) {
    store.insert(
        k::COMPANIES,
        obj(json!({
            "id": company, "name": "Sandbox Agency", "email": "agency@example.com", "logoUrl": Value::Null,
            "phone": "+15125550100", "website": "https://agency.example.com", "domain": "app.example.com",
            "address": "1 Agency Way", "city": "Austin", "postalCode": "73301", "country": "US", "state": "TX",
            "timezone": "America/Chicago", "plan": 297, "currency": "USD", "customerType": "agency",
        })),
    );
    for (id, name) in [(location, "Sandbox Demo Location"), (OTHER_LOCATION_ID, "Another Location")] {
        store.insert(
            k::LOCATIONS,
            obj(json!({
                "id": id, "companyId": company, "name": name, "domain": Value::Null, "address": "100 Congress Ave",
                "city": "Austin", "state": "TX", "logoUrl": Value::Null, "country": "US", "postalCode": "73301",
                "website": "https://example.com", "timezone": "America/Chicago", "firstName": "Sam",
                "lastName": "Owner", "email": format!("{id}@example.com"), "phone": "+15125550101",
                "business": { "name": name }, "social": {}, "settings": {},
            })),
        );
    }
    let users = [
        ("usr_admin", "Sam", "Owner", "admin", location),
        ("usr_sales1", "Riley", "Seller", "user", location),
        ("usr_sales2", "Jordan", "Closer", "user", location),
        ("usr_other", "Casey", "Elsewhere", "admin", OTHER_LOCATION_ID),
    ];
    for (id, first, last, role, loc) in users {
        store.insert(
            k::USERS,
            obj(json!({
                "id": id, "name": format!("{first} {last}"), "firstName": first, "lastName": last,
                "email": format!("{}@example.com", first.to_lowercase()), "phone": "+15125550199", "extension": "",
                "permissions": { "contactsEnabled": true, "opportunitiesEnabled": true, "appointmentsEnabled": true },
                "scopes": [], "roles": { "type": "account", "role": role, "locationIds": [loc] },
                "deleted": false, "lcPhone": {}, "platformLanguage": "en_US", "companyId": company,
            })),
        );
    }
}

fn demo(store: &Store, loc: &str, company: &str, now_ms: i64) {
    const MIN: i64 = 60_000;
    const DAY: i64 = 86_400_000;
    base(store, loc, company);
    let ins = |kind: &str, v: Value| store.insert(kind, obj(v));

    let businesses: Vec<String> = ["Acme Roofing", "Blue Ocean Dental", "Northwind Traders"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let at = iso(now_ms - (30 - i as i64) * DAY);
            ins(
                k::BUSINESSES,
                json!({
                    "name": name, "phone": "+15125550150", "email": format!("info{i}@example.com"),
                    "website": "https://example.com", "address": format!("{} Market St", 10 + i), "city": "Austin",
                    "description": "Seeded business", "state": "TX", "postalCode": "73301", "country": "US",
                    "locationId": loc, "createdAt": at, "updatedAt": at,
                    "createdBy": { "source": "INTEGRATION", "sourceId": "seed" },
                    "updatedBy": { "source": "INTEGRATION", "sourceId": "seed" },
                }),
            )
        })
        .collect();

    let users = ["usr_admin", "usr_sales1", "usr_sales2"];
    let start = now_ms - 36 * 60 * MIN;
    let mut contacts = Vec::new();
    for i in 0..36 {
        let mut c = contact(store, loc, i, start + i as i64 * 60 * MIN);
        c.insert("assignedTo".into(), json!(users[i % users.len()]));
        if i % 4 == 1 {
            c.insert("businessId".into(), json!(businesses[i % businesses.len()]));
            c.insert("companyName".into(), json!("Acme"));
        }
        let id = store.insert(k::CONTACTS, c);
        if matches!(i % 3, 0) {
            for t in 0..2 {
                ins(
                    k::TASKS,
                    json!({
                        "locationId": loc, "contactId": id, "title": format!("Follow up #{t}"),
                        "body": "Call back about the quote", "assignedTo": users[t % 3],
                        "dueDate": iso(now_ms + (t as i64 + 1) * DAY), "completed": false, "dateAdded": iso(start),
                    }),
                );
            }
        }
        if matches!(i % 2, 0) {
            ins(
                k::NOTES,
                json!({
                    "locationId": loc, "contactId": id, "body": format!("Met at the expo; interested in plan {}", i % 3),
                    "userId": "usr_admin", "dateAdded": iso(start + i as i64 * MIN), "title": "Expo",
                    "color": "#FFAA00", "pinned": false,
                }),
            );
        }
        contacts.push(id);
    }
    for i in 0..3 {
        store.insert(k::CONTACTS, contact(store, OTHER_LOCATION_ID, 100 + i, start));
    }

    let group = ins(
        k::CALENDAR_GROUPS,
        json!({
            "locationId": loc, "name": "Sales", "description": "Sales team calendars", "slug": "sales", "isActive": true,
        }),
    );
    let calendars: Vec<String> = ["Discovery Call", "Product Demo"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            ins(
                k::CALENDARS,
                json!({
                    "locationId": loc, "groupId": group, "name": name, "description": "Seeded calendar",
                    "slug": format!("cal-{i}"), "widgetSlug": format!("cal-{i}"), "calendarType": "round_robin",
                    "widgetType": "default", "eventTitle": "{{contact.name}} call", "eventColor": "#039be5",
                    "slotDuration": 30, "slotDurationUnit": "mins", "slotInterval": 30, "slotIntervalUnit": "mins",
                    "teamMembers": [{ "userId": "usr_sales1", "priority": 0.5 }], "isActive": true,
                    "notifications": [], "openHours": [], "enableRecurring": false,
                }),
            )
        })
        .collect();
    let day0 = now_ms - now_ms.rem_euclid(DAY);
    let mut appointments = Vec::new();
    for i in 0..12i64 {
        let s = day0 + (i - 6) * DAY + (10 + i % 5) * 60 * MIN;
        let added = iso(now_ms - (20 - i) * DAY);
        appointments.push(ins(
            k::EVENTS,
            json!({
                "locationId": loc, "calendarId": calendars[(i % 2) as usize], "contactId": contacts[i as usize],
                "groupId": group, "title": format!("Call with contact {i}"), "appointmentStatus": "confirmed",
                "assignedUserId": users[(i % 3) as usize], "users": [users[(i % 3) as usize]], "address": "Zoom",
                "notes": "", "description": "Seeded appointment", "isRecurring": false, "rrule": Value::Null,
                "startTime": iso(s), "endTime": iso(s + 30 * MIN), "dateAdded": added, "dateUpdated": added,
                "assignedResources": [], "createdBy": { "userId": "usr_admin", "source": "booking_widget" }, "masterEventId": Value::Null,
                "meetingLocationType": "custom", "isBlockSlot": false,
            }),
        ));
    }
    for i in 0..4i64 {
        let s = day0 + (i * 3 - 4) * DAY + 12 * 60 * MIN;
        ins(
            k::EVENTS,
            json!({
                "locationId": loc, "calendarId": calendars[0], "title": "Lunch", "assignedUserId": "usr_sales1",
                "startTime": iso(s), "endTime": iso(s + 60 * MIN), "dateAdded": iso(now_ms - DAY),
                "dateUpdated": iso(now_ms - DAY), "isBlockSlot": true, "users": [],
            }),
        );
    }
    for i in 0..3 {
        ins(
            k::APPOINTMENT_NOTES,
            json!({
                "locationId": loc, "appointmentId": appointments[0], "contactId": contacts[0],
                "body": format!("Prep note {i}"), "userId": "usr_admin", "dateAdded": iso(now_ms - (3 - i) * MIN),
                "createdBy": { "id": "usr_admin", "name": "Sam Owner" },
            }),
        );
    }
    for (i, channel) in ["email", "sms", "whatsapp"].iter().enumerate() {
        ins(
            k::CALENDAR_NOTIFICATIONS,
            json!({
                "locationId": loc, "calendarId": calendars[0], "receiverType": "contact", "channel": channel,
                "notificationType": if i == 0 { "booked" } else { "reminder" }, "isActive": true, "deleted": false,
                "additionalEmailIds": [], "additionalPhoneNumbers": [], "selectedUsers": [], "templateId": Value::Null,
                "body": "See you soon", "subject": "Your appointment", "afterTime": [], "beforeTime": [],
            }),
        );
    }
    for (t, name) in
        [("equipments", "Projector"), ("equipments", "Camera"), ("equipments", "Whiteboard"), ("rooms", "Room A")]
    {
        ins(
            k::CALENDAR_RESOURCES,
            json!({
                "locationId": loc, "name": name, "resourceType": t, "isActive": true, "description": "Seeded",
                "quantity": 1, "outOfService": 0, "capacity": 8, "calendarIds": [calendars[0]],
            }),
        );
    }

    let stages = ["New Lead", "Qualified", "Proposal", "Closed"];
    let stage_ids: Vec<String> = (0..stages.len()).map(|_| store.ids.next()).collect();
    let pipeline = ins(
        k::PIPELINES,
        json!({
            "locationId": loc, "name": "Sales Pipeline", "showInFunnel": true, "showInPieChart": true,
            "colorRenderMode": "dot",
            "stages": stages.iter().zip(&stage_ids).enumerate()
                .map(|(i, (n, id))| json!({ "id": id, "name": n, "position": i })).collect::<Vec<_>>(),
        }),
    );
    for i in 0..12usize {
        let at = iso(now_ms - (12 - i as i64) * DAY);
        let status = ["open", "won", "lost", "open"][i % 4];
        ins(
            k::OPPORTUNITIES,
            json!({
                "locationId": loc, "name": format!("Deal {i}"), "monetaryValue": 500 * (i + 1), "pipelineId": pipeline,
                "pipelineStageId": stage_ids[i % stage_ids.len()], "assignedTo": users[i % 3],
                "status": status, "source": "seed", "lastStatusChangeAt": at,
                "lastStageChangeAt": at, "lastActionDate": at, "indexVersion": 1, "createdAt": at, "updatedAt": at,
                "contactId": contacts[i], "lostReasonId": Value::Null, "customFields": [], "followers": [],
                "externalObjectId": Value::Null,
            }),
        );
    }

    for i in 0..8usize {
        let contact = store.get(k::CONTACTS, &contacts[i]).unwrap_or_default();
        let conv_id = store.ids.next();
        let mut last_ms = 0;
        let mut last_body = String::new();
        for m in 0..5i64 {
            let at = now_ms - ((8 - i as i64) * 100 + (5 - m)) * MIN;
            let call = m == 2;
            let email = m == 3;
            let body = format!("Message {m} in conversation {i}. Thanks for reaching out.");
            let msg = ins(
                k::MESSAGES,
                json!({
                    "locationId": loc, "type": if call { 7 } else { 1 },
                    "messageType": if call { "TYPE_CALL" } else if email { "TYPE_EMAIL" } else { "TYPE_SMS" },
                    "contactId": contacts[i], "conversationId": conv_id, "dateAdded": iso(at), "body": body,
                    "direction": match m % 2 { 0 => "inbound", _ => "outbound" }, "status": "delivered",
                    "contentType": "text/plain", "attachments": [], "source": "app", "userId": "usr_sales1",
                    "meta": if call { json!({ "callDuration": "42", "callStatus": "completed" }) } else { json!({}) },
                }),
            );
            if email {
                let eid = ins(
                    k::EMAILS,
                    json!({
                        "locationId": loc, "altId": msg, "threadId": msg, "contactId": contacts[i],
                        "conversationId": conv_id, "dateAdded": iso(at), "subject": "Your quote", "body": body,
                        "direction": "outbound", "status": "delivered", "contentType": "text/html", "attachments": [],
                        "provider": "Leadconnector Gmail", "from": "sales@example.com",
                        "to": [contact.get("email").cloned().unwrap_or(Value::Null)], "cc": [], "bcc": [],
                        "replyToMessageId": Value::Null, "source": "app", "conversationProviderId": Value::Null,
                    }),
                );
                let mut col = store.write(k::MESSAGES);
                if let Some(r) = col.get_mut(&msg) {
                    r.insert("meta".into(), json!({ "email": { "messageIds": [eid] } }));
                }
            }
            last_ms = at;
            last_body = body;
        }
        ins(
            k::CONVERSATIONS,
            json!({
                "id": conv_id, "locationId": loc, "contactId": contacts[i], "lastMessageBody": last_body,
                "lastMessageType": "TYPE_SMS", "lastMessageDirection": "outbound", "lastMessageDate": last_ms,
                "type": "TYPE_PHONE", "unreadCount": (i % 3) as i64, "fullName": contact.get("name"),
                "contactName": contact.get("name"), "email": contact.get("email"), "phone": contact.get("phone"),
                "assignedTo": users[i % 3], "deleted": false, "inbox": true, "starred": i == 0,
                "dateAdded": last_ms - DAY, "dateUpdated": last_ms,
            }),
        );
    }

    for (i, name) in ["New Lead Nurture", "Appointment Reminder", "Review Request"].iter().enumerate() {
        let at = iso(now_ms - (40 - i as i64) * DAY);
        ins(
            k::WORKFLOWS,
            json!({
                "locationId": loc, "name": name, "status": if i == 2 { "draft" } else { "published" }, "version": 1 + i,
                "createdAt": at, "updatedAt": at,
            }),
        );
    }
    for (name, status) in [("Spring Promo", "published"), ("Winback", "draft")] {
        ins(k::CAMPAIGNS, json!({ "locationId": loc, "name": name, "status": status }));
    }
    for (name, kind) in [("Dental Starter", "own"), ("Roofing Pro", "imported")] {
        ins(k::SNAPSHOTS, json!({ "name": name, "type": kind, "companyId": company }));
    }
    for (i, (name, model, ty)) in [
        ("Lead Score", "contact", "NUMERICAL"),
        ("Preferred Contact Time", "contact", "TEXT"),
        ("Budget", "opportunity", "MONETORY"),
        ("Decision Date", "opportunity", "DATE"),
    ]
    .iter()
    .enumerate()
    {
        ins(
            k::CUSTOM_FIELDS,
            json!({
                "locationId": loc, "name": name, "fieldKey": format!("{model}.{}", name.to_lowercase().replace(' ', "_")),
                "placeholder": "", "dataType": ty, "position": i * 50, "picklistOptions": [], "picklistImageOptions": [],
                "isAllowedCustomOption": false, "isMultiFileAllowed": false, "maxFileLimit": 0, "model": model,
            }),
        );
    }
    for (name, value) in
        [("Business Hours", "9-5 Mon-Fri"), ("Booking Link", "https://example.com/book"), ("Owner Name", "Sam")]
    {
        ins(
            k::CUSTOM_VALUES,
            json!({
                "locationId": loc, "name": name, "value": value,
                "fieldKey": format!("{{{{ custom_values.{} }}}}", name.to_lowercase().replace(' ', "_")),
            }),
        );
    }
    let assoc = ins(
        k::ASSOCIATIONS,
        json!({
            "locationId": loc, "key": "contact_business", "firstObjectLabel": "contact", "firstObjectKey": "contact",
            "secondObjectLabel": "business", "secondObjectKey": "business", "associationType": "USER_DEFINED",
        }),
    );
    ins(
        k::RELATIONS,
        json!({
            "locationId": loc, "associationId": assoc, "firstRecordId": contacts[1], "secondRecordId": businesses[0],
            "key": "contact_business", "firstObjectLabel": "contact", "firstObjectKey": "contact",
            "secondObjectLabel": "business", "secondObjectKey": "business", "associationType": "USER_DEFINED",
        }),
    );
    let blog = ins(k::BLOGS, json!({ "locationId": loc, "name": "Company News" }));
    let authors: Vec<String> = ["Sam Owner", "Riley Seller", "Jordan Closer"]
        .iter()
        .map(|n| {
            ins(
                k::BLOG_AUTHORS,
                json!({
                    "locationId": loc, "name": n, "updatedAt": iso(now_ms - 5 * DAY), "canonicalLink": Value::Null,
                }),
            )
        })
        .collect();
    let categories: Vec<String> = ["Announcements", "Tips", "Case Studies"]
        .iter()
        .map(|n| {
            ins(
                k::BLOG_CATEGORIES,
                json!({
                    "locationId": loc, "label": n, "updatedAt": iso(now_ms - 5 * DAY), "canonicalLink": Value::Null,
                    "urlSlug": n.to_lowercase(),
                }),
            )
        })
        .collect();
    for i in 0..4i64 {
        ins(
            k::BLOG_POSTS,
            json!({
                "locationId": loc, "blogId": blog, "title": format!("Post {i}"), "description": "Seeded post",
                "imageUrl": "https://example.com/img.png", "status": if i == 3 { "DRAFT" } else { "PUBLISHED" },
                "imageAltText": "image", "urlSlug": format!("post-{i}"), "canonicalLink": Value::Null,
                "author": authors[(i % 2) as usize], "categories": [categories[(i % 2) as usize]], "tags": ["news"],
                "archived": false, "publishedAt": iso(now_ms - (10 - i) * DAY), "updatedAt": iso(now_ms - (10 - i) * DAY),
                "rawHTML": "<p>Hello</p>",
            }),
        );
    }
}
