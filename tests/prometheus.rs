//! The Grafana dashboard and the alert rules, proven against a real Prometheus (Debian's
//! `prometheus` package; `.ci/run` installs it): the proxy serves mixed traffic, Prometheus
//! scrapes it, then every dashboard expression, template variable and alert expression is
//! evaluated through the Prometheus HTTP API. All must parse; all must return data, except the
//! alert conditions listed in `QUIET_ALERTS`, each with the reason it stays quiet here.

mod common;

use common::{client, Behavior, Mock, Proxy, Setup, ADMIN_TOKEN, TOKEN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const K_REVOKED: &str = "upstream-key-aaaaaaaaaaaaaaaa";
const K_LIMITED: &str = "upstream-key-bbbbbbbbbbbbbbbb";
const K_EXHAUSTED: &str = "upstream-key-cccccccccccccccc";
const K_OK1: &str = "upstream-key-dddddddddddddddd";
const K_OK2: &str = "upstream-key-eeeeeeeeeeeeeeee";

/// Alert conditions that legitimately return nothing for the traffic this test drives.
const QUIET_ALERTS: &[(&str, &str)] = &[
    ("OllamaPoolNoUsableKey", "two of five keys stay usable throughout"),
    ("OllamaPool429Storm", "one key is rate-limited, not most attempts, and no storm is declared"),
    (
        "OllamaPoolFailoverRateHigh",
        "two keys fail over early, then traffic routes around them: the share stays under 20 %",
    ),
    ("OllamaPoolOverheadP99High", "fires only if the proxy adds more than 1 ms at p99"),
    ("OllamaPoolStoreDown", "the store stays up (tests/redis_store.rs takes a Redis away)"),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The process, its port, and its data folder (removed with it).
struct Prometheus(Child, u16, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [\"{}\"]\n\
         scrape_configs:\n  - job_name: ollama-pool\n    static_configs: [{{targets: [\"{target}\"]}}]\n",
        repo("grafana/alerts/*.yml").display()
    );
    let cfg_path = dir.path().join("prometheus.yml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.path().join("prometheus.log")).unwrap()))
        .spawn()
        .expect("the prometheus binary (Debian package `prometheus`; .ci/run installs it)");
    Prometheus(child, port, dir)
}

async fn query(p: &Prometheus, q: &str) -> Value {
    let r = client().get(format!("http://127.0.0.1:{}/api/v1/query", p.1)).query(&[("query", q)]).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "success", "query failed: {q}\n{v}");
    v
}

fn has_data(v: &Value) -> bool {
    v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
}

/// Grafana's variables, as a dashboard viewer with everything selected would send them.
fn grafana(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("\"$job\"", "\".*\"")
        .replace("\"$instance\"", "\".*\"")
        .replace("\"$model\"", "\".*\"")
        .replace("\"$client\"", "\".*\"")
        .replace("\"$provider\"", "\".*\"")
}

/// `capped`: a client token whose 1-token tpm budget the first request uses up.
async fn traffic(proxy: &Proxy, capped: &str) {
    for body in [r#"{"model":"m1","messages":[]}"#, r#"{"model":"m1","stream":true,"messages":[]}"#] {
        for _ in 0..4 {
            proxy.post("/v1/chat/completions", body).send().await.unwrap().text().await.unwrap();
        }
    }
    proxy.post("/api/chat", r#"{"model":"m1"}"#).send().await.unwrap().text().await.unwrap();
    proxy.post("/api/chat", r#"{"model":"premium"}"#).send().await.unwrap().text().await.unwrap();
    client().post(proxy.url("/v1/messages")).header("x-api-key", TOKEN).body("{}").send().await.unwrap();
    client().post(proxy.url("/v1/chat/completions")).bearer_auth("not-a-client-token").send().await.unwrap();
    for _ in 0..2 {
        let r = client().post(proxy.url("/v1/chat/completions")).bearer_auth(capped).body(r#"{"model":"m1"}"#);
        r.send().await.unwrap().text().await.unwrap();
    }
    // Two key events for the webhook, whose receiver refuses connections.
    let id = proxy.key_id(K_OK2);
    for action in ["disable", "enable"] {
        let r =
            proxy.admin(reqwest::Method::POST, &format!("/admin/keys/{id}/{action}")).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_evaluate_against_a_real_prometheus() {
    for (what, args) in [
        ("rules", ["check", "rules", "grafana/alerts/ollama-pool.yml"]),
        ("config", ["check", "config", "grafana/prometheus.yml"]),
    ] {
        let out = Command::new("promtool").args(args).current_dir(repo("")).output().expect("promtool");
        assert!(out.status.success(), "promtool check {what}: {}", String::from_utf8_lossy(&out.stdout));
    }

    let mock = Mock::start().await;
    mock.set(K_REVOKED, Behavior::status(401, r#"{"error":"unauthorized"}"#));
    mock.set_path(K_LIMITED, "/v1/chat/completions", Behavior::status_with(429, &[("retry-after", "600")], "{}"));
    for k in [K_LIMITED, K_OK1, K_OK2] {
        mock.set_path(
            k,
            "/api/usage",
            Behavior::status(200, r#"{"limits":{"session":{"usage":0.1},"weekly":{"usage":0.3}}}"#),
        );
    }
    mock.set_path(
        K_EXHAUSTED,
        "/api/usage",
        Behavior::status(200, r#"{"limits":{"session":{"usage":0.2},"weekly":{"usage":1.0}}}"#),
    );
    // An upstream without /api/balance: every key's usage comes from the older /api/usage.
    for k in [K_REVOKED, K_LIMITED, K_EXHAUSTED, K_OK1, K_OK2] {
        mock.set_path(k, "/api/balance", Behavior::status(404, r#"{"error":"not found"}"#));
    }
    // One key's plan lacks one model: it is parked for that model only.
    let premium = Behavior::status(403, r#"{"error":"this model requires a subscription"}"#);
    mock.set_for_key_body(K_OK1, r#""model":"premium""#, premium.clone());
    mock.set_for_key_body(K_OK2, r#""model":"premium""#, premium);
    // On a Redis store, so the fleet panel has key changes to show.
    let redis = common::redis::Redis::start();
    let proxy = Proxy::start_with(
        &mock,
        Setup {
            keys: vec![K_REVOKED, K_LIMITED, K_EXHAUSTED, K_OK1, K_OK2],
            admin: true,
            extra: format!(
                "health_check: {{usage_probe: true, jitter: 0s}}\n\
                 notifications:\n  batch_window: 0s\n  webhooks: [{{url: \"http://127.0.0.1:9/hook\", max_attempts: 1}}]\n\
                 store: {{kind: redis, url: \"{}\", prefix: prom}}\nfleet: {{instance: prom}}\n",
                redis.url()
            ),
            ..Default::default()
        },
    )
    .await;
    let probed = proxy.admin(reqwest::Method::POST, "/admin/health-check").body("{}").send().await.unwrap();
    assert_eq!(probed.status(), 200);
    let capped = proxy.admin(reqwest::Method::POST, "/admin/tokens").body(r#"{"name":"capped","tpm":1}"#).send();
    let capped: Value = capped.await.unwrap().json().await.unwrap();
    let capped = capped["token"].as_str().unwrap().to_string();
    traffic(&proxy, &capped).await;

    let prom = start_prometheus(&proxy.admin.unwrap().to_string());
    // Wait for a few scrapes, add traffic so rates are non-zero, wait for a few more.
    for round in 0..2 {
        let mut scrapes = 0.0;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(r) = client()
                .get(format!("http://127.0.0.1:{}/api/v1/query", prom.1))
                .query(&[("query", "count_over_time(up{job=\"ollama-pool\"}[1m])")])
                .send()
                .await
            else {
                continue; // still starting
            };
            let v: Value = r.json().await.unwrap_or_default();
            scrapes = v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0);
            if scrapes >= 3.0 * (round + 1) as f64 {
                break;
            }
        }
        assert!(scrapes >= 3.0, "Prometheus did not scrape the admin /metrics");
        if round == 0 {
            traffic(&proxy, &capped).await;
        }
    }
    let up = query(&prom, "up{job=\"ollama-pool\"}").await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "the scrape target is up");

    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("grafana/dashboards/ollama-pool.json")).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = grafana(t["expr"].as_str().unwrap());
            let v = query(&prom, &expr).await;
            assert!(has_data(&v), "panel {:?} returned no data: {expr}", panel["title"]);
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} expressions found");
    for var in dash["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else { continue };
        let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).unwrap();
        let (metric, label) = inner.rsplit_once(", ").unwrap();
        let v = query(&prom, &grafana(&format!("count by ({label}) ({metric})"))).await;
        assert!(has_data(&v), "template variable {:?} has no values", var["name"]);
    }

    let rules: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("grafana/alerts/ollama-pool.yml")).unwrap()).unwrap();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        let v = query(&prom, rule["expr"].as_str().unwrap()).await;
        let quiet = QUIET_ALERTS.iter().any(|(n, _)| *n == name);
        assert!(quiet || has_data(&v), "alert {name} should fire for this traffic: {}", rule["expr"]);
    }
    let quota = query(&prom, "ALERTS{alertname=\"OllamaPoolKeyParkedForQuota\"}").await;
    let labels = &quota["data"]["result"][0]["metric"];
    assert_eq!(labels["reason"], "quota:weekly", "the quota alert carries its reset time: {quota}");
    assert!(labels["until"].as_str().is_some_and(|u| u.ends_with("T00:00:00Z")));
    let loaded: Value =
        client().get(format!("http://127.0.0.1:{}/api/v1/rules", prom.1)).send().await.unwrap().json().await.unwrap();
    for r in loaded["data"]["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(r["health"], "ok", "rule {} does not evaluate in Prometheus: {}", r["name"], r["lastError"]);
    }

    let metrics = client().get(proxy.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for s in [K_REVOKED, K_LIMITED, K_EXHAUSTED, K_OK1, K_OK2, TOKEN, ADMIN_TOKEN] {
        assert!(!metrics.contains(s), "a secret in /metrics");
    }
}
