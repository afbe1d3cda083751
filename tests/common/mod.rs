//! Test harness: a real ollama-pool server in-process on a free loopback port, a mock upstream,
//! a controllable clock, and a log capture that every test checks for leaked secrets.
#![allow(dead_code, unused_imports)]

pub mod mock;
pub mod process;
pub mod receiver;
pub mod redis;

use async_trait::async_trait;
use ollama_pool::pool::ManualClock;
use ollama_pool::proxy::ProxyState;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use mock::{Behavior, Mock};

pub const TOKEN: &str = "client-token-0123456789abcdef";
/// The admin token of proxies started with `Setup::admin` (scanned for in the logs too).
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const KEYS: [&str; 4] = [
    "upstream-key-aaaaaaaaaaaaaaaa",
    "upstream-key-bbbbbbbbbbbbbbbb",
    "upstream-key-cccccccccccccccc",
    "upstream-key-dddddddddddddddd",
];

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);
impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the production log filter at its most verbose, writing into a buffer.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        // Client-side crates of the test itself are not the proxy's logs: keep them quiet.
        ollama_pool::logging::builder(Some("trace,reqwest=warn,hyper=warn,hyper_util=warn,h2=warn"))
            .target(env_logger::Target::Pipe(Box::new(Capture(buf.clone()))))
            .try_init()
            .ok();
        buf
    })
    .clone()
}

pub fn captured_logs() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).to_string()
}

/// 0 = run, 1 = fast shutdown, 2 = graceful (SIGTERM-like) shutdown.
struct TestSignal(tokio::sync::watch::Receiver<u8>);

#[async_trait]
impl ShutdownSignalWatch for TestSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        match rx.wait_for(|v| *v != 0).await.map(|v| *v) {
            Ok(2) => ShutdownSignal::GracefulTerminate,
            _ => ShutdownSignal::FastShutdown,
        }
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// The admin listener, when `Setup::admin`.
    pub admin: Option<SocketAddr>,
    pub dir: std::path::PathBuf,
    pub state: Arc<ProxyState>,
    pub health: Arc<ollama_pool::health::HealthService>,
    pub clock: ManualClock,
    secrets: Vec<String>,
    stop: tokio::sync::watch::Sender<u8>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A loopback port nobody in this process has been handed before, outside the kernel's
/// ephemeral range (where mocks bind to port 0). Pingora listens with SO_REUSEPORT, so two
/// proxies given the same port would silently share it; a process-wide counter rules that out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new(20_000 + (std::process::id() % 500) as u16 * 20));
    loop {
        let port = next.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32_000, "ran out of test ports");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Options for one proxy under test.
pub struct Setup {
    pub keys: Vec<&'static str>,
    /// Extra YAML appended to the generated config (must not repeat its top-level keys:
    /// listen, threads, upstream, keys, clients).
    pub extra: String,
    /// `upstream.addresses` override (e.g. a refusing address first).
    pub addresses: Vec<String>,
    /// `upstream.url` override (default: the mock's URL).
    pub url: Option<String>,
    /// More `upstream` fields, YAML flow style, e.g. `ca_file: /x.pem, verify_tls: false`.
    pub upstream_extra: String,
    /// More `server` fields, YAML flow style.
    pub server_extra: String,
    /// Serve the admin API (with `ADMIN_TOKEN`) on a port of its own.
    pub admin: bool,
    /// Listen with TLS (certificate and key PEM files) instead of plain HTTP.
    pub tls_listener: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// YAML that replaces the generated `upstream:` and `keys:` lines (e.g. `providers:`);
    /// key files it names are written by `files` into the config's folder.
    pub providers: Option<String>,
    /// (file name, contents) written next to the config before it loads.
    pub files: Vec<(String, String)>,
    /// More secrets the log scan looks for (keys that are not in `keys`).
    pub secrets: Vec<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            keys: KEYS.to_vec(),
            extra: String::new(),
            addresses: vec![],
            url: None,
            upstream_extra: String::new(),
            server_extra: String::new(),
            admin: false,
            tls_listener: None,
            providers: None,
            files: vec![],
            secrets: vec![],
        }
    }
}

impl Proxy {
    pub async fn start(mock: &Mock) -> Proxy {
        Proxy::start_with(mock, Setup::default()).await
    }

    pub async fn start_with(mock: &Mock, setup: Setup) -> Proxy {
        let logs = logs();
        let _ = logs; // installed
        let dir = tempfile::tempdir().unwrap();
        // The key file uses the ollama.txt formats, so start-up import is exercised too.
        let mut key_file = String::from("# test keys\n");
        for (i, k) in setup.keys.iter().enumerate() {
            match i % 3 {
                0 => key_file.push_str(&format!("{k}\n")),
                1 => key_file.push_str(&format!("label{i}----{k}\n")),
                _ => key_file.push_str(&format!("u{i}@x.io----pw----sess----{k}\n")),
            }
        }
        std::fs::write(dir.path().join("keys.txt"), key_file).unwrap();
        let port = free_port();
        let addresses = if setup.addresses.is_empty() {
            String::new()
        } else {
            format!(
                ", addresses: [{}]",
                setup.addresses.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
            )
        };
        let server_extra = if setup.server_extra.contains("shutdown_timeout") {
            format!(", {}", setup.server_extra)
        } else if setup.server_extra.is_empty() {
            ", shutdown_timeout: 1s".to_string()
        } else {
            format!(", shutdown_timeout: 1s, {}", setup.server_extra)
        };
        // A test that sets its own read_timeout gets it instead of the default 10 s.
        let read_timeout = if setup.upstream_extra.contains("read_timeout") { "" } else { ", read_timeout: 10s" };
        let upstream_extra =
            if setup.upstream_extra.is_empty() { String::new() } else { format!(", {}", setup.upstream_extra) };
        let listen = match &setup.tls_listener {
            None => format!("\"127.0.0.1:{port}\""),
            Some((cert, key)) => format!(
                "{{address: \"127.0.0.1:{port}\", tls: {{cert: \"{}\", key: \"{}\"}}}}",
                cert.display(),
                key.display()
            ),
        };
        for (name, text) in &setup.files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let upstream = match &setup.providers {
            Some(p) => format!("{}\n", p.trim_end()),
            None => format!(
                "upstream: {{url: \"{}\", health_check_interval: 0s, connect_timeout: 2s{read_timeout}{addresses}{upstream_extra}}}\n\
                 keys: {{files: [keys.txt]}}\n",
                setup.url.clone().unwrap_or_else(|| mock.url())
            ),
        };
        let yaml = format!(
            "listen: [{listen}]\nthreads: 1\n\
             {upstream}\
             clients: {{tokens: [{{name: app, token: \"{TOKEN}\"}}]}}\n\
             server: {{grace_period: 0s, upgrade_sock: {}{}}}\n{}",
            dir.path().join("upgrade.sock").display(),
            server_extra,
            setup.extra
        );
        let admin = setup.admin.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let yaml = match admin {
            Some(a) => format!("{yaml}admin: {{listen: \"{a}\", token: \"{ADMIN_TOKEN}\"}}\n"),
            None => yaml,
        };
        let cfg_path = dir.path().join("ollama-pool.yaml");
        std::fs::write(&cfg_path, &yaml).unwrap();
        let loaded = ollama_pool::config::load(&cfg_path).unwrap_or_else(|e| panic!("test config: {e:?}\n{yaml}"));
        let clock = ManualClock::new(ollama_pool::pool::Clock::now_ms(&ollama_pool::pool::SystemClock));
        let app = ollama_pool::app::build(&loaded, Default::default(), Arc::new(clock.clone())).unwrap();
        let state = app.state.clone();
        let health = app.health.clone();
        let (stop, rx) = tokio::sync::watch::channel(0u8);
        let server = app.server;
        let thread = std::thread::spawn(move || server.run(RunArgs { shutdown_signal: Box::new(TestSignal(rx)) }));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, setup.tls_listener.is_some()).await;
        let mut secrets: Vec<String> = setup.keys.iter().map(|s| s.to_string()).collect();
        secrets.extend(setup.secrets.iter().cloned());
        secrets.push(TOKEN.to_string());
        secrets.push(ADMIN_TOKEN.to_string());
        if let Some(a) = admin {
            wait_listening(a, false).await;
        }
        Proxy {
            addr,
            admin,
            dir: dir.path().to_path_buf(),
            state,
            health,
            clock,
            secrets,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("started with Setup::admin"), path)
    }

    /// An admin request with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client().request(method, self.admin_url(path)).bearer_auth(ADMIN_TOKEN)
    }

    /// An authenticated POST with a JSON body.
    pub fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        client().post(self.url(path)).bearer_auth(TOKEN).header("content-type", "application/json").body(body)
    }

    pub fn key_id(&self, key: &str) -> String {
        ollama_pool::secret::Secret::new(key).id()
    }

    pub fn now(&self) -> u64 {
        ollama_pool::pool::Clock::now_ms(&self.clock)
    }

    pub fn key(&self, key: &str) -> ollama_pool::pool::KeyView {
        self.state.pool().get(&self.key_id(key)).expect("key in pool").view_at(self.now())
    }

    /// Stops the server as SIGTERM would (graceful) and returns how long that took.
    pub fn shutdown_graceful(mut self) -> Duration {
        let t = std::time::Instant::now();
        let _ = self.stop.send(2);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        t.elapsed()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if std::thread::panicking() {
            return;
        }
        let logs = captured_logs();
        for s in &self.secrets {
            assert!(!logs.contains(s.as_str()), "a secret appeared in the proxy's logs");
        }
    }
}

pub fn client() -> reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()).clone()
}

async fn wait_listening(addr: SocketAddr, tls: bool) {
    for _ in 0..200 {
        if tls {
            // Plain HTTP cannot ask a TLS listener; that it accepts connections is enough.
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            continue;
        }
        if let Ok(r) = client().get(format!("http://{addr}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("proxy did not start listening on {addr}");
}

/// Sends `sig` (e.g. `libc::SIGTERM`) to a child process — kill(2) itself: a fresh machine may
/// have no `kill` binary (procps).
pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}): {}", child.id(), std::io::Error::last_os_error());
}

/// A spawned server process that a failed assertion must not leave running.
pub struct ChildGuard(pub std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A self-signed certificate for `localhost` (2 days) and its key.
pub fn self_signed_localhost() -> (openssl::x509::X509, openssl::pkey::PKey<openssl::pkey::Private>) {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    let san = SubjectAlternativeName::new().dns("localhost").build(&b.x509v3_context(None, None)).unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}
