//! Builds the pingora `Server` and its services from a loaded config: the one place that knows
//! every listener and background task. `main.rs` runs what this returns; tests run it in-process.

use crate::config::Loaded;
use crate::health::HealthChecker;
use crate::import;
use crate::pool::{Clock, Key, Policy, Pool, StormPolicy};
use crate::proxy::auth::Clients;
use crate::proxy::routes::AllowList;
use crate::proxy::{PoolProxy, ProxyState};
use crate::secret::Secret;
use crate::upstream::Upstream;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("keys.files[{index}]: cannot read {path}: {source}")]
    KeyFile { index: usize, path: String, source: std::io::Error },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("listen {address}: {message}")]
    Listener { address: String, message: String },
    #[error("server: {0}")]
    Server(String),
}

/// How `serve` was asked to run (pingora's process flags).
#[derive(Debug, Default, Clone, Copy)]
pub struct RunMode {
    pub daemon: bool,
    pub upgrade: bool,
}

pub struct App {
    pub server: Server,
    pub state: Arc<ProxyState>,
    pub health: Arc<HealthChecker>,
}

pub fn build(loaded: &Loaded, mode: RunMode, clock: Arc<dyn Clock>) -> Result<App, AppError> {
    let cfg = &loaded.config;
    crate::metrics::init();

    let pool = Arc::new(Pool::new(
        Policy {
            failure_threshold: cfg.pool.failure_threshold,
            cooldown: cfg.pool.cooldown.0,
            rate_limit_backoff: cfg.pool.rate_limit_backoff.0,
            storm: StormPolicy {
                window: cfg.pool.storm_window.0,
                fraction: cfg.pool.storm_fraction,
                min_keys: cfg.pool.storm_min_keys,
                // Clients are told to come back when the next probe may have ended it.
                retry_after: cfg.health_check.interval.0,
            },
        },
        clock,
    ));
    load_key_files(loaded, &pool)?;
    let mut upstream_cfg = cfg.upstream.clone();
    upstream_cfg.ca_file = upstream_cfg.ca_file.map(|p| loaded.resolve(&p));
    let upstream = Arc::new(Upstream::new(&upstream_cfg).map_err(AppError::Upstream)?);

    let conf = ServerConf {
        threads: cfg.threads,
        daemon: mode.daemon,
        grace_period_seconds: Some(cfg.server.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.shutdown_timeout.0.as_secs()),
        // Our own Attempts policy bounds retries; this only stops pingora from looping further.
        max_retries: cfg.pool.max_attempts,
        pid_file: cfg.server.pid_file.display().to_string(),
        upgrade_sock: cfg.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt { upgrade: mode.upgrade, daemon: mode.daemon, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let state = Arc::new(ProxyState {
        pool,
        clients: Arc::new(Clients::from_static(&cfg.clients.tokens)),
        upstream: upstream.clone(),
        routes: AllowList::new(&cfg.routes.allow),
        max_attempts: cfg.pool.max_attempts,
        max_request_body: cfg.pool.max_request_body.0,
        forward_client_ip: cfg.upstream.forward_client_ip_headers,
        client_body_timeout: cfg.server.client_body_timeout.0,
        connector: Connector::new(Some(ConnectorOptions::from_server_conf(&server.configuration))),
    });

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        PoolProxy { state: state.clone() },
        "ollama-pool proxy",
    );
    for l in &cfg.listen {
        match l.tls() {
            None => proxy.add_tcp(l.address()),
            Some(tls) => proxy
                .add_tls(l.address(), &tls.cert.display().to_string(), &tls.key.display().to_string())
                .map_err(|e| AppError::Listener { address: l.address().into(), message: e.to_string() })?,
        }
    }
    server.add_service(proxy);
    server.add_service(GenBackgroundService::new("upstream addresses".into(), upstream.load_balancer()));
    let health = Arc::new(HealthChecker::new(
        state.pool.clone(),
        upstream.clone(),
        Connector::new(Some(ConnectorOptions::from_server_conf(&server.configuration))),
        cfg.health_check.clone(),
    ));
    server.add_service(GenBackgroundService::new("health checks".into(), health.clone()));

    if let Some(m) = &cfg.metrics.listen {
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(m);
        server.add_service(metrics);
    }
    if cfg.admin.is_some() {
        log::warn!("admin: the admin API is not part of this build yet; the admin section is validated but not served");
    }
    Ok(App { server, state, health })
}

/// Imports `keys.files` into the pool. Problem lines are reported by number, never by content.
fn load_key_files(loaded: &Loaded, pool: &Pool) -> Result<(), AppError> {
    for (index, file) in loaded.config.keys.files.iter().enumerate() {
        let path = loaded.resolve(file);
        let text = std::fs::read_to_string(&path).map_err(|source| AppError::KeyFile {
            index,
            path: path.display().to_string(),
            source,
        })?;
        let parsed = import::parse(&text);
        for bad in &parsed.invalid {
            log::warn!("keys: {} line {}: {}", path.display(), bad.line, bad.reason);
        }
        let keys = parsed.keys.into_iter().filter_map(|k| match Key::new(k.key, k.label, None) {
            Ok(key) => Some(key),
            Err(reason) => {
                log::warn!("keys: {} line {}: {reason}", path.display(), k.line);
                None
            }
        });
        let (added, already) = pool.add_all(keys);
        log::info!(
            "keys: {}: {added} added, {} duplicate, {} invalid",
            path.display(),
            already + parsed.duplicates,
            parsed.invalid.len()
        );
    }
    if pool.is_empty() {
        log::warn!("keys: the pool is empty; every proxied request will be answered 503");
    }
    Ok(())
}

/// Adds one key by its clear text (tests and, later, the admin API).
pub fn add_key(pool: &Pool, secret: &str, label: Option<String>) -> Result<Arc<Key>, String> {
    let key = Key::new(Secret::new(secret), label, None)?;
    pool.add(key).map_err(|e| format!("{e:?}"))
}
