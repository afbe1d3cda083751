//! Config reload (SPEC §3.8): `SIGHUP`, `POST /admin/reload` and `ollama-pool reload` re-read
//! the config file. It is validated first — the whole file and the runtime built from it —
//! and any problem changes nothing. Otherwise the new runtime is swapped in: the next request
//! reads it, requests in flight finish on the old one. Providers that keep their name keep
//! their pools (keys keep state and counters); key files are read again, new keys join, and
//! keys that left every file (and were not added by an operator) leave the pool and the store.
//! Settings that need a restart are reported and not applied.

use crate::app::{fill_pools, read_key_files};
use crate::config::{self, Config, ConfigError};
use crate::pool::Clock;
use crate::proxy::ProxyState;
use crate::runtime::Runtime;
use crate::store::Store;
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Reloader {
    pub path: PathBuf,
    pub state: Arc<ProxyState>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    /// Top-level sections whose change now applies.
    pub applied: Vec<String>,
    /// Sections that changed but need a restart (listeners, threads, admin, store, server, metrics).
    pub restart_required: Vec<String>,
    /// Keys that joined from key files, and file keys that left every file.
    pub keys_added: usize,
    pub keys_removed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the config has problems; nothing changed")]
    Invalid(Vec<ConfigError>),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Sections that apply on reload, and those that need a restart.
const RELOADABLE: &[&str] =
    &["upstream", "providers", "routing", "keys", "pool", "health_check", "clients", "routes", "cors", "notifications"];
const RESTART: &[&str] = &["listen", "threads", "admin", "store", "server", "metrics", "fleet"];

impl Reloader {
    pub fn new(path: PathBuf, state: Arc<ProxyState>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Reloader {
        Reloader { path, state, store, clock, busy: tokio::sync::Mutex::new(()) }
    }

    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.busy.lock().await;
        let result = self.apply();
        match &result {
            Ok(r) => {
                crate::metrics::config_reload(true, r.generation);
                log::info!(
                    "reload: generation {} applied {:?}; restart required for {:?}; {} keys joined, {} left",
                    r.generation,
                    r.applied,
                    r.restart_required,
                    r.keys_added,
                    r.keys_removed
                );
            }
            Err(e) => {
                crate::metrics::config_reload(false, self.state.runtime.load().generation);
                match e {
                    ReloadError::Invalid(problems) => {
                        for p in problems {
                            log::warn!("reload: {p}");
                        }
                        log::warn!("reload: {} problems; nothing changed", problems.len());
                    }
                    e => log::warn!("reload: {e}; nothing changed"),
                }
            }
        }
        result
    }

    fn apply(&self) -> Result<Reloaded, ReloadError> {
        let loaded = config::load(&self.path).map_err(ReloadError::Invalid)?;
        let problems = loaded.check_files();
        if !problems.is_empty() {
            return Err(ReloadError::Invalid(problems));
        }
        let old = self.state.runtime.load_full();
        let (applied, restart_required) = changes(&old.config, &loaded.config);
        let now = self.clock.now_ms();
        let next =
            Runtime::build(&loaded.config, &|p| loaded.resolve(p), Some(&old), self.clock.clone(), old.events.clone())
                .map_err(ReloadError::Invalid)?;
        let from_files = read_key_files(&loaded, &next, now)
            .map_err(|e| ReloadError::Invalid(vec![ConfigError { path: String::new(), message: e.to_string() }]))?;
        // Durable first: the store has the new keys and has dropped the departed ones before
        // traffic sees either.
        let keys_added = self.store.insert_keys(&from_files, true)?.len();
        let listed: HashSet<&str> = from_files.iter().map(|k| k.id.as_str()).collect();
        let mut departed = Vec::new();
        for k in self.store.keys()? {
            if k.from_file && !listed.contains(k.id.as_str()) {
                self.store.forget_key(&k.id)?;
                departed.push(k.id);
            }
        }
        let stored = self.store.keys()?;
        fill_pools(&next, &stored, now);
        let departed_ids: HashSet<&str> = departed.iter().map(String::as_str).collect();
        for p in &next.providers {
            p.pool.remove_all(&departed_ids);
        }
        self.state.clients.replace_static(&old.static_tokens, &next.static_tokens);
        let generation = next.generation;
        self.state.runtime.store(Arc::new(next));
        drop((old, stored, from_files));
        crate::lifecycle::return_freed_memory();
        Ok(Reloaded { generation, applied, restart_required, keys_added, keys_removed: departed.len() })
    }
}

/// (reloadable sections that changed, restart-only sections that changed), compared by their
/// parsed values.
fn changes(old: &Config, new: &Config) -> (Vec<String>, Vec<String>) {
    let section = |c: &Config, name: &str| -> String {
        match name {
            "upstream" => format!("{:?}", c.upstream),
            "providers" => format!("{:?}", c.providers),
            "routing" => format!("{:?}", c.routing),
            "keys" => format!("{:?}", c.keys),
            "pool" => format!("{:?}", c.pool),
            "health_check" => format!("{:?}", c.health_check),
            "clients" => {
                let tokens = c.clients.tokens.iter().map(|t| (&t.name, t.token.sha256(), t.rpm, t.budgets()));
                format!("{:?}", tokens.collect::<Vec<_>>())
            }
            "routes" => format!("{:?}", c.routes),
            "cors" => format!("{:?}", c.cors),
            "notifications" => format!(
                "{:?}",
                (
                    c.notifications.batch_window,
                    c.notifications
                        .webhooks
                        .iter()
                        .map(|w| (
                            &w.url,
                            &w.events,
                            w.format,
                            w.secret.as_ref().map(|s| s.sha256()),
                            w.timeout,
                            w.max_attempts,
                            w.retry_backoff
                        ))
                        .collect::<Vec<_>>()
                )
            ),
            "fleet" => format!("{:?}", c.fleet),
            "listen" => format!("{:?}", c.listen),
            "threads" => c.threads.to_string(),
            "admin" => format!("{:?}", c.admin.as_ref().map(|a| (&a.listen, a.token.as_ref().map(|t| t.sha256())))),
            "store" => format!(
                "{:?}",
                (
                    c.store.kind,
                    &c.store.path,
                    c.store.url.as_ref().map(|u| crate::secret::sha256(u.as_bytes())),
                    &c.store.prefix,
                    c.store.flush_interval.0,
                    c.store.encryption_key.as_ref().map(|k| k.sha256())
                )
            ),
            "server" => format!("{:?}", c.server),
            "metrics" => format!("{:?}", c.metrics),
            _ => String::new(),
        }
    };
    let changed = |names: &[&str]| -> Vec<String> {
        names.iter().filter(|n| section(old, n) != section(new, n)).map(|n| n.to_string()).collect()
    };
    (changed(RELOADABLE), changed(RESTART))
}

/// SIGHUP reloads (a pingora background service: it runs on the server's runtime).
pub struct SighupService {
    pub reloader: Arc<Reloader>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SighupService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            log::warn!("reload: cannot listen for SIGHUP; use POST /admin/reload");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    log::info!("reload: SIGHUP");
                    let _ = self.reloader.reload().await;
                }
            }
        }
    }
}
