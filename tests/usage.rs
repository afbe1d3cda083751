//! Usage reports and budgets (SPEC §3.11): per (day, client, provider, model) counts that match
//! what the upstream reported, from `GET /admin/usage` and `ollama-pool usage`, across a
//! restart; `tpm` / `daily_tokens` budgets refuse with 429 naming the budget, never cut a
//! stream that started, and admit again when their period ends.

mod common;

use common::process::{start, write_config};
use common::{client, free_port, Behavior, Mock, Proxy, Setup, ADMIN_TOKEN, KEYS, TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

async fn send(port: u16, token: &str, path: &str, body: &str) -> (u16, String) {
    let r = client()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// (client, model) -> (requests, errors, prompt, completion), from a usage answer's rows.
fn by_client_model(v: &Value) -> Vec<(String, String, u64, u64, u64, u64)> {
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (
                s("client"),
                s("model"),
                n(r, "requests"),
                n(r, "errors"),
                n(r, "prompt_tokens"),
                n(r, "completion_tokens"),
            )
        })
        .collect()
}

fn expected() -> Vec<(String, String, u64, u64, u64, u64)> {
    let row = |c: &str, m: &str, r, e, p, k| (c.to_string(), m.to_string(), r, e, p, k);
    vec![
        // alice: 2 JSON chats of m1 (3+1 each), 1 SSE stream of m2 (5+2), 1 NDJSON chat of m2 (3+2),
        // 1 request of m3 the upstream refused (400)
        row("alice", "m1", 2, 0, 6, 2),
        row("alice", "m2", 2, 0, 8, 4),
        row("alice", "m3", 1, 1, 0, 0),
        // bob: 1 JSON chat of m1, 2 SSE streams of m2
        row("bob", "m1", 1, 0, 3, 1),
        row("bob", "m2", 2, 0, 10, 4),
    ]
}

#[tokio::test]
async fn usage_matches_what_the_upstream_reported_and_survives_a_restart() {
    let mock = Mock::start().await;
    mock.set_for_body("\"m3\"", Behavior::status(400, r#"{"error":"unknown model"}"#));
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = write_config(dir.path(), &mock.url(), port, admin, "{path: state/pool.db, flush_interval: 1h}");
    let s = start(&cfg, port, admin, 1).await;
    s.ok(Method::POST, "/admin/keys", json!({"key": KEYS[0]})).await;
    let alice = s.ok(Method::POST, "/admin/tokens", json!({"name": "alice", "daily_tokens": 1000})).await;
    let bob = s.ok(Method::POST, "/admin/tokens", json!({"name": "bob"})).await;
    let (alice, bob) = (alice["token"].as_str().unwrap().to_string(), bob["token"].as_str().unwrap().to_string());

    let chat = r#"{"model":"m1","messages":[]}"#;
    let stream = r#"{"model":"m2","stream":true,"messages":[]}"#;
    for (token, path, body) in [
        (&alice, "/v1/chat/completions", chat),
        (&alice, "/v1/chat/completions", chat),
        (&alice, "/v1/chat/completions", stream),
        (&alice, "/api/chat", r#"{"model":"m2","messages":[]}"#),
        (&alice, "/v1/chat/completions", r#"{"model":"m3","messages":[]}"#),
        (&bob, "/v1/chat/completions", chat),
        (&bob, "/v1/chat/completions", stream),
        (&bob, "/v1/chat/completions", stream),
    ] {
        let (status, text) = send(port, token, path, body).await;
        let want = if body.contains("m3") { 400 } else { 200 };
        assert_eq!(status, want, "{path} {body}: {text}");
    }

    // A request is counted once it has finished, just after its answer went out.
    let mut live = Value::Null;
    for _ in 0..100 {
        live = s.ok(Method::GET, "/admin/usage?group_by=client,model", Value::Null).await;
        if live["totals"]["requests"] == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(by_client_model(&live), expected(), "{live}");
    assert_eq!(live["totals"]["prompt_tokens"], 27);
    assert_eq!(live["totals"]["requests"], 8);
    let csv = s
        .admin(Method::GET, "/admin/usage?group_by=client&client=bob")
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.text().await.unwrap(),
        "client,requests,errors,prompt_tokens,completion_tokens,total_tokens\r\nbob,3,0,13,5,18\r\n"
    );
    let tokens = s.ok(Method::GET, "/admin/tokens", Value::Null).await;
    let a = tokens["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "alice").unwrap().clone();
    assert_eq!(
        (a["budgets"]["daily_tokens"]["used"].as_u64(), a["budgets"]["daily_tokens"]["remaining"].as_u64()),
        (Some(20), Some(980))
    );

    // flush_interval is 1h: the report above flushed, and the shutdown flush saves the rest.
    let (status, _) = send(port, &bob, "/v1/chat/completions", chat).await;
    assert_eq!(status, 200);
    let log1 = s.terminate();
    let mut want = expected();
    want[3] = ("bob".into(), "m1".into(), 2, 0, 6, 2);

    // Offline, the CLI reads the same store.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
        .args(["usage", "-c"])
        .arg(&cfg)
        .args(["--by", "client,model", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offline: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_client_model(&offline), want, "CLI: {offline}");
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
        .args(["usage", "-c"])
        .arg(&cfg)
        .args(["--by", "client"])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["bob", "4", "0", "16", "6", "22"]),
        "{table}"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
        .args(["usage", "-c"])
        .arg(&cfg)
        .args(["--from", "2026-13-01"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--from"), "{}", String::from_utf8_lossy(&bad.stderr));

    let s = start(&cfg, port, admin, 2).await;
    let after = s.ok(Method::GET, "/admin/usage?group_by=client,model", Value::Null).await;
    assert_eq!(by_client_model(&after), want, "after the restart: {after}");
    let tokens = s.ok(Method::GET, "/admin/tokens", Value::Null).await;
    let a = tokens["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "alice").unwrap().clone();
    assert_eq!(a["budgets"]["daily_tokens"]["used"], 20, "the daily budget remembers today's use: {a}");
    let log2 = s.kill9();
    for log in [log1, log2] {
        let text = std::fs::read_to_string(&log).unwrap();
        for secret in [alice.as_str(), bob.as_str(), KEYS[0], ADMIN_TOKEN] {
            assert!(!text.contains(secret), "a secret in {}", log.display());
        }
    }
}

/// Waits until `GET /admin/tokens` shows `want` used of a token's budget: a request is debited
/// when it has finished, just after its answer went out.
async fn used(proxy: &Proxy, name: &str, budget: &str, want: u64) {
    for _ in 0..100 {
        let v: Value = proxy.admin(Method::GET, "/admin/tokens").send().await.unwrap().json().await.unwrap();
        let t = v["tokens"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned().unwrap_or_default();
        if t["budgets"][budget]["used"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name}'s {budget} never showed {want} used");
}

async fn create_token(proxy: &Proxy, body: Value) -> String {
    let r = proxy.admin(Method::POST, "/admin/tokens").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{body}");
    r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn budgets_refuse_with_429_naming_the_budget_and_never_cut_a_stream() {
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(&mock, Setup { admin: true, ..Default::default() }).await;
    let port = proxy.addr.port();
    let daily = create_token(&proxy, json!({"name": "capped", "daily_tokens": 10})).await;
    let chat = r#"{"model":"m1","messages":[]}"#; // the mock reports 3 + 1 tokens
    for _ in 0..3 {
        assert_eq!(send(port, &daily, "/v1/chat/completions", chat).await.0, 200);
    }
    used(&proxy, "capped", "daily_tokens", 12).await;
    let r = client().post(proxy.url("/v1/chat/completions")).bearer_auth(&daily).body(chat).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "until UTC midnight: {retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("daily_tokens"), "{v}");
    // The Ollama envelope names it too.
    let (status, text) = send(port, &daily, "/api/chat", chat).await;
    assert_eq!(status, 429);
    assert!(text.contains("daily_tokens"), "{text}");
    let forwarded = mock.requests().len();
    assert_eq!(forwarded, 3, "refused requests reach no upstream");
    // Another client is not affected.
    assert_eq!(send(port, TOKEN, "/v1/chat/completions", chat).await.0, 200);

    // A stream that starts under its budget runs to the end, whatever it uses.
    let small = create_token(&proxy, json!({"name": "streamer", "tpm": 5})).await;
    let (status, body) = send(port, &small, "/v1/chat/completions", r#"{"model":"m1","stream":true}"#).await;
    assert_eq!(status, 200);
    assert!(body.contains("[DONE]"), "the stream ran to its end: {body}");
    used(&proxy, "streamer", "tpm", 7).await;
    let (status, text) = send(port, &small, "/v1/chat/completions", chat).await;
    assert_eq!(status, 429, "7 of 5 tokens this minute");
    assert!(text.contains("tpm"), "{text}");
    proxy.clock.advance(Duration::from_secs(60));
    assert_eq!(send(port, &small, "/v1/chat/completions", chat).await.0, 200, "a new minute");

    let tokens: Value = proxy.admin(Method::GET, "/admin/tokens").send().await.unwrap().json().await.unwrap();
    let capped = tokens["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "capped").unwrap().clone();
    let b = &capped["budgets"]["daily_tokens"];
    assert_eq!(
        (b["limit"].as_u64(), b["used"].as_u64(), b["remaining"].as_u64()),
        (Some(10), Some(12), Some(0)),
        "{capped}"
    );
    assert!(b["resets_at"].as_str().unwrap().ends_with("T00:00:00Z"), "{b}");
    let metrics = proxy.admin(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"ollama_pool_budget_rejections_total{budget="daily_tokens",client="capped"} 2"#),
        "{}",
        metrics.lines().filter(|l| l.contains("budget")).collect::<Vec<_>>().join("\n")
    );
    assert!(metrics.contains(r#"ollama_pool_budget_rejections_total{budget="tpm",client="streamer"} 1"#));
}

#[tokio::test]
async fn bad_budgets_and_usage_parameters_get_400_naming_the_parameter() {
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(&mock, Setup { admin: true, ..Default::default() }).await;
    for (body, field) in [
        (json!({"name": "x", "tpm": 0}), "tpm"),
        (json!({"name": "x", "daily_tokens": -5}), "daily_tokens"),
        (json!({"name": "x", "monthly_tokens": 0}), "monthly_tokens"),
        (json!({"name": "x", "rpm": -1}), "rpm"),
    ] {
        let r = proxy.admin(Method::POST, "/admin/tokens").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().starts_with(field), "{v}");
    }
    let listed: Value = proxy.admin(Method::GET, "/admin/tokens").send().await.unwrap().json().await.unwrap();
    let listed: Vec<(&str, &str)> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["source"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("app", "config")], "nothing was created; the config's token is listed too");
    for (query, param) in [
        ("group_by=day,colour", "group_by"),
        ("from=2026-12-02&to=2026-12-01", "from"),
        ("to=2026-02-30", "to"),
        ("from=last-week", "from"),
        ("format=xml", "format"),
    ] {
        let r = proxy.admin(Method::GET, &format!("/admin/usage?{query}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().starts_with(&format!("{param}:")), "{query}: {v}");
    }
    let r = proxy.admin(Method::DELETE, "/admin/usage").send().await.unwrap();
    assert_eq!(r.status(), 405);
}
