//! Failover (SPEC §3.2–3.3): every retryable failure moves the request to another key with a
//! byte-identical body, for small (200 B) and large (200 KB) bodies alike; caller faults pass
//! through after one attempt; parked keys stay out until their time is up.

mod common;

use common::{client, Behavior, Mock, Proxy, Setup, KEYS, TOKEN};
use ollama_pool::pool::{Reason, Status};
use std::time::Duration;

fn small_body() -> Vec<u8> {
    br#"{"model":"m1","messages":[{"role":"user","content":"hello there"}]}"#.to_vec()
}

/// 200 KB: well over pingora's 64 KiB replay buffer (the proxy once had a second path for these).
fn large_body() -> Vec<u8> {
    let filler: String = (0..200_000).map(|i| (b'a' + (i * 7 % 26) as u8) as char).collect();
    format!(r#"{{"model":"m1","messages":[{{"role":"user","content":"{filler}"}}]}}"#).into_bytes()
}

/// Two keys; the first one (picked first by a fresh pool) misbehaves as `b`.
async fn two_keys(b: Behavior) -> (Mock, Proxy) {
    let mock = Mock::start().await;
    mock.set(KEYS[0], b);
    let proxy = Proxy::start_with(&mock, Setup { keys: vec![KEYS[0], KEYS[1]], ..Default::default() }).await;
    (mock, proxy)
}

fn key_state(proxy: &Proxy, key: &str) -> ollama_pool::pool::KeyView {
    proxy.state.pool().get(&proxy.key_id(key)).unwrap().view_at(proxy.clock_now())
}

trait ClockNow {
    fn clock_now(&self) -> u64;
}
impl ClockNow for Proxy {
    fn clock_now(&self) -> u64 {
        ollama_pool::pool::Clock::now_ms(&self.clock)
    }
}

/// The request succeeds on the second key, and the upstream saw the identical body twice.
async fn assert_fails_over(b: Behavior, body: Vec<u8>) -> Proxy {
    let (mock, proxy) = two_keys(b).await;
    let resp = proxy.post("/v1/chat/completions", body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), common::mock::CHAT_JSON);
    let reqs = mock.requests();
    let keys: Vec<_> = reqs.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys, vec![KEYS[0].to_string(), KEYS[1].to_string()], "one attempt per key, in order");
    for r in &reqs {
        assert!(r.body == body, "upstream got a different body ({} vs {} bytes)", r.body.len(), body.len());
    }
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_failures_fail_over_and_park_the_key() {
    for body in [small_body(), large_body()] {
        for status in [401, 403] {
            let proxy = assert_fails_over(Behavior::status(status, r#"{"error":"unauthorized"}"#), body.clone()).await;
            let k = key_state(&proxy, KEYS[0]);
            assert_eq!((k.status, k.reason), (Status::Invalid, Reason::Credential), "{status}");
            assert_eq!(k.until_ms, Some(proxy.clock_now() + 3_600_000), "parked for pool.cooldown");
            assert_eq!(key_state(&proxy, KEYS[1]).status, Status::Active);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_fail_over_and_park_until_retry_after_or_backoff() {
    for body in [small_body(), large_body()] {
        let proxy = assert_fails_over(Behavior::status_with(429, &[("retry-after", "30")], "{}"), body.clone()).await;
        let k = key_state(&proxy, KEYS[0]);
        assert_eq!((k.status, k.reason), (Status::Cooling, Reason::RateLimited));
        assert_eq!(k.until_ms, Some(proxy.clock_now() + 30_000));

        let proxy = assert_fails_over(Behavior::status(429, "{}"), body.clone()).await;
        let k = key_state(&proxy, KEYS[0]);
        assert_eq!(k.until_ms, Some(proxy.clock_now() + 60_000), "first backoff step is 1 m");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_fail_over_and_count_toward_the_threshold() {
    for body in [small_body(), large_body()] {
        for b in [Behavior::status(503, "overloaded"), Behavior::status(500, "oops"), Behavior::Reset] {
            let proxy = assert_fails_over(b, body.clone()).await;
            let k = key_state(&proxy, KEYS[0]);
            assert_eq!((k.status, k.consecutive_failures), (Status::Active, 1));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_fails_over_to_another_attempt() {
    for body in [small_body(), large_body()] {
        let mock = Mock::start().await;
        let refused = format!("127.0.0.1:{}", common::free_port());
        let proxy =
            Proxy::start_with(&mock, Setup { addresses: vec![refused, mock.addr.to_string()], ..Default::default() })
                .await;
        for _ in 0..4 {
            let resp = proxy.post("/v1/chat/completions", body.clone()).send().await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        let reqs = mock.requests();
        assert_eq!(reqs.len(), 4, "every request reached the live address exactly once");
        assert!(reqs.iter().all(|r| r.body == body));
        let failures: u64 = proxy.state.pool().views().iter().map(|v| v.failures).sum();
        assert!(failures >= 1, "at least one attempt hit the refusing address and was retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_faults_pass_through_after_one_attempt_without_penalty() {
    for body in [small_body(), large_body()] {
        for status in [400, 404, 422] {
            let upstream_body = format!(r#"{{"error":"model 'x' not found ({status})"}}"#);
            let (mock, proxy) = two_keys(Behavior::status(status, &upstream_body)).await;
            let resp = proxy.post("/v1/chat/completions", body.clone()).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.text().await.unwrap(), upstream_body, "upstream body unchanged");
            assert_eq!(mock.requests().len(), 1, "exactly one attempt");
            let k = key_state(&proxy, KEYS[0]);
            assert_eq!((k.status, k.consecutive_failures, k.failures), (Status::Active, 0, 0));
        }
    }
}

/// SPEC §3.2: an answer's class never depends on the request's size. The same 403 that says
/// "weekly usage limit" parks the key as out of allowance (not as a bad credential) whether
/// the body was 200 B or 200 KB, and the request succeeds on the other key both times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_limit_403_is_classified_the_same_whatever_the_body_size() {
    let mut states = vec![];
    for body in [small_body(), large_body()] {
        let b = Behavior::status(403, r#"{"error":"you have reached your weekly usage limit"}"#);
        let proxy = assert_fails_over(b, body).await;
        let k = key_state(&proxy, KEYS[0]);
        // The window it names decides when the key returns: next Monday 00:00 UTC.
        assert_eq!(k.until_ms, Some(ollama_pool::pool::Window::Weekly.next_reset(proxy.clock_now())));
        states.push((k.status, k.reason, key_state(&proxy, KEYS[1]).status));
    }
    assert_eq!(states[0], (Status::Cooling, Reason::QuotaWeekly, Status::Active));
    assert_eq!(states[0], states[1], "200 B and 200 KB bodies leave the keys in the same state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_keys_get_no_traffic_until_their_time_then_return() {
    let (mock, proxy) = two_keys(Behavior::status_with(429, &[("retry-after", "30")], "{}")).await;
    assert_eq!(proxy.post("/v1/chat/completions", small_body()).send().await.unwrap().status(), 200);
    mock.set(KEYS[0], Behavior::Normal);
    mock.clear();
    for _ in 0..6 {
        assert_eq!(proxy.post("/v1/chat/completions", small_body()).send().await.unwrap().status(), 200);
    }
    assert!(mock.requests().iter().all(|r| r.key.as_deref() == Some(KEYS[1])), "parked key got traffic");
    proxy.clock.advance(Duration::from_secs(30));
    mock.clear();
    for _ in 0..6 {
        assert_eq!(proxy.post("/v1/chat/completions", small_body()).send().await.unwrap().status(), 200);
    }
    let used0 = mock.requests().iter().filter(|r| r.key.as_deref() == Some(KEYS[0])).count();
    assert_eq!(used0, 3, "returned key is back in the round-robin");
    assert_eq!(key_state(&proxy, KEYS[0]).status, Status::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_use_distinct_keys_and_deliver_the_last_upstream_answer() {
    let mock = Mock::start().await;
    for k in KEYS {
        mock.set(k, Behavior::status(502, r#"{"error":"bad gateway upstream"}"#));
    }
    let proxy = Proxy::start(&mock).await; // 4 keys, max_attempts 3
    let resp = proxy.post("/api/chat", small_body()).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.text().await.unwrap(), r#"{"error":"bad gateway upstream"}"#);
    let mut keys: Vec<_> = mock.requests().iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys.len(), 3, "pool.max_attempts");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "never the same key twice in one request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keys_parked_is_503_with_retry_after() {
    for body in [small_body(), large_body()] {
        let mock = Mock::start().await;
        mock.set(KEYS[0], Behavior::status(401, "{}"));
        mock.set(KEYS[1], Behavior::status_with(429, &[("retry-after", "120")], "{}"));
        let proxy = Proxy::start_with(&mock, Setup { keys: vec![KEYS[0], KEYS[1]], ..Default::default() }).await;
        // Both attempts fail; the last upstream answer (the 429) goes back as is.
        let resp = proxy.post("/v1/chat/completions", body.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 429);
        mock.clear();
        let resp = proxy.post("/v1/chat/completions", body.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "120", "seconds until the earliest key returns");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "no_usable_key");
        assert!(mock.requests().is_empty(), "no upstream request when nothing can serve");
        // Anthropic and Ollama clients get their own envelopes.
        let resp = client().post(proxy.url("/v1/messages")).header("x-api-key", TOKEN).body("{}").send().await.unwrap();
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_failing_to_connect_is_502_then_the_storm_guard_answers_503() {
    for body in [small_body(), large_body()] {
        let mock = Mock::start().await;
        let refused = format!("127.0.0.1:{}", common::free_port());
        let proxy = Proxy::start_with(&mock, Setup { addresses: vec![refused], ..Default::default() }).await;
        let resp = proxy.post("/v1/chat/completions", body.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 502);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "upstream_failed");
        // Three of four keys failed at once with nothing succeeding: an upstream condition.
        // The keys are not blamed, and clients are told to come back after the next probe.
        assert!(proxy.state.pool().storm_since().is_some());
        let resp = proxy.post("/v1/chat/completions", body).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "60", "health_check.interval");
        let parked = proxy.state.pool().views().iter().filter(|v| v.status != Status::Active).count();
        assert_eq!(parked, 0, "no key was parked for an upstream outage");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_transient_failures_auto_disable_a_key() {
    let (mock, proxy) = two_keys(Behavior::status(503, "down")).await;
    for _ in 0..6 {
        assert_eq!(proxy.post("/v1/chat/completions", small_body()).send().await.unwrap().status(), 200);
    }
    let k = key_state(&proxy, KEYS[0]);
    assert_eq!((k.status, k.reason), (Status::Cooling, Reason::AutoDisabled), "after pool.failure_threshold");
    let hits = mock.requests().iter().filter(|r| r.key.as_deref() == Some(KEYS[0])).count();
    assert_eq!(hits, 3, "no traffic once parked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_usage_limit_answer_parks_its_key_until_the_window_resets() {
    // The answer that is delivered (no other key to try) is peeked like any other: its
    // window decides the park time, and the client gets it untouched.
    let mock = Mock::start().await;
    let body = r#"{"error":"you've reached your session usage limit, please wait"}"#;
    mock.set(KEYS[0], Behavior::status(429, body));
    let proxy = Proxy::start_with(&mock, Setup { keys: vec![KEYS[0]], ..Default::default() }).await;
    let resp = proxy.post("/api/chat", small_body()).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.text().await.unwrap(), body, "passed through untouched");
    let k = key_state(&proxy, KEYS[0]);
    assert_eq!((k.status, k.reason), (Status::Cooling, Reason::QuotaSession));
    assert_eq!(k.until_ms, Some(ollama_pool::pool::Window::Session.next_reset(proxy.clock_now())));
}

/// `upstream.read_timeout` is the longest the proxy waits for an upstream's next bytes. A key
/// whose upstream never answers is a transient failure once it has passed, and the request
/// fails over to another key, on both body paths (before, the proxy waited as long as the
/// client did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_times_out_and_fails_over() {
    for body in [small_body(), large_body()] {
        let mock = Mock::start().await;
        mock.set(KEYS[0], Behavior::Hang);
        let setup =
            Setup { keys: vec![KEYS[0], KEYS[1]], upstream_extra: "read_timeout: 1s".into(), ..Default::default() };
        let proxy = Proxy::start_with(&mock, setup).await;
        let resp = proxy
            .post("/v1/chat/completions", body.clone())
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("the proxy answers before the client gives up");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), common::mock::CHAT_JSON);
        let keys: Vec<_> = mock.requests().iter().map(|r| r.key.clone().unwrap()).collect();
        assert_eq!(keys, vec![KEYS[0].to_string(), KEYS[1].to_string()], "the silent key first, then the next");
        let k = key_state(&proxy, KEYS[0]);
        assert_eq!((k.status, k.consecutive_failures), (Status::Active, 1), "a transient failure: {k:?}");
    }
}

/// A client that hangs up while the upstream is still working (a user closing a tab, a load
/// tester stopping) is nobody's failure: the key is not charged, the request is not tried on
/// another key, and a wave of such hang-ups is not an upstream storm. On both body paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_early_is_not_the_keys_fault() {
    for body in [small_body(), large_body()] {
        let mock = Mock::start().await;
        for k in KEYS {
            mock.set(k, Behavior::Delayed(Duration::from_millis(600)));
        }
        let proxy = Proxy::start(&mock).await;
        let mut clients = Vec::new();
        for _ in 0..12 {
            let req = proxy.post("/v1/chat/completions", body.clone()).timeout(Duration::from_millis(200));
            clients.push(tokio::spawn(req.send()));
        }
        for c in clients {
            assert!(c.await.unwrap().is_err(), "the client gave up first");
        }
        // Past the upstream's delay: whatever the proxy was going to do about it, it has done.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(mock.requests().len(), 12, "one upstream request per client, no failover");
        for k in KEYS {
            let v = key_state(&proxy, k);
            assert_eq!((v.status, v.failures, v.consecutive_failures), (Status::Active, 0, 0), "{k}: {v:?}");
        }
        assert!(proxy.state.pool().storm_since().is_none(), "hang-ups are not a storm");
        assert_eq!(proxy.post("/v1/chat/completions", small_body()).send().await.unwrap().status(), 200);
    }
}

/// SPEC §3.2 "model unavailable": Ollama Cloud keys on different plans serve different models.
/// A key that answers 403 "requires a subscription" (or 402 "extra usage only") for one model
/// is parked for that model only: the request fails over, later requests for that model skip
/// the key, and every other model still uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_models_plan_is_parked_for_that_model_only() {
    let answers = [
        (403, r#"{"error":"this model requires a subscription, upgrade for access: https://ollama.com/upgrade"}"#),
        (402, r#"{"error":"this model is available with extra usage only"}"#),
    ];
    for (status, answer) in answers {
        let mock = Mock::start().await;
        mock.set_for_key_body(KEYS[0], r#""model":"big""#, Behavior::status(status, answer));
        let proxy =
            Proxy::start_with(&mock, Setup { keys: vec![KEYS[0], KEYS[1]], admin: true, ..Default::default() }).await;
        let big = br#"{"model":"big","messages":[]}"#.to_vec();
        let r = proxy.post("/v1/chat/completions", big.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "failed over to the other key");
        let k = key_state(&proxy, KEYS[0]);
        assert_eq!(k.status, Status::Active, "{status}: the key itself stays in rotation");
        assert_eq!(k.model_parks.len(), 1);
        assert_eq!(k.model_parks[0].model, "big");
        mock.clear();
        for _ in 0..4 {
            assert_eq!(proxy.post("/v1/chat/completions", big.clone()).send().await.unwrap().status(), 200);
            assert_eq!(proxy.post("/api/chat", small_body()).send().await.unwrap().status(), 200);
        }
        let reqs = mock.requests();
        let used = |key: &str, needle: &str| {
            reqs.iter()
                .filter(|r| r.key.as_deref() == Some(key) && String::from_utf8_lossy(&r.body).contains(needle))
                .count()
        };
        assert_eq!(used(KEYS[0], "\"big\""), 0, "{status}: the parked model skips the key");
        assert_eq!(used(KEYS[1], "\"big\""), 4);
        assert!(used(KEYS[0], "\"m1\"") >= 1, "{status}: other models still use it");
        // Visible to operators.
        let keys: serde_json::Value =
            proxy.admin(reqwest::Method::GET, "/admin/keys").send().await.unwrap().json().await.unwrap();
        let parked = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["parked_models"].as_array().is_some_and(|a| !a.is_empty()));
        assert_eq!(parked.unwrap()["parked_models"][0]["model"], "big");
        let metrics = client().get(proxy.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains(r#"outcome="model_unavailable""#), "counted as its own outcome");
    }
}

/// The only key that could serve a model is parked for it: 503 in the route's envelope, naming
/// the model, with Retry-After until the park ends; other models are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_for_a_model_is_a_503_naming_it() {
    let mock = Mock::start().await;
    mock.set_for_key_body(
        KEYS[0],
        r#""model":"big""#,
        Behavior::status(403, r#"{"error":"this model requires a subscription"}"#),
    );
    let proxy = Proxy::start_with(&mock, Setup { keys: vec![KEYS[0]], ..Default::default() }).await;
    let big = br#"{"model":"big","messages":[]}"#.to_vec();
    assert_eq!(
        proxy.post("/api/chat", big.clone()).send().await.unwrap().status(),
        403,
        "the one answer, passed through"
    );
    let r = proxy.post("/api/chat", big).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("\"big\""), "names the model: {body}");
    assert_eq!(proxy.post("/api/chat", small_body()).send().await.unwrap().status(), 200);
}

/// An idle pooled connection the upstream closed just as the proxy reused it is not the
/// key's failure: the request goes out again on another connection, with the same key, and
/// nothing is counted against the key (pingora's own proxy path did the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_not_a_failure() {
    let mock = Mock::start().await;
    mock.set_default(Some(Behavior::CloseOnReuse));
    let proxy = Proxy::start_with(&mock, Setup { keys: vec![KEYS[0]], ..Default::default() }).await;
    for body in [small_body(), large_body()] {
        for _ in 0..5 {
            let r = proxy.post("/v1/chat/completions", body.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let k = key_state(&proxy, KEYS[0]);
    assert_eq!((k.status, k.failures, k.requests), (Status::Active, 0, 10), "one attempt each, none failed");
    assert!(mock.requests().len() > 10, "the reused connections were closed, and the requests sent again");
}
