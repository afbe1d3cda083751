//! The runtime: what the request path reads, built from a validated `Config` as a whole
//! (SPEC §2.2.1, §3.8) — providers with their pools, routing, the allow-list, CORS and the
//! attempt limits — and swapped atomically on reload, so every request reads one consistent
//! runtime. The YAML schema (`config`) stays the external layer; this is the internal one.
//!
//! Not here: what cannot change without a restart (listeners, threads, the admin listener, the
//! store, `server.*`): `app` builds those once, and `reload` reports them as `restart_required`.

use crate::config::{Config, ConfigError, StaticToken};
use crate::pool::{Clock, Events, Policy, Pool, StormPolicy};
use crate::provider::Provider;
use crate::proxy::cors::Cors;
use crate::proxy::routes::AllowList;
use crate::routing::Routing;
use std::sync::Arc;

pub struct Runtime {
    /// 1 at start, +1 per applied reload.
    pub generation: u64,
    pub providers: Vec<Arc<Provider>>,
    pub routing: Routing,
    pub routes: AllowList,
    pub cors: Option<Cors>,
    pub max_attempts: usize,
    pub max_request_body: u64,
    /// `clients.tokens` this runtime was built with (a reload replaces them in the client table).
    pub static_tokens: Vec<StaticToken>,
    /// The config it was built from (a reload compares against it).
    pub config: Arc<Config>,
    /// Where every provider's pool sends its key events (kept across reloads).
    pub events: Arc<Events>,
}

/// The pool policy `pool.*` and `health_check.interval` describe.
pub fn policy(cfg: &Config) -> Policy {
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
    }
}

impl Runtime {
    /// Builds a runtime from `cfg` (paths resolved with `resolve`). A provider that keeps its
    /// name keeps its pool from `previous` (keys keep state and counters; the new policy
    /// applies), and its upstream too when the upstream settings did not change.
    pub fn build(
        cfg: &Config,
        resolve: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
        previous: Option<&Runtime>,
        clock: Arc<dyn Clock>,
        events: Arc<Events>,
    ) -> Result<Runtime, Vec<ConfigError>> {
        let policy = policy(cfg);
        let mut providers = Vec::new();
        let mut errors = Vec::new();
        for (path, mut p) in cfg.provider_entries() {
            p.ca_file = p.ca_file.map(|f| resolve(&f));
            let old = previous.and_then(|r| r.provider(&p.name));
            let pool = match old {
                Some(o) => {
                    o.pool.set_policy(policy.clone());
                    o.pool.clone()
                }
                None => Arc::new(Pool::for_provider(&p.name, policy.clone(), clock.clone(), events.clone())),
            };
            let same_upstream = previous
                .and_then(|r| r.config.provider_entries().into_iter().find(|(_, q)| q.name == p.name))
                .is_some_and(|(_, q)| upstream_settings_equal(&q, &p, resolve));
            let upstream = old.filter(|_| same_upstream).map(|o| o.upstream.clone());
            match Provider::build(&path, &p, &cfg.health_check.probe, pool, upstream) {
                Ok(built) => {
                    if let Some(o) = old {
                        built.listing.store(o.listing.load_full());
                    }
                    providers.push(Arc::new(built));
                }
                Err(e) => errors.push(e.into()),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let routing = Routing::build(cfg, &providers)?;
        Ok(Runtime {
            generation: previous.map_or(1, |r| r.generation + 1),
            providers,
            routing,
            routes: AllowList::new(&cfg.routes.allow),
            cors: Cors::new(&cfg.cors.allow_origins, cfg.cors.max_age.0),
            max_attempts: cfg.pool.max_attempts,
            max_request_body: cfg.pool.max_request_body.0,
            static_tokens: cfg.clients.tokens.clone(),
            config: Arc::new(cfg.clone()),
            events,
        })
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The provider a key without a recorded provider belongs to (keys stored before
    /// providers existed): `default`, else the first one.
    pub fn home_provider(&self) -> &Arc<Provider> {
        self.provider(crate::config::DEFAULT_PROVIDER).unwrap_or(&self.providers[0])
    }

    /// The provider a stored key's `provider` field names (empty = the home provider).
    pub fn provider_for_stored(&self, name: &str) -> Option<&Arc<Provider>> {
        if name.is_empty() {
            Some(self.home_provider())
        } else {
            self.provider(name)
        }
    }

    /// The stored keys whose pool is `p`'s.
    pub fn stored_keys_of<'a>(
        &'a self,
        p: &'a Arc<Provider>,
        stored: &'a [crate::store::StoredKey],
    ) -> impl Iterator<Item = &'a crate::store::StoredKey> + 'a {
        stored.iter().filter(move |k| self.provider_for_stored(&k.provider).is_some_and(|q| Arc::ptr_eq(q, p)))
    }

    /// The provider whose pool holds key `id`.
    pub fn provider_of_key(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.pool.get(id).is_some())
    }

    /// Ready = some provider has an address and a usable key, and no storm is on there.
    pub fn ready(&self) -> bool {
        self.providers
            .iter()
            .any(|p| p.upstream.resolved() && p.pool.storm_since().is_none() && p.pool.usable_count() > 0)
    }
}

/// Whether two provider entries talk to the same upstream the same way (then a reload keeps
/// its address book and connections).
fn upstream_settings_equal(
    a: &crate::config::UpstreamConfig,
    b: &crate::config::UpstreamConfig,
    resolve: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
) -> bool {
    a.url == b.url
        && a.addresses == b.addresses
        && a.connect_timeout.0 == b.connect_timeout.0
        && a.read_timeout.0 == b.read_timeout.0
        && a.write_timeout.0 == b.write_timeout.0
        && a.idle_timeout.0 == b.idle_timeout.0
        && a.dns_refresh.0 == b.dns_refresh.0
        && a.health_check_interval.0 == b.health_check_interval.0
        && a.verify_tls == b.verify_tls
        && a.ca_file.as_ref().map(|f| resolve(f)) == b.ca_file.as_ref().map(|f| resolve(f))
}
