//! Key and token operations shared by the admin API and the CLI. Each one commits to the store
//! first (durable before any 2xx) and then, when a running pool/client table is attached,
//! applies the change there so routing sees it on the very next request.

use crate::health::Prober;
use crate::import::{self, InvalidLine};
use crate::pool::{Clock, Key, KeyMeta, Pool};
use crate::proxy::auth::{new_token, Client, Clients};
use crate::runtime::Runtime;
use crate::secret::Secret;
use crate::store::{Counters, Store, StoreError, StoredKey, StoredToken};
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// What `create_token` makes: a name and optional expiry, model allow-list, rpm and budgets.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub name: String,
    pub expires_in: Option<Duration>,
    /// Empty = every model.
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    pub budgets: crate::usage::Limits,
}

/// Keys probed at once by a validated import.
pub const VALIDATE_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Invalid(String),
    #[error("key {0} is already present")]
    Duplicate(String),
    #[error("no provider is named {0:?}")]
    UnknownProvider(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    pub added: usize,
    pub duplicates: usize,
    pub invalid: Vec<InvalidEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validated: Option<Validated>,
    /// Nothing was written (`dry_run`).
    pub dry_run: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct InvalidEntry {
    pub line: usize,
    pub reason: String,
}

impl From<&InvalidLine> for InvalidEntry {
    fn from(l: &InvalidLine) -> Self {
        InvalidEntry { line: l.line, reason: l.reason.clone() }
    }
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Validated {
    pub valid: usize,
    pub invalid: usize,
    /// Valid keys per model-family category.
    pub by_category: BTreeMap<String, usize>,
}

#[derive(Clone)]
pub struct Control {
    pub store: Arc<dyn Store>,
    /// The running runtime (its providers' pools) and client table (None in the offline CLI).
    pub runtime: Option<Arc<ArcSwap<Runtime>>>,
    /// Provider names the config defines (for the offline CLI; the first is the home one).
    pub providers: Vec<String>,
    pub clients: Option<Arc<Clients>>,
    pub clock: Arc<dyn Clock>,
    /// `keys.max_key_bytes`: the longest key an add or import accepts.
    pub max_key_bytes: usize,
    /// Fleet mode: token changes are announced to the other instances.
    pub fleet: Option<crate::fleet::Outbox>,
}

impl Control {
    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The stored form of `provider` (empty for the home provider), or UnknownProvider.
    pub fn provider_name(&self, provider: Option<&str>) -> Result<String, OpError> {
        let names: Vec<String> = match &self.runtime {
            Some(rt) => rt.load().providers.iter().map(|p| p.name.clone()).collect(),
            None => self.providers.clone(),
        };
        match provider.map(str::trim).filter(|p| !p.is_empty()) {
            None => Ok(String::new()),
            Some(p) if names.first().is_some_and(|home| home == p) && names.len() == 1 => Ok(String::new()),
            Some(p) if names.iter().any(|n| n == p) => Ok(p.to_string()),
            Some(p) => Err(OpError::UnknownProvider(p.to_string())),
        }
    }

    /// The running pool that holds key `id`, if any.
    fn pool_of(&self, id: &str) -> Option<Arc<Pool>> {
        let rt = self.runtime.as_ref()?.load();
        rt.provider_of_key(id).map(|p| p.pool.clone())
    }

    fn stored(&self, secret: Secret, label: Option<String>, ttl: Option<Duration>) -> StoredKey {
        let now = self.now();
        StoredKey {
            provider: String::new(),
            from_file: false,
            id: secret.id(),
            secret,
            label,
            created_at_ms: now,
            expires_at_ms: ttl.map(|t| now + t.as_millis() as u64),
            disabled_until_ms: None,
            models: vec![],
            category: None,
            counters: Counters::default(),
        }
    }

    /// Adds one key to `provider` (None = the home provider). Duplicate → `OpError::Duplicate`.
    pub fn add_key(
        &self,
        key: &str,
        label: Option<String>,
        ttl: Option<Duration>,
        provider: Option<&str>,
    ) -> Result<String, OpError> {
        let key = key.trim();
        import::check_key(key, self.max_key_bytes).map_err(|r| OpError::Invalid(r.to_string()))?;
        let mut stored = self.stored(Secret::new(key), label, ttl);
        stored.provider = self.provider_name(provider)?;
        let id = stored.id.clone();
        if self.store.insert_keys(std::slice::from_ref(&stored), false)?.is_empty() {
            return Err(OpError::Duplicate(id));
        }
        self.attach(&stored);
        Ok(id)
    }

    /// Puts a stored key into its provider's running pool, if a runtime is attached.
    fn attach(&self, k: &StoredKey) {
        let Some(rt) = &self.runtime else { return };
        let rt = rt.load();
        let Some(p) = rt.provider_for_stored(&k.provider) else { return };
        if let Some(key) = to_pool_key(k, &p.auth, self.clock.now_ms()) {
            // Already there: a fleet reconcile found it in the store between the store write
            // and now, as a remote change, so nobody announced it. Announce it here.
            if p.pool.add(key).is_err() {
                if let Some(f) = &self.fleet {
                    f.key_added(&p.name, &k.id);
                }
            }
        }
    }

    /// Imports a key file's text (SPEC §3.6). With a prober, each new key is validated first and
    /// only valid keys are added, with their models and category. `progress(done, total)` is
    /// called as keys are validated.
    pub async fn import(
        &self,
        text: &str,
        prober: Option<&Prober>,
        dry_run: bool,
        provider: Option<&str>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<ImportReport, OpError> {
        let provider = self.provider_name(provider)?;
        let parsed = import::parse(text, self.max_key_bytes);
        let existing: HashSet<String> = self.store.keys()?.into_iter().map(|k| k.id).collect();
        let (fresh, known): (Vec<_>, Vec<_>) = parsed.keys.into_iter().partition(|k| !existing.contains(&k.key.id()));
        let mut report = ImportReport {
            duplicates: parsed.duplicates + known.len(),
            invalid: parsed.invalid.iter().map(InvalidEntry::from).collect(),
            dry_run,
            ..Default::default()
        };
        let mut to_add: Vec<StoredKey> = Vec::new();
        match prober {
            None => to_add = fresh.into_iter().map(|k| self.stored(k.key, k.label, None)).collect(),
            Some(prober) => {
                let total = fresh.len();
                let done = std::sync::atomic::AtomicUsize::new(0);
                let checked: Vec<(import::ParsedKey, crate::health::Validation)> = futures_util::stream::iter(fresh)
                    .map(|k| async move {
                        let v = match Key::with_auth(k.key.clone(), None, None, prober.auth()) {
                            Ok(key) => prober.validate(&key).await,
                            Err(e) => crate::health::Validation {
                                valid: false,
                                models: vec![],
                                category: "general".into(),
                                reason: Some(e.to_string()),
                            },
                        };
                        (k, v)
                    })
                    .buffer_unordered(VALIDATE_CONCURRENCY)
                    .inspect(|_| progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total))
                    .collect()
                    .await;
                let mut summary = Validated::default();
                let mut checked = checked;
                checked.sort_by_key(|(k, _)| k.line);
                for (k, v) in checked {
                    if v.valid {
                        summary.valid += 1;
                        *summary.by_category.entry(v.category.clone()).or_default() += 1;
                        let mut stored = self.stored(k.key, k.label, None);
                        stored.models = v.models;
                        stored.category = Some(v.category);
                        to_add.push(stored);
                    } else {
                        summary.invalid += 1;
                        let reason = format!("key rejected by the upstream: {}", v.reason.unwrap_or_default());
                        report.invalid.push(InvalidEntry { line: k.line, reason });
                    }
                }
                report.invalid.sort_by_key(|i| i.line);
                report.validated = Some(summary);
            }
        }
        for k in &mut to_add {
            k.provider = provider.clone();
        }
        if dry_run {
            report.added = to_add.len();
            return Ok(report);
        }
        let added: HashSet<String> = self.store.insert_keys(&to_add, false)?.into_iter().collect();
        report.added = added.len();
        report.duplicates += to_add.len() - added.len(); // raced with another writer
        for k in to_add.iter().filter(|k| added.contains(&k.id)) {
            self.attach(k);
        }
        Ok(report)
    }

    pub fn remove_key(&self, id: &str) -> Result<bool, OpError> {
        let found = self.store.delete_key(id)?;
        if let Some(pool) = self.pool_of(id) {
            pool.remove(id);
        }
        Ok(found)
    }

    /// Disables a key for `for_` or until enabled.
    pub fn disable_key(&self, id: &str, for_: Option<Duration>) -> Result<bool, OpError> {
        let until = for_.map(|d| self.now() + d.as_millis() as u64).unwrap_or(0);
        if !self.store.set_disabled(id, Some(until))? {
            return Ok(false);
        }
        if let Some(pool) = self.pool_of(id) {
            pool.disable(id, for_);
        }
        Ok(true)
    }

    pub fn enable_key(&self, id: &str) -> Result<bool, OpError> {
        if !self.store.set_disabled(id, None)? {
            return Ok(false);
        }
        if let Some(pool) = self.pool_of(id) {
            pool.enable(id);
        }
        Ok(true)
    }

    /// Creates a client token; the clear token is returned once and never stored.
    pub fn create_token(&self, spec: TokenSpec) -> Result<(StoredToken, Secret), OpError> {
        let name = spec.name.trim();
        if name.is_empty() {
            return Err(OpError::Invalid("name must not be empty".into()));
        }
        if spec.rpm == Some(0) {
            return Err(OpError::Invalid("rpm must be at least 1 (omit it for no limit)".into()));
        }
        for kind in crate::usage::BudgetKind::ALL {
            if spec.budgets.get(kind) == Some(0) {
                return Err(OpError::Invalid(format!("{} must be at least 1 (omit it for no budget)", kind.as_str())));
            }
        }
        let token = new_token();
        let hash = token.sha256();
        let now = self.now();
        let stored = StoredToken {
            id: hex::encode(&hash[..6]),
            hash,
            name: name.to_string(),
            created_at_ms: now,
            expires_at_ms: spec.expires_in.map(|d| now + d.as_millis() as u64),
            models: spec.models,
            rpm: spec.rpm,
            budgets: spec.budgets,
        };
        self.store.insert_token(&stored)?;
        if let Some(clients) = &self.clients {
            let client = to_client(&stored);
            // A new token for a client name that already used tokens today starts from that (in
            // fleet mode the fleet's counters are the budgets' truth: `fleet::limits`).
            if !stored.budgets.is_empty() && self.fleet.is_none() {
                if let Err(e) = crate::usage::seed_client(&client, &*self.store, now) {
                    log::warn!("store: reading usage for token {}: {e}; its budgets start at 0", stored.id);
                }
            }
            clients.insert(hash, client);
        }
        if let Some(f) = &self.fleet {
            f.token_added(&stored.id);
        }
        Ok((stored, token))
    }

    pub fn revoke_token(&self, id: &str) -> Result<bool, OpError> {
        let Some(t) = self.store.tokens()?.into_iter().find(|t| t.id == id) else { return Ok(false) };
        self.store.delete_token(id)?;
        if let Some(clients) = &self.clients {
            clients.remove(&t.hash);
        }
        if let Some(f) = &self.fleet {
            f.token_removed(&t.hash);
        }
        Ok(true)
    }
}

/// A stored key as the pool holds it at `now` (state, counters, park and metadata restored).
pub fn to_pool_key(k: &StoredKey, auth: &crate::pool::AuthForm, now: u64) -> Option<Key> {
    let key = match Key::with_auth(k.secret.clone(), k.label.clone(), k.expires_at_ms, auth) {
        Ok(key) => key.with_created_at(k.created_at_ms),
        Err(reason) => {
            log::warn!("store: key {}: {reason}; skipped", k.id);
            return None;
        }
    };
    key.restore_counters(&k.counters);
    if let Some(park) = &k.counters.park {
        key.restore_park(park, now);
    }
    key.set_meta(KeyMeta { models: k.models.clone(), category: k.category.clone() });
    if let Some(until) = k.disabled_until_ms {
        key.restore_disabled(until);
    }
    Some(key)
}

pub fn to_client(t: &StoredToken) -> Client {
    let mut c = Client::new(t.name.clone(), t.expires_at_ms, t.models.clone(), t.rpm).with_budgets(t.budgets);
    c.from_store = true;
    c
}
