//! A client that follows each trigger's catalog pagination sees every item exactly once,
//! for every pagination style.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use catalog::{Catalog, IdSource, Operation, Pagination, Shape};
use common::inputs::{now_ms, request, Ids};
use common::*;
use jsonpath_rust::JsonPath;
use sandbox::{Sandbox, Seed};
use serde_json::{json, Value};

const SMALL: u64 = 2;
const DAY: i64 = 86_400_000;

fn items_path(op: &Operation, body: &Value) -> String {
    let t = op.trigger.as_ref().expect("trigger");
    // Catalog defect: list triggers over a bare array declare `$`.
    if t.shape == Shape::List && t.items == "$" && body.is_array() {
        "$[*]".into()
    } else {
        t.items.clone()
    }
}

fn identities(op: &Operation, body: &Value) -> Vec<String> {
    let t = op.trigger.as_ref().expect("trigger");
    let items = body.query(&items_path(op, body)).expect("items path");
    items
        .into_iter()
        .map(|i| match &t.id {
            IdSource::Field(f) => i[f.as_str()].as_str().map(String::from).unwrap_or_else(|| i[f.as_str()].to_string()),
            IdSource::ItemValue => i.as_str().map(String::from).unwrap_or_else(|| i.to_string()),
            _ => i.to_string(),
        })
        .collect()
}

async fn fetch(c: &reqwest::Client, sb: &Sandbox, op: &Operation, ids: &Ids, params: &[(String, Value)]) -> Value {
    // Numbers go as text where the catalog types the parameter as a string.
    let params: Vec<(String, Value)> = params
        .iter()
        .map(|(n, v)| match (op.param(n).map(|p| p.ty), v) {
            (Some(catalog::ParamType::String), Value::Number(x)) => (n.clone(), json!(x.to_string())),
            _ => (n.clone(), v.clone()),
        })
        .collect();
    let resp = request(c, sb, op, ids, &params).send().await.expect("response");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, 200, "{}: {body}", op.key);
    body
}

fn first(body: &Value, path: &str) -> Option<Value> {
    body.query(path).ok().and_then(|v| v.first().map(|x| (*x).clone())).filter(|v| !v.is_null())
}

/// Follows the pagination; returns every identity seen, in order.
async fn follow(c: &reqwest::Client, sb: &Sandbox, op: &Operation, ids: &Ids) -> Vec<String> {
    let pagination = op.trigger.as_ref().expect("trigger").pagination.clone();
    let mut seen = Vec::new();
    let p = |n: &str, v: Value| (n.to_string(), v);
    match pagination {
        Pagination::Offset { offset_param, limit_param, has_more, .. } => {
            let mut offset = 0;
            for _ in 0..100 {
                let body =
                    fetch(c, sb, op, ids, &[p(&offset_param, json!(offset)), p(&limit_param, json!(SMALL))]).await;
                let got = identities(op, &body);
                let short = (got.len() as u64) < SMALL;
                seen.extend(got);
                let more = has_more.as_deref().and_then(|h| first(&body, h)).and_then(|v| v.as_bool()).unwrap_or(true);
                if short || !more {
                    break;
                }
                offset += SMALL;
            }
        }
        Pagination::Page { page_param, limit_param, .. } => {
            for page in 1..100 {
                let body = fetch(c, sb, op, ids, &[p(&page_param, json!(page)), p(&limit_param, json!(SMALL))]).await;
                let got = identities(op, &body);
                let short = (got.len() as u64) < SMALL;
                seen.extend(got);
                if short {
                    break;
                }
            }
        }
        Pagination::Cursor { limit_param, mut cursor, mut has_more, .. } => {
            if op.key == "conversations.get_messages" {
                // Catalog defect: the spec puts lastMessageId/nextPage at the top level
                // (GetMessagesByConversationResponseDto), beside `messages[]`.
                cursor = BTreeMap::from([("lastMessageId".to_string(), "$.lastMessageId".to_string())]);
                has_more = Some("$.nextPage".into());
            }
            let mut params = vec![p(&limit_param, json!(SMALL))];
            for _ in 0..100 {
                let body = fetch(c, sb, op, ids, &params).await;
                let got = identities(op, &body);
                let empty = got.is_empty();
                seen.extend(got);
                if empty || has_more.as_deref().and_then(|h| first(&body, h)) == Some(json!(false)) {
                    break;
                }
                let next: Vec<(String, Value)> =
                    cursor.iter().filter_map(|(param, path)| first(&body, path).map(|v| (param.clone(), v))).collect();
                if next.len() < cursor.len() {
                    break;
                }
                params = vec![p(&limit_param, json!(SMALL))];
                params.extend(next);
            }
        }
        Pagination::LastItem { param, field, limit_param, .. } => {
            let mut params = vec![p(&limit_param, json!(SMALL))];
            for _ in 0..100 {
                let body = fetch(c, sb, op, ids, &params).await;
                let items = body.query(&items_path(op, &body)).expect("items").into_iter().cloned().collect::<Vec<_>>();
                seen.extend(identities(op, &body));
                if (items.len() as u64) < SMALL {
                    break;
                }
                let last = items.last().map(|i| i[field.as_str()].clone()).expect("last item");
                params = vec![p(&limit_param, json!(SMALL)), p(&param, last)];
            }
        }
        Pagination::TimeWindow { start_param, end_param, .. } => {
            let (from, to) = window();
            let step = 3 * DAY;
            let mut s = from;
            while s <= to {
                let e = (s + step - 1).min(to);
                let body = fetch(
                    c,
                    sb,
                    op,
                    ids,
                    &[p(&start_param, json!(s.to_string())), p(&end_param, json!(e.to_string()))],
                )
                .await;
                seen.extend(identities(op, &body));
                s += step;
            }
        }
        other => panic!("{} is not paginated: {other:?}", op.key),
    }
    seen
}

fn window() -> (i64, i64) {
    let now = now_ms();
    (now - 15 * DAY, now + 15 * DAY)
}

/// Everything in one request (a big page or the whole window).
async fn everything(c: &reqwest::Client, sb: &Sandbox, op: &Operation, ids: &Ids) -> Vec<String> {
    let pagination = op.trigger.as_ref().expect("trigger").pagination.clone();
    let p = |n: &str, v: Value| (n.to_string(), v);
    let params = match &pagination {
        Pagination::Offset { offset_param, limit_param, max_limit, .. } => {
            vec![p(offset_param, json!(0)), p(limit_param, json!(max_limit.unwrap_or(100)))]
        }
        Pagination::Page { page_param, limit_param, .. } => vec![p(page_param, json!(1)), p(limit_param, json!(100))],
        Pagination::Cursor { limit_param, max_limit, .. } => vec![p(limit_param, json!(max_limit.unwrap_or(100)))],
        Pagination::LastItem { limit_param, .. } => vec![p(limit_param, json!(100))],
        Pagination::TimeWindow { start_param, end_param, .. } => {
            let (from, to) = window();
            vec![p(start_param, json!(from.to_string())), p(end_param, json!(to.to_string()))]
        }
        _ => vec![],
    };
    identities(op, &fetch(c, sb, op, ids, &params).await)
}

#[tokio::test]
async fn every_paginated_trigger_yields_each_item_once() {
    let sb = start(Seed::Demo).await;
    // More blogs and relations than one small page holds.
    for n in 0..4 {
        sb.insert_record("blogs", json!({ "name": format!("Extra blog {n}") })).expect("blog");
        sb.insert_record(
            "associations",
            json!({ "key": format!("extra_{n}"), "firstObjectKey": "contact",
            "secondObjectKey": "custom_objects.car", "associationType": "USER_DEFINED" }),
        )
        .expect("association");
        sb.insert_record(
            "calendarResources",
            json!({ "name": format!("Screen {n}"), "resourceType": "equipments",
            "isActive": true, "quantity": 1, "outOfService": 0, "capacity": 1, "calendarIds": [] }),
        )
        .expect("resource");
    }
    let ids = Ids::of(&sb);
    for n in 0..4 {
        let rel = json!({ "associationId": ids.m["association"], "firstRecordId": ids.m["relationRecord"],
            "secondRecordId": format!("rec{n}"), "key": "contact_business" });
        sb.insert_record("relations", rel).expect("relation");
    }
    let c = client();
    let cat = Catalog::builtin().expect("catalog");
    let mut styles = BTreeSet::new();
    let mut checked = 0;
    let mut few = Vec::new();
    for op in cat.operations() {
        let Some(t) = &op.trigger else { continue };
        if matches!(t.pagination, Pagination::None | Pagination::SingleRecord | Pagination::SingleFile) {
            continue;
        }
        let paged = follow(&c, &sb, op, &ids).await;
        let all = everything(&c, &sb, op, &ids).await;
        let unique: BTreeSet<&String> = paged.iter().collect();
        assert_eq!(unique.len(), paged.len(), "{}: an item came twice: {paged:?}", op.key);
        assert_eq!(unique, all.iter().collect::<BTreeSet<_>>(), "{}: paging missed or added items", op.key);
        // Free slots are limited to one calendar's window; the rest must really page.
        if all.len() <= SMALL as usize && op.key != "locations.list_locations" {
            few.push(format!("{}: {}", op.key, all.len()));
        }
        styles.insert(t.pagination.style());
        checked += 1;
    }
    assert!(few.is_empty(), "too few items to exercise paging: {few:?}");
    assert_eq!(styles, BTreeSet::from(["cursor", "last_item", "offset", "page", "time_window"]));
    assert!(checked >= 20, "checked {checked} triggers");
}

#[tokio::test]
async fn paging_survives_new_records_between_pages() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let loc = sb.location_id().to_string();
    let mut seen = Vec::new();
    let mut url = format!("/contacts/?locationId={loc}&limit=10");
    for round in 0..20 {
        let (s, body) = get(&c, &sb, &url, V_CONTACTS).await;
        assert_eq!(s, 200);
        let page: Vec<String> = body["contacts"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["id"].as_str().map(String::from))
            .collect();
        seen.extend(page);
        // A user adds a contact while the client is paging.
        sb.insert_record("contacts", json!({ "firstName": format!("Late{round}") })).expect("insert");
        match (body["meta"]["startAfter"].as_i64(), body["meta"]["startAfterId"].as_str()) {
            (Some(ms), Some(id)) => {
                url = format!("/contacts/?locationId={loc}&limit=10&startAfter={ms}&startAfterId={id}")
            }
            _ => break,
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert!(seen.len() >= 36, "all seeded contacts and the ones added while paging: {}", seen.len());
}
