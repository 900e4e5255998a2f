//! `POST /contacts/search` is as strict as GHL documents it: page numbers stop at 10,000
//! records, `searchAfter` goes on, `range` filters and `sort` are honoured, unsorted results
//! are in no time order, and new or edited contacts show only after the index lag.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use serde_json::{json, Value};

async fn search(c: &reqwest::Client, sb: &Sandbox, body: Value) -> (u16, Value) {
    send(req(c, sb, Method::POST, "/contacts/search", V_CONTACTS).json(&body)).await
}

fn ids(page: &Value) -> Vec<String> {
    page["contacts"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["id"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn page_numbers_stop_at_ten_thousand_and_search_after_goes_on() {
    let sb = start(Seed::Contacts(10_050)).await;
    let c = client();
    let loc = sb.location_id().to_string();
    let (s, last_page) = search(&c, &sb, json!({"locationId": loc, "pageLimit": 500, "page": 20})).await;
    assert_eq!(s, 200, "page 20 of 500 ends at record 10,000: {last_page}");
    let (s, beyond) = search(&c, &sb, json!({"locationId": loc, "pageLimit": 500, "page": 21})).await;
    assert_eq!(s, 422, "page 21 of 500 would pass record 10,000: {beyond}");
    let (s, both) =
        search(&c, &sb, json!({"locationId": loc, "pageLimit": 10, "page": 2, "searchAfter": [1, "x"]})).await;
    assert_eq!(s, 422, "page and searchAfter together: {both}");
    let (s, no_limit) = search(&c, &sb, json!({"locationId": loc})).await;
    assert_eq!(s, 422, "pageLimit is required: {no_limit}");

    // searchAfter, sorted by dateAdded, reads every contact once, past 10,000.
    let sort = json!([{"field": "dateAdded", "direction": "asc"}]);
    let mut seen = std::collections::HashSet::new();
    let mut after: Option<Value> = None;
    let mut last_added = 0i64;
    loop {
        let mut body = json!({"locationId": loc, "pageLimit": 500, "sort": sort});
        if let Some(a) = &after {
            body["searchAfter"] = a.clone();
        }
        let (s, page) = search(&c, &sb, body).await;
        assert_eq!(s, 200, "{page}");
        let hits = page["contacts"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            break;
        }
        for h in &hits {
            let added = h["searchAfter"][0].as_i64().expect("the cursor carries dateAdded in ms");
            assert!(added >= last_added, "ascending by dateAdded");
            last_added = added;
            assert!(seen.insert(h["id"].as_str().unwrap_or_default().to_string()), "each contact once");
        }
        after = hits.last().map(|h| h["searchAfter"].clone());
    }
    assert_eq!(seen.len(), 10_050);
    sb.shutdown().await;
}

#[tokio::test]
async fn unsorted_results_are_not_in_time_order_and_range_bounds_are_exact() {
    let sb = start(Seed::Contacts(200)).await;
    let c = client();
    let loc = sb.location_id().to_string();
    let by_time: Vec<String> = {
        let mut all = sb.records("contacts");
        all.retain(|r| r["locationId"] == loc.as_str());
        all.sort_by_key(|r| {
            (r["dateAdded"].as_str().unwrap_or_default().to_string(), r["id"].as_str().unwrap_or_default().to_string())
        });
        all.iter().filter_map(|r| r["id"].as_str().map(String::from)).collect()
    };
    let (_, unsorted) = search(&c, &sb, json!({"locationId": loc, "pageLimit": 500})).await;
    let unsorted = ids(&unsorted);
    assert_eq!(unsorted.len(), by_time.len());
    assert_ne!(unsorted, by_time, "without sort, no order by time is promised");
    let mut reversed = by_time.clone();
    reversed.reverse();
    assert_ne!(unsorted, reversed);

    // The 100th contact's dateAdded: gt excludes it, gte includes it, lt/lte likewise.
    let pivot = sb.records("contacts").into_iter().find(|r| r["id"] == by_time[99].as_str()).expect("pivot");
    let at = pivot["dateAdded"].clone();
    let count = |op: &'static str| {
        let (c, sb, loc, at) = (c.clone(), &sb, loc.clone(), at.clone());
        async move {
            let (s, page) = search(
                &c,
                sb,
                json!({"locationId": loc, "pageLimit": 500,
                "filters": [{"field": "dateAdded", "operator": "range", "value": {op: at}}]}),
            )
            .await;
            assert_eq!(s, 200, "{page}");
            page["total"].as_u64().expect("total")
        }
    };
    assert_eq!(count("gt").await, 100);
    assert_eq!(count("gte").await, 101);
    assert_eq!(count("lt").await, 99);
    assert_eq!(count("lte").await, 100);
    let (s, bad) = search(
        &c,
        &sb,
        json!({"locationId": loc, "pageLimit": 5,
        "filters": [{"field": "dateAdded", "operator": "between", "value": 1}]}),
    )
    .await;
    assert_eq!(s, 422, "unknown operators are refused: {bad}");
    sb.shutdown().await;
}

#[tokio::test]
async fn new_and_edited_contacts_show_in_search_only_after_the_index_lag() {
    let lag = Duration::from_millis(1500);
    let config = SandboxConfig {
        seed: Seed::Contacts(3),
        rate_limit: RateLimitConfig::disabled(),
        index_lag: lag,
        ..SandboxConfig::default()
    };
    let sb = Sandbox::start(config).await.expect("sandbox starts");
    let c = client();
    let loc = sb.location_id().to_string();
    // Seeded contacts were written before the sandbox started serving; wait them in.
    tokio::time::sleep(lag).await;
    let (_, before) = search(&c, &sb, json!({"locationId": loc, "pageLimit": 100})).await;
    assert_eq!(before["total"], 3, "{before}");

    let (s, created) = send(
        req(&c, &sb, Method::POST, "/contacts/", V_CONTACTS)
            .json(&json!({"locationId": loc, "firstName": "Late", "email": "late@example.org"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["contact"]["id"].as_str().expect("id").to_string();
    let (s, direct) = get(&c, &sb, &format!("/contacts/{id}"), V_CONTACTS).await;
    assert_eq!(s, 200, "GET sees a new contact at once: {direct}");
    let (_, soon) = search(&c, &sb, json!({"locationId": loc, "pageLimit": 100})).await;
    assert!(!ids(&soon).contains(&id), "search does not see it yet: {soon}");
    tokio::time::sleep(lag + Duration::from_millis(100)).await;
    let (_, later) = search(&c, &sb, json!({"locationId": loc, "pageLimit": 100})).await;
    assert!(ids(&later).contains(&id), "search sees it after the lag: {later}");

    let (s, _) =
        send(req(&c, &sb, Method::PUT, &format!("/contacts/{id}"), V_CONTACTS).json(&json!({"firstName": "Later"})))
            .await;
    assert_eq!(s, 200);
    let (_, edited) = search(&c, &sb, json!({"locationId": loc, "pageLimit": 100})).await;
    // GHL would still serve the older version meanwhile; the sandbox hides the record until
    // its last write is indexed. Either way the edit is not visible yet.
    assert!(!ids(&edited).contains(&id), "an edit is not in the index yet either: {edited}");
    sb.shutdown().await;
}
