//! Several providers (SPEC §2.2.1, §3.7): prefix, alias, model and default routing, the
//! anthropic auth form, the `/v1/models` union, keys per provider; `max_concurrency_per_key`;
//! config reload under load (SPEC §3.8).

mod common;

use common::{client, Behavior, Mock, Proxy, Setup, KEYS};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const CLAUDE_KEY: &str = "sk-ant-test-key-0000000000000000000001";
const OPERATOR_KEY: &str = "sk-operator-added-key-000000000000000001";

fn two_providers(a: &Mock, b: &Mock) -> Setup {
    let providers = format!(
        "providers:\n\
         - {{name: ollama, kind: ollama, url: \"{}\", health_check_interval: 0s, keys: {{files: [a.txt]}}, models: [\"qwen*\", \"gpt-oss:20b\"]}}\n\
         - {{name: claude, kind: anthropic, url: \"{}\", health_check_interval: 0s, keys: {{files: [b.txt]}}, models: [\"claude-*\"], prefix: /claude}}\n\
         routing: {{default: ollama, aliases: {{fast: \"claude:claude-haiku\"}}}}\n",
        a.url(),
        b.url()
    );
    Setup {
        providers: Some(providers),
        files: vec![("a.txt".into(), format!("{}\n", KEYS[0])), ("b.txt".into(), format!("{CLAUDE_KEY}\n"))],
        secrets: vec![CLAUDE_KEY.into()],
        admin: true,
        ..Default::default()
    }
}

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_the_provider_their_prefix_alias_or_model_names() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let proxy = Proxy::start_with(&a, two_providers(&a, &b)).await;
    let send = |path: &'static str, body: String| proxy.post(path, body).send();

    // By model: the provider whose `models` globs claim it; an unclaimed model goes to the default.
    assert_eq!(send("/v1/chat/completions", chat("qwen3:8b")).await.unwrap().status(), 200);
    assert_eq!(send("/v1/chat/completions", chat("nobody-serves-this")).await.unwrap().status(), 200);
    assert_eq!((a.requests().len(), b.requests().len()), (2, 0));
    assert!(a.requests().iter().all(|r| r.key.as_deref() == Some(KEYS[0])));

    // Anthropic's auth form: x-api-key and anthropic-version, no Authorization.
    assert_eq!(send("/v1/messages", chat("claude-sonnet-4")).await.unwrap().status(), 200);
    let r = b.requests().pop().unwrap();
    assert_eq!(r.header("x-api-key"), Some(CLAUDE_KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None, "no bearer for anthropic");

    // An alias: the body's model is rewritten and Content-Length matches the new body.
    assert_eq!(send("/v1/messages", chat("fast")).await.unwrap().status(), 200);
    let r = b.requests().pop().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["model"], "claude-haiku");
    assert_eq!(v["messages"][0]["content"], "hi", "the rest of the body is kept");
    assert_eq!(r.header("content-length").map(|l| l.parse::<usize>().unwrap()), Some(r.body.len()));

    // A prefix selects its provider whatever the model, and is stripped.
    assert_eq!(send("/claude/v1/messages", chat("qwen3:8b")).await.unwrap().status(), 200);
    let r = b.requests().pop().unwrap();
    assert_eq!(r.target, "/v1/messages");
    assert_eq!(b.requests().len(), 3);

    // /v1/models: the union of known models and aliases, answered by the proxy.
    let models: serde_json::Value =
        client().get(proxy.url("/v1/models")).bearer_auth(common::TOKEN).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"gpt-oss:20b") && ids.contains(&"fast"), "{ids:?}");
    let tags: serde_json::Value =
        client().get(proxy.url("/api/tags")).bearer_auth(common::TOKEN).send().await.unwrap().json().await.unwrap();
    assert!(tags["models"].as_array().unwrap().iter().any(|m| m["name"] == "gpt-oss:20b"));
    assert_eq!(a.requests_to("/v1/models").len() + b.requests_to("/v1/models").len(), 0);

    // Keys belong to one provider.
    let listed: serde_json::Value =
        proxy.admin(reqwest::Method::GET, "/admin/keys?provider=claude").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["keys"][0]["provider"], "claude");
    let add = proxy
        .admin(reqwest::Method::POST, "/admin/keys")
        .json(&serde_json::json!({"key": "sk-ant-test-key-0000000000000000000002", "provider": "claude"}));
    assert_eq!(add.send().await.unwrap().status(), 201);
    let bad = proxy
        .admin(reqwest::Method::POST, "/admin/keys")
        .json(&serde_json::json!({"key": "sk-x-1234567890abcdef", "provider": "nope"}));
    let bad = bad.send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("nope"));
    let import = proxy
        .admin(reqwest::Method::POST, "/admin/keys/import?provider=claude")
        .body("imported----sk-ant-test-key-0000000000000000000003\n");
    let report: serde_json::Value = import.send().await.unwrap().json().await.unwrap();
    assert_eq!(report["added"], 1);
    let bad = proxy.admin(reqwest::Method::POST, "/admin/keys/import?provider=nope").body("sk-x-1234567890abcdef\n");
    assert_eq!(bad.send().await.unwrap().status(), 400);
    let providers: serde_json::Value =
        proxy.admin(reqwest::Method::GET, "/admin/providers").send().await.unwrap().json().await.unwrap();
    let p = providers["providers"].as_array().unwrap();
    assert_eq!((p[0]["name"].as_str(), p[1]["name"].as_str()), (Some("ollama"), Some("claude")));
    assert_eq!(p[1]["keys"]["total"], 3);
    assert_eq!(p[0]["keys"]["total"], 1, "the other provider's pool is untouched");
    let metrics = client().get(proxy.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"ollama_pool_provider_requests_total{family="anthropic",provider="claude",status_class="2xx"} 3"#
        ),
        "requests by provider"
    );
    assert_eq!(p[1]["kind"], "anthropic");
}

/// With a cap of 1 attempt per key and two keys, four slow requests at once never share a
/// key: two are served (one per key), the other two find no free key (503, not queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_concurrency_cap_is_skipped() {
    let mock = Mock::start().await;
    mock.set_default(Some(Behavior::Delayed(Duration::from_millis(800))));
    let setup = Setup {
        keys: vec![KEYS[0], KEYS[1]],
        upstream_extra: "max_concurrency_per_key: 1".into(),
        ..Default::default()
    };
    let proxy = Arc::new(Proxy::start_with(&mock, setup).await);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let p = proxy.clone();
            tokio::spawn(
                async move { p.post("/v1/chat/completions", chat("m1")).send().await.unwrap().status().as_u16() },
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503]);
    let mut keys: Vec<String> = mock.requests().iter().filter_map(|r| r.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, vec![KEYS[0].to_string(), KEYS[1].to_string()], "one request per key at a time");
    // The slots are free again once the requests are over.
    assert_eq!(proxy.post("/v1/chat/completions", chat("m1")).send().await.unwrap().status(), 200);
}

/// SPEC §3.8: a reload under load adds the key that joined the file, drops the one that left,
/// keeps a parked key parked, and fails no request; a bad file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_swaps_keys_without_failing_a_request() {
    let mock = Mock::start().await;
    mock.set(KEYS[1], Behavior::status_with(429, &[("retry-after", "3600")], "{}"));
    let setup =
        Setup { keys: vec![KEYS[0], KEYS[1]], admin: true, secrets: vec![OPERATOR_KEY.into()], ..Default::default() };
    let proxy = Arc::new(Proxy::start_with(&mock, setup).await);
    // A key an operator added is in no file: a reload leaves it alone.
    let add = proxy.admin(reqwest::Method::POST, "/admin/keys").json(&serde_json::json!({"key": OPERATOR_KEY}));
    assert_eq!(add.send().await.unwrap().status(), 201);
    for _ in 0..2 {
        assert_eq!(proxy.post("/v1/chat/completions", chat("m1")).send().await.unwrap().status(), 200);
    }
    assert_eq!(proxy.key(KEYS[1]).status, ollama_pool::pool::Status::Cooling, "parked before the reload");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (p, stop, ok, failed) = (proxy.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    match p.post("/v1/chat/completions", chat("m1")).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Relaxed),
                        _ => failed.fetch_add(1, Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A bad file: answered with its problems, nothing changes.
    let cfg = proxy.dir.join("ollama-pool.yaml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("threads: 1", "threads: 1\npool: {max_attempts: 99}")).unwrap();
    let r = proxy.admin(reqwest::Method::POST, "/admin/reload").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let problems: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problems["problems"][0]["path"], "pool.max_attempts");
    assert_eq!(proxy.state.runtime.load().generation, 1);

    // The key file changes: KEYS[0] leaves, KEYS[2] joins, KEYS[1] (parked) stays.
    std::fs::write(&cfg, &good).unwrap();
    std::fs::write(proxy.dir.join("keys.txt"), format!("{}\n{}\n", KEYS[1], KEYS[2])).unwrap();
    let r = proxy.admin(reqwest::Method::POST, "/admin/reload").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let done: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (done["generation"].as_u64(), done["keys_added"].as_u64(), done["keys_removed"].as_u64()),
        (Some(2), Some(1), Some(1))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    mock.clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Relaxed), 0, "no request failed across the reloads ({} succeeded)", ok.load(Relaxed));
    assert!(ok.load(Relaxed) > 20);
    let used: Vec<String> = mock.requests().iter().filter_map(|r| r.key.clone()).collect();
    assert!(
        used.iter().all(|k| k == KEYS[2] || k == OPERATOR_KEY),
        "after the reload KEYS[0] (left the file) serves nothing: {used:?}"
    );
    assert!(used.iter().any(|k| k == KEYS[2]), "the key that joined serves");
    assert_eq!(proxy.key(KEYS[1]).status, ollama_pool::pool::Status::Cooling, "still parked after it");
    let keys: serde_json::Value =
        proxy.admin(reqwest::Method::GET, "/admin/keys").send().await.unwrap().json().await.unwrap();
    assert_eq!(keys["total"], 3, "KEYS[1], KEYS[2] and the operator's key");
    let ids: Vec<&str> = keys["keys"].as_array().unwrap().iter().filter_map(|k| k["id"].as_str()).collect();
    assert!(ids.contains(&proxy.key_id(OPERATOR_KEY).as_str()), "the operator's key stayed");
    assert_eq!(proxy.state.runtime.load().generation, 2);
    // The gauge is the test process's one registry: under `cargo test` another test of this
    // file starting a server sets it back to 1 at any moment, so only its presence is checked.
    let metrics = client().get(proxy.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ollama_pool_config_generation "));
    assert!(metrics.contains(r#"ollama_pool_config_reloads_total{result="error"}"#));
}

#[test]
fn provider_config_mistakes_are_reported_with_their_paths() {
    let problems = |yaml: &str| -> Vec<String> {
        ollama_pool::config::parse(yaml, &|_| None).err().unwrap_or_default().iter().map(|e| e.to_string()).collect()
    };
    let p = problems("upstream: {url: http://a}\nproviders: [{name: x, url: http://b}]\n");
    assert!(p.iter().any(|e| e.starts_with("upstream: ")) && p.iter().any(|e| e.starts_with("providers: ")), "{p:?}");
    let p = problems("providers: [{name: x, url: http://a}, {name: x, url: http://b}]\n");
    assert!(p.iter().any(|e| e.starts_with("providers[1].name: ")), "{p:?}");
    let p = problems("providers: [{name: x, url: http://a}]\nrouting: {aliases: {fast: \"nope:m\"}}\n");
    assert!(p.iter().any(|e| e.starts_with("routing.aliases.fast: ") && e.contains("nope")), "{p:?}");
    let p = problems("providers: [{name: x, url: http://a, kind: gemini}]\n");
    assert!(p.iter().any(|e| e.starts_with("providers[0].kind")), "{p:?}");
}

/// A provider without a static `models` list claims what its upstream lists (asked off the
/// request path with one of its keys): `kimi-k2:1t` is in the second provider's `/api/tags`,
/// so it goes there although the first provider is the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_claims_the_models_its_upstream_lists() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let providers = format!(
        "providers:\n\
         - {{name: first, kind: openai, url: \"{}\", health_check_interval: 0s, keys: {{files: [a.txt]}}, models: [\"gpt-*\"]}}\n\
         - {{name: second, kind: ollama, url: \"{}\", health_check_interval: 0s, keys: {{files: [b.txt]}}}}\n",
        a.url(),
        b.url()
    );
    let setup = Setup {
        providers: Some(providers),
        files: vec![("a.txt".into(), format!("{}\n", KEYS[0])), ("b.txt".into(), format!("{}\n", KEYS[1]))],
        ..Default::default()
    };
    let proxy = Proxy::start_with(&a, setup).await;
    proxy.health.refresh_listings().await;
    let asked = b.requests_to("/api/tags");
    assert!(!asked.is_empty() && asked.iter().all(|r| r.key.as_deref() == Some(KEYS[1])), "asked with its own key");
    assert!(a.requests_to("/v1/models").is_empty(), "a static list is never asked");
    assert_eq!(proxy.post("/api/chat", chat("kimi-k2:1t")).send().await.unwrap().status(), 200);
    assert_eq!(proxy.post("/api/chat", chat("unknown-model")).send().await.unwrap().status(), 200);
    assert_eq!(b.requests_to("/api/chat").len(), 1);
    assert_eq!(a.requests_to("/api/chat").len(), 1, "an unclaimed model goes to the default (the first)");
}
