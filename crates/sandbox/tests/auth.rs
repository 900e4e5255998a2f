//! Tokens, OAuth rotation, location binding, Version header and validation errors.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use sandbox::{OAuthClient, Seed};
use serde_json::{json, Value};

async fn token<T: serde::Serialize + ?Sized>(c: &reqwest::Client, base: &str, form: &T) -> (u16, Value) {
    let resp = c.post(format!("{base}/oauth/token")).form(form).send().await.expect("token response");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("token json"))
}

#[tokio::test]
async fn missing_wrong_and_expired_tokens_are_401() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let url = format!("{}/contacts/?locationId={}", sb.base_url(), sb.location_id());
    for auth in [None, Some("Bearer nope"), Some("Basic abc")] {
        let mut rb = c.get(&url).header("Version", V_CONTACTS);
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        let (s, body) = send(rb).await;
        assert_eq!(s, 401, "{auth:?}");
        assert_eq!(body["statusCode"], 401);
        assert_eq!(body["message"], "Invalid JWT");
        assert!(body["traceId"].is_string());
    }
    // An agency token cannot call a location-only endpoint.
    let (s, _) = send(c.get(&url).bearer_auth(AGENCY_TOKEN).header("Version", V_CONTACTS)).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn other_locations_are_403() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let (s, body) = get(&c, &sb, "/contacts/?locationId=loc_other", V_CONTACTS).await;
    assert_eq!(s, 403);
    assert_eq!(body["statusCode"], 403);
    let (s, _) =
        send(req(&c, &sb, Method::POST, "/contacts/search", V_CONTACTS).json(&json!({"locationId": "loc_other"})))
            .await;
    assert_eq!(s, 403);
    let (s, _) = get(&c, &sb, "/locations/loc_other", V_CONTACTS).await;
    assert_eq!(s, 403);
    // A record of another location, fetched by id.
    let other = sb
        .records("contacts")
        .into_iter()
        .find(|r| r["locationId"] == "loc_other")
        .and_then(|r| r["id"].as_str().map(String::from))
        .expect("a contact elsewhere");
    let (s, _) = get(&c, &sb, &format!("/contacts/{other}"), V_CONTACTS).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn version_header_is_required_and_checked() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let url = format!("{}/contacts/?locationId={}", sb.base_url(), sb.location_id());
    let (s, body) = send(c.get(&url).bearer_auth(TOKEN)).await;
    assert_eq!(s, 400);
    assert_eq!(body["statusCode"], 400);
    // Calendars need 2021-04-15; the contacts version is refused there.
    let (s, body) = get(&c, &sb, &format!("/calendars/?locationId={}", sb.location_id()), V_CONTACTS).await;
    assert_eq!(s, 400, "{body}");
    let (s, _) = get(&c, &sb, &format!("/calendars/?locationId={}", sb.location_id()), V_CALENDARS).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn invalid_input_is_422_with_messages() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let (s, body) = get(&c, &sb, "/contacts/", V_CONTACTS).await;
    assert_eq!(s, 422);
    assert_eq!(body["error"], "Unprocessable Entity");
    assert_eq!(body["message"], json!(["locationId should not be empty"]));
    let contact = first_id(&sb, "contacts", |_| true);
    let (s, body) = send(
        req(&c, &sb, Method::POST, &format!("/contacts/{contact}/tasks"), V_CONTACTS)
            .json(&json!({"title": 3, "completed": "maybe"})),
    )
    .await;
    assert_eq!(s, 422);
    let msgs: Vec<String> = serde_json::from_value(body["message"].clone()).expect("messages");
    assert!(msgs.contains(&"title must be a string".to_string()), "{msgs:?}");
    assert!(msgs.contains(&"dueDate should not be empty".to_string()), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.starts_with("completed must be")), "{msgs:?}");
    let (s, body) = send(
        req(&c, &sb, Method::POST, "/contacts/search", V_CONTACTS)
            .header("Content-Type", "application/json")
            .body("{nope"),
    )
    .await;
    assert_eq!((s, body["statusCode"].clone()), (400, json!(400)));
    let (s, body) = get(&c, &sb, "/no/such/route", V_CONTACTS).await;
    assert_eq!((s, body["statusCode"].clone()), (404, json!(404)));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_are_single_use() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let base = sb.base_url();
    // Register through the admin API, mint through it too.
    let r = c
        .post(format!("{base}/_sandbox/oauth/clients"))
        .json(&json!({"client_id": "app1", "client_secret": "s3cret", "scopes": ["contacts.readonly"]}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status().as_u16(), 201);
    let minted: Value = c
        .post(format!("{base}/_sandbox/oauth/refresh-tokens"))
        .json(&json!({"client_id": "app1"}))
        .send()
        .await
        .expect("mint")
        .json()
        .await
        .expect("json");
    let rt0 = minted["refresh_token"].as_str().expect("refresh token").to_string();

    let form = |rt: &str| {
        [("client_id", "app1"), ("client_secret", "s3cret"), ("grant_type", "refresh_token"), ("refresh_token", rt)]
            .map(|(k, v)| (k, v.to_string()))
    };
    let f0 = form(&rt0);
    let (s, t1) = token(&c, &base, &f0).await;
    assert_eq!(s, 200, "{t1}");
    assert_eq!(t1["token_type"], "Bearer");
    assert_eq!(t1["userType"], "Location");
    assert_eq!(t1["locationId"], sb.location_id());
    let rt1 = t1["refresh_token"].as_str().expect("rotated").to_string();
    assert_ne!(rt1, rt0);
    let access = t1["access_token"].as_str().expect("access").to_string();

    // The old refresh token is spent.
    let (s, err) = token(&c, &base, &f0).await;
    assert_eq!(s, 400);
    assert_eq!(err["error"], "invalid_grant");
    // The new one works once.
    let f1 = form(&rt1);
    let (s, _) = token(&c, &base, &f1).await;
    assert_eq!(s, 200);
    let (s, _) = token(&c, &base, &f1).await;
    assert_eq!(s, 400);
    // Wrong secret.
    let bad = [("client_id", "app1"), ("client_secret", "x"), ("grant_type", "refresh_token"), ("refresh_token", "r")];
    let (s, err) = token(&c, &base, &bad).await;
    assert_eq!((s, err["error"].clone()), (401, json!("invalid_client")));

    // The access token reads contacts; its scopes do not cover writes.
    let url = format!("{base}/contacts/?locationId={}", sb.location_id());
    let (s, _) = send(c.get(&url).bearer_auth(&access).header("Version", V_CONTACTS)).await;
    assert_eq!(s, 200);
    let (s, _) = send(
        c.post(format!("{base}/contacts/"))
            .bearer_auth(&access)
            .header("Version", V_CONTACTS)
            .json(&json!({"locationId": sb.location_id()})),
    )
    .await;
    assert_eq!(s, 401, "scope contacts.write is missing");
}

#[tokio::test]
async fn access_tokens_expire_and_codes_are_single_use() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let base = sb.base_url();
    sb.register_oauth_client(OAuthClient { client_id: "app2".into(), client_secret: "pw".into(), scopes: vec![] });
    sb.set_access_token_ttl(Duration::from_millis(300));
    let code: Value = c
        .post(format!("{base}/_sandbox/oauth/codes"))
        .json(&json!({"client_id": "app2"}))
        .send()
        .await
        .expect("code")
        .json()
        .await
        .expect("json");
    let code = code["code"].as_str().expect("code").to_string();
    let form =
        [("client_id", "app2"), ("client_secret", "pw"), ("grant_type", "authorization_code"), ("code", code.as_str())];
    let (s, t) = token(&c, &base, &form).await;
    assert_eq!(s, 200, "{t}");
    let (s, again) = token(&c, &base, &form).await;
    assert_eq!((s, again["error"].clone()), (400, json!("invalid_grant")));
    let access = t["access_token"].as_str().expect("access").to_string();
    let url = format!("{base}/contacts/?locationId={}", sb.location_id());
    let (s, _) = send(c.get(&url).bearer_auth(&access).header("Version", V_CONTACTS)).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, body) = send(c.get(&url).bearer_auth(&access).header("Version", V_CONTACTS)).await;
    assert_eq!((s, body["message"].clone()), (401, json!("Invalid JWT")));
}

#[tokio::test]
async fn agency_tokens_buy_location_tokens() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let base = sb.base_url();
    let resp = c
        .post(format!("{base}/oauth/locationToken"))
        .bearer_auth(AGENCY_TOKEN)
        .header("Version", V_CONTACTS)
        .form(&[("companyId", sb.company_id()), ("locationId", "loc_other")])
        .send()
        .await
        .expect("location token");
    assert_eq!(resp.status().as_u16(), 200);
    let t: Value = resp.json().await.expect("json");
    let access = t["access_token"].as_str().expect("access");
    let (s, body) =
        send(c.get(format!("{base}/contacts/?locationId=loc_other")).bearer_auth(access).header("Version", V_CONTACTS))
            .await;
    assert_eq!(s, 200);
    assert_eq!(body["contacts"].as_array().map(Vec::len), Some(3));
    // A location token cannot do this.
    let resp = c
        .post(format!("{base}/oauth/locationToken"))
        .bearer_auth(TOKEN)
        .form(&[("companyId", sb.company_id()), ("locationId", "loc_other")])
        .send()
        .await
        .expect("refused");
    assert_eq!(resp.status().as_u16(), 401);
}
