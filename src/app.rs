//! Builds the pingora `Server` and its services from a loaded config: the one place that knows
//! every listener and background task. `main.rs` runs what this returns; tests run it in-process.

use crate::admin::ops::{self, Control};
use crate::admin::AdminApp;
use crate::config::Loaded;
use crate::health::HealthChecker;
use crate::import;
use crate::lifecycle::{self, Drain, Signals};
use crate::pool::{Clock, Policy, Pool, StormPolicy};
use crate::proxy::auth::Clients;
use crate::proxy::header_deadline::HeaderDeadline;
use crate::proxy::routes::AllowList;
use crate::proxy::{PoolProxy, ProxyState};
use crate::store::{CounterFlusher, SqliteStore, Store, StoredKey};
use crate::upstream::Upstream;
use pingora::apps::http_app::HttpServer;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
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
    #[error("serve --upgrade: {0}")]
    Upgrade(#[from] lifecycle::UpgradeError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
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
    pub store: Arc<dyn Store>,
    pub flusher: Arc<CounterFlusher>,
    mode: RunMode,
    grace_period: std::time::Duration,
    pid_file: std::path::PathBuf,
}

pub fn build(loaded: &Loaded, mode: RunMode, clock: Arc<dyn Clock>) -> Result<App, AppError> {
    let cfg = &loaded.config;
    for w in cfg.warnings() {
        log::warn!("config: {w}");
    }
    crate::metrics::init(cfg.metrics.max_models, cfg.metrics.max_clients);

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
        clock.clone(),
    ));
    let store: Arc<dyn Store> = Arc::new(open_store(loaded)?);
    load_key_files(loaded, &*store, clock.now_ms())?;
    crate::metrics::PoolCollector::register(&pool);
    let stored = store.keys()?;
    let now = clock.now_ms();
    let (added, _) = pool.add_all(stored.iter().filter_map(|k| ops::to_pool_key(k, now)));
    log::info!("keys: {added} in the pool ({} usable)", pool.usable_count());
    if pool.is_empty() {
        log::warn!("keys: the pool is empty; every proxied request will be answered 503");
    }
    let clients = Arc::new(Clients::from_static(&cfg.clients.tokens));
    for t in store.tokens()? {
        clients.insert(t.hash, ops::to_client(&t));
    }
    let mut upstream_cfg = cfg.upstream.clone();
    upstream_cfg.ca_file = upstream_cfg.ca_file.map(|p| loaded.resolve(&p));
    let upstream = Arc::new(Upstream::new(&upstream_cfg).map_err(AppError::Upstream)?);

    let conf = ServerConf {
        threads: cfg.threads,
        daemon: mode.daemon,
        // Pingora sleeps this long after it stops accepting, then drops whatever still runs;
        // `shutdown` ends the process earlier, as soon as the last request has finished.
        grace_period_seconds: Some(cfg.server.shutdown_timeout.0.as_secs()),
        // Only blocking threads wait on this; async tasks are dropped at once.
        graceful_shutdown_timeout_seconds: Some(1),
        // Our own Attempts policy bounds retries; this only stops pingora from looping further.
        max_retries: cfg.pool.max_attempts,
        pid_file: cfg.server.pid_file.display().to_string(),
        upgrade_sock: cfg.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt { upgrade: mode.upgrade, daemon: mode.daemon, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if mode.upgrade {
        // Everything above could fail without harm; from here on the old process lets go.
        let old = lifecycle::take_over_from(&cfg.server.pid_file)?;
        log::info!("upgrade: asked pid {old} to hand over its listeners");
    }
    // With --upgrade this waits (up to ~5 s) for the old process's listening sockets.
    server.bootstrap();

    let state = Arc::new(ProxyState {
        pool,
        clients: clients.clone(),
        upstream: upstream.clone(),
        routes: AllowList::new(&cfg.routes.allow),
        max_attempts: cfg.pool.max_attempts,
        max_request_body: cfg.pool.max_request_body.0,
        forward_client_ip: cfg.upstream.forward_client_ip_headers,
        client_body_timeout: cfg.server.client_body_timeout.0,
        connector: Connector::new(Some(ConnectorOptions::from_server_conf(&server.configuration))),
        drain: Arc::new(Drain::default()),
        cors: crate::proxy::cors::Cors::new(&cfg.cors.allow_origins, cfg.cors.max_age.0),
        max_header_bytes: cfg.server.max_header_bytes.0 as usize,
        max_headers: cfg.server.max_headers,
        keepalive_secs: cfg.server.keepalive_timeout.0.as_secs().max(1),
    });

    let proxy_app = pingora::proxy::http_proxy(&server.configuration, PoolProxy { state: state.clone() });
    let mut proxy = Service::new(
        "ollama-pool proxy".to_string(),
        HeaderDeadline::new(proxy_app, cfg.server.client_header_timeout.0),
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
    let flusher = Arc::new(CounterFlusher {
        store: store.clone(),
        pool: state.pool.clone(),
        interval: cfg.store.flush_interval.0,
    });
    server.add_service(GenBackgroundService::new("counter snapshots".into(), flusher.clone()));

    if let Some(m) = &cfg.metrics.listen {
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(m);
        server.add_service(metrics);
    }
    if let Some(admin) = &cfg.admin {
        let token = admin.token.as_ref().ok_or_else(|| AppError::Server("admin.token is required".into()))?;
        let control = Control {
            store: store.clone(),
            pool: Some(state.pool.clone()),
            clients: Some(clients),
            clock,
            max_key_bytes: cfg.keys.max_key_bytes,
        };
        let app = AdminApp::new(control, health.clone(), state.clone(), token);
        let mut service = Service::new("ollama-pool admin".to_string(), HttpServer::new_app(app));
        service.add_tcp(&admin.listen);
        server.add_service(service);
    }
    Ok(App {
        server,
        state,
        health,
        store,
        flusher,
        mode,
        grace_period: cfg.server.grace_period.0,
        pid_file: cfg.server.pid_file.clone(),
    })
}

impl App {
    /// Runs until a signal stops the server (see `crate::lifecycle`), then saves the counters.
    pub fn serve(self) {
        let App { server, state, flusher, mode, grace_period, pid_file, .. } = self;
        // Pingora writes the pid file itself after a daemon fork; otherwise we do, so that
        // `serve --upgrade` finds this process.
        let own_pid_file = !mode.daemon && lifecycle::write_pid_file(&pid_file);
        // The last step, whichever way the server ends (drained early, or pingora's deadline).
        let finish = Arc::new(move || {
            flusher.flush();
            if own_pid_file {
                lifecycle::remove_pid_file(&pid_file);
            }
        });
        let signals = Signals {
            drain: state.drain.clone(),
            grace_period,
            on_drained: finish.clone(),
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
        };
        server.run(RunArgs { shutdown_signal: Box::new(signals) });
        // The service's own shutdown flush can be cut short when pingora drops the runtime;
        // this one runs after every runtime has stopped, so it always lands.
        finish();
    }
}

/// Opens `store.path` (relative to the config file), decrypting with `store.encryption_key`.
pub fn open_store(loaded: &Loaded) -> Result<SqliteStore, AppError> {
    let cfg = &loaded.config.store;
    Ok(SqliteStore::open(&loaded.resolve(&cfg.path), cfg.encryption_key.as_ref())?)
}

/// Imports `keys.files` into the store (idempotent: keys already stored are left as they are).
/// Problem lines are reported by number, never by content.
fn load_key_files(loaded: &Loaded, store: &dyn Store, now: u64) -> Result<(), AppError> {
    for (index, file) in loaded.config.keys.files.iter().enumerate() {
        let path = loaded.resolve(file);
        let text = std::fs::read_to_string(&path).map_err(|source| AppError::KeyFile {
            index,
            path: path.display().to_string(),
            source,
        })?;
        let parsed = import::parse(&text, loaded.config.keys.max_key_bytes);
        for bad in &parsed.invalid {
            log::warn!("keys: {} line {}: {}", path.display(), bad.line, bad.reason);
        }
        let keys: Vec<StoredKey> = parsed
            .keys
            .into_iter()
            .map(|k| StoredKey {
                id: k.key.id(),
                secret: k.key,
                label: k.label,
                created_at_ms: now,
                expires_at_ms: None,
                disabled_until_ms: None,
                models: vec![],
                category: None,
                counters: Default::default(),
            })
            .collect();
        let added = store.insert_keys(&keys, true)?.len();
        log::info!(
            "keys: {}: {added} new, {} already stored, repeated or removed by an operator, {} invalid lines",
            path.display(),
            keys.len() - added + parsed.duplicates,
            parsed.invalid.len()
        );
    }
    Ok(())
}
