//! Chaos under concurrency: a mix of bad keys (a 401 wave, 429 with Retry-After, 503s,
//! connection resets, slow answers) behind concurrent clients; then the same load once the pool
//! has learnt; then an outage that begins in the middle of traffic and heals. Asserts client
//! success rates, attempts per bad key, and recovery within one probe interval.

mod common;

use common::{Behavior, Mock, Proxy, Setup};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const CHAT: &str = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;
const CLIENTS: usize = 8;

fn key(name: &str) -> &'static str {
    Box::leak(format!("chaos-key-{name}-0123456789").into_boxed_str())
}

/// `CLIENTS` concurrent clients send `each` chats; returns the statuses (0 = no answer).
async fn burst(proxy: &Arc<Proxy>, each: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..each {
                    let status = match proxy.post("/v1/chat/completions", CHAT).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            // A 200 must carry a whole answer.
                            match r.text().await {
                                Ok(t) if s != 200 || t.contains("chatcmpl") => s,
                                _ => 0,
                            }
                        }
                        Err(_) => 0,
                    };
                    out.push(status);
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn attempts_by_key(mock: &Mock) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for r in mock.requests_to("/v1/chat/completions") {
        *by.entry(r.key.unwrap_or_default()).or_insert(0) += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_mix_then_an_outage_during_traffic() {
    let good: Vec<&'static str> = (0..4).map(|i| key(&format!("good{i}"))).collect();
    let (revoked, limited, failing, resetting, slow) =
        (key("revoked"), key("limited"), key("failing"), key("resetting"), key("slow"));
    let mock = Mock::start().await;
    mock.set(revoked, Behavior::status(401, r#"{"error":"unauthorized"}"#));
    mock.set(limited, Behavior::status_with(429, &[("retry-after", "120")], r#"{"error":"rate limit"}"#));
    mock.set(failing, Behavior::status(503, r#"{"error":"overloaded"}"#));
    mock.set(resetting, Behavior::Reset);
    mock.set(slow, Behavior::Delayed(Duration::from_millis(150)));
    // Bad keys between good ones, as a real key file would mix them.
    let keys = vec![good[0], revoked, good[1], limited, good[2], failing, slow, resetting, good[3]];
    let proxy = Arc::new(
        Proxy::start_with(
            &mock,
            Setup { keys, extra: "health_check: {interval: 60s, jitter: 0s}\n".into(), ..Default::default() },
        )
        .await,
    );

    // 1. The fault mix: the pool learns which keys are bad while serving.
    let first = burst(&proxy, 25).await;
    let ok = first.iter().filter(|&&s| s == 200).count();
    assert!(ok * 100 >= first.len() * 90, "{ok} of {} chats succeeded while the pool learnt: {first:?}", first.len());
    assert!(
        first.iter().all(|&s| [200, 401, 429, 502, 503].contains(&s)),
        "only upstream answers or 502/503: {first:?}"
    );
    let attempts = attempts_by_key(&mock);
    let tried = |k: &str| attempts.get(k).copied().unwrap_or(0);
    // A key that answers 401 or 429 is parked at once; a failing one after failure_threshold (3)
    // in a row. Concurrent clients may each have picked it before the park took effect.
    assert!(tried(revoked) <= CLIENTS, "revoked key tried {} times", tried(revoked));
    assert!(tried(limited) <= CLIENTS, "rate-limited key tried {} times", tried(limited));
    assert!(tried(failing) <= 3 + CLIENTS, "503 key tried {} times", tried(failing));
    assert!(tried(resetting) <= 3 + CLIENTS, "resetting key tried {} times", tried(resetting));
    assert!(tried(slow) > 0, "a slow key is not a bad key");
    for k in [revoked, limited, failing, resetting] {
        let v = proxy.key(k);
        assert_ne!(v.status, ollama_pool::pool::Status::Active, "{k:.16}: {v:?}");
    }

    // 2. The same load once the pool has learnt: every chat succeeds, no bad key is asked.
    mock.clear();
    let second = burst(&proxy, 25).await;
    assert!(second.iter().all(|&s| s == 200), "{second:?}");
    let attempts = attempts_by_key(&mock);
    for k in [revoked, limited, failing, resetting] {
        assert!(!attempts.contains_key(k), "{k:.16} got traffic while parked");
    }
    let served: Vec<usize> = good.iter().chain([&slow]).map(|k| attempts.get(*k).copied().unwrap_or(0)).collect();
    let (most, least) = (*served.iter().max().unwrap(), *served.iter().min().unwrap());
    assert!(most as f64 <= least as f64 * 1.5 + 2.0, "fair shares among usable keys: {served:?}");

    // 3. An outage begins during traffic: it is recognised as one, keys stop being blamed one by
    //    one, and clients are told to come back at the next probe.
    // It begins later than step 1, as it would in real time: on the test's stopped clock the
    // outage's run of failures started in the very millisecond the bad keys were parked, so its
    // end returned them as parked by it too, and a chat that then met three of them in a row
    // got 503 (1 run in ~15).
    proxy.clock.advance(Duration::from_secs(1));
    let load = {
        let proxy = proxy.clone();
        tokio::spawn(async move { burst(&proxy, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Upstream-wide: every key, on every connection (probes included), gets 503.
    let down = Behavior::status(503, r#"{"error":"upstream unavailable"}"#);
    mock.set_default(Some(down.clone()));
    mock.set(slow, down);
    let during = load.await.unwrap();
    assert!(during.contains(&503), "clients got 503 during the outage: {during:?}");
    let pool = proxy.state.pool();
    assert!(pool.storm_since().is_some(), "the outage is treated as one");
    let parked_good = good.iter().filter(|k| proxy.key(k).status != ollama_pool::pool::Status::Active).count();
    assert!(parked_good < good.len(), "not every good key was blamed for it one by one");
    let r = proxy.post("/v1/chat/completions", CHAT).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("60"), "the probe interval");

    // The upstream heals: within one probe interval the pool is whole again.
    mock.set_default(None);
    mock.set(slow, Behavior::Delayed(Duration::from_millis(150)));
    proxy.clock.advance(Duration::from_secs(60));
    proxy.health.tick(false).await;
    assert!(pool.storm_since().is_none(), "the first good probe ends the outage");
    for k in good.iter().chain([&slow]) {
        assert_eq!(proxy.key(k).status, ollama_pool::pool::Status::Active, "{k:.16} is back");
    }
    let after = burst(&proxy, 10).await;
    assert!(after.iter().all(|&s| s == 200), "{after:?}");
}
