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
    /// The one upstream of a single-provider config (provider `default`, kind `ollama`).
    pub upstream: Option<UpstreamConfig>,
    /// Several upstreams, each with its own key pool (SPEC §2.2.1); excludes `upstream`.
    pub providers: Vec<UpstreamConfig>,
    pub routing: RoutingConfig,
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
    pub fleet: FleetConfig,
    pub notifications: NotificationsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![Listener::Plain("0.0.0.0:8080".into())],
            threads: 2,
            upstream: None,
            providers: Vec::new(),
            routing: RoutingConfig::default(),
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
            fleet: FleetConfig::default(),
            notifications: NotificationsConfig::default(),
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

/// One upstream API and how to talk to it: `upstream:` (the provider `default`) or an entry
/// of `providers:`. The provider-only fields (`name`, `keys`, `prefix`) are refused under
/// `upstream:`, where `keys:` at the top level holds the key files.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `[a-z0-9_-]+`, unique; shown in logs, metrics and the admin API.
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL (required), e.g. `https://ollama.com`. Request paths are appended.
    pub url: String,
    /// This provider's key files (`providers[]` only).
    pub keys: Option<ProviderKeys>,
    /// The header that carries the key; default per kind (`authorization: Bearer`, anthropic
    /// `x-api-key` without a scheme).
    pub auth: Option<AuthConfig>,
    /// The token-free validity probe; default per kind (ollama: `health_check.probe`).
    pub probe: Option<ProbeConfig>,
    /// Where a key's model list is read (token-free); default per kind.
    pub models_path: Option<String>,
    /// Models this provider serves (`prefix*` globs); empty = what its keys report, else any.
    pub models: Vec<String>,
    /// A path prefix that selects this provider outright (`/openrouter`: `/openrouter/v1/...`),
    /// stripped before forwarding (`providers[]` only).
    pub prefix: Option<String>,
    /// In-flight requests per key; a key at its cap is skipped. 0 = unlimited.
    pub max_concurrency_per_key: u32,
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
            name: String::new(),
            kind: ProviderKind::Ollama,
            url: String::new(),
            keys: None,
            auth: None,
            probe: None,
            models_path: None,
            models: Vec::new(),
            prefix: None,
            max_concurrency_per_key: 0,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Ollama,
    /// Any OpenAI-compatible API.
    Openai,
    Openrouter,
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Ollama => "ollama",
            ProviderKind::Openai => "openai",
            ProviderKind::Openrouter => "openrouter",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderKeys {
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub header: String,
    /// `Bearer` → `authorization: Bearer <key>`; absent → the key alone.
    #[serde(default)]
    pub scheme: Option<String>,
}

/// `routing:` (SPEC §3.7): the provider for a model nobody claims, and model aliases.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// A provider name; default: the first provider.
    pub default: Option<String>,
    /// `alias: "provider:model"`: the request's `model` is rewritten to `model` and goes to
    /// `provider`.
    pub aliases: std::collections::BTreeMap<String, String>,
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
    /// `sqlite` (one instance) or `redis` (a fleet sharing one Redis, SPEC §3.9).
    pub kind: StoreKind,
    /// SQLite file, created if missing; relative paths are relative to the config file.
    pub path: PathBuf,
    /// `kind: redis`: `redis://[:password@]host[:port][/db]`.
    pub url: Option<String>,
    /// `kind: redis`: every Redis key this instance writes starts with `<prefix>:`.
    pub prefix: String,
    /// Encrypt upstream keys at rest with this passphrase (AES-256-GCM).
    pub encryption_key: Option<Secret>,
    /// How often per-key counters are saved (and once more at shutdown).
    pub flush_interval: Dur,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            path: "data/ollama-pool.db".into(),
            url: None,
            prefix: "ollama-pool".into(),
            encryption_key: None,
            flush_interval: Dur::secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Redis,
}

impl StoreConfig {
    fn validate(&self, e: &mut Errors) {
        if self.flush_interval.0.is_zero() {
            err(e, "store.flush_interval", "must be greater than 0s");
        }
        if self.encryption_key.as_ref().is_some_and(|k| k.len() < 16) {
            err(e, "store.encryption_key", "must be at least 16 characters");
        }
        match (self.kind, &self.url) {
            (StoreKind::Redis, None) => err(e, "store.url", "required with store.kind: redis (redis://host:6379/0)"),
            (StoreKind::Redis, Some(u)) => {
                if let Err(m) = crate::store::redis_url_problem(u) {
                    err(e, "store.url", m);
                }
            }
            (StoreKind::Sqlite, Some(_)) => err(e, "store.url", "only used with store.kind: redis"),
            (StoreKind::Sqlite, None) => {}
        }
        if self.prefix.is_empty() || self.prefix.contains(|c: char| c.is_whitespace() || c == ':' || c.is_control()) {
            err(e, "store.prefix", "must be a non-empty name without spaces or ':'");
        }
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
    /// Also ask how much of each window a key has used — Ollama Cloud's documented
    /// `balance_path` (`GET /api/balance`), else the older `usage_path` (`GET /api/usage`) — and
    /// park keys at or above `park_at_usage` until the reset.
    pub usage_probe: bool,
    pub balance_path: String,
    /// `balance_path` asks per minute across a provider's keys (Ollama allows 10 per account,
    /// shared by its keys); a probe past it reads `usage_path` instead. `balance_path: ""`
    /// turns the balance ask off.
    pub balance_per_minute: u32,
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
            balance_path: "/api/balance".into(),
            balance_per_minute: 10,
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
    /// Requests per minute; absent = unlimited.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Token budgets (SPEC §3.11); absent = none.
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    #[serde(default)]
    pub monthly_tokens: Option<u64>,
}

impl StaticToken {
    /// A token with no limits.
    pub fn new(name: impl Into<String>, token: Secret) -> StaticToken {
        StaticToken { name: name.into(), token, rpm: None, tpm: None, daily_tokens: None, monthly_tokens: None }
    }

    pub fn budgets(&self) -> crate::usage::Limits {
        crate::usage::Limits { tpm: self.tpm, daily_tokens: self.daily_tokens, monthly_tokens: self.monthly_tokens }
    }
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
        self.validate_providers(&mut e);
        if let Some(a) = &self.admin {
            a.validate(&mut e);
        }
        self.store.validate(&mut e);
        if !(8..=65536).contains(&self.keys.max_key_bytes) {
            err(&mut e, "keys.max_key_bytes", "must be between 8 and 65536");
        }
        self.pool.validate(&mut e);
        self.clients.validate(&mut e);
        self.routes.validate(&mut e);
        self.cors.validate(&mut e);
        self.notifications.validate(&mut e);
        if self.fleet.instance.trim().is_empty() {
            err(&mut e, "fleet.instance", "must not be empty");
        }
        let beat = self.fleet.heartbeat.0;
        if beat < std::time::Duration::from_millis(100) || beat > std::time::Duration::from_secs(60) {
            err(&mut e, "fleet.heartbeat", "must be between 100ms and 60s");
        }
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
        for (path, p) in self.provider_entries() {
            if !p.verify_tls {
                err(
                    &mut w,
                    format!("{path}.verify_tls"),
                    "false: the upstream's certificate is not checked, so anyone on the path can read the keys",
                );
            }
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

/// The name of the provider `upstream:` + `keys:` define.
pub const DEFAULT_PROVIDER: &str = "default";

impl Config {
    /// Every provider with its YAML path: `providers[i]`, or `upstream` as the provider
    /// `default` (with the top-level `keys.files`).
    pub fn provider_entries(&self) -> Vec<(String, UpstreamConfig)> {
        if !self.providers.is_empty() {
            return self.providers.iter().enumerate().map(|(i, p)| (format!("providers[{i}]"), p.clone())).collect();
        }
        let mut p = self.upstream.clone().unwrap_or_default();
        p.name = DEFAULT_PROVIDER.into();
        p.keys = Some(ProviderKeys { files: self.keys.files.clone() });
        vec![("upstream".into(), p)]
    }

    fn validate_providers(&self, e: &mut Errors) {
        if self.upstream.is_some() && !self.providers.is_empty() {
            err(e, "upstream", "cannot be used together with providers: (list it as one of the providers)");
            err(e, "providers", "cannot be used together with upstream:");
        }
        if let Some(u) = &self.upstream {
            for (field, set) in
                [("name", !u.name.is_empty()), ("keys", u.keys.is_some()), ("prefix", u.prefix.is_some())]
            {
                if set {
                    err(
                        e,
                        format!("upstream.{field}"),
                        "only under providers[] (upstream: is the provider \"default\")",
                    );
                }
            }
        }
        if !self.providers.is_empty() && !self.keys.files.is_empty() {
            err(e, "keys.files", "with providers:, list key files under each provider (providers[].keys.files)");
        }
        let entries = self.provider_entries();
        let mut names = std::collections::HashSet::new();
        let mut prefixes = std::collections::HashSet::new();
        for (path, p) in &entries {
            p.validate(path, e);
            if !self.providers.is_empty() {
                if p.name.is_empty() {
                    err(e, format!("{path}.name"), "required");
                } else if !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
                {
                    err(e, format!("{path}.name"), format!("{:?}: use [a-z0-9_-]+", p.name));
                } else if !names.insert(p.name.clone()) {
                    err(e, format!("{path}.name"), format!("{:?} is the name of an earlier provider", p.name));
                }
            }
            if let Some(pre) = &p.prefix {
                let ok = pre.starts_with('/') && pre.len() > 1 && !pre.ends_with('/') && !pre.contains(['?', '#', ' ']);
                if !ok {
                    err(
                        e,
                        format!("{path}.prefix"),
                        format!("{pre:?}: a path such as /openrouter (no trailing slash)"),
                    );
                } else if pre == "/v1" || pre == "/api" || pre.starts_with("/v1/") || pre.starts_with("/api/") {
                    err(e, format!("{path}.prefix"), format!("{pre:?} would hide the client routes under it"));
                } else if !prefixes.insert(pre.clone()) {
                    err(e, format!("{path}.prefix"), format!("{pre:?} is already another provider's prefix"));
                }
            }
        }
        let known = |n: &str| entries.iter().any(|(_, p)| p.name == n);
        if let Some(d) = &self.routing.default {
            if !known(d) {
                err(e, "routing.default", format!("no provider is named {d:?}"));
            }
        }
        for (alias, target) in &self.routing.aliases {
            let path = format!("routing.aliases.{alias}");
            match target.split_once(':') {
                Some((prov, model)) if !prov.is_empty() && !model.is_empty() => {
                    if !known(prov) {
                        err(e, path, format!("{target:?}: no provider is named {prov:?}"));
                    }
                }
                _ => err(e, path, format!("{target:?}: write provider:model (e.g. ollama:gpt-oss:20b)")),
            }
        }
    }
}

impl UpstreamConfig {
    fn validate(&self, base: &str, e: &mut Errors) {
        if self.url.is_empty() {
            err(e, format!("{base}.url"), "required (e.g. https://ollama.com)");
        } else if let Err(m) = crate::upstream::UpstreamUrl::parse(&self.url) {
            err(e, format!("{base}.url"), m.to_string());
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if a.parse::<std::net::SocketAddr>().is_err() {
                err(e, format!("{base}.addresses[{i}]"), format!("{a:?} is not an ip:port address"));
            }
        }
        if self.connect_timeout.0.is_zero() {
            err(e, format!("{base}.connect_timeout"), "must be greater than 0s");
        }
        if self.read_timeout.0.is_zero() {
            err(e, format!("{base}.read_timeout"), "must be greater than 0s");
        }
        if self.dns_refresh.0.is_zero() {
            err(e, format!("{base}.dns_refresh"), "must be greater than 0s");
        }
        if let Some(a) = &self.auth {
            if http::HeaderName::from_bytes(a.header.as_bytes()).is_err() {
                err(e, format!("{base}.auth.header"), format!("{:?} is not a header name", a.header));
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.is_empty() || m[..m.len() - 1].contains('*') {
                err(e, format!("{base}.models[{i}]"), format!("{m:?}: a model name, or a prefix ending in *"));
            }
        }
        for (field, path) in
            [("models_path", &self.models_path), ("probe.path", &self.probe.as_ref().map(|p| p.path.clone()))]
        {
            if path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                err(e, format!("{base}.{field}"), "must start with /");
            }
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

/// This instance among others (SPEC §2.2.2): its name in events and webhook payloads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Default: `$HOSTNAME`, else `pool-1`.
    pub instance: String,
    /// Fleet mode: how often an instance says it is alive on the events channel. An instance
    /// that hears nothing there (not even its own heartbeat) for three of these takes its
    /// connection to Redis for dead, reconnects and reconciles.
    pub heartbeat: Dur,
}

impl Default for FleetConfig {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME").ok().filter(|h| !h.trim().is_empty());
        FleetConfig { instance: host.unwrap_or_else(|| "pool-1".into()), heartbeat: Dur::secs(5) }
    }
}

/// Key and pool events sent to webhooks (SPEC §3.10); `GET /admin/events` needs no config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    pub webhooks: Vec<WebhookConfig>,
    /// Events within this window after the first go out in one delivery (0s: one each).
    pub batch_window: Dur,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig { webhooks: Vec::new(), batch_window: Dur::secs(2) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{instance, events:[...]}`
    Json,
    /// Slack/Discord-compatible `{"text": "..."}`
    Slack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` receiver.
    pub url: String,
    /// Event types sent to it (`key.invalid`, `pool.storm`, …); empty or absent = all.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default = "WebhookConfig::default_format")]
    pub format: WebhookFormat,
    /// Signs each body: `X-Ollama-Pool-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Longest one delivery attempt may take (connect, send, answer).
    #[serde(default = "WebhookConfig::default_timeout")]
    pub timeout: Dur,
    /// Attempts per delivery before it counts as failed.
    #[serde(default = "WebhookConfig::default_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubles with each one.
    #[serde(default = "WebhookConfig::default_backoff")]
    pub retry_backoff: Dur,
}

impl WebhookConfig {
    fn default_format() -> WebhookFormat {
        WebhookFormat::Json
    }
    fn default_timeout() -> Dur {
        Dur::secs(5)
    }
    fn default_attempts() -> u32 {
        5
    }
    fn default_backoff() -> Dur {
        Dur::secs(1)
    }
}

impl NotificationsConfig {
    fn validate(&self, e: &mut Errors) {
        if self.batch_window.0 > std::time::Duration::from_secs(60) {
            err(e, "notifications.batch_window", "must be at most 60s");
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = |field: &str| format!("notifications.webhooks[{i}].{field}");
            if let Err(m) = crate::notify::webhooks::Target::parse(&w.url) {
                err(e, at("url"), m);
            }
            for (j, ev) in w.events.iter().enumerate() {
                if !crate::notify::EVENT_TYPES.contains(&ev.as_str()) {
                    let known = crate::notify::EVENT_TYPES.join(", ");
                    err(
                        e,
                        format!("notifications.webhooks[{i}].events[{j}]"),
                        format!("unknown event {ev:?} (known: {known})"),
                    );
                }
            }
            if w.timeout.0.is_zero() {
                err(e, at("timeout"), "must be greater than 0s");
            }
            if !(1..=20).contains(&w.max_attempts) {
                err(e, at("max_attempts"), "must be between 1 and 20");
            }
            if w.retry_backoff.0.is_zero() {
                err(e, at("retry_backoff"), "must be greater than 0s");
            }
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
            if t.rpm == Some(0) {
                err(e, format!("clients.tokens[{i}].rpm"), "must be at least 1 (omit it for no limit)");
            }
            for kind in crate::usage::BudgetKind::ALL {
                if t.budgets().get(kind) == Some(0) {
                    err(
                        e,
                        format!("clients.tokens[{i}].{}", kind.as_str()),
                        "must be at least 1 (omit it for no budget)",
                    );
                }
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
