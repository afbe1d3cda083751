//! Durability (SPEC §4): the real binary, killed with SIGKILL right after its 2xx admin answers,
//! comes back with every confirmed write; counters survive a graceful restart; with
//! `store.encryption_key` no upstream key is on disk in clear; nothing secret in its output.

mod common;

use common::process::start;
use common::{client, free_port, Behavior, Mock, ADMIN_TOKEN, KEYS, TOKEN};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn config(dir: &Path, mock: &Mock, port: u16, admin: u16, encrypted: bool) -> PathBuf {
    let enc = if encrypted { "  encryption_key: \"store-passphrase-0123456789\"\n" } else { "" };
    let yaml = format!(
        "listen: [\"127.0.0.1:{port}\"]\nthreads: 1\n\
         upstream: {{url: \"{}\", health_check_interval: 0s}}\n\
         admin: {{listen: \"127.0.0.1:{admin}\", token: \"{ADMIN_TOKEN}\"}}\n\
         clients: {{tokens: [{{name: app, token: \"{TOKEN}\"}}]}}\n\
         store:\n  path: state/pool.db\n  flush_interval: 1h\n{enc}\
         server: {{grace_period: 0s, shutdown_timeout: 2s, pid_file: {}, upgrade_sock: {}}}\n",
        mock.url(),
        dir.join("pid").display(),
        dir.join("upgrade.sock").display()
    );
    let path = dir.join("ollama-pool.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// One chat request through the proxy on `port` (an empty body: the mock answers anything).
async fn chat(port: u16, path: &str) -> reqwest::StatusCode {
    client().post(format!("http://127.0.0.1:{port}{path}")).bearer_auth(TOKEN).body("{}").send().await.unwrap().status()
}

fn assert_no_secrets(files: &[PathBuf], extra: &[&str]) {
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for s in KEYS.iter().chain([&TOKEN, &ADMIN_TOKEN]).chain(extra.iter()) {
            assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "{s:.8}… found in {}", f.display());
        }
    }
}

async fn writes_survive_sigkill(encrypted: bool) {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config(dir.path(), &mock, port, admin, encrypted);
    let s = start(&cfg, port, admin, 1).await;
    s.ok(reqwest::Method::POST, "/admin/keys", json!({"key": KEYS[0], "label": "first"})).await;
    s.ok(reqwest::Method::POST, "/admin/keys", json!({"key": KEYS[1]})).await;
    let id1 = ollama_pool::secret::Secret::new(KEYS[1]).id();
    s.ok(reqwest::Method::POST, &format!("/admin/keys/{id1}/disable"), json!({"for": "1h"})).await;
    let imported = s
        .admin(reqwest::Method::POST, "/admin/keys/import")
        .body(format!("{}\nlabel----{}\n", KEYS[2], KEYS[3]))
        .send()
        .await
        .unwrap();
    assert_eq!(imported.json::<Value>().await.unwrap()["added"], 2);
    let created = s.ok(reqwest::Method::POST, "/admin/tokens", json!({"name": "durable"})).await;
    let token = created["token"].as_str().unwrap().to_string();
    let first_log = s.kill9();

    let s = start(&cfg, port, admin, 2).await;
    let listed = s.ok(reqwest::Method::GET, "/admin/keys", Value::Null).await;
    assert_eq!(listed["total"], 4, "every confirmed key is back");
    let k1 = listed["keys"].as_array().unwrap().iter().find(|k| k["id"] == id1.as_str()).unwrap();
    assert_eq!((k1["status"].as_str(), k1["reason"].as_str()), (Some("disabled"), Some("manual")));
    assert!(k1["until"].is_string(), "still disabled for its hour");
    let r = client()
        .post(format!("http://127.0.0.1:{}/v1/chat/completions", s.port))
        .bearer_auth(&token)
        .body(r#"{"model":"m1","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the token created before the kill still works");
    assert!(mock.requests().iter().all(|r| r.key.as_deref() != Some(KEYS[1])), "the disabled key stayed out");
    // The offline CLI works on the same store while the server runs (WAL + busy timeout).
    let out = Command::new(env!("CARGO_BIN_EXE_ollama-pool")).args(["keys", "list", "-c"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 keys"));
    let out = Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
        .args(["tokens", "create", "--name", "while-running", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let second_log = s.kill9();

    let mut files = vec![first_log, second_log];
    if encrypted {
        let state = dir.path().join("state");
        files.extend(std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().path()));
    }
    assert_no_secrets(&files, &[&token, &cli_token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_admin_writes_survive_sigkill() {
    writes_survive_sigkill(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_admin_writes_survive_sigkill_with_keys_encrypted_at_rest() {
    writes_survive_sigkill(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_graceful_restart() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config(dir.path(), &mock, port, admin, false);
    let s = start(&cfg, port, admin, 1).await;
    s.ok(reqwest::Method::POST, "/admin/keys", json!({"key": KEYS[0]})).await;
    for _ in 0..3 {
        assert_eq!(chat(port, "/api/chat").await, 200);
    }
    let log1 = s.terminate(); // flush_interval is 1h: only the shutdown flush can save them
    let s = start(&cfg, port, admin, 2).await;
    let stats = s.ok(reqwest::Method::GET, "/admin/stats", Value::Null).await;
    assert_eq!((stats["requests"].as_u64(), stats["successes"].as_u64()), (Some(3), Some(3)));
    let listed = s.ok(reqwest::Method::GET, "/admin/keys", Value::Null).await;
    assert!(listed["keys"][0]["stats"]["last_success"].is_string());
    let log2 = s.kill9();
    assert_no_secrets(&[log1, log2], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parks_survive_a_restart_and_ended_ones_are_dropped() {
    let mock = Mock::start().await;
    mock.set(KEYS[0], Behavior::status(401, r#"{"error":"unauthorized"}"#));
    mock.set(KEYS[1], Behavior::status_with(429, &[("retry-after", "3600")], r#"{"error":"slow down"}"#));
    mock.set(KEYS[2], Behavior::status_with(429, &[("retry-after", "1")], r#"{"error":"slow down"}"#));
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config(dir.path(), &mock, port, admin, false);
    let s = start(&cfg, port, admin, 1).await;
    for k in &KEYS {
        s.ok(reqwest::Method::POST, "/admin/keys", json!({ "key": k })).await;
    }
    // Round-robin from the first key: 401, 429 for an hour, 429 for a second (3 attempts, so the
    // last 429 is the answer); the next request finds the good key.
    assert_eq!(chat(port, "/v1/chat/completions").await, 429);
    assert_eq!(chat(port, "/v1/chat/completions").await, 200);
    let states = |listed: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["id"].as_str().unwrap().to_string(), k["status"].as_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    };
    let before = s.ok(reqwest::Method::GET, "/admin/keys", Value::Null).await;
    let id = |k: &str| ollama_pool::secret::Secret::new(k).id();
    let want = |k: &str, st: &str| (id(k), st.to_string());
    let mut expected =
        vec![want(KEYS[0], "invalid"), want(KEYS[1], "cooling"), want(KEYS[2], "cooling"), want(KEYS[3], "active")];
    expected.sort();
    assert_eq!(states(&before), expected, "{before}");
    let log1 = s.terminate(); // flush_interval is 1h: the shutdown flush saves the parks
    std::thread::sleep(Duration::from_millis(1100)); // KEYS[2]'s second is over

    let s = start(&cfg, port, admin, 2).await;
    let after = s.ok(reqwest::Method::GET, "/admin/keys", Value::Null).await;
    let mut expected =
        vec![want(KEYS[0], "invalid"), want(KEYS[1], "cooling"), want(KEYS[2], "active"), want(KEYS[3], "active")];
    expected.sort();
    assert_eq!(states(&after), expected, "{after}");
    let k1 = after["keys"].as_array().unwrap().iter().find(|k| k["id"] == id(KEYS[1]).as_str()).unwrap();
    assert_eq!((k1["reason"].as_str(), k1["until"].is_string()), (Some("rate-limited"), true));
    mock.clear();
    mock.set(KEYS[2], Behavior::Normal);
    for _ in 0..4 {
        assert_eq!(chat(port, "/v1/chat/completions").await, 200);
    }
    let used: std::collections::HashSet<Option<String>> = mock.requests().into_iter().map(|r| r.key).collect();
    assert!(
        !used.contains(&Some(KEYS[0].to_string())) && !used.contains(&Some(KEYS[1].to_string())),
        "known-bad keys got traffic after the restart"
    );
    let log2 = s.kill9();
    assert_no_secrets(&[log1, log2], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_stays_removed_although_its_key_file_is_read_again() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config(dir.path(), &mock, port, admin, false);
    std::fs::write(dir.path().join("k.txt"), format!("{}\n{}\n", KEYS[0], KEYS[1])).unwrap();
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str("keys: {files: [k.txt]}\n");
    std::fs::write(&cfg, yaml).unwrap();
    let id0 = ollama_pool::secret::Secret::new(KEYS[0]).id();

    let s = start(&cfg, port, admin, 1).await;
    assert_eq!(s.ok(reqwest::Method::GET, "/admin/keys", Value::Null).await["total"], 2);
    let r = s.admin(reqwest::Method::DELETE, &format!("/admin/keys/{id0}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let log1 = s.kill9();

    let s = start(&cfg, port, admin, 2).await;
    let listed = s.ok(reqwest::Method::GET, "/admin/keys", Value::Null).await;
    assert_eq!(listed["total"], 1, "the key file did not bring the removed key back");
    assert_ne!(listed["keys"][0]["id"], id0.as_str());
    let r = s.admin(reqwest::Method::POST, "/admin/keys").json(&json!({"key": KEYS[0]})).send().await.unwrap();
    assert_eq!(r.status(), 201, "an operator can add it back");
    let log2 = s.kill9();
    assert_no_secrets(&[log1, log2], &[]);
}

/// SPEC §2.1, §3.8 with the real binary: `ollama-pool reload -c FILE` prints what applied and
/// what needs a restart (exit 0), or the problems (exit 2, nothing changed); SIGHUP reloads too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_cli_and_by_sighup() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config(dir.path(), &mock, port, admin, false);
    std::fs::write(dir.path().join("keys.txt"), format!("{}\n", KEYS[0])).unwrap();
    let base = std::fs::read_to_string(&cfg).unwrap();
    let with_keys = base.replace("threads: 1\n", "threads: 1\nkeys: {files: [keys.txt]}\n");
    std::fs::write(&cfg, &with_keys).unwrap();
    let server = start(&cfg, port, admin, 0).await;
    let generation = |v: &Value| v["generation"].as_u64();
    assert_eq!(generation(&server.ok(reqwest::Method::GET, "/admin/providers", json!({})).await), Some(1));

    // A new key in the file, a new pool policy, and a listener change (restart only).
    std::fs::write(dir.path().join("keys.txt"), format!("{}\n{}\n", KEYS[0], KEYS[1])).unwrap();
    let changed = with_keys.replace("threads: 1\n", "threads: 2\npool: {max_attempts: 2}\n");
    std::fs::write(&cfg, &changed).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ollama-pool")).args(["reload", "-c"]).arg(&cfg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l.starts_with("applied") && l.contains("pool")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("keys joined") && l.ends_with('1')), "{text}");
    assert!(text.lines().any(|l| l.starts_with("restart required") && l.contains("threads")), "{text}");
    let keys = server.ok(reqwest::Method::GET, "/admin/keys", json!({})).await;
    assert_eq!(keys["total"], 2, "the new key joined");

    // A broken file: exit 2, its problems on stderr, nothing changed.
    std::fs::write(&cfg, changed.replace("max_attempts: 2", "max_attempts: 0")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ollama-pool")).args(["reload", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool.max_attempts"));
    assert_eq!(generation(&server.ok(reqwest::Method::GET, "/admin/providers", json!({})).await), Some(2));

    // SIGHUP reads the (fixed) file again.
    std::fs::write(&cfg, &changed).unwrap();
    common::signal(&server.child, libc::SIGHUP);
    let mut reloaded = false;
    for _ in 0..100 {
        if generation(&server.ok(reqwest::Method::GET, "/admin/providers", json!({})).await) == Some(3) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(reloaded, "SIGHUP reloaded the config");
    assert_eq!(chat(port, "/v1/chat/completions").await, 200, "still serving");
    let log = server.terminate();
    assert_no_secrets(&[log], &[]);
}
