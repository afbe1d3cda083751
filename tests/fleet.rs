//! Fleet mode (SPEC §3.9, issue #11) with real processes on one real Redis: client limits hold
//! across instances, a starting instance takes the fleet's state over, changes made while Redis
//! was away reach every instance once it is back, and a webhook hears each change once.

mod common;

use common::process::{chat_status, start, write_config, Server};
use common::redis::Redis;
use common::{client, free_port, Behavior, Mock, KEYS};
use ollama_pool::secret::Secret;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One instance of a fleet on `redis` (prefix `shared`), in a folder of its own.
struct Instance {
    server: Server,
    cfg: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Instance {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

async fn instance(redis: &Redis, mock: &Mock, name: &str, extra: &str) -> Instance {
    instance_with(redis, mock, &format!("instance: {name}"), extra, &[]).await
}

/// `instance` with `fleet` as the fields of its `fleet:` section (`instance: b, heartbeat:
/// 200ms`), and files written beside its config first (key files).
async fn instance_with(redis: &Redis, mock: &Mock, fleet: &str, extra: &str, files: &[(&str, String)]) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in files {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let (port, admin) = (free_port(), free_port());
    let store = format!("{{kind: redis, url: \"{}\", prefix: shared, flush_interval: 1h}}", redis.url());
    let cfg = write_config(dir.path(), &mock.url(), port, admin, &store);
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str(&format!("fleet: {{{fleet}}}\n{extra}"));
    std::fs::write(&cfg, yaml).unwrap();
    Instance { server: start(&cfg, port, admin, 1).await, cfg, _dir: dir }
}

/// A key's status as an instance's admin API lists it.
async fn status_on(s: &Server, key: &str) -> String {
    let id = Secret::new(key).id();
    let v = s.ok(Method::GET, &format!("/admin/keys?search={id}"), Value::Null).await;
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .map(|k| k["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "absent".into())
}

async fn eventually_status(s: &Server, key: &str, want: &str, within: Duration, what: &str) {
    let t = Instant::now();
    loop {
        let got = status_on(s, key).await;
        if got == want {
            return;
        }
        assert!(t.elapsed() < within, "{what}: still {got} after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sleeps into the next minute when this one ends within `need`: an rpm window must not turn
/// over during a count.
async fn not_near_a_minute_end(need: Duration) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let into = Duration::from_millis((now.as_millis() % 60_000) as u64);
    if into + need > Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(60) - into + Duration::from_millis(100)).await;
    }
}

async fn make_token(s: &Server, body: Value) -> String {
    let r = s.admin(Method::POST, "/admin/tokens").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_and_budgets_hold_across_three_instances() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let a = instance(&redis, &mock, "a", "").await;
    let b = instance(&redis, &mock, "b", "").await;
    let c = instance(&redis, &mock, "c", "").await;
    a.ok(Method::POST, "/admin/keys", json!({"key": KEYS[0]})).await;
    let ports = [a.port, b.port, c.port];

    // rpm 60 across three instances: 120 fast requests, round robin, admit 54-66.
    not_near_a_minute_end(Duration::from_secs(20)).await;
    let token = make_token(&a, json!({"name": "limited", "rpm": 60})).await;
    let (mut admitted, mut attempts, mut refused_on) = (0, 0, [0; 3]);
    let t = Instant::now();
    for (i, port) in ports.iter().enumerate() {
        // B and C learn of the token from A; a 401 before that is not an attempt.
        loop {
            match chat_status(*port, &token).await {
                401 => assert!(t.elapsed() < Duration::from_secs(2), "instance {i} never learnt the token"),
                200 => break,
                s => panic!("instance {i}: {s}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        admitted += 1;
        attempts += 1;
    }
    while attempts < 120 {
        let i = attempts % 3;
        match chat_status(ports[i], &token).await {
            200 => admitted += 1,
            429 => refused_on[i] += 1,
            s => panic!("instance {i}: {s}"),
        }
        attempts += 1;
    }
    eprintln!("rpm 60 over three instances: {admitted} of 120 admitted, refused per instance {refused_on:?}");
    assert!((54..=66).contains(&admitted), "rpm 60 over three instances admitted {admitted} of 120");
    assert!(refused_on.iter().all(|&n| n > 0), "every instance refuses once the fleet is at the limit: {refused_on:?}");

    // daily_tokens 40 (each chat reports 4 tokens) across A and C: about ten chats in all, then
    // every instance refuses, and a restart does not forget it.
    let budgeted = make_token(&b, json!({"name": "budgeted", "daily_tokens": 40})).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // A and C learn of it
    let mut admitted = 0;
    for i in 0..20 {
        let port = if i % 2 == 0 { a.port } else { c.port };
        match chat_status(port, &budgeted).await {
            200 => admitted += 1,
            429 => {}
            s => panic!("{s}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((10..=11).contains(&admitted), "daily_tokens 40 at 4 a chat admitted {admitted}");
    // B never served the token: it learns of the fleet's use within a second (its full sync).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for s in [&a, &b, &c] {
        let r = client()
            .post(format!("http://127.0.0.1:{}/v1/chat/completions", s.port))
            .bearer_auth(&budgeted)
            .body(r#"{"model":"m1"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "B too, which served none of them");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "budget_exceeded");
    }
    let listed = b.ok(Method::GET, "/admin/tokens", Value::Null).await;
    let entry = listed["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "budgeted").unwrap().clone();
    let daily = entry["budgets"]["daily_tokens"].clone();
    assert!(daily["used"].as_u64().unwrap() >= 40, "B shows the fleet's use: {daily}");

    // A new token for the same client name starts from what the name used today, as on one
    // instance: the usage rows (saved by the report call) seed its counter.
    for s in [&a, &c] {
        s.ok(Method::GET, "/admin/usage", Value::Null).await;
    }
    let again = make_token(&a, json!({"name": "budgeted", "daily_tokens": 40})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // every instance's next full sync
    for s in [&a, &b, &c] {
        assert_eq!(chat_status(s.port, &again).await, 429, "a new token of a name that used its day");
    }

    let cfg = c.cfg.clone();
    let (port, admin) = (c.port, c.admin);
    let Instance { server, _dir, .. } = c;
    server.terminate();
    let c = start(&cfg, port, admin, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // its first sync
    assert_eq!(chat_status(c.port, &budgeted).await, 429, "a restarted instance still sees the day's use");
    drop(_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_takes_the_fleet_state_and_an_outage_is_reconciled() {
    let mut redis = Redis::start();
    let mock = Mock::start().await;
    let a = instance(&redis, &mock, "a", "").await;
    let b = instance(&redis, &mock, "b", "").await;
    for k in KEYS {
        a.ok(Method::POST, "/admin/keys", json!({"key": k})).await;
    }
    let second = Duration::from_secs(1);
    // A finds key 1 revoked; B disables key 2. Neither is in the store's records (counters are
    // flushed hourly here): only the live state has them.
    mock.set(KEYS[1], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    for _ in 0..8 {
        assert_eq!(chat_status(a.port, common::TOKEN).await, 200);
    }
    assert_eq!(status_on(&a, KEYS[1]).await, "invalid");
    eventually_status(&b, KEYS[1], "invalid", second, "B hears of it").await;
    let id2 = Secret::new(KEYS[2]).id();
    b.ok(Method::POST, &format!("/admin/keys/{id2}/disable"), json!({})).await;
    eventually_status(&a, KEYS[2], "disabled", second, "A hears of it").await;

    // C starts afterwards: it takes all of that over before serving.
    let c = instance(&redis, &mock, "c", "").await;
    eventually_status(&c, KEYS[1], "invalid", second, "C knows key 1 was revoked").await;
    eventually_status(&c, KEYS[2], "disabled", second, "C knows key 2 is disabled").await;
    mock.clear();
    for _ in 0..8 {
        assert_eq!(chat_status(c.port, common::TOKEN).await, 200);
    }
    let used: Vec<String> = mock.requests().iter().filter_map(|r| r.key.clone()).collect();
    assert!(used.iter().all(|k| k != KEYS[1] && k != KEYS[2]), "C uses neither: {used:?}");

    // Redis goes away. Every instance serves on; admin writes answer 503.
    redis.stop();
    for s in [&a, &b, &c] {
        for _ in 0..4 {
            assert_eq!(chat_status(s.port, common::TOKEN).await, 200, "serving goes on without Redis");
        }
    }
    let r = b.admin(Method::POST, "/admin/tokens").json(&json!({"name": "during"})).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // Meanwhile A finds key 0 revoked: only A knows.
    mock.set(KEYS[0], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    for _ in 0..6 {
        assert_eq!(chat_status(a.port, common::TOKEN).await, 200);
    }
    assert_eq!(status_on(&a, KEYS[0]).await, "invalid");
    assert_eq!(status_on(&b, KEYS[0]).await, "active", "B cannot know while Redis is away");

    // Redis is back: A's change reaches B and C, and writes work everywhere again.
    redis.restart();
    let back = Duration::from_secs(20);
    eventually_status(&b, KEYS[0], "invalid", back, "B gets the change A made during the outage").await;
    eventually_status(&c, KEYS[0], "invalid", back, "C too").await;
    let t = Instant::now();
    let token = loop {
        let r = c.admin(Method::POST, "/admin/tokens").json(&json!({"name": "after"})).send().await.unwrap();
        if r.status() == 201 {
            break r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
        }
        assert_eq!(r.status(), 503);
        assert!(t.elapsed() < back, "admin writes work again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t = Instant::now();
    while chat_status(a.port, &token).await != 200 {
        assert!(t.elapsed() < Duration::from_secs(2), "a token made after the outage works on A");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = ollama_pool::store::RedisStore::open(&redis.url(), "shared", None).unwrap();
    use ollama_pool::store::Store;
    let names: Vec<String> = stored.tokens().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["after"], "the refused write left nothing");
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(log.contains("key events are shared again"), "the return is logged");
    let m = b.admin(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(
        m.contains("ollama_pool_fleet_events_total{direction=\"in\",type=\"reconcile\"} 2"),
        "B reconciled at start and once Redis was back"
    );
    let lost = log.lines().filter(|l| l.contains("lost the event subscription")).count();
    assert_eq!(lost, 1, "one line when Redis went away, not one per retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_hears_a_fleet_change_once_from_the_instance_that_made_it() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let (url, got) = common::receiver::receiver(false).await;
    let hooks = format!(
        "notifications:\n  batch_window: 50ms\n  webhooks:\n    - url: \"{url}\"\n      events: [key.invalid]\n"
    );
    let a = instance(&redis, &mock, "a", &hooks).await;
    let b = instance(&redis, &mock, "b", &hooks).await;
    let c = instance(&redis, &mock, "c", &hooks).await;
    a.ok(Method::POST, "/admin/keys", json!({"key": KEYS[0]})).await;
    a.ok(Method::POST, "/admin/keys", json!({"key": KEYS[1]})).await;
    eventually_status(&b, KEYS[1], "active", Duration::from_secs(1), "B has the keys A added").await;
    mock.set(KEYS[1], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    for _ in 0..4 {
        assert_eq!(chat_status(b.port, common::TOKEN).await, 200);
    }
    let id = Secret::new(KEYS[1]).id();
    got.wait_for("key.invalid", &id).await;
    for s in [&a, &c] {
        eventually_status(s, KEYS[1], "invalid", Duration::from_secs(1), "the others apply it").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // their webhooks would be out by now
    let deliveries = got.0.lock().unwrap().clone();
    let bodies: Vec<Value> = deliveries.iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect();
    let invalid: Vec<&Value> =
        bodies.iter().filter(|v| v["events"].as_array().unwrap().iter().any(|e| e["key_id"] == id.as_str())).collect();
    assert_eq!(invalid.len(), 1, "one delivery, not one per instance: {bodies:?}");
    assert_eq!(invalid[0]["instance"], "b", "from the instance that found it");
}

/// nginx, one process: stopped with SIGTERM and waited for.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        common::signal(&self.0, libc::SIGTERM);
        let _ = self.0.wait();
    }
}

/// The sum of a counter's samples in a Prometheus text page.
fn counter_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_example_runs_three_instances_behind_nginx() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let dir = tempfile::tempdir().unwrap();
    let app_token = "fleet-app-token-0123456789abcdef";
    let mut fleet = Vec::new();
    for i in 1..=3 {
        let (port, admin) = (free_port(), free_port());
        let own = dir.path().join(format!("pool-{i}"));
        std::fs::create_dir(&own).unwrap();
        let cfg = own.join("ollama-pool.yaml");
        std::fs::copy(root.join("fleet.example.yaml"), &cfg).unwrap();
        let env = [
            ("POOL_INSTANCE", format!("test-pool-{i}-{}", std::process::id())),
            ("POOL_PORT", port.to_string()),
            ("POOL_ADMIN_PORT", admin.to_string()),
            ("REDIS_URL", redis.url()),
            ("UPSTREAM_URL", mock.url()),
            ("APP_TOKEN", app_token.to_string()),
            ("OLLAMA_POOL_ADMIN_TOKEN", common::ADMIN_TOKEN.to_string()),
            ("OLLAMA_POOL_STORE_KEY", "fleet-store-key-0123456789abcdef".to_string()),
        ];
        fleet.push(common::process::start_env(&cfg, port, admin, 1, &env).await);
    }

    // nginx with the example's config, its ports swapped for the test's.
    let lb = free_port();
    let mut conf = std::fs::read_to_string(root.join("fleet-nginx.conf")).unwrap();
    for (i, s) in fleet.iter().enumerate() {
        conf = conf.replace(&format!("127.0.0.1:808{}", i + 1), &format!("127.0.0.1:{}", s.port));
    }
    conf = conf.replace("listen 127.0.0.1:8080", &format!("listen 127.0.0.1:{lb}"));
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir(&nginx_dir).unwrap();
    std::fs::write(nginx_dir.join("nginx.conf"), conf).unwrap();
    let _nginx = Nginx(
        std::process::Command::new("nginx")
            .arg("-p")
            .arg(&nginx_dir)
            .arg("-c")
            .arg(nginx_dir.join("nginx.conf"))
            .arg("-e")
            .arg(nginx_dir.join("error.log"))
            .arg("-g")
            // One process (no workers left behind if the test dies).
            .arg(format!("daemon off; master_process off; pid {};", nginx_dir.join("nginx.pid").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx (Debian package `nginx`; .ci/run installs it)"),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", lb)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(5), "nginx did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Keys added on one instance serve on all of them.
    for k in &KEYS[..2] {
        fleet[0].ok(Method::POST, "/admin/keys", json!({"key": k})).await;
    }
    for s in &fleet[1..] {
        eventually_status(s, KEYS[1], "active", Duration::from_secs(1), "every instance has the keys").await;
    }
    for _ in 0..30 {
        assert_eq!(chat_status(lb, app_token).await, 200);
    }
    for (i, s) in fleet.iter().enumerate() {
        let page = s.admin(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
        assert!(counter_sum(&page, "ollama_pool_requests_total") > 0.0, "nginx sent instance {i} some of the traffic");
        let stats = s.ok(Method::GET, "/admin/stats", Value::Null).await;
        assert_eq!(stats["instance"], format!("test-pool-{}-{}", i + 1, std::process::id()), "it names itself");
    }

    // One key is revoked: clients see no failure, and every instance stops using it.
    mock.clear();
    mock.set(KEYS[0], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    for _ in 0..30 {
        assert_eq!(chat_status(lb, app_token).await, 200, "failover hides the revoked key");
    }
    for s in &fleet {
        eventually_status(s, KEYS[0], "invalid", Duration::from_secs(1), "each instance parks it").await;
    }
    let invalid_requests = mock.requests().iter().filter(|r| r.key.as_deref() == Some(KEYS[0])).count();
    assert!(invalid_requests <= 3, "at most one try of the revoked key per instance, got {invalid_requests}");
    assert!(!redis.dump_all().contains(KEYS[0]), "upstream keys are sealed in Redis (encryption_key is set)");
    assert!(!redis.dump_all().contains(app_token), "no client token in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_cli_changes_reach_running_instances_at_once() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let a = instance(&redis, &mock, "a", "").await;
    let b = instance(&redis, &mock, "b", "").await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
            .args(args)
            .arg("-c")
            .arg(&a.cfg)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let file = a.cfg.with_file_name("keys.txt");
    std::fs::write(&file, format!("{}\n{}\n", KEYS[0], KEYS[1])).unwrap();
    cli(&["keys", "import", file.to_str().unwrap()]);
    let within = Duration::from_secs(1);
    for s in [&a, &b] {
        eventually_status(s, KEYS[1], "active", within, "imported keys serve on every instance").await;
    }
    let id = Secret::new(KEYS[0]).id();
    cli(&["keys", "disable", "--for", "1h", &id]);
    for s in [&a, &b] {
        eventually_status(s, KEYS[0], "disabled", within, "a disable from the CLI holds everywhere").await;
    }
    cli(&["keys", "enable", &id]);
    for s in [&a, &b] {
        eventually_status(s, KEYS[0], "active", within, "and so does an enable").await;
    }
    let token = cli(&["tokens", "create", "--name", "from-cli"]).trim().to_string();
    let t = Instant::now();
    while chat_status(b.port, &token).await != 200 {
        assert!(t.elapsed() < within, "a token made by the CLI works on B");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cli(&["keys", "remove", &id]);
    for s in [&a, &b] {
        eventually_status(s, KEYS[0], "absent", within, "a removed key leaves every pool").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_given_one_name_by_mistake_still_share_changes() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let a = instance(&redis, &mock, "same", "").await;
    let b = instance(&redis, &mock, "same", "").await;
    a.ok(Method::POST, "/admin/keys", json!({"key": KEYS[0]})).await;
    eventually_status(&b, KEYS[0], "active", Duration::from_secs(1), "B has A's key").await;
    let id = Secret::new(KEYS[0]).id();
    b.ok(Method::POST, &format!("/admin/keys/{id}/disable"), json!({})).await;
    eventually_status(&a, KEYS[0], "disabled", Duration::from_secs(1), "A applies B's disable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_only_a_starting_instances_key_file_has_reach_the_running_ones() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let a = instance(&redis, &mock, "a", "").await;
    let file = [("keys.txt", format!("{}\n", KEYS[2]))];
    let _b = instance_with(&redis, &mock, "instance: b", "keys: {files: [keys.txt]}\n", &file).await;
    eventually_status(&a, KEYS[2], "active", Duration::from_secs(1), "A serves the key B's file brought").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_holds_up_no_chat_and_its_silence_is_noticed() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let a = instance(&redis, &mock, "a", "").await;
    let b = instance_with(&redis, &mock, "instance: b, heartbeat: 200ms", "", &[]).await;
    a.ok(Method::POST, "/admin/keys", json!({"key": KEYS[0]})).await;
    eventually_status(&b, KEYS[0], "active", Duration::from_secs(1), "B has the key").await;

    // Redis hangs: TCP connections stay open and nothing answers (the store's calls wait up to
    // their 5 s timeout). Chats go on regardless, on both instances.
    redis.pause();
    let t = Instant::now();
    for _ in 0..10 {
        assert_eq!(chat_status(a.port, common::TOKEN).await, 200);
        assert_eq!(chat_status(b.port, common::TOKEN).await, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(4), "the request path waited on a hung Redis: {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(1500)).await; // B hears nothing, not even itself
    redis.resume();
    let t = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&b.log).unwrap();
        if log.contains("key events are shared again") {
            break log;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "B reconnects once Redis answers again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(log.contains("nothing heard from Redis"), "B noticed the silence");
    let id = Secret::new(KEYS[0]).id();
    a.ok(Method::POST, &format!("/admin/keys/{id}/disable"), json!({})).await;
    eventually_status(&b, KEYS[0], "disabled", Duration::from_secs(1), "changes flow again").await;
}
