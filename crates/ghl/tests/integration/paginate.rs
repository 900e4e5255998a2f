use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use ghl::{Client, Error, PageOptions, Request};
use sandbox::{Sandbox, SandboxConfig, Seed};
use serde_json::{json, Value};

use crate::common::*;

struct Op {
    base: Request,
    pagination: catalog::Pagination,
    items: String,
}

fn op(key: &str) -> Op {
    let cat = catalog::Catalog::builtin().expect("catalog");
    let o = cat.get(key).unwrap_or_else(|| panic!("no operation {key}"));
    let t = o.trigger.as_ref().unwrap_or_else(|| panic!("{key} is not a trigger"));
    Op { base: Request::for_operation(o), pagination: t.pagination.clone(), items: t.items.clone() }
}

async fn setup(seed: Seed) -> (Sandbox, Client) {
    let sb = start_unlimited(SandboxConfig::default().with_seed(seed)).await;
    let client = client(quick_config(), Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, ACCOUNT, PIT));
    (sb, client)
}

/// Walks the whole list; returns the ids in the order they came.
async fn ids(client: &Client, op: Op, base: Request, opts: PageOptions) -> Vec<String> {
    let mut stream = client.paginate(ACCOUNT, base, &op.pagination, &op.items, opts).expect("paginate");
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.expect("page");
        out.push(item.get("id").and_then(Value::as_str).expect("item id").to_owned());
    }
    out
}

fn assert_each_once(got: &[String], expected: &[String]) {
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "an item came twice: {got:?}");
    let want: BTreeSet<&String> = expected.iter().collect();
    assert_eq!(unique, want);
}

fn record_ids(sb: &Sandbox, kind: &str, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    sb.records(kind)
        .iter()
        .filter(|r| keep(r))
        .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn in_location(sb: &Sandbox) -> impl Fn(&Value) -> bool + '_ {
    move |r| r.get("locationId").and_then(Value::as_str) == Some(sb.location_id())
}

fn page_count(sb: &Sandbox, path: &str) -> usize {
    logged(sb, path).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_style_returns_each_contact_once() {
    let (sb, client) = setup(Seed::Contacts(45)).await;
    let op = op("contacts.list_contacts_deprecated");
    let base = op.base.clone().query("locationId", sb.location_id());
    let got = ids(&client, op, base, PageOptions { page_size: Some(10), ..Default::default() }).await;
    assert_each_once(&got, &record_ids(&sb, "contacts", in_location(&sb)));
    assert_eq!(got.len(), 45);
    assert_eq!(page_count(&sb, "/contacts"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_style_in_the_body_returns_each_contact_once() {
    let (sb, client) = setup(Seed::Contacts(37)).await;
    let op = op("contacts.search_contacts");
    let base = op.base.clone().body(json!({"locationId": sb.location_id()}));
    let got = ids(&client, op, base, PageOptions { page_size: Some(10), ..Default::default() }).await;
    assert_each_once(&got, &record_ids(&sb, "contacts", in_location(&sb)));
    assert_eq!(page_count(&sb, "/contacts/search"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_style_returns_each_business_once() {
    let (sb, client) = setup(Seed::Empty).await;
    for i in 0..23 {
        sb.insert_record("businesses", json!({"name": format!("Biz {i}")})).expect("insert");
    }
    let op = op("businesses.list_businesses");
    let base = op.base.clone().query("locationId", sb.location_id());
    let got = ids(&client, op, base, PageOptions { page_size: Some(5), ..Default::default() }).await;
    assert_each_once(&got, &record_ids(&sb, "businesses", |_| true));
    assert_eq!(got.len(), 23);
    assert_eq!(page_count(&sb, "/businesses"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_style_with_has_more_returns_each_note_once() {
    let (sb, client) = setup(Seed::Empty).await;
    let appt = sb
        .insert_record("events", json!({"calendarId": "cal_x", "title": "Call", "startTime": "2030-01-01T10:00:00Z", "endTime": "2030-01-01T10:30:00Z"}))
        .expect("appointment");
    let appt_id = appt.get("id").and_then(Value::as_str).expect("id").to_owned();
    for i in 0..27 {
        sb.insert_record("appointmentNotes", json!({"appointmentId": appt_id, "body": format!("note {i}")}))
            .expect("note");
    }
    let op = op("calendars.list_appointment_notes");
    let base = op.base.clone().path_param("appointmentId", appt_id.as_str());
    let got = ids(&client, op, base, PageOptions { page_size: Some(20), ..Default::default() }).await;
    let expected =
        record_ids(&sb, "appointmentNotes", |r| r.get("appointmentId").and_then(Value::as_str) == Some(&appt_id));
    assert_eq!(expected.len(), 27);
    assert_each_once(&got, &expected);
    assert_eq!(page_count(&sb, "/calendars/appointments"), 2);
}

/// The spec types `skip` and `limit` of this endpoint as strings, and GHL (like the
/// sandbox) refuses numbers there with a 422: the pager sends the declared type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_style_in_the_body_sends_skip_and_limit_in_the_declared_string_type() {
    let (sb, client) = setup(Seed::Empty).await;
    client.add_account(pit_account(&sb, "agency", sandbox::DEFAULT_AGENCY_TOKEN));
    let mut emails = Vec::new();
    for i in 0..7 {
        let email = format!("user{i}@example.com");
        sb.insert_record("users", json!({"companyId": sb.company_id(), "email": email, "name": format!("User {i}")}))
            .expect("user");
        emails.push(email);
    }
    let op = op("users.filter_users_by_email");
    let base = op.base.clone().body(json!({"companyId": sb.company_id(), "emails": emails.join(",")}));
    let opts = PageOptions { page_size: Some(3), ..Default::default() };
    let mut stream = client.paginate("agency", base, &op.pagination, &op.items, opts).expect("paginate");
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.expect("every page is accepted");
        got.push(item.get("id").and_then(Value::as_str).expect("item id").to_owned());
    }
    assert_each_once(&got, &record_ids(&sb, "users", |_| true));
    let pages = logged(&sb, "/users/search/filter-by-email");
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages.iter().all(|p| status_of(p) == 200), "{pages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_item_style_returns_each_conversation_once() {
    let (sb, client) = setup(Seed::Empty).await;
    for i in 0..33i64 {
        sb.insert_record(
            "conversations",
            json!({"contactId": format!("c{i}"), "lastMessageDate": 1_700_000_000_000i64 + i * 60_000, "type": "TYPE_PHONE"}),
        )
        .expect("conversation");
    }
    let op = op("conversations.search_conversations");
    let base = op.base.clone().query("locationId", sb.location_id());
    let got = ids(&client, op, base, PageOptions { page_size: Some(10), ..Default::default() }).await;
    assert_each_once(&got, &record_ids(&sb, "conversations", in_location(&sb)));
    assert_eq!(page_count(&sb, "/conversations/search"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_window_style_returns_each_event_once() {
    let (sb, client) = setup(Seed::Empty).await;
    const DAY: i64 = 86_400_000;
    let start = 1_800_000_000_000i64;
    // 70 days: three 31-day windows; one event sits exactly on the second window's start.
    for i in 0..35i64 {
        let t = start + i * 2 * DAY;
        sb.insert_record(
            "events",
            json!({"calendarId": "cal_w", "title": format!("e{i}"), "startTime": t, "endTime": t + 1_800_000}),
        )
        .expect("event");
    }
    sb.insert_record(
        "events",
        json!({"calendarId": "cal_w", "title": "edge", "startTime": start + 31 * DAY, "endTime": start + 31 * DAY + 1}),
    )
    .expect("edge event");
    let op = op("calendars.list_calendar_events");
    let base = op.base.clone().query("locationId", sb.location_id()).query("calendarId", "cal_w");
    let window = (
        chrono::DateTime::from_timestamp_millis(start).expect("start"),
        chrono::DateTime::from_timestamp_millis(start + 70 * DAY).expect("end"),
    );
    let got = ids(&client, op, base, PageOptions { window: Some(window), ..Default::default() }).await;
    let expected = record_ids(&sb, "events", |r| r.get("calendarId").and_then(Value::as_str) == Some("cal_w"));
    assert_eq!(expected.len(), 36);
    assert_each_once(&got, &expected);
    assert_eq!(page_count(&sb, "/calendars/events"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_response_styles() {
    let (sb, client) = setup(Seed::Demo).await;
    let users = op("users.list_users_by_location");
    let base = users.base.clone().query("locationId", sb.location_id());
    let got = ids(&client, users, base, PageOptions::default()).await;
    assert!(!got.is_empty());
    assert_eq!(page_count(&sb, "/users"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_early_fetches_no_further_pages() {
    let (sb, client) = setup(Seed::Contacts(60)).await;
    let op = op("contacts.list_contacts_deprecated");
    let base = op.base.clone().query("locationId", sb.location_id());

    // By bound.
    let opts = PageOptions { page_size: Some(10), max_items: 15, ..Default::default() };
    let got = ids(&client, op_clone(&op), base.clone(), opts).await;
    assert_eq!(got.len(), 15);
    assert_eq!(page_count(&sb, "/contacts"), 2);

    // By predicate: stop at the 12th contact, never yielding it.
    let seen = got[11].clone();
    let stop: ghl::StopWhen =
        Arc::new(move |item: &Value| item.get("id").and_then(Value::as_str) == Some(seen.as_str()));
    let opts = PageOptions { page_size: Some(10), stop_when: Some(stop), ..Default::default() };
    let got2 = ids(&client, op_clone(&op), base.clone(), opts).await;
    assert_eq!(got2, got[..11].to_vec());
    assert_eq!(page_count(&sb, "/contacts"), 4);

    // By dropping the stream after one item.
    let mut stream = client
        .paginate(
            ACCOUNT,
            base.clone(),
            &op.pagination,
            &op.items,
            PageOptions { page_size: Some(10), ..Default::default() },
        )
        .expect("paginate");
    assert!(stream.next().await.is_some());
    drop(stream);
    assert_eq!(page_count(&sb, "/contacts"), 5);

    // By max_pages.
    let opts = PageOptions { page_size: Some(10), max_pages: 2, ..Default::default() };
    let got3 = ids(&client, op_clone(&op), base, opts).await;
    assert_eq!(got3.len(), 20);
}

fn op_clone(op: &Op) -> Op {
    Op { base: op.base.clone(), pagination: op.pagination.clone(), items: op.items.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_error_ends_the_stream_with_that_error() {
    let (sb, client) = setup(Seed::Contacts(5)).await;
    let op = op("contacts.list_contacts_deprecated");
    let base = op.base.clone().query("locationId", sb.location_id());
    let opts = PageOptions { page_size: Some(500), ..Default::default() };
    // page_size is capped at the catalog's max_limit (100), so this still works.
    let got = ids(&client, op_clone(&op), base.clone(), opts).await;
    assert_eq!(got.len(), 5);
    let mut raw = catalog::Pagination::None;
    if let catalog::Pagination::Cursor { location, cursor, has_more, .. } = &op.pagination {
        raw = catalog::Pagination::Cursor {
            location: *location,
            limit_param: "limit".into(),
            limit: 500,
            max_limit: None,
            cursor: cursor.clone(),
            has_more: has_more.clone(),
        };
    }
    let mut stream = client.paginate(ACCOUNT, base, &raw, &op.items, PageOptions::default()).expect("paginate");
    let first = stream.next().await.expect("an item");
    let err = first.expect_err("422 from the sandbox");
    assert_eq!(err.status(), Some(422));
    assert!(matches!(&err, Error::Api(api) if matches!(api.message, ghl::ApiMessage::List(_))), "{err:?}");
    assert!(stream.next().await.is_none(), "the stream ends after an error");
}

/// A server whose every page carries the same cursor: the stream must end with an error
/// after the second page rather than loop for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_cursor_ends_the_stream_with_an_error() {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/contacts/",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::Json(json!({
                    "contacts": [{"id": format!("a{n}")}, {"id": format!("b{n}")}],
                    "meta": {"startAfter": 1, "startAfterId": "same"},
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = client(quick_config(), Arc::new(Recorder::default()));
    let account = ghl::Account::new("loop", ghl::Credentials::PrivateToken(ghl::Secret::new("t")))
        .and_then(|a| a.with_base_url(&format!("http://{addr}")))
        .expect("account");
    client.add_account(account);
    let op = op("contacts.list_contacts_deprecated");
    let opts = PageOptions { page_size: Some(2), ..Default::default() };
    let mut stream = client.paginate("loop", op.base.clone(), &op.pagination, &op.items, opts).expect("paginate");
    let mut items = Vec::new();
    let mut error = None;
    while let Some(r) = stream.next().await {
        match r {
            Ok(v) => items.push(v),
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(items.len(), 2, "the first page's items, then the loop is detected");
    assert!(matches!(error, Some(Error::Pagination(_))), "{error:?}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    server.abort();
}
