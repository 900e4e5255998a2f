//! Actions change what triggers return.

mod common;

use common::*;
use reqwest::Method;
use sandbox::Seed;
use serde_json::json;

#[tokio::test]
async fn contact_lifecycle_is_visible_to_triggers() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let loc = sb.location_id().to_string();

    let (s, created) = send(req(&c, &sb, Method::POST, "/contacts/", V_CONTACTS).json(&json!({
        "locationId": loc, "firstName": "Zed", "lastName": "Quill", "email": "Zed.Quill@example.org", "tags": ["new"]
    })))
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["contact"]["id"].as_str().expect("id").to_string();
    assert_eq!(created["contact"]["emailLowerCase"], "zed.quill@example.org");
    let added = created["contact"]["dateUpdated"].clone();

    let (s, found) = send(
        req(&c, &sb, Method::POST, "/contacts/search", V_CONTACTS)
            .json(&json!({"locationId": loc, "pageLimit": 20, "query": "zed quill"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(found["total"], 1);
    assert_eq!(found["contacts"][0]["id"], id.as_str());

    let (s, dup) = send(
        req(&c, &sb, Method::POST, "/contacts/", V_CONTACTS)
            .json(&json!({"locationId": loc, "email": "zed.quill@example.org"})),
    )
    .await;
    assert_eq!(s, 400, "duplicates are refused: {dup}");

    let (s, updated) =
        send(req(&c, &sb, Method::PUT, &format!("/contacts/{id}"), V_CONTACTS).json(&json!({"firstName": "Zedd"})))
            .await;
    assert_eq!(s, 200);
    assert_eq!(updated["succeded"], true);
    assert_ne!(updated["contact"]["dateUpdated"], added, "an update moves dateUpdated");
    assert_eq!(updated["contact"]["firstName"], "Zedd");

    let (s, tags) =
        send(req(&c, &sb, Method::POST, &format!("/contacts/{id}/tags"), V_CONTACTS).json(&json!({"tags": ["vip"]})))
            .await;
    assert_eq!(s, 201);
    assert_eq!(tags["tags"], json!(["new", "vip"]));
    let (_, by_tag) = send(req(&c, &sb, Method::POST, "/contacts/search", V_CONTACTS).json(&json!({
        "locationId": loc, "pageLimit": 20, "filters": [{"field": "tags", "operator": "eq", "value": "vip"}, {"field": "firstName", "operator": "eq", "value": "zedd"}]
    })))
    .await;
    assert_eq!(by_tag["total"], 1, "{by_tag}");
    for direction in ["asc", "desc"] {
        let (s, sorted) = send(req(&c, &sb, Method::POST, "/contacts/search", V_CONTACTS).json(&json!({
            "locationId": loc, "pageLimit": 500, "sort": [{"field": "firstName", "direction": direction}]
        })))
        .await;
        assert_eq!(s, 200, "{sorted}");
        let names: Vec<String> = sorted["contacts"]
            .as_array()
            .expect("contacts")
            .iter()
            .map(|c| c["firstName"].as_str().unwrap_or_default().to_lowercase())
            .collect();
        let mut expected = names.clone();
        expected.sort();
        if direction == "desc" {
            expected.reverse();
        }
        assert!(names.len() > 1 && names == expected, "{direction}: {names:?}");
    }

    let (s, task) = send(req(&c, &sb, Method::POST, &format!("/contacts/{id}/tasks"), V_CONTACTS).json(&json!({
        "title": "Call", "dueDate": "2030-01-01T00:00:00Z", "completed": false
    })))
    .await;
    assert_eq!(s, 201);
    let task_id = task["task"]["id"].as_str().expect("task id").to_string();
    let (s, done) = send(
        req(&c, &sb, Method::PUT, &format!("/contacts/{id}/tasks/{task_id}/completed"), V_CONTACTS)
            .json(&json!({"completed": true})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(done["task"]["completed"], true);
    let (_, read) = get(&c, &sb, &format!("/contacts/{id}/tasks/{task_id}"), V_CONTACTS).await;
    assert_eq!(read["task"]["completed"], true);

    let (s, del) = send(req(&c, &sb, Method::DELETE, &format!("/contacts/{id}"), V_CONTACTS)).await;
    assert_eq!((s, del["succeded"].clone()), (200, json!(true)));
    let (s, gone) = get(&c, &sb, &format!("/contacts/{id}"), V_CONTACTS).await;
    assert_eq!(s, 404);
    assert_eq!(gone["statusCode"], 404);
    assert!(gone["message"].is_string() && gone["traceId"].is_string());
    let (s, _) = get(&c, &sb, &format!("/contacts/{id}/tasks/{task_id}"), V_CONTACTS).await;
    assert_eq!(s, 404, "tasks go with their contact");
}

#[tokio::test]
async fn upsert_and_admin_records_act_like_users() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let loc = sb.location_id().to_string();
    let body = json!({"locationId": loc, "email": "upsert@example.org", "firstName": "Up"});
    let (s, first) = send(req(&c, &sb, Method::POST, "/contacts/upsert", V_CONTACTS).json(&body)).await;
    assert_eq!(s, 200);
    assert_eq!(first["new"], true);
    assert!(first["traceId"].is_string());
    let (_, second) = send(req(&c, &sb, Method::POST, "/contacts/upsert", V_CONTACTS).json(&body)).await;
    assert_eq!(second["new"], false);
    assert_eq!(second["contact"]["id"], first["contact"]["id"]);

    // A change made "in the UI" through the admin API shows up in the API.
    let admin = format!("{}/_sandbox/records/contacts", sb.base_url());
    let made: serde_json::Value = c
        .post(&admin)
        .json(&json!({"firstName": "Ui", "email": "ui@example.org"}))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let id = made["id"].as_str().expect("id");
    assert_eq!(made["locationId"], loc.as_str());
    let (s, got) = get(&c, &sb, &format!("/contacts/{id}"), V_CONTACTS).await;
    assert_eq!(s, 200);
    assert_eq!(got["contact"]["name"], "Ui");
    let patched: serde_json::Value = c
        .patch(format!("{admin}/{id}"))
        .json(&json!({"lastName": "Changed"}))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_ne!(patched["dateUpdated"], made["dateUpdated"]);

    // Opportunity status changes are visible to search.
    let opp = first_id(&sb, "opportunities", |o| o["status"] == "open");
    let (s, _) = send(
        req(&c, &sb, Method::PUT, &format!("/opportunities/{opp}/status"), V_CONTACTS).json(&json!({"status": "won"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, found) = get(&c, &sb, &format!("/opportunities/search?location_id={loc}&id={opp}"), V_CONTACTS).await;
    assert_eq!(found["opportunities"][0]["status"], "won");
}

/// GHL documents no change to a contact when a task or note is added to it, and flowd's
/// fan-out must not rely on one: the sandbox leaves the contact's `dateUpdated` (and so
/// its place in a search by `dateUpdated`) as it was.
#[tokio::test]
async fn tasks_and_notes_do_not_touch_their_contact() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let loc = sb.location_id().to_string();
    let (s, created) = send(
        req(&c, &sb, Method::POST, "/contacts/", V_CONTACTS)
            .json(&json!({"locationId": loc, "firstName": "Una", "email": "una@example.org"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["contact"]["id"].as_str().expect("id").to_string();
    let updated = created["contact"]["dateUpdated"].clone();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (s, task) = send(
        req(&c, &sb, Method::POST, &format!("/contacts/{id}/tasks"), V_CONTACTS)
            .json(&json!({"title": "Call", "dueDate": "2030-01-01T00:00:00.000Z", "completed": false})),
    )
    .await;
    assert_eq!(s, 201, "{task}");
    let (s, note) =
        send(req(&c, &sb, Method::POST, &format!("/contacts/{id}/notes"), V_CONTACTS).json(&json!({"body": "hi"})))
            .await;
    assert_eq!(s, 201, "{note}");
    let (s, got) = send(req(&c, &sb, Method::GET, &format!("/contacts/{id}"), V_CONTACTS)).await;
    assert_eq!(s, 200);
    assert_eq!(got["contact"]["dateUpdated"], updated, "a task or note leaves its contact as it was");
}
