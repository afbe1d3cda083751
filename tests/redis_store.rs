//! The Redis store (`store.kind: redis`, issue #11 item 1) against a real `redis-server`: the
//! same records and the same answers as SQLite for every `Store` operation; nothing secret in
//! Redis in clear; another schema version or foreign data under the prefix is refused with
//! nothing overwritten; an unreachable Redis is a clear error; and the real binary serving from
//! it keeps every confirmed admin write across SIGKILL.

mod common;

use common::process::{chat_status, start, write_config};
use common::redis::Redis;
use common::{free_port, Mock, ADMIN_TOKEN, KEYS, TOKEN};
use ollama_pool::secret::Secret;
use ollama_pool::store::{
    Counters, RedisStore, SavedPark, SqliteStore, Store, StoreError, StoredKey, StoredToken, UsageRow,
};
use ollama_pool::usage::Limits;
use reqwest::Method;
use serde_json::{json, Value};

fn key(s: &str, created: u64) -> StoredKey {
    let secret = Secret::new(s);
    StoredKey {
        id: secret.id(),
        secret,
        label: Some(format!("label of {}", &s[..4])),
        created_at_ms: created,
        expires_at_ms: Some(1_900_000_000_000),
        disabled_until_ms: None,
        models: vec![],
        category: None,
        counters: Counters::default(),
        provider: "ollama".into(),
        from_file: created % 2 == 0,
    }
}

fn token(name: &str, hash_byte: u8, created: u64) -> StoredToken {
    StoredToken {
        id: format!("{hash_byte:02x}0000000000"),
        hash: [hash_byte; 32],
        name: name.into(),
        created_at_ms: created,
        expires_at_ms: None,
        models: vec!["m1".into()],
        rpm: Some(60),
        budgets: Limits { tpm: Some(1000), daily_tokens: None, monthly_tokens: Some(5_000_000) },
    }
}

/// Every `Store` operation, with what it must answer; returns what the store holds at the end.
fn exercise(s: &dyn Store) -> (Vec<StoredKey>, Vec<StoredToken>, Vec<UsageRow>) {
    let (a, b, c) = (key(KEYS[0], 10), key(KEYS[1], 20), key(KEYS[2], 30));
    assert_eq!(s.insert_keys(&[a.clone(), b.clone()], false).unwrap(), [a.id.clone(), b.id.clone()]);
    assert!(s.insert_keys(std::slice::from_ref(&a), false).unwrap().is_empty(), "a duplicate is skipped");
    assert!(s.set_disabled(&a.id, Some(0)).unwrap());
    assert!(s.set_disabled(&b.id, Some(1_800_000_000_000)).unwrap());
    assert!(s.set_disabled(&b.id, None).unwrap());
    assert!(!s.set_disabled("000000000000", Some(0)).unwrap(), "no such key");
    assert!(s.set_models(&b.id, &["qwen3:8b".into(), "m1".into()], "qwen").unwrap());
    assert!(!s.set_models("000000000000", &[], "x").unwrap());
    let park = SavedPark { status: 3, reason: 1, until_ms: 1_900_000_000_000 };
    let counted = Counters {
        requests: 5,
        successes: 4,
        failures: 1,
        consecutive_failures: 1,
        last_used_ms: 7,
        park: Some(park),
        ..Default::default()
    };
    s.save_counters(&[(b.id.clone(), counted), ("000000000000".into(), counted)]).unwrap();
    s.save_counters(&[(a.id.clone(), Counters { requests: 2, ..Default::default() })]).unwrap();
    // Removal is remembered: a key file does not bring the key back, an operator does.
    assert!(s.delete_key(&a.id).unwrap());
    assert!(!s.delete_key(&a.id).unwrap());
    assert!(s.insert_keys(std::slice::from_ref(&a), true).unwrap().is_empty());
    assert_eq!(s.insert_keys(&[a.clone(), c.clone()], true).unwrap(), std::slice::from_ref(&c.id));
    assert_eq!(s.insert_keys(std::slice::from_ref(&a), false).unwrap(), std::slice::from_ref(&a.id));
    // Forgetting is not remembered.
    assert!(s.forget_key(&c.id).unwrap());
    assert_eq!(s.insert_keys(std::slice::from_ref(&c), true).unwrap(), std::slice::from_ref(&c.id));

    s.insert_token(&token("alice", 1, 100)).unwrap();
    s.insert_token(&token("bob", 2, 200)).unwrap();
    assert!(s.delete_token("010000000000").unwrap());
    assert!(!s.delete_token("010000000000").unwrap());

    let row = |day, client: &str, model: &str, n| UsageRow {
        day,
        client: client.into(),
        provider: "ollama".into(),
        model: model.into(),
        requests: n,
        errors: 1,
        prompt_tokens: 10 * n,
        completion_tokens: 3 * n,
    };
    s.add_usage(&[row(20_000, "bob", "m1", 2), row(20_001, "bob", "m1", 1), row(20_001, "carol", "m2", 5)]).unwrap();
    s.add_usage(&[row(20_001, "bob", "m1", 4)]).unwrap();
    let mut usage = s.usage(20_001, 20_001).unwrap();
    usage.sort_by(|x, y| (&x.client, &x.model).cmp(&(&y.client, &y.model)));
    assert_eq!(usage.len(), 2, "{usage:?}");
    assert_eq!((usage[0].requests, usage[0].errors, usage[0].prompt_tokens), (5, 2, 50), "added up");
    assert_eq!(s.usage(19_000, 20_000).unwrap().len(), 1);
    (s.keys().unwrap(), s.tokens().unwrap(), usage)
}

#[test]
fn redis_answers_every_store_operation_as_sqlite_does() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("x.db"), None).unwrap();
    let on_redis = RedisStore::open(&redis.url(), "pool-test", None).unwrap();
    let from_sqlite = exercise(&sqlite);
    let from_redis = exercise(&on_redis);
    assert_eq!(from_redis.0, from_sqlite.0, "keys");
    assert_eq!(from_redis.1, from_sqlite.1, "tokens");
    assert_eq!(from_redis.2, from_sqlite.2, "usage");
    let keys = from_redis.0;
    assert_eq!(keys.iter().map(|k| k.created_at_ms).collect::<Vec<_>>(), [10, 20, 30], "in created order");
    assert_eq!(keys[1].counters.park.map(|p| p.status), Some(3));
    // A second handle (another instance) sees the same records.
    let other = RedisStore::open(&redis.url(), "pool-test", None).unwrap();
    assert_eq!(other.keys().unwrap(), keys);
    // Another prefix is another store.
    assert!(RedisStore::open(&redis.url(), "elsewhere", None).unwrap().keys().unwrap().is_empty());
}

#[test]
fn nothing_secret_is_in_redis_in_clear_with_encryption_on() {
    let redis = Redis::start();
    let pass = Secret::new("store-passphrase-0123456789");
    let s = RedisStore::open(&redis.url(), "pool", Some(&pass)).unwrap();
    s.insert_keys(&[key(KEYS[0], 1), key(KEYS[1], 2)], false).unwrap();
    let client_token = "sk-client-token-that-must-not-be-stored-1234";
    let hash = ollama_pool::secret::sha256(client_token.as_bytes());
    s.insert_token(&StoredToken { hash, ..token("alice", 0, 1) }).unwrap();
    assert_eq!(s.keys().unwrap()[0].secret.expose(), KEYS[0], "it reads them back");
    redis.cli(&["BGREWRITEAOF"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut everything = redis.dump_all();
    for entry in walk(redis.dir.path()) {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    for secret in [KEYS[0], KEYS[1], client_token] {
        assert!(!everything.contains(secret), "{secret:.8}… is in Redis in clear");
    }
    assert!(everything.contains(&hex::encode(hash)), "the token's hash is what is kept");
    // Without the passphrase it will not start.
    assert!(matches!(RedisStore::open(&redis.url(), "pool", None), Err(StoreError::Open { .. })));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn another_schema_or_foreign_data_is_refused_and_left_alone() {
    let redis = Redis::start();
    redis.cli(&["SET", "newer:schema", "99"]);
    // Foreign data among many other keys: found however far the scan has to go.
    redis.cli(&["EVAL", "for i = 1, 5000 do redis.call('SET', 'other:' .. i, i) end", "0"]);
    redis.cli(&["SET", "foreign:thing", "mine"]);
    let e = RedisStore::open(&redis.url(), "newer", None).err().expect("refused");
    assert!(e.to_string().contains("schema version 99") && e.to_string().contains("nothing was written"), "{e}");
    let e = RedisStore::open(&redis.url(), "foreign", None).err().expect("refused");
    assert!(e.to_string().contains("without a schema version"), "{e}");
    assert_eq!(redis.cli(&["GET", "newer:schema"]).trim(), "99");
    assert_eq!(redis.cli(&["GET", "foreign:thing"]).trim(), "mine");
    assert_eq!(redis.cli(&["EXISTS", "foreign:schema"]).trim(), "0");
}

#[test]
fn an_unreachable_redis_is_a_clear_error_naming_it_without_its_password() {
    let port = free_port();
    let url = format!("redis://:hunter2-password@127.0.0.1:{port}/0");
    let e = RedisStore::open(&url, "pool", None).err().expect("refused");
    let text = e.to_string();
    assert!(matches!(e, StoreError::Unavailable(_)), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")) && !text.contains("hunter2"), "{text}");
    for (url, want) in [("rediss://127.0.0.1:6379", "rediss://"), ("http://127.0.0.1:6379", "not a redis:// URL")] {
        let yaml = format!("upstream: {{url: \"http://127.0.0.1:9\"}}\nstore: {{kind: redis, url: \"{url}\"}}\n");
        let errors = ollama_pool::config::parse(&yaml, &|_| None).expect_err("invalid");
        assert!(
            errors.iter().any(|e| e.to_string().starts_with("store.url:") && e.to_string().contains(want)),
            "{errors:?}"
        );
    }
    let yaml = "upstream: {url: \"http://127.0.0.1:9\"}\nstore: {kind: redis}\n";
    let errors = ollama_pool::config::parse(yaml, &|_| None).expect_err("invalid");
    assert!(errors.iter().any(|e| e.to_string().starts_with("store.url: required")), "{errors:?}");
}

#[tokio::test]
async fn the_binary_on_redis_keeps_every_confirmed_write_across_sigkill() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let store = format!(
        "{{kind: redis, url: \"{}\", prefix: fleet-a, flush_interval: 1h, encryption_key: \"store-passphrase-0123456789\"}}",
        redis.url()
    );
    let cfg = write_config(dir.path(), &mock.url(), port, admin, &store);
    let s = start(&cfg, port, admin, 1).await;
    s.ok(Method::POST, "/admin/keys", json!({"key": KEYS[0], "label": "on redis"})).await;
    let made = s.ok(Method::POST, "/admin/tokens", json!({"name": "fleet-app", "daily_tokens": 1000})).await;
    let client_token = made["token"].as_str().unwrap().to_string();
    assert_eq!(chat_status(port, &client_token).await, 200);
    // A request is counted once it has finished, just after its answer went out.
    let mut usage = Value::Null;
    for _ in 0..100 {
        usage = s.ok(Method::GET, "/admin/usage?group_by=client", Value::Null).await;
        if usage["totals"]["requests"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(usage["rows"][0]["client"], "fleet-app", "usage is kept in Redis too: {usage}");
    let log1 = s.kill9();

    let s = start(&cfg, port, admin, 2).await;
    let keys = s.ok(Method::GET, "/admin/keys", Value::Null).await;
    assert_eq!(keys["keys"][0]["label"], "on redis", "{keys}");
    assert_eq!(chat_status(port, &client_token).await, 200, "the token made before SIGKILL works");
    // 4 tokens before SIGKILL (seeded from Redis's usage at start) + 4 since, debited once that
    // request has finished (just after its answer went out).
    let mut t = Value::Null;
    for _ in 0..100 {
        let tokens = s.ok(Method::GET, "/admin/tokens", Value::Null).await;
        t = tokens["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "fleet-app").unwrap().clone();
        if t["budgets"]["daily_tokens"]["used"] == 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(t["budgets"]["daily_tokens"]["used"], 8, "the budget was seeded from Redis's usage: {t}");
    let log2 = s.kill9();
    for log in [log1, log2] {
        let text = std::fs::read_to_string(&log).unwrap();
        for secret in [KEYS[0], client_token.as_str(), ADMIN_TOKEN] {
            assert!(!text.contains(secret), "a secret in {}", log.display());
        }
    }
}

fn config_file(dir: &std::path::Path, name: &str, store: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("upstream: {{url: \"http://127.0.0.1:9\"}}\nstore: {store}\n")).unwrap();
    path
}

fn migrate(from: &std::path::Path, to: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
        .args(["store", "migrate", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn store_migrate_copies_sqlite_to_redis_and_back_idempotently() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let pass = "\"store-passphrase-0123456789\"";
    let a = config_file(dir.path(), "a.yaml", "{path: a.db}");
    let b = config_file(
        dir.path(),
        "b.yaml",
        &format!("{{kind: redis, url: \"{}\", prefix: migrated, encryption_key: {pass}}}", redis.url()),
    );
    let c = config_file(dir.path(), "c.yaml", "{path: c.db}");
    let source = SqliteStore::open(&dir.path().join("a.db"), None).unwrap();
    let (keys, tokens, _) = exercise(&source);
    let usage = source.usage(0, u32::MAX).unwrap();
    drop(source);

    let (code, out) = migrate(&a, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("copied 3 keys (3 new), 1 tokens (1 new), 3 usage rows"), "{out}");
    let (code, out) = migrate(&a, &b);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("copied 3 keys (0 new), 1 tokens (0 new), 0 usage rows"),
        "a second run changes nothing: {out}"
    );
    let on_redis =
        RedisStore::open(&redis.url(), "migrated", Some(&Secret::new("store-passphrase-0123456789"))).unwrap();
    assert_eq!(on_redis.keys().unwrap(), keys, "keys with provider, labels, state and counters");
    assert_eq!(on_redis.tokens().unwrap(), tokens);
    assert_eq!(on_redis.usage(0, u32::MAX).unwrap(), usage, "usage, not doubled");
    assert!(!redis.dump_all().contains(KEYS[0]), "sealed with the target's encryption key");

    let (code, out) = migrate(&b, &c);
    assert_eq!(code, 0, "{out}");
    let back = SqliteStore::open(&dir.path().join("c.db"), None).unwrap();
    assert_eq!((back.keys().unwrap(), back.tokens().unwrap()), (keys, tokens), "and back");
    assert_eq!(back.usage(0, u32::MAX).unwrap(), usage);

    let (code, out) = migrate(&a, &a);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("the same store"), "{out}");
}

#[tokio::test]
async fn redis_down_keeps_serving_answers_admin_writes_503_and_loses_nothing_when_it_returns() {
    let mut redis = Redis::start();
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let store = format!("{{kind: redis, url: \"{}\", flush_interval: 200ms}}", redis.url());
    let cfg = write_config(dir.path(), &mock.url(), port, admin, &store);
    let s = start(&cfg, port, admin, 1).await;
    s.ok(Method::POST, "/admin/keys", json!({"key": KEYS[0]})).await;
    let store_up = || async move {
        let text = common::client().get(format!("http://127.0.0.1:{admin}/metrics")).send().await.unwrap();
        let text = text.text().await.unwrap();
        text.lines().find(|l| l.starts_with("ollama_pool_store_up ")).map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(chat_status(port, TOKEN).await, 200);
    assert_eq!(store_up().await.as_deref(), Some("1"));

    redis.stop();
    for _ in 0..5 {
        assert_eq!(chat_status(port, TOKEN).await, 200, "serving goes on from memory");
    }
    let r = s.admin(Method::POST, "/admin/keys").json(&json!({"key": KEYS[1]})).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "store unavailable; nothing was changed");
    let r = s.admin(Method::POST, "/admin/tokens").json(&json!({"name": "during-outage"})).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(store_up().await.as_deref(), Some("0"));
    let ready = common::client().get(format!("http://127.0.0.1:{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready while keys can serve");
    let listed = s.ok(Method::GET, "/admin/keys", Value::Null).await;
    assert_eq!(listed["total"], 1, "the refused key is not in the pool: {listed}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await; // flushes fail quietly meanwhile

    redis.restart();
    let mut back = false;
    for _ in 0..200 {
        let r = s.admin(Method::POST, "/admin/keys").json(&json!({"key": KEYS[1]})).send().await.unwrap();
        if r.status() == 201 {
            back = true;
            break;
        }
        assert_eq!(r.status(), 503);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(back, "admin writes work again once Redis is back");
    assert_eq!(store_up().await.as_deref(), Some("1"));
    let stored = RedisStore::open(&redis.url(), "ollama-pool", None).unwrap();
    let ids: Vec<String> = stored.keys().unwrap().into_iter().map(|k| k.id).collect();
    let want: Vec<String> = [KEYS[0], KEYS[1]].iter().map(|k| Secret::new(*k).id()).collect();
    assert_eq!(ids, want, "the key from before the outage is kept and the refused one was never half-written");
    assert!(stored.tokens().unwrap().iter().all(|t| t.name != "during-outage"));
    let log = s.kill9();
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings = text.lines().filter(|l| l.contains("admin writes answer 503")).count();
    assert_eq!(warnings, 1, "one line when Redis went away, not one per call or flush");
    assert!(text.contains("is reachable again"));
}

/// Waits (up to `within`) until `ok` holds.
async fn eventually(within: std::time::Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !ok() {
        assert!(t.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_key_changes_through_redis() {
    use common::{Behavior, Proxy, Setup};
    use ollama_pool::pool::Status;
    let redis = Redis::start();
    let mock = Mock::start().await;
    let mut fleet = Vec::new();
    for name in ["a", "b", "c"] {
        let extra = format!(
            "store: {{kind: redis, url: \"{}\", prefix: shared, flush_interval: 1h}}\nfleet: {{instance: {name}}}\n",
            redis.url()
        );
        fleet.push(
            Proxy::start_with(&mock, Setup { keys: vec![KEYS[0]], admin: true, extra, ..Default::default() }).await,
        );
    }
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);
    let second = Secret::new(KEYS[1]).id();
    let first = Secret::new(KEYS[0]).id();
    let within = std::time::Duration::from_secs(1);

    // A key added on A serves traffic on C.
    let r = a.admin(Method::POST, "/admin/keys").json(&json!({"key": KEYS[1]})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    eventually(within, "C has the key A added", || c.state.pool().get(&second).is_some()).await;
    eventually(within, "B has it too", || b.state.pool().get(&second).is_some()).await;
    mock.clear();
    for _ in 0..4 {
        assert_eq!(c.post("/v1/chat/completions", r#"{"model":"m1"}"#).send().await.unwrap().status(), 200);
    }
    assert!(mock.requests().iter().any(|r| r.key.as_deref() == Some(KEYS[1])), "C sends traffic with it");

    // A finds it revoked: B and C stop using it.
    mock.set(KEYS[1], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    for _ in 0..4 {
        a.post("/v1/chat/completions", r#"{"model":"m1"}"#).send().await.unwrap();
    }
    assert_eq!(a.key(KEYS[1]).status, Status::Invalid);
    eventually(within, "B parks the key A found revoked", || b.key(KEYS[1]).status == Status::Invalid).await;
    eventually(within, "C too", || c.key(KEYS[1]).status == Status::Invalid).await;
    mock.clear();
    for p in [b, c] {
        for _ in 0..6 {
            assert_eq!(p.post("/v1/chat/completions", r#"{"model":"m1"}"#).send().await.unwrap().status(), 200);
        }
    }
    assert!(mock.requests().iter().all(|r| r.key.as_deref() != Some(KEYS[1])), "no more traffic from B and C");

    // A disable on B holds on A and C; an enable on C returns it everywhere.
    let r = b
        .admin(Method::POST, &format!("/admin/keys/{first}/disable"))
        .json(&json!({"for": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(within, "A disables it", || a.key(KEYS[0]).status == Status::Disabled).await;
    eventually(within, "C disables it", || c.key(KEYS[0]).status == Status::Disabled).await;
    let r = c.admin(Method::POST, &format!("/admin/keys/{first}/enable")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    eventually(within, "A enables it", || a.key(KEYS[0]).status == Status::Active).await;
    eventually(within, "B enables it", || b.key(KEYS[0]).status == Status::Active).await;

    // A removal on C leaves every pool.
    let r = c.admin(Method::DELETE, &format!("/admin/keys/{second}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    eventually(within, "A drops the removed key", || a.state.pool().get(&second).is_none()).await;
    eventually(within, "B drops it", || b.state.pool().get(&second).is_none()).await;

    // A token made on A works on B; revoked on C, it fails on A and B.
    let r = a.admin(Method::POST, "/admin/tokens").json(&json!({"name": "shared"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    let (token, token_id) = (made["token"].as_str().unwrap().to_string(), made["id"].as_str().unwrap().to_string());
    let t0 = std::time::Instant::now();
    while chat_status(b.addr.port(), &token).await != 200 {
        assert!(t0.elapsed() < within, "the token made on A works on B");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = c.admin(Method::DELETE, &format!("/admin/tokens/{token_id}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let t0 = std::time::Instant::now();
    while chat_status(a.addr.port(), &token).await != 401 {
        assert!(t0.elapsed() < within, "the token revoked on C fails on A");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(chat_status(b.addr.port(), &token).await, 401);
    let metrics = a.admin(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("ollama_pool_fleet_events_total{direction=\"in\",type=\"moved\"}"),
        "fleet events are counted"
    );
}
