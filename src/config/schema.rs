//! The YAML schema (SPEC §2.2): every section, its defaults, and a small `validate` per section.
//! This is the *external* shape; `app.rs` builds the runtime objects from it.

use super::units::{ByteSize, Dur};
use super::ConfigError;
use crate::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Proxy listeners.
    pub listen: Vec<Listener>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    pub upstream: UpstreamConfig,
    pub admin: Option<AdminConfig>,
    pub store: StoreConfig,
    pub keys: KeysConfig,
    pub pool: PoolConfig,
    pub health_check: HealthCheckConfig,
    pub clients: ClientsConfig,
    pub routes: RoutesConfig,
    pub metrics: MetricsConfig,
    pub server: ServerConfig,
    pub cors: CorsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![Listener::Plain("0.0.0.0:8080".into())],
            threads: 2,
            upstream: UpstreamConfig::default(),
            admin: None,
            store: StoreConfig::default(),
            keys: KeysConfig::default(),
            pool: PoolConfig::default(),
            health_check: HealthCheckConfig::default(),
            clients: ClientsConfig::default(),
            routes: RoutesConfig::default(),
            metrics: MetricsConfig::default(),
            server: ServerConfig::default(),
            cors: CorsConfig::default(),
        }
    }
}

/// `"0.0.0.0:8080"` or `{address: "0.0.0.0:8443", tls: {cert: ..., key: ...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Listener {
    Plain(String),
    Full(ListenerSpec),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub address: String,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Listener {
    pub fn address(&self) -> &str {
        match self {
            Listener::Plain(a) => a,
            Listener::Full(s) => &s.address,
        }
    }
    pub fn tls(&self) -> Option<&TlsFiles> {
        match self {
            Listener::Plain(_) => None,
            Listener::Full(s) => s.tls.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL (required), e.g. `https://ollama.com`. Request paths are appended.
    pub url: String,
    /// Pin the upstream to these `ip:port` addresses instead of resolving the URL's host.
    pub addresses: Vec<String>,
    pub connect_timeout: Dur,
    /// Longest silence between two upstream bytes (a stream may last longer in total).
    pub read_timeout: Dur,
    pub write_timeout: Dur,
    /// How long an idle keep-alive connection to the upstream is kept for reuse.
    pub idle_timeout: Dur,
    /// How often the upstream host name is resolved again.
    pub dns_refresh: Dur,
    /// TCP health check of each upstream address; `0s` turns it off.
    pub health_check_interval: Dur,
    /// Verify the upstream's TLS certificate and host name (HTTPS upstreams).
    pub verify_tls: bool,
    /// PEM file of CA certificates to trust for the upstream instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// Forward the client's `X-Forwarded-*` / `Forwarded` headers (dropped by default).
    pub forward_client_ip_headers: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: String::new(),
            addresses: Vec::new(),
            connect_timeout: Dur::secs(5),
            read_timeout: Dur::secs(600),
            write_timeout: Dur::secs(60),
            idle_timeout: Dur::secs(60),
            dns_refresh: Dur::secs(60),
            health_check_interval: Dur::secs(10),
            verify_tls: true,
            ca_file: None,
            forward_client_ip_headers: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: "127.0.0.1:8081".into(), token: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file, created if missing; relative paths are relative to the config file.
    pub path: PathBuf,
    /// Encrypt upstream keys at rest with this passphrase (AES-256-GCM).
    pub encryption_key: Option<Secret>,
    /// How often per-key counters are saved (and once more at shutdown).
    pub flush_interval: Dur,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: "data/ollama-pool.db".into(), encryption_key: None, flush_interval: Dur::secs(30) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Key files (SPEC §3.6 formats) loaded at startup; relative paths are relative to the config file.
    pub files: Vec<PathBuf>,
    /// Longest upstream key accepted (key files, imports, `POST /admin/keys`).
    pub max_key_bytes: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig { files: Vec::new(), max_key_bytes: crate::import::DEFAULT_MAX_KEY_BYTES }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    pub max_attempts: usize,
    pub failure_threshold: u32,
    pub cooldown: Dur,
    /// First park time of a rate-limited key without `Retry-After`; doubles up to `cooldown`.
    pub rate_limit_backoff: Dur,
    pub max_request_body: ByteSize,
    /// Storm guard: failures of at least this share of the pool (and `storm_min_keys` keys) in
    /// one run of failures less than `storm_window` apart, making >= 80 % of the run's attempts,
    /// are an upstream condition, not the keys'.
    pub storm_window: Dur,
    pub storm_fraction: f64,
    pub storm_min_keys: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_attempts: 3,
            failure_threshold: 3,
            cooldown: Dur::secs(3600),
            rate_limit_backoff: Dur::secs(60),
            max_request_body: ByteSize(32 << 20),
            storm_window: Dur::secs(10),
            storm_fraction: 0.5,
            storm_min_keys: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// How often parked keys are probed (and how long clients are told to wait in a storm).
    pub interval: Dur,
    /// How often every key is probed, active ones included.
    pub sweep_interval: Dur,
    /// Probes in flight at once.
    pub concurrency: usize,
    /// Each probe waits a random share of this first, so sweeps never burst.
    pub jitter: Dur,
    /// Longest wait for one probe's answer.
    pub timeout: Dur,
    /// Failed probes back off, doubling from `interval` up to this.
    pub max_backoff: Dur,
    pub probe: ProbeConfig,
    /// Also ask `usage_path` (Ollama Cloud's undocumented `GET /api/usage`) how much of each
    /// window a key has used, and park keys at or above `park_at_usage` until the reset.
    pub usage_probe: bool,
    pub usage_path: String,
    pub park_at_usage: f64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: Dur::secs(60),
            sweep_interval: Dur::secs(30 * 60),
            concurrency: 8,
            jitter: Dur::secs(2),
            timeout: Dur::secs(10),
            max_backoff: Dur::secs(3600),
            probe: ProbeConfig::default(),
            usage_probe: false,
            usage_path: "/api/usage".into(),
            park_at_usage: 0.98,
        }
    }
}

/// The request that tells whether a key works without spending model tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    pub method: String,
    pub path: String,
    pub body: String,
    /// The status that means "valid"; absent = any 2xx.
    pub expect_status: Option<u16>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig { method: "POST".into(), path: "/api/me".into(), body: String::new(), expect_status: None }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    pub tokens: Vec<StaticToken>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub name: String,
    pub token: Secret,
}

/// CORS for browser clients: off (no CORS headers) unless origins are listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// `["*"]` for every origin, or exact origins such as `https://app.example.com`.
    pub allow_origins: Vec<String>,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
    pub max_age: Dur,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig { allow_origins: Vec::new(), max_age: Dur::secs(600) }
    }
}

impl CorsConfig {
    fn validate(&self, e: &mut Errors) {
        if self.allow_origins.len() > 1 && self.allow_origins.iter().any(|o| o == "*") {
            err(e, "cors.allow_origins", "\"*\" allows every origin: list it alone");
        }
        for (i, o) in self.allow_origins.iter().enumerate().filter(|(_, o)| *o != "*") {
            let rest = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains('/') && !r.contains(char::is_whitespace)) {
                err(
                    e,
                    format!("cors.allow_origins[{i}]"),
                    format!("{o:?} is not an origin (scheme://host[:port], no path or trailing slash)"),
                );
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutesConfig {
    /// Forwarded paths: exact (`/v1/models`) or prefix (`/v1/models/*`). Others answer 404.
    pub allow: Vec<String>,
}

/// Inference, embeddings and model listing; never model management (`/api/pull`, `/api/delete`,
/// `/api/create`, `/api/copy`, `/api/push`, `/api/blobs/*`).
pub const DEFAULT_ALLOWED_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/*",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/tags",
    "/api/show",
    "/api/ps",
    "/api/version",
];

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig { allow: DEFAULT_ALLOWED_ROUTES.iter().map(|s| s.to_string()).collect() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Also serve Prometheus `/metrics` on this address (the admin listener always does).
    pub listen: Option<String>,
    /// Distinct `model` label values before the rest fold into `other`.
    pub max_models: usize,
    /// Distinct `client` label values before the rest fold into `other`.
    pub max_clients: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: None, max_models: 50, max_clients: 100 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// After SIGTERM: how long listeners keep accepting (with `/readyz` 503) before they close.
    pub grace_period: Dur,
    /// Once the listeners have closed (SIGTERM, or SIGQUIT after the hand-over): the longest
    /// in-flight requests and streams get to finish. The process exits as soon as they have.
    pub shutdown_timeout: Dur,
    /// Longest a client may take to send a whole request header, counted from the connection's
    /// accept or the next request's first byte (a slower one gets 408 and the connection closes).
    pub client_header_timeout: Dur,
    /// Longest wait for the next piece of a client's request body (slow clients get 408).
    pub client_body_timeout: Dur,
    /// Largest request header (request line + fields) forwarded; larger gets 431.
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
    /// How long an idle client connection is kept open for its next request.
    pub keepalive_timeout: Dur,
    /// Written at start; `serve --upgrade` reads it to find the process it takes over from.
    pub pid_file: PathBuf,
    /// Where the old process hands its listening sockets to the new one (`--upgrade`).
    pub upgrade_sock: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grace_period: Dur::secs(5),
            shutdown_timeout: Dur::secs(30),
            client_header_timeout: Dur::secs(10),
            client_body_timeout: Dur::secs(60),
            max_header_bytes: ByteSize(64 * 1024),
            max_headers: 100,
            keepalive_timeout: Dur::secs(60),
            pid_file: "/tmp/ollama-pool.pid".into(),
            upgrade_sock: "/tmp/ollama-pool-upgrade.sock".into(),
        }
    }
}

// ---- validation: each section checks itself, then the cross-checks ----

type Errors = Vec<ConfigError>;

fn err(errors: &mut Errors, path: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError { path: path.into(), message: message.into() });
}

impl Config {
    pub fn validate(&self) -> Errors {
        let mut e = Vec::new();
        if self.listen.is_empty() {
            err(&mut e, "listen", "at least one listener is required");
        }
        for (i, l) in self.listen.iter().enumerate() {
            if l.address().parse::<std::net::SocketAddr>().is_err() {
                err(&mut e, format!("listen[{i}]"), format!("{:?} is not an ip:port address", l.address()));
            }
        }
        if self.threads == 0 {
            err(&mut e, "threads", "must be at least 1");
        }
        self.upstream.validate(&mut e);
        if let Some(a) = &self.admin {
            a.validate(&mut e);
        }
        if self.store.flush_interval.0.is_zero() {
            err(&mut e, "store.flush_interval", "must be greater than 0s");
        }
        if self.store.encryption_key.as_ref().is_some_and(|k| k.len() < 16) {
            err(&mut e, "store.encryption_key", "must be at least 16 characters");
        }
        if !(8..=65536).contains(&self.keys.max_key_bytes) {
            err(&mut e, "keys.max_key_bytes", "must be between 8 and 65536");
        }
        self.pool.validate(&mut e);
        self.clients.validate(&mut e);
        self.routes.validate(&mut e);
        self.cors.validate(&mut e);
        if let Some(m) = &self.metrics.listen {
            if m.parse::<std::net::SocketAddr>().is_err() {
                err(&mut e, "metrics.listen", format!("{m:?} is not an ip:port address"));
            }
        }
        self.health_check.validate(&mut e);
        if !(1024..=1024 * 1024).contains(&self.server.max_header_bytes.0) {
            err(&mut e, "server.max_header_bytes", "must be between 1KiB and 1MiB (pingora's own limit)");
        }
        if !(8..=256).contains(&self.server.max_headers) {
            err(&mut e, "server.max_headers", "must be between 8 and 256 (pingora's own limit)");
        }
        if self.server.client_header_timeout.0.is_zero() {
            err(&mut e, "server.client_header_timeout", "must be greater than 0s");
        }
        if self.server.keepalive_timeout.0.is_zero() {
            err(&mut e, "server.keepalive_timeout", "must be greater than 0s");
        }
        e
    }
}

impl Config {
    /// Valid but risky settings: `check` prints them (and still exits 0), `serve` logs them.
    pub fn warnings(&self) -> Errors {
        let mut w = Vec::new();
        if let Some(a) = &self.admin {
            let loopback = a.listen.parse::<std::net::SocketAddr>().is_ok_and(|s| s.ip().is_loopback());
            if !loopback {
                err(&mut w, "admin.listen", format!("{} is not a loopback address and the admin API has no TLS: its token and every answer cross the network in clear", a.listen));
            }
        }
        if self.store.encryption_key.is_none() {
            err(
                &mut w,
                "store.encryption_key",
                format!("not set: upstream keys are stored in clear in {}", self.store.path.display()),
            );
        }
        if !self.upstream.verify_tls {
            err(
                &mut w,
                "upstream.verify_tls",
                "false: the upstream's certificate is not checked, so anyone on the path can read the keys",
            );
        }
        for (i, t) in self.clients.tokens.iter().enumerate() {
            if t.token.len() < 20 {
                err(
                    &mut w,
                    format!("clients.tokens[{i}].token"),
                    format!("{} characters (client {:?}): use at least 20, it is a password", t.token.len(), t.name),
                );
            }
        }
        w
    }
}

impl UpstreamConfig {
    fn validate(&self, e: &mut Errors) {
        if self.url.is_empty() {
            err(e, "upstream.url", "required (e.g. https://ollama.com)");
        } else if let Err(m) = crate::upstream::UpstreamUrl::parse(&self.url) {
            err(e, "upstream.url", m);
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if a.parse::<std::net::SocketAddr>().is_err() {
                err(e, format!("upstream.addresses[{i}]"), format!("{a:?} is not an ip:port address"));
            }
        }
        if self.connect_timeout.0.is_zero() {
            err(e, "upstream.connect_timeout", "must be greater than 0s");
        }
        if self.read_timeout.0.is_zero() {
            err(e, "upstream.read_timeout", "must be greater than 0s");
        }
        if self.dns_refresh.0.is_zero() {
            err(e, "upstream.dns_refresh", "must be greater than 0s");
        }
    }
}

impl AdminConfig {
    fn validate(&self, e: &mut Errors) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            err(e, "admin.listen", format!("{:?} is not an ip:port address", self.listen));
        }
        match &self.token {
            None => err(e, "admin.token", "required when the admin section is present"),
            Some(t) if t.len() < 16 => err(e, "admin.token", "must be at least 16 characters"),
            _ => {}
        }
    }
}

impl PoolConfig {
    fn validate(&self, e: &mut Errors) {
        if !(1..=crate::pool::MAX_ATTEMPTS).contains(&self.max_attempts) {
            err(e, "pool.max_attempts", format!("must be between 1 and {}", crate::pool::MAX_ATTEMPTS));
        }
        if self.failure_threshold == 0 {
            err(e, "pool.failure_threshold", "must be at least 1");
        }
        if self.cooldown.0.is_zero() {
            err(e, "pool.cooldown", "must be greater than 0s");
        }
        if self.rate_limit_backoff.0.is_zero() {
            err(e, "pool.rate_limit_backoff", "must be greater than 0s");
        }
        if self.max_request_body.0 == 0 {
            err(e, "pool.max_request_body", "must be greater than 0");
        }
        if !(self.storm_fraction > 0.0 && self.storm_fraction <= 1.0) {
            err(e, "pool.storm_fraction", "must be in (0, 1]");
        }
        if self.storm_window.0.is_zero() {
            err(e, "pool.storm_window", "must be greater than 0s");
        }
    }
}

impl ClientsConfig {
    fn validate(&self, e: &mut Errors) {
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.name.trim().is_empty() {
                err(e, format!("clients.tokens[{i}].name"), "must not be empty");
            }
            if t.token.len() < 8 {
                err(e, format!("clients.tokens[{i}].token"), "must be at least 8 characters");
            }
            if !seen.insert(t.token.sha256()) {
                err(e, format!("clients.tokens[{i}].token"), "duplicates an earlier token");
            }
        }
    }
}

impl HealthCheckConfig {
    fn validate(&self, e: &mut Errors) {
        for (name, d) in
            [("interval", self.interval), ("sweep_interval", self.sweep_interval), ("timeout", self.timeout)]
        {
            if d.0.is_zero() {
                err(e, format!("health_check.{name}"), "must be greater than 0s");
            }
        }
        if self.max_backoff < self.interval {
            err(e, "health_check.max_backoff", "must be at least health_check.interval");
        }
        if self.concurrency == 0 {
            err(e, "health_check.concurrency", "must be at least 1");
        }
        if http::Method::from_bytes(self.probe.method.as_bytes()).is_err() {
            err(e, "health_check.probe.method", format!("{:?} is not an HTTP method", self.probe.method));
        }
        for (name, p) in [("probe.path", &self.probe.path), ("usage_path", &self.usage_path)] {
            if !p.starts_with('/') {
                err(e, format!("health_check.{name}"), format!("{p:?} must start with /"));
            }
        }
        if !(100..600).contains(&self.probe.expect_status.unwrap_or(200)) {
            err(e, "health_check.probe.expect_status", "must be an HTTP status (100-599)");
        }
        if !(self.park_at_usage > 0.0 && self.park_at_usage <= 1.0) {
            err(e, "health_check.park_at_usage", "must be in (0, 1]");
        }
    }
}

impl RoutesConfig {
    fn validate(&self, e: &mut Errors) {
        for (i, r) in self.allow.iter().enumerate() {
            if !(r.starts_with("/v1/") || r.starts_with("/api/")) {
                err(e, format!("routes.allow[{i}]"), format!("{r:?} must start with /v1/ or /api/"));
            } else if r.contains('*') && !r.ends_with("/*") {
                err(e, format!("routes.allow[{i}]"), format!("{r:?}: '*' is only allowed as a final /*"));
            }
        }
    }
}
