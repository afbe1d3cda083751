//! Metrics (SPEC §2.5): counters move exactly as a scripted sequence says, token counts match
//! the upstream's `usage` for JSON, SSE and NDJSON responses, pool gauges read the pool, and no
//! label value carries a secret. One test function: the registry is process-wide, and exact
//! deltas need no other test running beside it.

mod common;

use common::{client, Behavior, Mock, Proxy, Setup, KEYS, TOKEN};

async fn scrape(proxy: &Proxy) -> String {
    client().get(proxy.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// A request is recorded in the proxy's `logging` hook, which may run just after the client has
/// read the whole answer: scrape until `series` has grown by `by` since `before` (bounded).
/// One scrape gathers metric families one after another, so a recording can land between two
/// of them: once `series` (the last one a request records) shows it, scrape once more.
async fn settled(proxy: &Proxy, before: &str, series: &str, by: f64) -> String {
    for _ in 0..100 {
        let text = scrape(proxy).await;
        if value(&text, series) - value(before, series) >= by {
            return scrape(proxy).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{series} did not grow by {by}");
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_scripted_sequence() {
    let mock = Mock::start().await;
    mock.set(KEYS[0], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    let proxy =
        Proxy::start_with(&mock, Setup { keys: vec![KEYS[0], KEYS[1]], admin: true, ..Default::default() }).await;
    let (k0, k1) = (proxy.key_id(KEYS[0]), proxy.key_id(KEYS[1]));
    let mut before = scrape(&proxy).await;
    let delta = |before: &str, after: &str, series: &str| value(after, series) - value(before, series);

    // 1. One request that fails over once from a 401 and succeeds (JSON, usage 3 + 1).
    let r = proxy.post("/v1/chat/completions", r#"{"model":"m1","messages":[]}"#).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let after =
        settled(&proxy, &before, r#"ollama_pool_tokens_total{client="app",kind="completion",model="m1"}"#, 1.0).await;
    assert_eq!(
        delta(
            &before,
            &after,
            &format!(r#"ollama_pool_upstream_attempts_total{{key_id="{k0}",outcome="credential",provider="default"}}"#)
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &format!(r#"ollama_pool_upstream_attempts_total{{key_id="{k1}",outcome="success",provider="default"}}"#)
        ),
        1.0
    );
    assert_eq!(delta(&before, &after, r#"ollama_pool_failovers_total{reason="credential"}"#), 1.0);
    assert_eq!(
        delta(&before, &after, r#"ollama_pool_key_transitions_total{from="active",reason="credential",to="invalid"}"#),
        1.0
    );
    assert_eq!(
        delta(&before, &after, r#"ollama_pool_requests_total{client="app",family="openai",status_class="2xx"}"#),
        1.0
    );
    assert_eq!(delta(&before, &after, r#"ollama_pool_tokens_total{client="app",kind="prompt",model="m1"}"#), 3.0);
    assert_eq!(delta(&before, &after, r#"ollama_pool_tokens_total{client="app",kind="completion",model="m1"}"#), 1.0);
    assert_eq!(delta(&before, &after, r#"ollama_pool_request_duration_seconds_count{family="openai"}"#), 1.0);
    assert_eq!(delta(&before, &after, r#"ollama_pool_proxy_overhead_seconds_count{family="openai"}"#), 1.0);
    assert_eq!(value(&after, r#"ollama_pool_keys{provider="default",status="invalid"}"#), 1.0);
    assert_eq!(value(&after, r#"ollama_pool_keys_usable{provider="default"}"#), 1.0);
    let parked = after
        .lines()
        .find(|l| l.starts_with("ollama_pool_key_return_seconds{"))
        .expect("return time of the parked key");
    assert!(parked.contains(&format!(r#"key_id="{k0}""#)) && parked.contains(r#"reason="credential""#), "{parked}");
    let secs: f64 = parked.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((3599.0..=3600.0).contains(&secs), "{parked}");

    // 2. Streams: OpenAI SSE with a final usage chunk (5 + 2), Ollama NDJSON (3 + 2).
    before = after;
    let sse = proxy.post("/v1/chat/completions", r#"{"model":"m1","stream":true,"messages":[]}"#).send().await.unwrap();
    sse.text().await.unwrap();
    let nd = proxy.post("/api/chat", r#"{"model":"m1","messages":[]}"#).send().await.unwrap();
    nd.text().await.unwrap();
    let after =
        settled(&proxy, &before, r#"ollama_pool_tokens_total{client="app",kind="completion",model="m1"}"#, 4.0).await;
    assert_eq!(delta(&before, &after, r#"ollama_pool_tokens_total{client="app",kind="prompt",model="m1"}"#), 8.0);
    assert_eq!(delta(&before, &after, r#"ollama_pool_tokens_total{client="app",kind="completion",model="m1"}"#), 4.0);
    assert_eq!(delta(&before, &after, r#"ollama_pool_time_to_first_byte_seconds_count{family="ollama"}"#), 1.0);
    assert_eq!(value(&after, "ollama_pool_active_streams"), 0.0, "streams are over");

    // 3. A client without a valid token is counted, under client "-".
    before = after;
    let r = client().post(proxy.url("/api/chat")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let after =
        settled(&proxy, &before, r#"ollama_pool_requests_total{client="-",family="ollama",status_class="4xx"}"#, 1.0)
            .await;
    assert_eq!(
        delta(&before, &after, r#"ollama_pool_requests_total{client="-",family="ollama",status_class="4xx"}"#),
        1.0
    );

    // 4. A stream cut mid-way is an abort.
    before = after;
    mock.set(KEYS[1], Behavior::CutMidStream);
    let r = proxy.post("/v1/chat/completions", r#"{"model":"m1","stream":true}"#).send().await.unwrap();
    let _ = r.text().await;
    let after = settled(&proxy, &before, "ollama_pool_stream_aborts_total", 1.0).await;
    assert_eq!(delta(&before, &after, "ollama_pool_stream_aborts_total"), 1.0);

    // 5. A load balancer's /healthz and /readyz probes are not proxied requests; the 401 after
    //    them is, and once it is counted the probes' hooks (which ran first) have run too.
    before = after;
    for path in ["/healthz", "/readyz", "/healthz"] {
        assert!(client().get(proxy.url(path)).send().await.unwrap().status().is_success());
    }
    client().post(proxy.url("/api/chat")).body("{}").send().await.unwrap();
    let after =
        settled(&proxy, &before, r#"ollama_pool_requests_total{client="-",family="ollama",status_class="4xx"}"#, 1.0)
            .await;
    for family in ["openai", "ollama"] {
        let series = format!(r#"ollama_pool_request_duration_seconds_count{{family="{family}"}}"#);
        assert_eq!(delta(&before, &after, &series), if family == "ollama" { 1.0 } else { 0.0 }, "{series}");
    }
    assert_eq!(
        delta(&before, &after, r#"ollama_pool_requests_total{client="-",family="openai",status_class="2xx"}"#),
        0.0
    );

    // 6. The key gauges derive from time: a disable that has ended counts as active at once,
    //    with no request in between (k0's credential park from step 1 is over by then too).
    let disable = proxy
        .admin(reqwest::Method::POST, &format!("/admin/keys/{k1}/disable"))
        .json(&serde_json::json!({"for": "2h"}));
    assert_eq!(disable.send().await.unwrap().status(), 200);
    let parked = scrape(&proxy).await;
    assert_eq!(value(&parked, r#"ollama_pool_keys{provider="default",status="disabled"}"#), 1.0);
    assert!(parked.lines().any(|l| l.starts_with("ollama_pool_key_return_seconds{") && l.contains(&k1)));
    proxy.clock.advance(std::time::Duration::from_secs(2 * 3600 + 1));
    let later = scrape(&proxy).await;
    assert_eq!(value(&later, r#"ollama_pool_keys{provider="default",status="disabled"}"#), 0.0);
    assert_eq!(value(&later, r#"ollama_pool_keys{provider="default",status="invalid"}"#), 0.0);
    assert_eq!(value(&later, r#"ollama_pool_keys{provider="default",status="active"}"#), 2.0);
    assert_eq!(value(&later, r#"ollama_pool_keys_usable{provider="default"}"#), 2.0);
    assert!(!later.lines().any(|l| l.starts_with("ollama_pool_key_return_seconds{")), "{later}");

    for secret in KEYS.iter().chain([&TOKEN, &common::ADMIN_TOKEN]) {
        assert!(!after.contains(secret), "a secret in /metrics");
    }
}
