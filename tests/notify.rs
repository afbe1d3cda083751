//! Notifications (SPEC §3.10): key and pool events reach webhooks (batched, HMAC-signed, key ids
//! and never secrets) and the `GET /admin/events` SSE stream; a receiver that hangs changes
//! nothing for clients, and its failures are counted.

mod common;

use common::receiver::receiver;
use common::{client, Behavior, Mock, Proxy, Setup, ADMIN_TOKEN, KEYS};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SECRET: &str = "webhook-secret-0123456789";
const CHAT: &str = r#"{"model":"m1","messages":[]}"#;

fn notifications(url: &str, extra: &str) -> String {
    format!(
        "notifications:\n  batch_window: 100ms\n  webhooks:\n    - url: \"{url}\"\n      secret: \"{SECRET}\"\n      events: [key.invalid, key.returned, key.disabled, pool.empty, pool.recovered]\n{extra}\
         fleet: {{instance: test-1}}\n"
    )
}

/// A metric's value (0 when absent). The registry is the test process's: `cargo test` runs this
/// file's tests in one process, so tests compare against what they read before.
async fn metric(proxy: &Proxy, line_start: &str) -> f64 {
    let text = proxy.admin(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

const OK: &str = r#"ollama_pool_webhook_deliveries_total{result="ok"}"#;
const FAILED: &str = r#"ollama_pool_webhook_deliveries_total{result="failed"}"#;
const RETRIED: &str = r#"ollama_pool_webhook_deliveries_total{result="retried"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_and_its_return_reach_the_webhook_signed() {
    let mock = Mock::start().await;
    let (url, got) = receiver(false).await;
    let setup =
        Setup { keys: vec![KEYS[0], KEYS[1]], admin: true, extra: notifications(&url, ""), ..Default::default() };
    let proxy = Proxy::start_with(&mock, setup).await;
    let ok_before = metric(&proxy, OK).await;
    let (mut sse, mut buf) = subscribe(&proxy).await;
    let id = proxy.key_id(KEYS[0]);
    mock.set(KEYS[0], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    for _ in 0..2 {
        assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    }
    let invalid = got.wait_for("key.invalid", &id).await;
    assert_eq!((invalid["from"].as_str(), invalid["to"].as_str()), (Some("active"), Some("invalid")), "{invalid}");
    assert_eq!(invalid["provider"], "default");

    mock.set(KEYS[0], Behavior::Normal); // renewed upstream: the next probe brings it back
    let r = proxy.admin(Method::POST, "/admin/health-check").json(&json!({"ids": [id]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let back = got.wait_for("key.returned", &id).await;
    assert_eq!((back["from"].as_str(), back["to"].as_str()), (Some("invalid"), Some("active")));
    // The event stream carried the very same notices.
    assert_eq!(next_event(&mut sse, &mut buf, "key.invalid").await, invalid);
    assert_eq!(next_event(&mut sse, &mut buf, "key.returned").await, back);

    for (headers, body) in got.0.lock().unwrap().iter() {
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(get("x-ollama-pool-signature"), Some(want.as_str()), "signed with the secret");
        assert_eq!(get("content-type"), Some("application/json"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["instance"], "test-1");
        let text = String::from_utf8_lossy(body);
        for secret in KEYS.iter().chain([&SECRET, &ADMIN_TOKEN]) {
            assert!(!text.contains(secret), "a secret in a webhook payload");
        }
        assert!(
            v["events"].as_array().unwrap().iter().all(|e| e["type"] != "key.added"),
            "the events filter holds: {v}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&proxy, OK).await - ok_before < 2.0 {
        assert!(Instant::now() < deadline, "deliveries are counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_changes_nothing_for_clients_and_its_failures_are_counted() {
    let mock = Mock::start().await;
    let (url, _) = receiver(true).await;
    let extra = "      timeout: 2s\n      max_attempts: 2\n      retry_backoff: 100ms\n";
    let setup =
        Setup { keys: vec![KEYS[0], KEYS[1]], admin: true, extra: notifications(&url, extra), ..Default::default() };
    let proxy = Proxy::start_with(&mock, setup).await;
    let (failed_before, retried_before) = (metric(&proxy, FAILED).await, metric(&proxy, RETRIED).await);
    let id = proxy.key_id(KEYS[1]);
    // Twenty key events, each a delivery (batch_window 100 ms apart or not) to a receiver that
    // never answers.
    for _ in 0..10 {
        let r = proxy.admin(Method::POST, &format!("/admin/keys/{id}/disable")).json(&json!({})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = proxy.admin(Method::POST, &format!("/admin/keys/{id}/enable")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the first batch is out and waiting
    for _ in 0..50 {
        assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    }
    // Every request completed while the first delivery (2 s per attempt) was still pending.
    assert_eq!(metric(&proxy, FAILED).await - failed_before, 0.0, "no delivery has finished failing yet");
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&proxy, FAILED).await - failed_before < 1.0 {
        assert!(Instant::now() < deadline, "a delivery that timed out twice is counted as failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&proxy, RETRIED).await - retried_before >= 1.0);
}

type Sse = std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Opens `GET /admin/events` and reads its greeting (so the stream is subscribed).
async fn subscribe(proxy: &Proxy) -> (Sse, String) {
    let r = proxy.admin(Method::GET, "/admin/events").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream: Sse = Box::pin(r.bytes_stream());
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let buf = String::from_utf8(first.to_vec()).unwrap();
    assert!(buf.starts_with(": ollama-pool"), "a greeting first: {buf:?}");
    (stream, buf)
}

/// Reads SSE events from a response until one of `kind` arrives.
async fn next_event(stream: &mut Sse, buf: &mut String, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::to_string);
            if field("event: ").as_deref() == Some(kind) {
                assert!(field("id: ").is_some_and(|id| id.parse::<u64>().is_ok()), "{block}");
                return serde_json::from_str(&field("data: ").unwrap()).unwrap();
            }
        }
        let chunk =
            tokio::time::timeout_at(deadline, stream.next()).await.unwrap_or_else(|_| panic!("no {kind} event"));
        buf.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_the_same_events_live() {
    let mock = Mock::start().await;
    let setup = Setup { keys: vec![KEYS[0]], admin: true, ..Default::default() };
    let proxy = Proxy::start_with(&mock, setup).await;
    let none = client().get(proxy.admin_url("/admin/events")).send().await.unwrap();
    assert_eq!(none.status(), 401, "the stream needs the admin token");

    let (mut stream, mut buf) = subscribe(&proxy).await;

    let id = proxy.key_id(KEYS[0]);
    let r = proxy
        .admin(Method::POST, &format!("/admin/keys/{id}/disable"))
        .json(&json!({"for": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = next_event(&mut stream, &mut buf, "key.disabled").await;
    assert_eq!((e["key_id"].as_str(), e["reason"].as_str()), (Some(id.as_str()), Some("manual")), "{e}");
    assert!(e["until"].as_str().is_some(), "{e}");
    let e = next_event(&mut stream, &mut buf, "pool.empty").await;
    assert_eq!((e["provider"].as_str(), e["keys"].as_u64()), (Some("default"), Some(0)));
    assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 503);

    let r = proxy.admin(Method::POST, &format!("/admin/keys/{id}/enable")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let e = next_event(&mut stream, &mut buf, "key.returned").await;
    assert_eq!(e["key_id"], id.as_str());
    let e = next_event(&mut stream, &mut buf, "pool.recovered").await;
    assert_eq!(e["keys"], 1);
    // Other admin requests still work on the same listener while a stream is open.
    assert_eq!(proxy.admin(Method::GET, "/admin/stats").send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_deliveries_to_the_new_webhook() {
    let mock = Mock::start().await;
    let (old_url, old) = receiver(false).await;
    let (new_url, new) = receiver(false).await;
    let setup =
        Setup { keys: vec![KEYS[0], KEYS[1]], admin: true, extra: notifications(&old_url, ""), ..Default::default() };
    let proxy = Proxy::start_with(&mock, setup).await;
    let id = proxy.key_id(KEYS[1]);
    let disable = || proxy.admin(Method::POST, &format!("/admin/keys/{id}/disable")).json(&json!({})).send();
    let enable = || proxy.admin(Method::POST, &format!("/admin/keys/{id}/enable")).send();
    assert_eq!(disable().await.unwrap().status(), 200);
    old.wait_for("key.disabled", &id).await;

    let cfg = proxy.dir.join("ollama-pool.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace(&old_url, &new_url)).unwrap();
    let r = proxy.admin(Method::POST, "/admin/reload").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert!(done["applied"].as_array().unwrap().iter().any(|a| a == "notifications"), "{done}");
    assert_eq!(enable().await.unwrap().status(), 200);
    new.wait_for("key.returned", &id).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // two batch windows
    assert!(old.events().iter().all(|e| e["type"] != "key.returned"), "the old webhook got nothing after the reload");
}

#[test]
fn a_webhook_url_that_is_not_http_is_a_config_error_with_its_path() {
    let yaml = "upstream: {url: \"http://127.0.0.1:9\"}\n\
                notifications:\n  webhooks:\n    - url: \"http://ok.example/x\"\n    - url: \"ftp://hooks.example/x\"\n      events: [key.invalid, key.exploded]\n";
    let errors = ollama_pool::config::parse(yaml, &|_| None).expect_err("invalid");
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(text.iter().any(|e| e.starts_with("notifications.webhooks[1].url:") && e.contains("http://")), "{text:?}");
    assert!(text.iter().any(|e| e.starts_with("notifications.webhooks[1].events[1]:")), "{text:?}");
    assert_eq!(errors.len(), 2, "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_present_at_start_are_not_news_and_a_big_start_drops_nothing() {
    // More start keys than the notifier's queue holds (8,192): before, each was a `key.added`
    // notice, the queue overflowed and the start counted ~1,000 (at 100k keys, ~92,000) events
    // as dropped, and a `key.added` webhook heard thousands of keys that were there already.
    let mut keys: Vec<&'static str> = vec![KEYS[0]];
    keys.extend((0..9_000).map(|i| &*Box::leak(format!("start-key-{i:05}-abcdefghijklmnop").into_boxed_str())));
    let mock = Mock::start().await;
    let (url, got) = receiver(false).await;
    let hook = format!(
        "notifications:\n  batch_window: 100ms\n  webhooks:\n    - url: \"{url}\"\n      events: [key.added]\nfleet: {{instance: test-1}}\n"
    );
    let setup = Setup { keys, admin: true, extra: hook, ..Default::default() };
    let proxy = Proxy::start_with(&mock, setup).await;
    assert_eq!(metric(&proxy, "ollama_pool_events_dropped_total").await, 0.0, "a big start drops no event");

    // A key added while running is news, once.
    let r = proxy.admin(Method::POST, "/admin/keys").json(&json!({"key": KEYS[1]})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let id = proxy.key_id(KEYS[1]);
    got.wait_for("key.added", &id).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // two batch windows
    let added: Vec<Value> = got.events().into_iter().filter(|e| e["type"] == "key.added").collect();
    assert_eq!(added.len(), 1, "only the key added while running: {:?}", &added[..added.len().min(3)]);
    assert_eq!(metric(&proxy, "ollama_pool_events_dropped_total").await, 0.0);
}
