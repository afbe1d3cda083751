//! `GET /admin/openapi.json` (SPEC §2.4): served without a token, OpenAPI 3.1, and every
//! operation it documents is one the running router serves (not its 404 / 405), behind the
//! admin token unless the document says it is public. The reverse (every route in the router's
//! table is documented) is a unit test in `src/admin/openapi.rs`. Fuzzing with schemathesis:
//! `benches/fuzz_admin.sh`.

mod common;

use common::{client, Mock, Proxy, Setup};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn every_documented_operation_is_served_by_the_router() {
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(&mock, Setup { admin: true, ..Default::default() }).await;
    let r = client().get(proxy.admin_url("/admin/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200, "no token needed");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = ollama_pool::admin::openapi::operations(&doc);
    assert!(ops.len() >= 19, "{ops:?}");
    for (method, path) in ops {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let concrete = path.replace("{id}", "000000000000");
        let public = doc["paths"][&path][method.to_ascii_lowercase()]["security"].as_array().unwrap().is_empty();
        let anonymous = client().request(m.clone(), proxy.admin_url(&concrete)).send().await.unwrap();
        if !public {
            assert_eq!(anonymous.status(), 401, "{method} {path} needs the admin token");
        }
        let req = proxy.admin(m.clone(), &concrete).header("content-type", "application/json").body("{}");
        let r = tokio::time::timeout(Duration::from_secs(10), req.send()).await.unwrap().unwrap();
        let status = r.status().as_u16();
        assert_ne!(status, 405, "{method} {path}: the router does not take this method");
        if path == "/admin/events" {
            assert_eq!((status, r.headers()["content-type"].to_str().unwrap()), (200, "text/event-stream"));
            continue; // an endless stream: dropping it ends it
        }
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("no such admin route") && !text.contains("no such route"),
            "{method} {path}: {status} {text}"
        );
        assert!(status < 500, "{method} {path}: {status} {text}");
    }
    // And what it does not document, the router does not serve.
    let r = proxy.admin(Method::GET, "/admin/nothing-here").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = proxy.admin(Method::PUT, "/admin/tokens").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (405, "GET, POST"));
}
