//! `ollama-pool demo` (SPEC §2.1): the real proxy, admin API and health checker in front of a
//! simulated upstream (`sim`) whose keys are good, revoked, rate-limited and flaky. A short
//! scripted burst of its own traffic shows, in plain words, which key served each request,
//! which failed over and why, which key was parked until when and which came back after a
//! probe; then it keeps serving on loopback until Ctrl-C.
//!
//! Everything lives in a temporary directory (config, key file, store, pid file), removed at
//! exit; nothing is written to the working directory. Not here: anything the proxy does — the
//! demo builds it with `app::build` from a generated config, exactly as `serve` would.

mod sim;

use crate::app;
use crate::pool::clock::rfc3339;
use crate::pool::{classify, Clock, KeyView, Outcome, Status, SystemClock};
use crate::secret::Secret;
use pingora::apps::http_app::HttpServer;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use sim::{Hit, Part, SimKey, SimUpstream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the demo's health checker probes parked keys (the default is 60 s).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long the script waits for parked keys to come back before it moves on.
const RECOVERY_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The proxy's port on 127.0.0.1 (0 = any free port).
    pub port: u16,
    /// The admin API's port (default: `port + 1`; 0 = any free port).
    pub admin_port: Option<u16>,
    /// Stop after the scripted burst instead of serving until Ctrl-C.
    pub exit_after_script: bool,
}

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("127.0.0.1:{0} is in use (choose another port with {1})")]
    PortInUse(u16, &'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    App(#[from] app::AppError),
    #[error("the generated config is invalid: {0}")]
    Config(String),
}

pub fn run(opts: DemoOptions) -> ExitCode {
    match try_run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ollama-pool: demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// The addresses and credentials of one demo run.
struct Setup {
    proxy: SocketAddr,
    admin: SocketAddr,
    token: Secret,
    admin_token: Secret,
}

fn try_run(opts: DemoOptions) -> Result<(), DemoError> {
    let proxy = reserve(opts.port, "--port")?;
    let admin = reserve(
        opts.admin_port.unwrap_or(if opts.port == 0 { 0 } else { opts.port.saturating_add(1) }),
        "--admin-port",
    )?;
    let upstream = reserve(0, "")?;
    let setup = Setup {
        proxy: proxy.local_addr()?,
        admin: admin.local_addr()?,
        token: crate::proxy::auth::new_token(),
        admin_token: Secret::new(format!("admin-{}", &crate::proxy::auth::new_token().expose()[3..])),
    };
    let sim_addr = upstream.local_addr()?;
    let sim = Arc::new(SimUpstream::new(sim_keys()));
    let dir = tempfile::Builder::new().prefix("ollama-pool-demo-").tempdir()?;
    let cfg = write_config(dir.path(), &setup, sim_addr, &sim)?;
    let loaded = crate::config::load(&cfg)
        .map_err(|errors| DemoError::Config(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
    // Let go of the reserved ports just before pingora binds them.
    drop((proxy, admin, upstream));
    let mut built = app::build(&loaded, app::RunMode::default(), Arc::new(SystemClock))?;
    let mut upstream_service = Service::new("demo upstream".to_string(), HttpServer::new_app(SharedSim(sim.clone())));
    upstream_service.add_tcp(&sim_addr.to_string());
    built.server.add_service(upstream_service);

    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let pool = built.state.pool();
    let script = std::thread::spawn(move || {
        let ok = Script { setup: &setup, sim: &sim, pool: &pool, seen: RefCell::new(HashMap::new()) }.run();
        if ok {
            if opts.exit_after_script {
                println!("\n--exit-after-script: stopping.");
            } else {
                banner(&setup);
            }
        }
        if opts.exit_after_script || !ok {
            let _ = done_tx.send(true);
        }
        ok
    });
    built.server.run(RunArgs { shutdown_signal: Box::new(DemoSignal(Mutex::new(done_rx))) });
    built.flusher.flush();
    let ok = script.join().unwrap_or(false);
    drop(dir);
    if ok {
        Ok(())
    } else {
        Err(DemoError::Io(std::io::Error::other("the scripted burst did not complete (see above)")))
    }
}

/// Binds 127.0.0.1:`port` to prove it is free (and to learn the port when it is 0).
fn reserve(port: u16, flag: &'static str) -> Result<TcpListener, DemoError> {
    TcpListener::bind(("127.0.0.1", port)).map_err(|_| DemoError::PortInUse(port, flag))
}

fn sim_keys() -> Vec<SimKey> {
    let secret = |label: &str| format!("sim-{label}-{}", &crate::proxy::auth::new_token().expose()[3..19]);
    let key = |label: &'static str, part: Part| SimKey { label, secret: secret(label), part };
    vec![
        key("good-1", Part::Good),
        key("revoked", Part::Revoked),
        key("good-2", Part::Good),
        key("limited", Part::Limited { window: Duration::from_secs(3), since: Mutex::new(None) }),
        key("flaky", Part::Flaky { failures: AtomicU32::new(2) }),
    ]
}

fn write_config(
    dir: &std::path::Path,
    s: &Setup,
    upstream: SocketAddr,
    sim: &SimUpstream,
) -> std::io::Result<std::path::PathBuf> {
    let keys: String = sim.keys.iter().map(|k| format!("{}----{}\n", k.label, k.secret)).collect();
    std::fs::write(dir.join("keys.txt"), keys)?;
    let yaml = format!(
        "# generated by `ollama-pool demo`\n\
         listen: [\"{proxy}\"]\nthreads: 2\n\
         upstream: {{url: \"http://{upstream}\", health_check_interval: 0s}}\n\
         keys: {{files: [keys.txt]}}\n\
         clients: {{tokens: [{{name: demo, token: \"{token}\"}}]}}\n\
         admin: {{listen: \"{admin}\", token: \"{admin_token}\"}}\n\
         store: {{path: demo.db}}\n\
         pool: {{max_attempts: 3, failure_threshold: 2, cooldown: 60s}}\n\
         health_check: {{interval: {probe}s, jitter: 0s, sweep_interval: 1h}}\n\
         server: {{grace_period: 0s, shutdown_timeout: 5s, pid_file: {pid}, upgrade_sock: {sock}}}\n",
        proxy = s.proxy,
        admin = s.admin,
        token = s.token.expose(),
        admin_token = s.admin_token.expose(),
        probe = PROBE_INTERVAL.as_secs(),
        pid = dir.join("demo.pid").display(),
        sock = dir.join("upgrade.sock").display(),
    );
    let path = dir.join("ollama-pool.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// `HttpServer::new_app` wants the app by value; the script needs to read its log too.
struct SharedSim(Arc<SimUpstream>);

#[async_trait::async_trait]
impl pingora::apps::http_app::ServeHttp for SharedSim {
    async fn response(&self, s: &mut pingora::protocols::http::ServerSession) -> http::Response<Vec<u8>> {
        self.0.response(s).await
    }
}

/// Ctrl-C stops the demo; so does the end of the script with `--exit-after-script`.
struct DemoSignal(Mutex<tokio::sync::watch::Receiver<bool>>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for DemoSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut done = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let script_done = async {
            // A script that ends without asking to stop (serving mode) drops the sender.
            if done.wait_for(|d| *d).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => println!("\nCtrl-C: stopping the demo."),
            _ = script_done => {}
        }
        ShutdownSignal::FastShutdown
    }
}

/// One request of the scripted burst.
struct Step {
    method: &'static str,
    path: &'static str,
    family: &'static str,
    body: &'static str,
    anthropic: bool,
}

const STEPS: &[Step] = &[
    Step {
        method: "POST",
        path: "/v1/chat/completions",
        family: "OpenAI",
        body: r#"{"model":"demo-model","messages":[{"role":"user","content":"Hi"}]}"#,
        anthropic: false,
    },
    Step {
        method: "POST",
        path: "/v1/messages",
        family: "Anthropic",
        body: r#"{"model":"demo-model","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#,
        anthropic: true,
    },
    Step {
        method: "POST",
        path: "/api/chat",
        family: "Ollama",
        body: r#"{"model":"demo-model","messages":[{"role":"user","content":"Hi"}]}"#,
        anthropic: false,
    },
    Step {
        method: "POST",
        path: "/v1/chat/completions",
        family: "OpenAI, streaming",
        body: r#"{"model":"demo-model","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
        anthropic: false,
    },
];
const BURST: u32 = 10;

/// A key's state as last printed: (status, reason, until).
type Shown = (Status, &'static str, Option<u64>);

struct Script<'a> {
    setup: &'a Setup,
    sim: &'a SimUpstream,
    pool: &'a crate::pool::Pool,
    /// The last state printed per key id.
    seen: RefCell<HashMap<String, Shown>>,
}

impl Script<'_> {
    fn run(&self) -> bool {
        if !self.wait_ready() {
            println!("The demo proxy did not become ready on {}.", self.setup.proxy);
            return false;
        }
        println!(
            "ollama-pool demo: the real proxy in front of a simulated upstream with {} keys:",
            self.sim.keys.len()
        );
        for k in &self.sim.keys {
            let what = match k.part {
                Part::Good => "answers everything",
                Part::Revoked => "revoked: the upstream answers 401",
                Part::Limited { .. } => "rate-limited: 429 with Retry-After for 3 s after its first request",
                Part::Flaky { .. } => "flaky: its first 2 answers are 503",
            };
            println!("  {:<8} {}  {what}", k.label, Secret::new(k.secret.as_str()).id());
        }
        self.remember_states();
        println!(
            "\nA burst of {BURST} requests through http://{} (each request may try up to 3 keys):",
            self.setup.proxy
        );
        let mut all_ok = true;
        for n in 1..=BURST {
            let step = &STEPS[(n as usize - 1) % STEPS.len()];
            let status = self.send(n, step);
            all_ok &= status == Some(200);
            self.narrate(n, step, status);
            self.print_changes("      ");
        }
        println!("\nNo traffic now; the health checker probes parked keys every {} s:", PROBE_INTERVAL.as_secs());
        let start = Instant::now();
        let mut probes_from = 0;
        while start.elapsed() < RECOVERY_WAIT && !self.recovered() {
            std::thread::sleep(Duration::from_millis(200));
            let (probes, next) = self.sim.probes_since(probes_from);
            probes_from = next;
            for p in probes {
                println!("  probe {:<8} {} {}", p.label, p.path, p.status);
            }
            self.print_changes("  ");
        }
        let usable = self.pool.usable_count();
        println!(
            "\nThe pool now has {usable} of {} keys in rotation{}.",
            self.pool.len(),
            if self.recovered() {
                "; the revoked key stays out (each probe is refused, with a growing backoff)"
            } else {
                ""
            }
        );
        all_ok && self.recovered()
    }

    fn wait_ready(&self) -> bool {
        for _ in 0..200 {
            if request(self.setup.proxy, "GET", "/readyz", &[], "").is_ok_and(|s| s == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn send(&self, n: u32, step: &Step) -> Option<u16> {
        let auth = if step.anthropic {
            ("x-api-key", self.setup.token.expose().to_string())
        } else {
            ("authorization", format!("Bearer {}", self.setup.token.expose()))
        };
        let headers =
            [(auth.0, auth.1.as_str()), (sim::REQUEST_HEADER, &n.to_string()), ("content-type", "application/json")];
        request(self.setup.proxy, step.method, step.path, &headers, step.body).ok()
    }

    fn narrate(&self, n: u32, step: &Step, status: Option<u16>) {
        let hits = self.sim.hits_for(n);
        let head = format!("  #{n:<2} {} {} ({})", step.method, step.path, step.family);
        let status = status.map_or("no answer".to_string(), |s| s.to_string());
        let served = hits.iter().rfind(|h| h.status == 200).map(|h| h.label);
        let failed: Vec<&Hit> = hits.iter().filter(|h| h.status != 200).collect();
        match served {
            Some(label) if failed.is_empty() => println!("{head:<52} → {status}, served by {label}"),
            Some(label) => println!("{head:<52} → {status}, served by {label} after {} failover(s):", failed.len()),
            None => println!("{head:<52} → {status}"),
        }
        for h in failed {
            println!("      {} answered {} — {}", h.label, h.status, why(h));
        }
    }

    /// Prints every key whose state changed since the last look.
    fn print_changes(&self, indent: &str) {
        let now = SystemClock.now_ms();
        let mut seen = self.seen.borrow_mut();
        for v in self.pool.views() {
            let state = (v.status, v.reason.as_str(), v.until_ms);
            let Some(before) = seen.insert(v.id.clone(), state) else { continue };
            if before == state {
                continue;
            }
            println!("{indent}{}: {} → {}", label(&v), before.0.as_str(), describe(&v, now));
        }
    }

    fn remember_states(&self) {
        let mut seen = self.seen.borrow_mut();
        for v in self.pool.views() {
            seen.insert(v.id.clone(), (v.status, v.reason.as_str(), v.until_ms));
        }
    }

    /// Every key except the revoked one is back in rotation.
    fn recovered(&self) -> bool {
        let views = self.pool.views();
        views.iter().all(|v| v.label.as_deref() == Some("revoked") || v.status == Status::Active)
    }
}

fn label(v: &KeyView) -> String {
    v.label.clone().unwrap_or_else(|| v.id.clone())
}

/// A key's new state in plain words.
fn describe(v: &KeyView, now: u64) -> String {
    let until =
        v.until_ms.map(|u| format!(" until {} (in {} s)", &rfc3339(u)[11..19], u.saturating_sub(now).div_ceil(1000)));
    let until = until.unwrap_or_default();
    match (v.status, v.reason.as_str()) {
        (Status::Invalid, _) => {
            format!("invalid{until}: the upstream rejected the key; probes decide when it may return")
        }
        (Status::Cooling, "rate-limited") => format!("cooling{until}: parked for the upstream's Retry-After"),
        (Status::Cooling, "auto-disabled") => format!("cooling{until}: auto-disabled after failing twice in a row"),
        (Status::Active, "probe") => "active: a health probe found it working again, back in rotation".to_string(),
        (Status::Active, _) => "active: its park time is over, back in rotation".to_string(),
        (s, r) => format!("{}{until} ({r})", s.as_str()),
    }
}

/// Why an answer made the proxy fail over, as the proxy classified it.
fn why(h: &Hit) -> String {
    let mut headers = http::HeaderMap::new();
    if let Some(s) = h.retry_after {
        headers.insert(http::header::RETRY_AFTER, s.into());
    }
    match classify(h.status, &headers, None) {
        Outcome::Credential => "the key is rejected: failed over to another key".into(),
        Outcome::RateLimited { .. } => {
            format!("rate-limited (Retry-After: {} s): failed over to another key", h.retry_after.unwrap_or(0))
        }
        Outcome::Transient => "an upstream failure: failed over to another key".into(),
        o => format!("{o:?}"),
    }
}

fn banner(s: &Setup) {
    let token = s.token.expose();
    println!(
        "\nThe demo keeps serving on loopback until Ctrl-C (OpenAI /v1/*, Anthropic /v1/messages, Ollama /api/*):\n\
         \n  proxy        http://{proxy}\n  client token {token}\n\
         \n  curl http://{proxy}/v1/chat/completions -H 'Authorization: Bearer {token}' \\\n    \
         -H 'Content-Type: application/json' -d '{{\"model\":\"demo-model\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'\n\
         \n  admin API    http://{admin}/admin/keys   (Authorization: Bearer {admin_token})\n  metrics      http://{admin}/metrics\n",
        proxy = s.proxy,
        admin = s.admin,
        admin_token = s.admin_token.expose(),
    );
}

/// One HTTP/1.1 request on a fresh connection (read to its end); returns the status.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> std::io::Result<u16> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let status = std::str::from_utf8(raw.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    Ok(status)
}
