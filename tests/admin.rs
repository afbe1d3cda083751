//! The admin API (SPEC §2.4): auth, every endpoint's success and error paths, live effect on
//! routing, imports (plain and validated), client tokens (shown once, hashed at rest, expiry,
//! model list, rpm) and that no answer ever carries a key or a token.

mod common;

use common::{client, Behavior, Mock, Proxy, Setup, ADMIN_TOKEN, KEYS, TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const CHAT: &str = r#"{"model":"m1","messages":[]}"#;

async fn admin_proxy(keys: &[&'static str]) -> (Mock, Proxy) {
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(&mock, Setup { keys: keys.to_vec(), admin: true, ..Default::default() }).await;
    (mock, proxy)
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    for secret in KEYS.iter().chain([&TOKEN, &ADMIN_TOKEN]) {
        assert!(!text.contains(secret), "a secret in an admin answer: {text}");
    }
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_needs_the_admin_token() {
    let (_mock, proxy) = admin_proxy(&KEYS).await;
    let routes = [
        (Method::GET, "/admin/keys"),
        (Method::POST, "/admin/keys"),
        (Method::POST, "/admin/keys/import"),
        (Method::DELETE, "/admin/keys/abc"),
        (Method::POST, "/admin/keys/abc/disable"),
        (Method::POST, "/admin/keys/abc/enable"),
        (Method::POST, "/admin/health-check"),
        (Method::GET, "/admin/tokens"),
        (Method::POST, "/admin/tokens"),
        (Method::DELETE, "/admin/tokens/abc"),
        (Method::GET, "/admin/stats"),
    ];
    for (m, path) in routes {
        let none = client().request(m.clone(), proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{m} {path} without a token");
        let wrong = client()
            .request(m.clone(), proxy.admin_url(path))
            .bearer_auth("admin-token-WRONG-00000000")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{m} {path} with a wrong token");
        let client_token = client().request(m.clone(), proxy.admin_url(path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(client_token.status(), 401, "a client token is not an admin token");
    }
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(client().get(proxy.admin_url(open)).send().await.unwrap().status(), 200, "{open}");
    }
    let (s, _) = json_of(proxy.admin(Method::GET, "/admin/nope").send().await.unwrap()).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_add_list_filter_disable_enable_delete() {
    let (_mock, proxy) = admin_proxy(&[KEYS[0]]).await;
    let add = |body: Value| proxy.admin(Method::POST, "/admin/keys").json(&body).send();
    let (s, v) = json_of(add(json!({"key": KEYS[1], "label": "second", "ttl": "1h"})).await.unwrap()).await;
    assert_eq!(s, 201);
    let id1 = v["id"].as_str().unwrap().to_string();
    assert_eq!(id1, proxy.key_id(KEYS[1]));
    let (s, v) = json_of(add(json!({"key": KEYS[1]})).await.unwrap()).await;
    assert_eq!((s, v["id"].as_str()), (409, Some(id1.as_str())));
    for (bad, why) in [
        (json!({"key": "short"}), "too short"),
        (json!({"key": "has spaces in it"}), "whitespace"),
        (json!({"key": KEYS[2], "ttl": "soon"}), "bad duration"),
        (json!({"key": KEYS[2], "colour": "red"}), "unknown field"),
        (json!({"label": "no key"}), "missing key"),
    ] {
        let (s, v) = json_of(add(bad).await.unwrap()).await;
        assert_eq!(s, 400, "{why}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{why}: a clear message");
    }
    let raw = proxy.admin(Method::POST, "/admin/keys").body("{not json").send().await.unwrap();
    let (s, v) = json_of(raw).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().starts_with("invalid JSON body"));

    let (s, v) = json_of(proxy.admin(Method::GET, "/admin/keys").send().await.unwrap()).await;
    assert_eq!((s, v["total"].as_u64()), (200, Some(2)));
    let k1 = v["keys"].as_array().unwrap().iter().find(|k| k["id"] == id1.as_str()).unwrap().clone();
    assert_eq!(k1["label"], "second");
    assert_eq!(k1["status"], "active");
    assert_eq!(k1["masked"], "upst…bbbb");
    assert!(k1["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(k1["stats"]["requests"], 0);

    let (s, v) = json_of(
        proxy
            .admin(Method::POST, &format!("/admin/keys/{id1}/disable"))
            .json(&json!({"for": "2h"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["status"].as_str(), v["reason"].as_str()), (200, Some("disabled"), Some("manual")));
    assert!(v["until"].is_string());
    let (_, v) = json_of(proxy.admin(Method::GET, "/admin/keys?status=disabled").send().await.unwrap()).await;
    assert_eq!(v["total"], 1);
    let (_, v) = json_of(proxy.admin(Method::GET, "/admin/keys?search=SECOND").send().await.unwrap()).await;
    assert_eq!(v["total"], 1);
    let (_, v) = json_of(proxy.admin(Method::GET, "/admin/keys?page=2&page_size=1").send().await.unwrap()).await;
    assert_eq!((v["keys"].as_array().unwrap().len(), v["total"].as_u64(), v["page"].as_u64()), (1, Some(2), Some(2)));
    for bad in ["status=sleepy", "page=0", "page_size=5000", "page=x"] {
        let (s, _) = json_of(proxy.admin(Method::GET, &format!("/admin/keys?{bad}")).send().await.unwrap()).await;
        assert_eq!(s, 400, "{bad}");
    }
    let (s, _) = json_of(
        proxy
            .admin(Method::POST, &format!("/admin/keys/{id1}/disable"))
            .json(&json!({"for": "never"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    let (s, v) = json_of(proxy.admin(Method::POST, &format!("/admin/keys/{id1}/enable")).send().await.unwrap()).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("active")));
    for (m, p) in [
        (Method::DELETE, "/admin/keys/000000000000"),
        (Method::POST, "/admin/keys/000000000000/disable"),
        (Method::POST, "/admin/keys/000000000000/enable"),
    ] {
        let (s, _) = json_of(proxy.admin(m, p).send().await.unwrap()).await;
        assert_eq!(s, 404, "{p}");
    }
    let (s, v) = json_of(proxy.admin(Method::DELETE, &format!("/admin/keys/{id1}")).send().await.unwrap()).await;
    assert_eq!((s, v), (204, Value::Null));
    let (_, v) = json_of(proxy.admin(Method::GET, "/admin/keys").send().await.unwrap()).await;
    assert_eq!(v["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_change_routing_on_the_very_next_request() {
    let (mock, proxy) = admin_proxy(&[]).await;
    assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 503);
    let (s, _) =
        json_of(proxy.admin(Method::POST, "/admin/keys").json(&json!({"key": KEYS[0]})).send().await.unwrap()).await;
    assert_eq!(s, 201);
    assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    assert_eq!(mock.requests().last().unwrap().key.as_deref(), Some(KEYS[0]), "the new key served the next request");

    proxy.admin(Method::POST, "/admin/keys").json(&json!({"key": KEYS[1]})).send().await.unwrap();
    let id0 = proxy.key_id(KEYS[0]);
    proxy.admin(Method::POST, &format!("/admin/keys/{id0}/disable")).send().await.unwrap();
    mock.clear();
    for _ in 0..4 {
        assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    }
    assert!(mock.requests().iter().all(|r| r.key.as_deref() == Some(KEYS[1])), "a disabled key serves nothing");
    let id1 = proxy.key_id(KEYS[1]);
    proxy.admin(Method::DELETE, &format!("/admin/keys/{id1}")).send().await.unwrap();
    mock.clear();
    assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 503);
    assert!(mock.requests().is_empty(), "a deleted key serves nothing");
}

const FIXTURE: &str = "\
# ollama.txt as the original Worker's users have it
plain-key-000000000001
alice----labelled-key-000000000002

bob@example.com----pw1----session;aid=1----four-field-key-000003
carol@example.com----pw2----session----aid42----five-field-key-000004
plain-key-000000000001
this line has spaces
dave----
tiny
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reports_exact_counts_and_line_numbers() {
    let (_mock, proxy) = admin_proxy(&[KEYS[0]]).await;
    let import = |q: &str, body: String| {
        proxy
            .admin(Method::POST, &format!("/admin/keys/import{q}"))
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    let (s, v) = json_of(import("?dry_run=true", FIXTURE.into()).await.unwrap()).await;
    assert_eq!((s, v["added"].as_u64(), v["dry_run"].as_bool()), (200, Some(4), Some(true)));
    let (_, listed) = json_of(proxy.admin(Method::GET, "/admin/keys").send().await.unwrap()).await;
    assert_eq!(listed["total"], 1, "a dry run writes nothing");

    let (s, v) = json_of(import("", FIXTURE.into()).await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(v["added"], 4);
    assert_eq!(v["duplicates"], 1);
    let lines: Vec<u64> = v["invalid"].as_array().unwrap().iter().map(|i| i["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![8, 9, 10]);
    let (_, listed) = json_of(proxy.admin(Method::GET, "/admin/keys?search=carol").send().await.unwrap()).await;
    assert_eq!(listed["keys"][0]["id"], proxy.key_id("five-field-key-000004"), "the key is the last field");

    // Importing again is idempotent; JSON works too.
    let (_, v) = json_of(import("", FIXTURE.into()).await.unwrap()).await;
    assert_eq!((v["added"].as_u64(), v["duplicates"].as_u64()), (Some(0), Some(5)));
    let body = json!({"keys": ["json-key-0000000005", {"key": "json-key-0000000006", "label": "j"}, KEYS[0]]});
    let (s, v) = json_of(proxy.admin(Method::POST, "/admin/keys/import").json(&body).send().await.unwrap()).await;
    assert_eq!((s, v["added"].as_u64(), v["duplicates"].as_u64()), (200, Some(2), Some(1)));
    let (s, _) = json_of(
        proxy
            .admin(Method::POST, "/admin/keys/import")
            .header("content-type", "application/json")
            .body("{oops")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_import_sorts_good_and_bad_keys() {
    let (mock, proxy) = admin_proxy(&[]).await;
    mock.set("bad-key-0000000000002", Behavior::status(401, r#"{"error":"unauthorized"}"#));
    let text = "good-key-000000000001\nbad-key-0000000000002\nlabel----good-key-000000000003\n";
    let resp = proxy.admin(Method::POST, "/admin/keys/import?validate=true").body(text).send().await.unwrap();
    let (s, v) = json_of(resp).await;
    assert_eq!(s, 200);
    assert_eq!(v["added"], 2);
    assert_eq!(v["validated"], json!({"valid": 2, "invalid": 1, "by_category": {"qwen": 2}}));
    assert_eq!(v["invalid"][0]["line"], 2);
    assert!(v["invalid"][0]["reason"].as_str().unwrap().contains("credential"));
    let (_, listed) = json_of(proxy.admin(Method::GET, "/admin/keys").send().await.unwrap()).await;
    let k = &listed["keys"][0];
    assert_eq!((k["category"].as_str(), k["models"].as_array().map(Vec::len)), (Some("qwen"), Some(3)));
    assert!(mock.requests().iter().all(|r| r.target == "/api/tags"), "validation spends no tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_endpoint_reports_per_key() {
    let (mock, proxy) = admin_proxy(&[KEYS[0], KEYS[1]]).await;
    mock.set(KEYS[1], Behavior::status(401, "{}"));
    let (s, v) = json_of(proxy.admin(Method::POST, "/admin/health-check").json(&json!({})).send().await.unwrap()).await;
    assert_eq!(s, 200);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let r1 = results.iter().find(|r| r["id"] == proxy.key_id(KEYS[1]).as_str()).unwrap();
    assert_eq!((r1["result"].as_str(), r1["key_status"].as_str()), (Some("credential"), Some("invalid")));
    let only = json!({"ids": [proxy.key_id(KEYS[0])]});
    let (_, v) = json_of(proxy.admin(Method::POST, "/admin/health-check").json(&only).send().await.unwrap()).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    let (s, _) = json_of(
        proxy.admin(Method::POST, "/admin/health-check").json(&json!({"ids": ["000000000000"]})).send().await.unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = json_of(proxy.admin(Method::POST, "/admin/health-check").body("[").send().await.unwrap()).await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_shown_once_hashed_at_rest_with_models_rpm_and_expiry() {
    let (_mock, proxy) = admin_proxy(&KEYS).await;
    let body = json!({"name": "team-a", "models": ["m1"], "rpm": 3, "expires_in": "1h"});
    let resp = proxy.admin(Method::POST, "/admin/tokens").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("sk-") && token.len() == 51);

    let listed = proxy.admin(Method::GET, "/admin/tokens").send().await.unwrap().text().await.unwrap();
    assert!(listed.contains("team-a") && !listed.contains(&token), "listed, but never the token again");
    let mut db = std::fs::read(proxy.dir.join("data/ollama-pool.db")).unwrap();
    db.extend(std::fs::read(proxy.dir.join("data/ollama-pool.db-wal")).unwrap_or_default());
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()), "the token is not stored in clear");

    let call = |model: &str| {
        client()
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .body(format!(r#"{{"model":"{model}","messages":[]}}"#))
            .send()
    };
    assert_eq!(call("m1").await.unwrap().status(), 200);
    let denied = call("m2").await.unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.json::<Value>().await.unwrap()["error"]["code"], "model_not_allowed");
    assert_eq!(call("m1").await.unwrap().status(), 200);
    let limited = call("m1").await.unwrap(); // 4th request this minute: rpm 3 (the 403 counted too)
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_some());
    assert_eq!(limited.json::<Value>().await.unwrap()["error"]["code"], "rate_limit_exceeded");

    proxy.clock.advance(Duration::from_secs(3601));
    assert_eq!(call("m1").await.unwrap().status(), 401, "expired");

    let body = json!({"name": "team-b"});
    let t2: Value = proxy.admin(Method::POST, "/admin/tokens").json(&body).send().await.unwrap().json().await.unwrap();
    let t2_token = t2["token"].as_str().unwrap().to_string();
    let ok = client().get(proxy.url("/v1/models")).bearer_auth(&t2_token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let (s, _) = json_of(
        proxy.admin(Method::DELETE, &format!("/admin/tokens/{}", t2["id"].as_str().unwrap())).send().await.unwrap(),
    )
    .await;
    assert_eq!(s, 204);
    let revoked = client().get(proxy.url("/v1/models")).bearer_auth(&t2_token).send().await.unwrap();
    assert_eq!(revoked.status(), 401, "revoked at once");
    let (s, _) = json_of(proxy.admin(Method::DELETE, &format!("/admin/tokens/{id}x")).send().await.unwrap()).await;
    assert_eq!(s, 404);
    for bad in
        [json!({}), json!({"name": " "}), json!({"name": "x", "rpm": 0}), json!({"name": "x", "expires_in": "later"})]
    {
        let (s, _) = json_of(proxy.admin(Method::POST, "/admin/tokens").json(&bad).send().await.unwrap()).await;
        assert_eq!(s, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_add_up() {
    let (mock, proxy) = admin_proxy(&[KEYS[0], KEYS[1]]).await;
    mock.set(KEYS[0], Behavior::status(401, "{}"));
    for _ in 0..3 {
        assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    }
    let (s, v) = json_of(proxy.admin(Method::GET, "/admin/stats").send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!((v["requests"].as_u64(), v["successes"].as_u64(), v["failures"].as_u64()), (Some(4), Some(3), Some(1)));
    assert_eq!(v["success_rate"], json!(0.75));
    assert_eq!(v["keys"]["by_status"]["invalid"], 1);
    assert_eq!(v["keys"]["usable"], 1);
}

#[tokio::test]
async fn a_park_whose_time_is_up_is_active_in_every_report_at_once() {
    let mock = Mock::start().await;
    let proxy =
        Proxy::start_with(&mock, Setup { keys: vec![KEYS[0], KEYS[1]], admin: true, ..Default::default() }).await;
    let id0 = proxy.key_id(KEYS[0]);
    let (s, _) = json_of(
        proxy
            .admin(Method::POST, &format!("/admin/keys/{id0}/disable"))
            .json(&json!({"for": "1h"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    // (The ollama_pool_keys gauge reads the same views: tests/metrics.rs checks it, since this
    // binary runs several proxies at once and the gauge follows the newest one.)
    let reports = || async {
        let (_, keys) = json_of(proxy.admin(Method::GET, "/admin/keys").send().await.unwrap()).await;
        let (_, stats) = json_of(proxy.admin(Method::GET, "/admin/stats").send().await.unwrap()).await;
        (keys, stats)
    };
    let (keys, stats) = reports().await;
    let k0 = keys["keys"].as_array().unwrap().iter().find(|k| k["id"] == id0.as_str()).unwrap().clone();
    assert_eq!((k0["status"].as_str(), k0["reason"].as_str()), (Some("disabled"), Some("manual")));
    assert_eq!(stats["keys"]["by_status"]["disabled"], 1);

    // An hour later, with no request in between: every view says the key is back.
    proxy.clock.advance(Duration::from_secs(3601));
    let (keys, stats) = reports().await;
    let k0 = keys["keys"].as_array().unwrap().iter().find(|k| k["id"] == id0.as_str()).unwrap().clone();
    assert_eq!(k0["status"], "active");
    assert!(k0["until"].is_null() && k0["reason"].as_str().unwrap_or_default().is_empty(), "{k0}");
    let (_, active) = json_of(proxy.admin(Method::GET, "/admin/keys?status=active").send().await.unwrap()).await;
    assert_eq!(active["total"], 2, "the status filter agrees");
    assert_eq!(
        (stats["keys"]["by_status"]["disabled"].as_u64(), stats["keys"]["by_status"]["active"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(mock.requests().is_empty(), "no traffic was needed for that");
}

#[tokio::test]
async fn oversized_and_unprintable_keys_are_refused_everywhere_naming_the_rule() {
    let long: &'static str = Box::leak("k".repeat(100 * 1024).into_boxed_str());
    // Key file at start-up: the long key is reported by its line and never loaded (nor logged:
    // the harness scans the logs for it).
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(&mock, Setup { keys: vec![KEYS[0], long], admin: true, ..Default::default() }).await;
    assert_eq!(proxy.state.pool().len(), 1);
    assert!(common::captured_logs().contains("line 3: key is longer than 512 bytes (keys.max_key_bytes)"));

    let add = |body: Value| proxy.admin(Method::POST, "/admin/keys").json(&body).send();
    for (key, rule) in [
        (long.to_string(), "key is longer than 512 bytes (keys.max_key_bytes)"),
        ("ctl\u{1}character-key".to_string(), "key contains characters other than printable ASCII"),
        ("non-ascii-ключ-0001".to_string(), "key contains characters other than printable ASCII"),
    ] {
        let (s, v) = json_of(add(json!({ "key": key })).await.unwrap()).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(rule), "{v}");
    }
    let import = proxy.admin(Method::POST, "/admin/keys/import").body(format!("{}\n{long}\n", KEYS[1]));
    let (s, v) = json_of(import.send().await.unwrap()).await;
    assert_eq!((s, v["added"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(v["invalid"], json!([{"line": 2, "reason": "key is longer than 512 bytes (keys.max_key_bytes)"}]));
    let (_, listed) = json_of(proxy.admin(Method::GET, "/admin/keys").send().await.unwrap()).await;
    assert_eq!(listed["total"], 2, "nothing else was stored");
}
