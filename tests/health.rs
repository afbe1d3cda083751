//! Health checks (SPEC §3.5, §3.2): probes bring fixed keys back and keep revoked ones out
//! without flapping, usage windows park exhausted keys until their reset, an upstream-wide
//! storm parks nobody and heals itself, manual disables are left alone, and shutdown is prompt.
//! Time is the test's clock; probe rounds are run by hand (`tick`) unless said otherwise.

mod common;

use common::{Behavior, Mock, Proxy, Setup, KEYS};
use ollama_pool::pool::{Reason, Status, Window};
use std::time::Duration;

const CHAT: &str = r#"{"model":"m1","messages":[]}"#;
const HEALTH: &str = "health_check: {interval: 60s, jitter: 0s, max_backoff: 1h}\n";

async fn setup(keys: &[&'static str], extra: &str) -> (Mock, Proxy) {
    let mock = Mock::start().await;
    let proxy =
        Proxy::start_with(&mock, Setup { keys: keys.to_vec(), extra: extra.into(), ..Default::default() }).await;
    (mock, proxy)
}

/// Probes (they carry our health User-Agent) only ever ask the token-free paths.
fn assert_probes_cost_no_tokens(mock: &Mock) {
    let probes: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.header("user-agent").is_some_and(|u| u.starts_with("ollama-pool-health/")))
        .collect();
    assert!(!probes.is_empty(), "expected some probes");
    for p in probes {
        let free = ["/api/me", "/api/usage", "/api/balance"];
        assert!(free.contains(&p.target.as_str()), "probe asked {} {}", p.method, p.target);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_key_returns_at_the_next_probe() {
    let (mock, proxy) = setup(&[KEYS[0], KEYS[1]], HEALTH).await;
    mock.set(KEYS[0], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    assert_eq!(proxy.key(KEYS[0]).status, Status::Invalid);

    let reports = proxy.health.tick(false).await;
    assert_eq!(reports.len(), 1, "only the parked key is probed");
    assert_eq!((reports[0].result, reports[0].action), ("credential", "kept-parked"));

    mock.set(KEYS[0], Behavior::Normal); // the operator renewed the key upstream
    proxy.clock.advance(Duration::from_secs(60));
    let reports = proxy.health.tick(false).await;
    assert_eq!((reports[0].result, reports[0].action), ("success", "returned"));
    let k = proxy.key(KEYS[0]);
    assert_eq!((k.status, k.reason), (Status::Active, Reason::Probe), "back long before its 1 h cooldown");
    let probe = mock.requests_to("/api/me").pop().unwrap();
    assert_eq!((probe.method.as_str(), probe.key.as_deref()), ("POST", Some(KEYS[0])));
    assert_probes_cost_no_tokens(&mock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stays_out_and_is_probed_on_a_backoff() {
    let (mock, proxy) = setup(&[KEYS[0], KEYS[1]], HEALTH).await;
    mock.set(KEYS[0], Behavior::status(401, "{}"));
    assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    let key = proxy.state.pool().get(&proxy.key_id(KEYS[0])).unwrap();
    // Three hours of one-minute ticks: well past the 1 h cooldown the 401 gave it.
    for minute in 0..180 {
        proxy.health.tick(false).await;
        assert!(!key.usable_at(proxy.now()), "the revoked key flapped back into traffic at minute {minute}");
        proxy.clock.advance(Duration::from_secs(60));
    }
    let probes = mock.requests_to("/api/me").len();
    assert!((4..=12).contains(&probes), "probes should back off (1, 2, 4 … 60 min): got {probes} in 180 ticks");
    mock.clear();
    for _ in 0..4 {
        assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    }
    assert!(mock.requests().iter().all(|r| r.key.as_deref() == Some(KEYS[1])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_usage_window_parks_the_key_until_it_resets() {
    let extra = "health_check: {interval: 60s, jitter: 0s, usage_probe: true, park_at_usage: 0.98}\n";
    let (mock, proxy) = setup(&[KEYS[0], KEYS[1]], extra).await;
    let usage = |s: &str| Behavior::status(200, s);
    mock.set_path(
        KEYS[0],
        "/api/usage",
        usage(r#"{"limits":{"session":{"usage":0.2},"weekly":{"usage":1.0},"monthly":null}}"#),
    );
    mock.set_path(KEYS[1], "/api/usage", usage(r#"{"limits":{"session":{"usage":0.5}}}"#));
    // An upstream without the documented /api/balance: the older shape is read instead.
    for k in [KEYS[0], KEYS[1]] {
        mock.set_path(k, "/api/balance", Behavior::status(404, r#"{"error":"not found"}"#));
    }

    let reports = proxy.health.tick(true).await; // a sweep probes every key
    assert_eq!(reports.len(), 2);
    let now = proxy.now();
    let k0 = proxy.key(KEYS[0]);
    assert_eq!((k0.status, k0.reason), (Status::Cooling, Reason::QuotaWeekly));
    assert_eq!(k0.until_ms, Some(Window::Weekly.next_reset(now)), "back at Monday 00:00 UTC");
    assert_eq!(proxy.key(KEYS[1]).status, Status::Active);

    let gauge = prometheus::gather()
        .into_iter()
        .find(|f| f.name() == "ollama_pool_key_usage_ratio")
        .expect("usage gauge exported");
    let k0_id = proxy.key_id(KEYS[0]);
    let weekly = gauge.get_metric().iter().find(|m| {
        let labels: Vec<(&str, &str)> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
        labels.contains(&("key_id", k0_id.as_str())) && labels.contains(&("window", "weekly"))
    });
    assert_eq!(weekly.map(|m| m.get_gauge().value()), Some(1.0));
    assert_probes_cost_no_tokens(&mock);

    // Until the reset it gets no traffic; after it, it is back without any probe.
    mock.clear();
    for _ in 0..4 {
        assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    }
    assert!(mock.requests().iter().all(|r| r.key.as_deref() == Some(KEYS[1])));
    proxy.clock.advance(Duration::from_millis(Window::Weekly.next_reset(now) - now));
    assert!(proxy.state.pool().get(&k0_id).unwrap().usable_at(proxy.now()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_parks_nobody_for_long_and_heals_within_one_probe() {
    let (mock, proxy) = setup(&KEYS, HEALTH).await;
    mock.set_default(Some(Behavior::status(429, r#"{"error":"too many requests"}"#)));
    let first = proxy.post("/v1/chat/completions", CHAT).send().await.unwrap();
    assert_eq!(first.status(), 429, "the last upstream answer of the first request");
    assert!(proxy.state.pool().storm_since().is_some(), "three of four keys throttled at once is a storm");

    mock.clear();
    for _ in 0..5 {
        let r = proxy.post("/v1/chat/completions", CHAT).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "60");
    }
    assert!(mock.requests().is_empty(), "no traffic is thrown at a throttled upstream");
    let ready = common::client().get(proxy.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the upstream throttles us");
    let parked = proxy.state.pool().views().iter().filter(|v| v.status != Status::Active).count();
    assert!(parked <= 2, "only keys that failed before the storm was recognised are parked ({parked})");

    // Still throttled: a probe round keeps the storm on and parks nobody else.
    proxy.health.tick(false).await;
    assert!(proxy.state.pool().storm_since().is_some());

    mock.set_default(None); // the upstream lets us through again
    proxy.clock.advance(Duration::from_secs(60));
    proxy.health.tick(false).await;
    assert!(proxy.state.pool().storm_since().is_none());
    assert_eq!(proxy.state.pool().usable_count(), 4, "the whole pool is back after one probe round");
    assert_eq!(proxy.post("/v1/chat/completions", CHAT).send().await.unwrap().status(), 200);
    assert_probes_cost_no_tokens(&mock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_refused_connections_heals_within_one_probe() {
    let (mock, proxy) = setup(&KEYS, HEALTH).await;
    mock.pause();
    assert_eq!(proxy.post("/api/chat", CHAT).send().await.unwrap().status(), 502);
    assert_eq!(proxy.post("/api/chat", CHAT).send().await.unwrap().status(), 503);
    proxy.health.tick(false).await;
    assert!(proxy.state.pool().storm_since().is_some(), "probes cannot connect either: still out");

    mock.resume().await;
    proxy.clock.advance(Duration::from_secs(60));
    proxy.health.tick(false).await;
    assert!(proxy.state.pool().storm_since().is_none());
    assert_eq!(proxy.state.pool().usable_count(), 4);
    assert_eq!(proxy.post("/api/chat", CHAT).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_disables_survive_probes() {
    let (mock, proxy) = setup(&[KEYS[0], KEYS[1]], HEALTH).await;
    let id = proxy.key_id(KEYS[0]);
    assert!(proxy.state.pool().disable(&id, None));
    proxy.health.tick(true).await;
    let reports = proxy.health.check_now(None).await;
    let r0 = reports.iter().find(|r| r.id == id).unwrap();
    assert_eq!((r0.result, r0.action), ("skipped", "skipped"));
    let k = proxy.key(KEYS[0]);
    assert_eq!((k.status, k.reason), (Status::Disabled, Reason::Manual));
    assert!(mock.requests().iter().all(|r| r.key.as_deref() != Some(KEYS[0])), "a disabled key is not even probed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_service_probes_and_stops_promptly_mid_sweep() {
    use pingora::services::background::BackgroundService;
    let extra = "health_check: {interval: 100ms, sweep_interval: 100ms, concurrency: 2, jitter: 0s, \
                 timeout: 60s, max_backoff: 1s}\n";
    let mock = Mock::start().await;
    for k in KEYS {
        mock.set_path(k, "/api/me", Behavior::Hang); // every probe of the sweep hangs
    }
    let proxy = Proxy::start_with(&mock, Setup { extra: extra.into(), ..Default::default() }).await;
    let mut waited = 0;
    while mock.requests_to("/api/me").is_empty() {
        assert!(waited < 100, "the server's health service never probed on its own");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    // Drive the service loop directly so its own shutdown handling is what is tested (the
    // server would also drop the task when its runtime stops).
    let (stop, watch) = tokio::sync::watch::channel(false);
    let health = proxy.health.clone();
    let run = tokio::spawn(async move { health.start(watch).await });
    tokio::time::sleep(Duration::from_millis(500)).await; // now inside a sweep of hanging probes
    assert!(!run.is_finished());
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the health service must stop without waiting for its 60 s probe timeout")
        .unwrap();
}

/// Ollama Cloud's documented `GET /api/balance` parks a key whose window is used up until the
/// `resets_at` it names, and is asked at most `balance_per_minute` times a minute across the
/// provider's keys (the mock answers 429 past 10 a minute, as the real API does per account);
/// probes past that read the older `/api/usage` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_probe_parks_until_its_reset_and_is_spaced() {
    let extra = "health_check: {interval: 60s, jitter: 0s, usage_probe: true, balance_per_minute: 10}\n";
    let (mock, proxy) = setup(&KEYS, extra).await;
    let resets = "2099-03-02T10:00:00Z";
    let spent = format!(
        r#"{{"session":{{"remaining_percent":80,"resets_at":"2099-03-01T05:00:00Z"}},"weekly":{{"remaining_percent":0,"resets_at":"{resets}"}}}}"#
    );
    for k in KEYS {
        mock.set_path(k, "/api/balance", Behavior::status(200, &spent));
    }
    let reports = proxy.health.tick(true).await;
    assert_eq!(reports.len(), KEYS.len());
    assert_eq!(mock.requests_to("/api/balance").len(), 1, "one ask per 6 s of the pool's clock");
    assert_eq!(mock.requests_to("/api/usage").len(), KEYS.len() - 1, "the others read the older shape");
    let parked: Vec<_> = KEYS.iter().map(|k| proxy.key(k)).filter(|k| k.status == Status::Cooling).collect();
    assert_eq!(parked.len(), 1);
    let until =
        humantime::parse_rfc3339(resets).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!((parked[0].reason, parked[0].until_ms), (Reason::QuotaWeekly, Some(until)), "until the reset it named");
    // Six seconds later the next key may ask.
    proxy.clock.advance(std::time::Duration::from_secs(6));
    proxy.health.tick(true).await;
    assert_eq!(mock.requests_to("/api/balance").len(), 2);
    assert_probes_cost_no_tokens(&mock);
}
