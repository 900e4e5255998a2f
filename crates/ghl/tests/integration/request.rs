use std::sync::Arc;

use ghl::{ApiMessage, Body, Error, Request};
use sandbox::{SandboxConfig, Seed};
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_path_values_stay_inside_their_segment() {
    let sb = start_unlimited(SandboxConfig::default().with_seed(Seed::Contacts(1))).await;
    let client = client(quick_config(), Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, ACCOUNT, PIT));
    let location_path = format!("../locations/{}", sb.location_id());
    for value in [location_path.as_str(), "a/b", "x?locationId=evil", "x#frag", "100%", "%2e%2e", "//evil.example"] {
        let req = Request::get("/contacts/{contactId}").path_param("contactId", value);
        let err = client.json(ACCOUNT, &req).await.expect_err("no such contact");
        assert_eq!(err.status(), Some(404), "{value}: {err}");
    }
    for e in logged(&sb, "/") {
        let path = e.get("path").and_then(Value::as_str).unwrap_or_default();
        assert!(path.starts_with("/contacts/"), "{path}");
        assert_eq!(path.matches('/').count(), 2, "one segment after /contacts/: {path}");
        assert_eq!(e.get("op").and_then(Value::as_str), Some("contacts.get_contact"), "{path}");
    }
    assert_eq!(logged(&sb, "/contacts/").len(), 7);
    for bad in ["..", ".", ""] {
        let req = Request::get("/contacts/{contactId}").path_param("contactId", bad);
        let err = client.json(ACCOUNT, &req).await.expect_err("refused locally");
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    }
    assert_eq!(logged(&sb, "/").len(), 7, "refused values never left the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghl_errors_come_back_typed() {
    let sb = start_unlimited(SandboxConfig::default()).await;
    let client = client(quick_config(), Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, ACCOUNT, PIT));

    let err = client
        .json(ACCOUNT, &Request::get("/contacts/{contactId}").path_param("contactId", "nope"))
        .await
        .expect_err("404");
    let Error::Api(api) = &err else { panic!("{err:?}") };
    assert_eq!((api.status, api.status_code), (404, Some(404)));
    assert!(api.trace_id.as_deref().is_some_and(|t| !t.is_empty()));
    assert!(matches!(&api.message, ApiMessage::Text(m) if !m.is_empty()));

    // A validation failure: `message` is a list.
    let req = Request::get("/contacts/").query("locationId", sb.location_id()).query("limit", 1000);
    let err = client.json(ACCOUNT, &req).await.expect_err("422");
    let Error::Api(api) = &err else { panic!("{err:?}") };
    assert_eq!(api.status, 422);
    assert!(matches!(&api.message, ApiMessage::List(l) if !l.is_empty()), "{api:?}");

    // The Version header comes from the request.
    let req = Request::get("/locations/{locationId}").path_param("locationId", sb.location_id()).version("2021-04-15");
    let err = client.json(ACCOUNT, &req).await.expect_err("wrong version");
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("Version"), "{err}");

    // A wrong token is a 401 that a PIT account cannot fix by refreshing.
    client.add_account(pit_account(&sb, "bad", "not-a-token"));
    let err =
        client.json("bad", &Request::get("/users/").query("locationId", sb.location_id())).await.expect_err("401");
    assert_eq!(err.status(), Some(401));
    assert_eq!(logged(&sb, "/users").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_come_back_as_bytes_or_text() {
    let sb = start_unlimited(SandboxConfig::default()).await;
    let client = client(quick_config(), Arc::new(Recorder::default()));
    client.add_account(pit_account(&sb, ACCOUNT, PIT));
    let call = sb
        .insert_record(
            "messages",
            json!({"messageType": "TYPE_CALL", "conversationId": "conv_x", "body": "Hi there. Bye now."}),
        )
        .expect("call message");
    let id = call.get("id").and_then(Value::as_str).expect("id");

    let rec = Request::get("/conversations/messages/{messageId}/locations/{locationId}/recording")
        .version("2021-04-15")
        .path_param("messageId", id)
        .path_param("locationId", sb.location_id());
    match client.send(ACCOUNT, &rec).await.expect("recording") {
        Body::Bytes { content_type, bytes } => {
            assert_eq!(content_type, "audio/x-wav");
            assert!(bytes.starts_with(b"RIFF"));
        }
        other => panic!("expected bytes, got {other:?}"),
    }
    let as_json = client.json(ACCOUNT, &rec).await.expect("recording as JSON");
    assert_eq!(as_json["contentType"], json!("audio/x-wav"));

    let text = Request::get("/conversations/locations/{locationId}/messages/{messageId}/transcription/download")
        .version("2021-04-15")
        .path_param("messageId", id)
        .path_param("locationId", sb.location_id());
    match client.send(ACCOUNT, &text).await.expect("transcript") {
        Body::Text { content_type, text } => {
            assert_eq!(content_type, "text/plain");
            assert!(text.contains("Speaker 1: Hi there."), "{text}");
        }
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_url_is_per_account() {
    let one = start_unlimited(SandboxConfig::default()).await;
    let two = start_unlimited(SandboxConfig::default()).await;
    let client = client(quick_config(), Arc::new(Recorder::default()));
    client.add_account(pit_account(&one, "one", PIT));
    client.add_account(pit_account(&two, "two", PIT));
    let req = Request::get("/locations/{locationId}").path_param("locationId", one.location_id());
    client.json("one", &req).await.expect("one");
    client.json("two", &req).await.expect("two");
    client.json("two", &req).await.expect("two again");
    assert_eq!(logged(&one, "/locations").len(), 1);
    assert_eq!(logged(&two, "/locations").len(), 2);
    let err = client.json("three", &req).await.expect_err("unknown account");
    assert!(matches!(err, Error::InvalidRequest(_)));
}
