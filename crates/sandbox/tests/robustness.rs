//! Bad input never crashes the sandbox: every operation, fed nonsense, answers 4xx or 2xx.

mod common;

use catalog::{Catalog, ParamIn, TokenKind};
use common::*;
use reqwest::Method;
use sandbox::Seed;
use serde_json::{json, Value};

#[tokio::test]
async fn nonsense_input_gets_client_errors_not_crashes() {
    let sb = start(Seed::Demo).await;
    let c = client();
    let cat = Catalog::builtin().expect("catalog");
    let bodies = [json!([1, 2]), json!("x"), json!({"limit": -1, "startTime": i64::MAX, "page": 1e300})];
    let odd = ["99999999999999999999", "-1", "%00", "9223372036854775807", "[]"];
    for op in cat.operations() {
        let token = if op.tokens.contains(&TokenKind::Location) || op.tokens.is_empty() { TOKEN } else { AGENCY_TOKEN };
        for (n, body) in bodies.iter().enumerate() {
            let weird = odd[n % odd.len()];
            let mut path = op.path.clone();
            for p in op.params_in(ParamIn::Path) {
                path = path.replace(&format!("{{{}}}", p.name), weird);
            }
            let query: Vec<(String, String)> = op
                .params_in(ParamIn::Query)
                .map(|p| {
                    let v = if p.name == "locationId" {
                        sb.location_id().to_string()
                    } else {
                        odd[(n + 1) % odd.len()].into()
                    };
                    (p.name.clone(), v)
                })
                .collect();
            let method = Method::from_bytes(op.method.as_str().as_bytes()).expect("method");
            let resp = c
                .request(method, format!("{}{}", sb.base_url(), path))
                .bearer_auth(token)
                .header("Version", &op.version)
                .query(&query)
                .json(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{}: no answer: {e}", op.key));
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("text");
            assert!(status < 500, "{}: {status} {text}", op.key);
            if status >= 400 {
                let v: Value = serde_json::from_str(&text).expect("error bodies are JSON");
                assert!(v["statusCode"].is_number() && !v["message"].is_null(), "{}: {v}", op.key);
            }
        }
    }
    let (s, _) = get(&c, &sb, &format!("/contacts/?locationId={}", sb.location_id()), V_CONTACTS).await;
    assert_eq!(s, 200, "still serving");
}
