//! Builds the pingora `Server` and its services from a loaded config: the one place that knows
//! every listener and background task. `main.rs` runs what this returns; tests run it in-process.

use crate::admin::ops::{self, Control};
use crate::admin::AdminApp;
use crate::config::Loaded;
use crate::health::HealthService;
use crate::import;
use crate::lifecycle::{self, Drain, Signals};
use crate::pool::Clock;
use crate::proxy::auth::Clients;
use crate::proxy::header_deadline::HeaderDeadline;
use crate::proxy::{PoolProxy, ProxyState};
use crate::runtime::Runtime;
use crate::store::{CounterFlusher, SqliteStore, Store, StoredKey};
use arc_swap::ArcSwap;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{yaml}[{index}]: cannot read {path}: {source}")]
    KeyFile { index: usize, yaml: String, path: String, source: std::io::Error },
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
    /// Re-reads the config file (None when the config did not come from a file).
    pub reloader: Option<Arc<crate::reload::Reloader>>,
    pub health: Arc<HealthService>,
    pub store: Arc<dyn Store>,
    pub flusher: Arc<CounterFlusher>,
    /// Saves the usage ledger (periodically, and last at shutdown).
    pub usage_flusher: Arc<crate::usage::UsageFlusher>,
    mode: RunMode,
    grace_period: std::time::Duration,
    pid_file: std::path::PathBuf,
}

/// Each plain-TCP client connection reads through a 16 KiB buffer, not pingora's 64 KiB: a
/// request header and a typical body fit, a big body takes a few more reads, and an open stream
/// holds 48 KiB less (issue #14 item 5: RSS with 1,000 idle streams, benches/README.md).
/// TLS listeners keep pingora's default, which batches its 16 KiB record reads.
fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(16 * 1024)
}

pub fn build(loaded: &Loaded, mode: RunMode, clock: Arc<dyn Clock>) -> Result<App, AppError> {
    let cfg = &loaded.config;
    for w in cfg.warnings() {
        log::warn!("config: {w}");
    }
    crate::metrics::init(cfg.metrics.max_models, cfg.metrics.max_clients);

    let events = Arc::new(crate::pool::Events::default());
    events.subscribe(Arc::new(crate::metrics::EventMetrics));
    let (intake, notices) = crate::notify::channel();
    events.subscribe(Arc::new(intake));
    // With a Redis store, key changes are shared with the other instances on it.
    let fleet = match (&cfg.store.kind, &cfg.store.url) {
        (crate::config::StoreKind::Redis, Some(url)) => {
            let (fleet, outbox) =
                crate::fleet::Fleet::new(url, &cfg.store.prefix, &cfg.fleet.instance, cfg.fleet.heartbeat.0)
                    .map_err(|e| AppError::Server(format!("fleet: {e}")))?;
            events.subscribe(Arc::new(outbox.clone()));
            Some((fleet, outbox))
        }
        _ => None,
    };
    let runtime = Runtime::build(cfg, &|p| loaded.resolve(p), None, clock.clone(), events)
        .map_err(|problems| AppError::Server(problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")))?;
    let store: Arc<dyn Store> = open_store(loaded)?;
    let new_from_files = load_key_files(loaded, &runtime, &*store, clock.now_ms())?;
    fill_pools(&runtime, &store.keys()?, clock.now_ms());
    let clients = Arc::new(Clients::from_static(&cfg.clients.tokens));
    for t in store.tokens()? {
        clients.insert(t.hash, ops::to_client(&t));
    }
    // In fleet mode the budgets' use is the fleet's counters in Redis (`fleet::limits`).
    if fleet.is_none() {
        crate::usage::seed_budgets(&clients, &*store, clock.now_ms())?;
    }
    let usage = Arc::new(crate::usage::Ledger::default());
    notices.arm();
    store.release_memory();
    lifecycle::return_freed_memory();
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));

    let conf = ServerConf {
        threads: cfg.threads,
        daemon: mode.daemon,
        // Pingora sleeps this long after it stops accepting, then drops whatever still runs;
        // `shutdown` ends the process earlier, as soon as the last request has finished.
        grace_period_seconds: Some(cfg.server.shutdown_timeout.0.as_secs()),
        // Only blocking threads wait on this; async tasks are dropped at once.
        graceful_shutdown_timeout_seconds: Some(1),
        // Our own Attempts policy bounds retries; this only stops pingora from looping further.
        max_retries: cfg.pool.max_attempts.max(1),
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
        runtime: runtime.clone(),
        clients: clients.clone(),
        clock: clock.clone(),
        client_body_timeout: cfg.server.client_body_timeout.0,
        connector: Arc::new(Connector::new(Some(ConnectorOptions::from_server_conf(&server.configuration)))),
        drain: Arc::new(Drain::default()),
        max_header_bytes: cfg.server.max_header_bytes.0 as usize,
        max_headers: cfg.server.max_headers,
        keepalive_secs: cfg.server.keepalive_timeout.0.as_secs().max(1),
        usage: usage.clone(),
    });
    let proxy_app = pingora::proxy::http_proxy(&server.configuration, PoolProxy { state: state.clone() });
    let mut proxy = Service::new(
        "ollama-pool proxy".to_string(),
        HeaderDeadline::new(proxy_app, cfg.server.client_header_timeout.0),
    );
    for l in &cfg.listen {
        match l.tls() {
            None => proxy.add_listener(ListenerConfig::tcp(l.address()).l4_buffer(client_buffers())),
            Some(tls) => proxy
                .add_tls(l.address(), &tls.cert.display().to_string(), &tls.key.display().to_string())
                .map_err(|e| AppError::Listener { address: l.address().into(), message: e.to_string() })?,
        }
    }
    server.add_service(proxy);
    server.add_service(GenBackgroundService::new(
        "upstream addresses".into(),
        Arc::new(crate::upstream::AddressService { runtime: state.runtime_cell() }),
    ));
    let health = Arc::new(HealthService::new(state.runtime_cell(), state.connector.clone()));
    server.add_service(GenBackgroundService::new("health checks".into(), health.clone()));
    let pools_of = state.clone();
    let flusher = Arc::new(CounterFlusher {
        store: store.clone(),
        pools: Box::new(move || pools_of.runtime.load().providers.iter().map(|p| p.pool.clone()).collect()),
        interval: cfg.store.flush_interval.0,
        // The counters just loaded are what the store holds.
        saved_upto: std::sync::atomic::AtomicU64::new(clock.now_ms()),
    });
    server.add_service(GenBackgroundService::new("counter snapshots".into(), flusher.clone()));
    let usage_flusher = Arc::new(crate::usage::UsageFlusher {
        ledger: usage,
        store: store.clone(),
        clock: clock.clone(),
        interval: cfg.store.flush_interval.0,
    });
    server.add_service(GenBackgroundService::new("usage".into(), usage_flusher.clone()));
    let weak = Arc::downgrade(&state);
    crate::metrics::PoolCollector::register(Arc::new(move || {
        let Some(state) = weak.upgrade() else { return Vec::new() };
        let rt = state.runtime.load();
        rt.providers.iter().map(|p| (p.name.clone(), p.pool.clone())).collect()
    }));

    if let Some((f, outbox)) = &fleet {
        f.start(state.runtime_cell(), clients.clone(), store.clone(), clock.clone());
        // Keys only this instance's key files had are news to the running others.
        if new_from_files > 0 {
            outbox.resync();
        }
    }
    let notify = Arc::new(crate::notify::NotifyService::new(notices, state.runtime_cell()));
    let hub = notify.hub();
    server.add_service(GenBackgroundService::new("notifications".into(), notify));
    let webhooks = crate::notify::webhooks::WebhookService::new(
        &hub,
        state.runtime_cell(),
        cfg.fleet.instance.clone(),
        state.connector.clone(),
    );
    server.add_service(GenBackgroundService::new("webhooks".into(), Arc::new(webhooks)));

    crate::metrics::config_generation(1);
    let reloader = loaded
        .source
        .clone()
        .map(|path| Arc::new(crate::reload::Reloader::new(path, state.clone(), store.clone(), clock.clone())));
    if let Some(r) = &reloader {
        server.add_service(GenBackgroundService::new(
            "config reload on SIGHUP".into(),
            Arc::new(crate::reload::SighupService { reloader: r.clone() }),
        ));
    }
    if let Some(m) = &cfg.metrics.listen {
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(m);
        server.add_service(metrics);
    }
    if let Some(admin) = &cfg.admin {
        let token = admin.token.as_ref().ok_or_else(|| AppError::Server("admin.token is required".into()))?;
        let control = Control {
            store: store.clone(),
            runtime: Some(state.runtime_cell()),
            providers: cfg.provider_entries().into_iter().map(|(_, p)| p.name).collect(),
            clients: Some(clients),
            clock,
            max_key_bytes: cfg.keys.max_key_bytes,
            fleet: fleet.as_ref().map(|(_, outbox)| outbox.clone()),
        };
        let instance = cfg.fleet.instance.clone();
        let app = AdminApp::new(control, health.clone(), state.clone(), reloader.clone(), hub, instance, token);
        let mut service = Service::new("ollama-pool admin".to_string(), app);
        service.add_tcp(&admin.listen);
        server.add_service(service);
    }
    Ok(App {
        server,
        state,
        reloader,
        health,
        store,
        flusher,
        usage_flusher,
        mode,
        grace_period: cfg.server.grace_period.0,
        pid_file: cfg.server.pid_file.clone(),
    })
}

impl App {
    /// Runs until a signal stops the server (see `crate::lifecycle`), then saves the counters.
    pub fn serve(self) {
        let App { server, state, flusher, usage_flusher, mode, grace_period, pid_file, .. } = self;
        // Pingora writes the pid file itself after a daemon fork; otherwise we do, so that
        // `serve --upgrade` finds this process.
        let own_pid_file = !mode.daemon && lifecycle::write_pid_file(&pid_file);
        // The last step, whichever way the server ends (drained early, or pingora's deadline).
        let finish = Arc::new(move || {
            flusher.flush();
            usage_flusher.flush();
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

/// Opens the store the config names: SQLite at `store.path` (relative to the config file) or
/// Redis at `store.url` under `store.prefix`; upstream keys sealed with `store.encryption_key`.
/// An unreachable Redis is an error here: without it there is no key state to start from.
pub fn open_store(loaded: &Loaded) -> Result<Arc<dyn Store>, AppError> {
    let cfg = &loaded.config.store;
    Ok(match (cfg.kind, &cfg.url) {
        (crate::config::StoreKind::Redis, Some(url)) => {
            Arc::new(crate::store::RedisStore::open(url, &cfg.prefix, cfg.encryption_key.as_ref())?)
        }
        _ => Arc::new(SqliteStore::open(&loaded.resolve(&cfg.path), cfg.encryption_key.as_ref())?),
    })
}

/// Puts every stored key into its provider's pool (keys of a provider the config no longer
/// names stay in the store, out of traffic, and are reported).
pub fn fill_pools(runtime: &Runtime, stored: &[StoredKey], now: u64) {
    let mut orphans = 0;
    for p in &runtime.providers {
        let mine = runtime.stored_keys_of(p, stored);
        let (added, _) = p.pool.add_all(mine.filter_map(|k| ops::to_pool_key(k, &p.auth, now)));
        if added > 0 || runtime.providers.len() == 1 {
            log::info!("keys: provider {}: {} in the pool ({} usable)", p.name, p.pool.len(), p.pool.usable_count());
        }
        if p.pool.is_empty() {
            log::warn!("keys: provider {}: the pool is empty; requests routed to it are answered 503", p.name);
        }
    }
    for k in stored {
        if runtime.provider_for_stored(&k.provider).is_none() {
            orphans += 1;
        }
    }
    if orphans > 0 {
        log::warn!("keys: {orphans} stored keys belong to providers the config no longer names; they serve no traffic");
    }
}

/// The keys every provider's `keys.files` list, as stored keys of that provider (problem
/// lines are reported by number, never by content).
pub fn read_key_files(loaded: &Loaded, runtime: &Runtime, now: u64) -> Result<Vec<StoredKey>, AppError> {
    let mut out = Vec::new();
    for (path, p) in loaded.config.provider_entries() {
        let provider = if runtime.providers.len() == 1 { String::new() } else { p.name.clone() };
        let files_path = if path == "upstream" { "keys.files".to_string() } else { format!("{path}.keys.files") };
        for (index, file) in p.keys.iter().flat_map(|k| &k.files).enumerate() {
            let full = loaded.resolve(file);
            let text = std::fs::read_to_string(&full).map_err(|source| AppError::KeyFile {
                index,
                yaml: files_path.clone(),
                path: full.display().to_string(),
                source,
            })?;
            let parsed = import::parse(&text, loaded.config.keys.max_key_bytes);
            for bad in &parsed.invalid {
                log::warn!("keys: {} line {}: {}", full.display(), bad.line, bad.reason);
            }
            out.extend(parsed.keys.into_iter().map(|k| StoredKey {
                id: k.key.id(),
                secret: k.key,
                label: k.label,
                created_at_ms: now,
                expires_at_ms: None,
                disabled_until_ms: None,
                models: vec![],
                category: None,
                counters: Default::default(),
                provider: provider.clone(),
                from_file: true,
            }));
        }
    }
    Ok(out)
}

/// Imports every provider's key files into the store (idempotent: keys already stored are
/// left as they are, and keys an operator removed stay removed).
/// Stores the keys of the key files that the store lacks; returns how many were new.
fn load_key_files(loaded: &Loaded, runtime: &Runtime, store: &dyn Store, now: u64) -> Result<usize, AppError> {
    let keys = read_key_files(loaded, runtime, now)?;
    let added = store.insert_keys(&keys, true)?.len();
    if !keys.is_empty() {
        log::info!("keys: key files: {added} new, {} already stored or removed by an operator", keys.len() - added);
    }
    Ok(added)
}
