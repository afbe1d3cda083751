//! The health checker (SPEC §3.5): a pingora `BackgroundService` that brings parked keys back,
//! finds bad or exhausted keys before traffic does, and decides when an upstream-wide storm is
//! over. Probes cost no model tokens (default `POST /api/me`); the optional usage probe reads
//! Ollama Cloud's `GET /api/usage` and parks keys whose window is used up until it resets.
//!
//! Every `interval`: probe the keys that are parked (half-open; a success returns the key early,
//! a failure keeps it out with a doubling backoff, so a revoked key never flaps back into
//! traffic). Every `sweep_interval`: probe every key. During a storm: probe a few keys, and end
//! the storm at the first success. Manually disabled keys are never probed nor changed.
//! Outcomes go through `pool::classify`, like traffic.

use crate::config::HealthCheckConfig;
use crate::metrics;
use crate::pool::{classify, AuthForm, Key, Outcome, Pool, Reason, Status, Window};
use crate::provider::Provider;
use crate::runtime::Runtime;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderMap;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Probe answers are read up to this size (usage JSON is small; anything longer is cut).
const MAX_PROBE_BODY: usize = 64 * 1024;

/// What one probe found and did, for logs and `POST /admin/health-check`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeReport {
    pub id: String,
    /// `success`, `credential`, `rate_limited`, `transient`, `caller_fault` or `skipped`.
    pub result: &'static str,
    pub status: Option<u16>,
    /// What happened to the key: `ok`, `returned`, `parked`, `kept-parked`, `unchanged`, `skipped`.
    pub action: &'static str,
    pub key_status: &'static str,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Fractions (0..1) of each usage window a key has used; None = no such limit.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Usage {
    pub session: Option<f64>,
    pub weekly: Option<f64>,
    pub monthly: Option<f64>,
    /// When each window resets (ms), when the upstream said so (`/api/balance`'s `resets_at`,
    /// session / weekly / monthly); otherwise the window's calendar reset applies.
    #[serde(skip)]
    pub resets_at: [Option<u64>; 3],
}

impl Usage {
    /// Parses Ollama Cloud's documented `GET /api/balance`: on legacy plans
    /// `{"session": {"remaining_percent": 40, "resets_at": "…"}, "weekly": {…}}`, on credit plans
    /// `{"included": {"balance_usd": 1.5, "allowance_usd": 20, "period": "monthly"}}`. Defensive
    /// like `parse`: anything missing or odd counts as "no limit"; None when neither shape is there.
    pub fn parse_balance(body: &[u8]) -> Option<Usage> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let mut u = Usage::default();
        let mut any = false;
        for (i, name) in ["session", "weekly", "monthly"].into_iter().enumerate() {
            let Some(w) = v.get(name).filter(|w| w.is_object()) else { continue };
            let Some(left) = w.get("remaining_percent").and_then(|p| p.as_f64()).filter(|p| p.is_finite()) else {
                continue;
            };
            any = true;
            let used = (1.0 - left.clamp(0.0, 100.0) / 100.0).clamp(0.0, 1.0);
            match i {
                0 => u.session = Some(used),
                1 => u.weekly = Some(used),
                _ => u.monthly = Some(used),
            }
            u.resets_at[i] = w
                .get("resets_at")
                .and_then(|r| r.as_str())
                .and_then(|r| humantime::parse_rfc3339_weak(r).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64);
        }
        if let Some(inc) = v.get("included").filter(|i| i.is_object()) {
            let num = |k: &str| inc.get(k).and_then(|n| n.as_f64()).filter(|n| n.is_finite());
            if let (Some(balance), Some(allowance)) = (num("balance_usd"), num("allowance_usd")) {
                any = true;
                let used = if allowance > 0.0 {
                    (1.0 - balance / allowance).clamp(0.0, 1.0)
                } else if balance <= 0.0 {
                    1.0
                } else {
                    0.0
                };
                match inc.get("period").and_then(|p| p.as_str()) {
                    Some("weekly") => u.weekly = Some(used),
                    Some("session") => u.session = Some(used),
                    _ => u.monthly = Some(used),
                }
            }
        }
        any.then_some(u)
    }

    /// Parses `{"limits": {"session": {"usage": 0.4}, "weekly": {...}, "monthly": null}}`
    /// defensively: anything missing, null, negative or non-numeric counts as "no limit".
    pub fn parse(body: &[u8]) -> Option<Usage> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let limits = v.get("limits")?.as_object()?;
        let frac = |name: &str| {
            limits.get(name)?.get("usage")?.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.min(1.0))
        };
        Some(Usage { session: frac("session"), weekly: frac("weekly"), monthly: frac("monthly"), resets_at: [None; 3] })
    }

    fn windows(&self) -> [(Window, Option<f64>); 3] {
        [(Window::Session, self.session), (Window::Weekly, self.weekly), (Window::Monthly, self.monthly)]
    }

    /// The used-up window that resets last (the key is useless until then) and when, if any.
    pub fn exhausted(&self, at: f64, now_ms: u64) -> Option<(Window, u64)> {
        self.windows()
            .into_iter()
            .enumerate()
            .filter(|(_, (_, f))| f.is_some_and(|f| f >= at))
            .map(|(i, (w, _))| (w, self.resets_at[i].filter(|&r| r > now_ms).unwrap_or_else(|| w.next_reset(now_ms))))
            .max_by_key(|(_, until)| *until)
    }
}

/// Why a probe got no answer (the pingora error type's name, never a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Failed(&'static str),
    #[error("timeout")]
    Timeout,
}

/// Sends one request as a key, off the request path: health probes and validated imports.
pub struct Prober {
    upstream: Arc<Upstream>,
    connector: Arc<Connector>,
    timeout: Duration,
    /// How the provider wants keys sent, and headers every request of it carries.
    auth: AuthForm,
    extra_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Where a key's model list is read.
    models_path: String,
}

pub struct HealthChecker {
    pool: Arc<Pool>,
    prober: Prober,
    cfg: HealthCheckConfig,
    /// Rotates which keys a storm tick probes.
    storm_cursor: AtomicUsize,
    /// Varies the jitter from one tick to the next.
    ticks: AtomicU64,
    /// When the next `/api/balance` ask is allowed (ms, the pool's clock).
    balance_next_ms: AtomicU64,
}

impl HealthChecker {
    /// The checker of one provider: its pool, its probe (`health_check.probe` stands in for
    /// the provider's own), its auth form.
    pub fn for_provider(provider: &Provider, connector: Arc<Connector>, mut cfg: HealthCheckConfig) -> HealthChecker {
        cfg.probe = provider.probe.clone();
        let prober = Prober::for_provider(provider, connector, cfg.timeout.0);
        HealthChecker {
            pool: provider.pool.clone(),
            prober,
            cfg,
            storm_cursor: AtomicUsize::new(0),
            ticks: AtomicU64::new(0),
            balance_next_ms: AtomicU64::new(0),
        }
    }

    pub fn prober(&self) -> &Prober {
        &self.prober
    }

    /// One round: a storm check, or the parked keys due for a probe, or (`sweep`) every key.
    pub async fn tick(&self, sweep: bool) -> Vec<ProbeReport> {
        self.ticks.fetch_add(1, Relaxed);
        let keys = self.pool.keys();
        if self.pool.storm_since().is_some() {
            let n = keys.len().max(1);
            let start = self.storm_cursor.fetch_add(self.cfg.concurrency, Relaxed);
            let sample: Vec<Arc<Key>> = (0..self.cfg.concurrency.min(keys.len()))
                .map(|i| keys[(start + i) % n].clone())
                .filter(|k| probeable(k, self.pool.now_ms()))
                .collect();
            let reports = self.probe_all(sample, false).await;
            if reports.iter().any(|r| r.result == "success") {
                self.pool.end_storm();
            }
            return reports;
        }
        let now = self.pool.now_ms();
        let due: Vec<Arc<Key>> = keys
            .iter()
            .filter(|k| probeable(k, now))
            .filter(|k| sweep || self.parked_and_due(k, now))
            .cloned()
            .collect();
        self.probe_all(due, true).await
    }

    /// Probes the listed keys (all when None) right now, whatever their schedule.
    pub async fn check_now(&self, ids: Option<&[String]>) -> Vec<ProbeReport> {
        let keys: Vec<Arc<Key>> = match ids {
            None => self.pool.keys().iter().cloned().collect(),
            Some(ids) => ids.iter().filter_map(|id| self.pool.get(id)).collect(),
        };
        let reports = self.probe_all(keys, false).await;
        if self.pool.storm_since().is_some() && reports.iter().any(|r| r.result == "success") {
            self.pool.end_storm();
        }
        reports
    }

    fn parked_and_due(&self, key: &Key, now: u64) -> bool {
        let parked = matches!(key.status(), Status::Cooling | Status::Invalid);
        // A working key can still be out of allowance: without the usage probe, /api/me cannot
        // tell, so such keys wait for their Retry-After / window reset instead.
        let can_judge = !key.reason().is_allowance() || self.cfg.usage_probe;
        parked && can_judge && key.cold_if_any().map_or(0, |c| c.next_probe_ms.load(Relaxed)) <= now
    }

    async fn probe_all(&self, keys: Vec<Arc<Key>>, jitter: bool) -> Vec<ProbeReport> {
        let tick = self.ticks.load(Relaxed);
        futures_util::stream::iter(keys)
            .map(|k| async move {
                if jitter {
                    tokio::time::sleep(self.jitter_for(&k, tick)).await;
                }
                self.probe(&k).await
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await
    }

    /// A spread-out delay in `[0, jitter)`, different per key and per tick.
    fn jitter_for(&self, key: &Key, tick: u64) -> Duration {
        let max = self.cfg.jitter.0.as_millis() as u64;
        if max == 0 {
            return Duration::ZERO;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (key.id.as_str(), tick).hash(&mut h);
        Duration::from_millis(h.finish() % max)
    }

    /// Probes one key and applies what it found.
    pub async fn probe(&self, key: &Key) -> ProbeReport {
        if !probeable(key, self.pool.now_ms()) {
            return self.report(key, "skipped", None, "skipped", None);
        }
        let p = &self.cfg.probe;
        let answer = self.prober.send(key, &p.method, &p.path, p.body.as_bytes()).await;
        let (outcome, status) = match &answer {
            Ok((status, headers, body)) => {
                let o = match p.expect_status {
                    Some(want) if *status == want => Outcome::Success,
                    Some(_) if *status < 400 => Outcome::CallerFault, // an answer, not the one configured
                    _ => classify(*status, headers, Some(body)),
                };
                (o, Some(*status))
            }
            Err(_) => (Outcome::Transient, None),
        };
        let usage = match outcome {
            Outcome::Success if self.cfg.usage_probe => self.usage(key).await,
            _ => None,
        };
        let action = self.apply(key, outcome, usage.as_ref(), status);
        metrics::probe(outcome.as_str());
        self.report(key, outcome.as_str(), status, action, usage)
    }

    /// What is left of the key's allowance: `GET /api/balance` (documented; at most
    /// `balance_per_minute` asks per provider, as the upstream allows 10 a minute per account
    /// and keys may share one), else the older `GET /api/usage` shape.
    async fn usage(&self, key: &Key) -> Option<Usage> {
        if !self.cfg.balance_path.is_empty() && self.balance_turn() {
            let path = self.cfg.balance_path.clone();
            if let Ok((200, _, body)) = self.prober.send(key, "GET", &path, b"").await {
                if let Some(u) = Usage::parse_balance(&body) {
                    return Some(self.record_usage(key, u));
                }
            }
        }
        let (status, _, body) = self.prober.send(key, "GET", &self.cfg.usage_path, b"").await.ok()?;
        let usage = if status == 200 { Usage::parse(&body) } else { None };
        match usage {
            Some(u) => Some(self.record_usage(key, u)),
            None => {
                log::debug!("health: key {}: {} answered {status} without a usable body", key.id, self.cfg.usage_path);
                None
            }
        }
    }

    fn record_usage(&self, key: &Key, u: Usage) -> Usage {
        for (w, f) in u.windows() {
            metrics::key_usage(&key.id, w.as_str(), f);
        }
        u
    }

    /// Whether this probe may ask `/api/balance` now: one ask per `60 s / balance_per_minute`
    /// across the provider's keys (the pool's clock).
    fn balance_turn(&self) -> bool {
        let per_minute = u64::from(self.cfg.balance_per_minute.max(1));
        let gap = 60_000 / per_minute;
        let now = self.pool.now_ms();
        let next = self.balance_next_ms.load(Relaxed);
        now >= next && self.balance_next_ms.compare_exchange(next, now + gap, Relaxed, Relaxed).is_ok()
    }

    /// Turns a probe's outcome into the key's next state. Returns the action taken.
    fn apply(&self, key: &Key, outcome: Outcome, usage: Option<&Usage>, status: Option<u16>) -> &'static str {
        let now = self.pool.now_ms();
        if !probeable(key, now) {
            return "skipped"; // disabled by an operator while the probe ran
        }
        let parked = key.status() != Status::Active;
        match outcome {
            Outcome::Success => {
                if let Some(c) = key.cold_if_any() {
                    c.probe_failures.store(0, Relaxed);
                }
                if let Some((w, until)) = usage.and_then(|u| u.exhausted(self.cfg.park_at_usage, now)) {
                    self.pool.transition(key, Status::Cooling, Reason::quota(w), until);
                    return "parked";
                }
                if !parked {
                    "ok"
                } else if key.reason().is_allowance() && usage.is_none() {
                    "unchanged" // it works, but nothing says its allowance is back
                } else {
                    self.pool.transition(key, Status::Active, Reason::Probe, 0);
                    "returned"
                }
            }
            Outcome::Credential => {
                let next = self.schedule_retry(key, now);
                if parked {
                    key.extend_park(next + self.interval_ms(), now);
                    "kept-parked"
                } else {
                    let until = (now + self.pool.policy().cooldown.as_millis() as u64).max(next + self.interval_ms());
                    self.pool.transition(key, Status::Invalid, Reason::Credential, until);
                    "parked"
                }
            }
            Outcome::RateLimited { retry_after, window } => {
                self.schedule_retry(key, now);
                self.pool.park_rate_limited(key, retry_after, window, now);
                "parked"
            }
            Outcome::Transient => {
                // A probe that could not get through says little about the key: never park an
                // active key for it, but keep a parked one out until the next probe.
                let next = self.schedule_retry(key, now);
                if parked {
                    key.extend_park(next + self.interval_ms(), now);
                    "kept-parked"
                } else {
                    "unchanged"
                }
            }
            // (a probe names no model: an answer about one says nothing about the key)
            Outcome::CallerFault | Outcome::ModelUnavailable => {
                log::warn!(
                    "health: probe {} {} answered {} for key {}: check health_check.probe",
                    self.cfg.probe.method,
                    self.cfg.probe.path,
                    status.unwrap_or(0),
                    key.id
                );
                self.schedule_retry(key, now);
                "unchanged"
            }
        }
    }

    fn interval_ms(&self) -> u64 {
        self.cfg.interval.0.as_millis() as u64
    }

    /// After a failed probe: the next one after `interval` doubling per failure, capped.
    fn schedule_retry(&self, key: &Key, now: u64) -> u64 {
        let cold = key.cold();
        let failures = cold.probe_failures.fetch_add(1, Relaxed).min(30);
        let backoff = self.cfg.interval.0.saturating_mul(1u32 << failures.min(20)).min(self.cfg.max_backoff.0);
        let next = now + backoff.as_millis() as u64;
        cold.next_probe_ms.store(next, Relaxed);
        next
    }

    fn report(
        &self,
        key: &Key,
        result: &'static str,
        status: Option<u16>,
        action: &'static str,
        usage: Option<Usage>,
    ) -> ProbeReport {
        ProbeReport {
            id: key.id.to_string(),
            result,
            status,
            action,
            key_status: key.status().as_str(),
            reason: key.reason().as_str(),
            usage,
        }
    }
}

impl Prober {
    /// A prober that talks to `provider` its way (auth form, default headers, model listing).
    pub fn for_provider(provider: &Provider, connector: Arc<Connector>, timeout: Duration) -> Prober {
        Prober {
            upstream: provider.upstream.clone(),
            connector,
            timeout,
            auth: provider.auth.clone(),
            extra_headers: provider.default_headers.clone(),
            models_path: provider.models_path.clone(),
        }
    }

    pub fn auth(&self) -> &AuthForm {
        &self.auth
    }

    /// One request as `key`, bounded by the probe timeout. Errors carry no secret.
    pub async fn send(
        &self,
        key: &Key,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, HeaderMap, Bytes), ProbeError> {
        match tokio::time::timeout(self.timeout, self.exchange(key, method, path, body)).await {
            Ok(r) => r.map_err(|e| ProbeError::Failed(e.etype().as_str())),
            Err(_) => Err(ProbeError::Timeout),
        }
    }

    async fn exchange(
        &self,
        key: &Key,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> pingora::Result<(u16, HeaderMap, Bytes)> {
        let target = self
            .upstream
            .target()
            .ok_or_else(|| pingora::Error::explain(pingora::ErrorType::ConnectNoRoute, "upstream unresolved"))?;
        let full_path = format!("{}{}", self.upstream.url.base_path, path);
        let mut req = RequestHeader::build(method, full_path.as_bytes(), None)?;
        req.insert_header(http::header::HOST, self.upstream.host_header.clone())?;
        let (name, value) = key.auth();
        req.insert_header(name, value)?;
        for (h, v) in &self.extra_headers {
            req.insert_header(h.clone(), v.clone())?;
        }
        req.insert_header(http::header::USER_AGENT, concat!("ollama-pool-health/", env!("CARGO_PKG_VERSION")))?;
        req.insert_header(http::header::ACCEPT, "application/json")?;
        if !body.is_empty() || method != "GET" {
            req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        }
        if !body.is_empty() {
            req.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        }
        let (peer, idle) = (&target.peer, target.idle.as_ref());
        let (mut s, header) =
            crate::upstream::send(&self.connector, peer, idle, &|| Ok(req.clone()), Bytes::copy_from_slice(body))
                .await?;
        let body = crate::upstream::read_up_to(&mut s, MAX_PROBE_BODY).await?;
        if s.response_done() {
            crate::upstream::release(&self.connector, peer, idle, s, self.upstream.idle_timeout()).await;
        }
        Ok((header.status.as_u16(), header.headers.clone(), body))
    }
}

/// What a validated import learned about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub valid: bool,
    pub models: Vec<String>,
    pub category: String,
    /// Why an invalid key was refused (outcome class and status; never the key).
    pub reason: Option<String>,
}

/// Model families that name a category, in the order they are tried against a model name.
const FAMILIES: &[&str] =
    &["kimi", "qwen", "llama", "deepseek", "gpt-oss", "glm", "gemma", "mistral", "phi", "minimax", "cogito", "granite"];

/// The family most of `models` belong to (first listed wins a tie), else `general`.
pub fn category_of(models: &[String]) -> String {
    let mut counts = [0usize; FAMILIES.len()];
    for m in models {
        let m = m.to_ascii_lowercase();
        if let Some(i) = FAMILIES.iter().position(|f| m.contains(f)) {
            counts[i] += 1;
        }
    }
    let best = counts.iter().enumerate().filter(|(_, c)| **c > 0).max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)));
    best.map(|(i, _)| FAMILIES[i].to_string()).unwrap_or_else(|| "general".into())
}

/// Model names from `GET /api/tags` (`{"models":[{"name"|"model"}]}`) or `/v1/models` (`{"data":[{"id"}]}`).
fn model_names(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return vec![] };
    let list = v.get("models").or_else(|| v.get("data")).and_then(|l| l.as_array()).cloned().unwrap_or_default();
    list.iter()
        .filter_map(|m| m.get("name").or_else(|| m.get("model")).or_else(|| m.get("id"))?.as_str().map(str::to_string))
        .collect()
}

impl Prober {
    /// The models the upstream lists for `key` (its kind's `models_path`), if it answers 2xx.
    pub async fn list_models(&self, key: &Key) -> Option<Vec<String>> {
        let path = self.models_path.clone();
        match self.send(key, "GET", &path, b"").await {
            Ok((status, _, body)) if (200..300).contains(&status) => Some(model_names(&body)),
            _ => None,
        }
    }

    /// Validates a key for import: `GET /api/tags` as that key must answer 2xx; its model list
    /// gives the category.
    pub async fn validate(&self, key: &Key) -> Validation {
        let invalid = |reason: String| Validation {
            valid: false,
            models: vec![],
            category: "general".into(),
            reason: Some(reason),
        };
        match self.send(key, "GET", &self.models_path, b"").await {
            Ok((status, headers, body)) => match classify(status, &headers, Some(&body)) {
                Outcome::Success => {
                    let models = model_names(&body);
                    Validation { valid: true, category: category_of(&models), models, reason: None }
                }
                o => invalid(format!("{} (HTTP {status})", o.as_str())),
            },
            Err(e) => invalid(format!("unreachable ({e})")),
        }
    }
}

/// Manually disabled and expired keys are never probed.
fn probeable(key: &Key, now: u64) -> bool {
    !matches!(key.status(), Status::Disabled | Status::Expired) && !key.is_expired(now)
}

/// (runtime generation, [(provider name, its checker)]).
pub type Checkers = (u64, Vec<(String, Arc<HealthChecker>)>);

/// The health checks of every provider of the current runtime: one pingora
/// `BackgroundService`, whatever a reload does to the providers.
pub struct HealthService {
    runtime: Arc<ArcSwap<Runtime>>,
    /// The proxy's own connector (its connection pool), shared by every checker: each
    /// pingora connector loads the system CA store (~1 MB), so one per provider and reload
    /// cost memory for nothing.
    connector: Arc<Connector>,
    /// Checkers of the runtime generation they were built for (rebuilt after a reload).
    checkers: ArcSwap<Checkers>,
    cfg: ArcSwap<HealthCheckConfig>,
}

impl HealthService {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, connector: Arc<Connector>) -> HealthService {
        HealthService {
            runtime,
            connector,
            checkers: ArcSwap::from_pointee((0, Vec::new())),
            cfg: ArcSwap::from_pointee(HealthCheckConfig::default()),
        }
    }

    /// The checkers of the current runtime's providers, in provider order.
    pub fn checkers(&self) -> Arc<Checkers> {
        let rt = self.runtime.load();
        let current = self.checkers.load_full();
        if current.0 == rt.generation {
            return current;
        }
        let cfg = rt.config.health_check.clone();
        let built: Vec<(String, Arc<HealthChecker>)> = rt
            .providers
            .iter()
            .map(|p| (p.name.clone(), Arc::new(HealthChecker::for_provider(p, self.connector.clone(), cfg.clone()))))
            .collect();
        self.cfg.store(Arc::new(cfg));
        let fresh = Arc::new((rt.generation, built));
        self.checkers.store(fresh.clone());
        fresh
    }

    /// Refreshes each provider's cached model listing (what routing by model and `/v1/models`
    /// read, SPEC §3.7), off the request path: the models its keys' validated imports found,
    /// plus the upstream's own listing asked with one usable key. Providers with a static
    /// `models` list are left alone.
    pub async fn refresh_listings(&self) {
        let rt = self.runtime.load_full();
        let checkers = self.checkers();
        for (p, (_, checker)) in rt.providers.iter().zip(checkers.1.iter()) {
            if !p.models.is_empty() {
                continue;
            }
            let mut models: Vec<String> = p.pool.keys().iter().flat_map(|k| k.view_at(0).models).collect();
            let now = p.pool.now_ms();
            if let Some(key) = p.pool.keys().iter().find(|k| k.usable_at(now)).cloned() {
                if let Some(listed) = checker.prober().list_models(&key).await {
                    models.extend(listed);
                }
            }
            models.sort();
            models.dedup();
            if !models.is_empty() || p.listing.load().is_empty() {
                p.listing.store(Arc::new(models));
            }
        }
    }

    /// One round on every provider.
    pub async fn tick(&self, sweep: bool) -> Vec<ProbeReport> {
        let checkers = self.checkers();
        let rounds = checkers.1.iter().map(|(_, c)| c.tick(sweep));
        futures_util::future::join_all(rounds).await.into_iter().flatten().collect()
    }

    /// Probes the listed keys (all when None) of every provider now.
    pub async fn check_now(&self, ids: Option<&[String]>) -> Vec<ProbeReport> {
        let checkers = self.checkers();
        let rounds = checkers.1.iter().map(|(_, c)| c.check_now(ids));
        futures_util::future::join_all(rounds).await.into_iter().flatten().collect()
    }

    /// The prober of a provider (None = the home provider), for validated imports.
    pub fn prober(&self, provider: Option<&str>) -> Option<Arc<HealthChecker>> {
        let checkers = self.checkers();
        let rt = self.runtime.load();
        let name = provider.filter(|p| !p.is_empty()).unwrap_or(rt.home_provider().name.as_str()).to_string();
        checkers.1.iter().find(|(n, _)| *n == name).map(|(_, c)| c.clone())
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.checkers();
        let cfg = self.cfg.load_full();
        if self.runtime.load().providers.len() > 1 {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.refresh_listings() => {}
            }
        }
        let mut next_sweep = tokio::time::Instant::now() + cfg.sweep_interval.0;
        loop {
            let cfg = self.cfg.load_full();
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(cfg.interval.0) => {}
            }
            let sweep = tokio::time::Instant::now() >= next_sweep;
            if sweep {
                next_sweep += cfg.sweep_interval.0;
            }
            // Model listings matter only for routing between providers.
            if self.runtime.load().providers.len() > 1 {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = self.refresh_listings() => {}
                }
            }
            // Racing the round against shutdown drops in-flight probes: stopping is prompt even
            // in the middle of a 10k-key sweep.
            tokio::select! {
                _ = shutdown.changed() => return,
                reports = self.tick(sweep) => {
                    let changed = reports.iter().filter(|r| matches!(r.action, "returned" | "parked")).count();
                    if !reports.is_empty() {
                        log::debug!("health: probed {} keys ({}), {changed} changed state", reports.len(), if sweep { "sweep" } else { "parked" });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_from_model_families() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(category_of(&m(&["kimi-k2:1t", "qwen3-coder:480b", "Qwen3:235b"])), "qwen");
        assert_eq!(category_of(&m(&["gpt-oss:120b"])), "gpt-oss");
        assert_eq!(category_of(&m(&["kimi-k2:1t", "qwen3:8b"])), "kimi", "ties go to the first family listed");
        assert_eq!(category_of(&m(&["something-else"])), "general");
        assert_eq!(category_of(&[]), "general");
        assert_eq!(model_names(br#"{"models":[{"name":"a"},{"model":"b"}]}"#), m(&["a", "b"]));
        assert_eq!(model_names(br#"{"data":[{"id":"c"}]}"#), m(&["c"]));
    }

    #[test]
    fn usage_parsing_is_defensive() {
        let u =
            Usage::parse(br#"{"limits":{"session":{"usage":0.25},"weekly":{"usage":1.2},"monthly":null}}"#).unwrap();
        assert_eq!(u, Usage { session: Some(0.25), weekly: Some(1.0), monthly: None, resets_at: [None; 3] });
        let u = Usage::parse(br#"{"limits":{"session":{"usage":"lots"},"weekly":{}}}"#).unwrap();
        assert_eq!(u, Usage::default());
        assert_eq!(Usage::parse(b"not json"), None);
        assert_eq!(Usage::parse(br#"{"plan":"free"}"#), None);
    }

    #[test]
    fn the_latest_reset_among_exhausted_windows_wins() {
        let now = 1_764_158_400_000; // 2025-11-26T12:00:00Z, a Wednesday
        let u = Usage { session: Some(0.99), weekly: Some(0.985), monthly: Some(0.5), resets_at: [None; 3] };
        assert_eq!(u.exhausted(0.98, now), Some((Window::Weekly, Window::Weekly.next_reset(now))));
        assert_eq!(u.exhausted(0.995, now), None);
        let u = Usage { session: Some(1.0), weekly: None, monthly: None, resets_at: [None; 3] };
        assert_eq!(u.exhausted(0.98, now), Some((Window::Session, Window::Session.next_reset(now))));
    }

    #[test]
    fn balance_shapes() {
        let now = 1_764_158_400_000; // 2025-11-26T12:00:00Z
        let legacy = br#"{"session":{"remaining_percent":55,"resets_at":"2025-11-26T15:00:00Z"},
                          "weekly":{"remaining_percent":0,"resets_at":"2025-11-30T00:00:00Z"}}"#;
        let u = Usage::parse_balance(legacy).unwrap();
        assert!(u.session.is_some_and(|s| (s - 0.45).abs() < 1e-9), "{u:?}");
        assert_eq!((u.weekly, u.monthly), (Some(1.0), None));
        // The reset the upstream named wins over the calendar's.
        assert_eq!(u.exhausted(0.98, now), Some((Window::Weekly, 1_764_460_800_000)));
        let credit = br#"{"included":{"balance_usd":0,"allowance_usd":20,"period":"monthly"}}"#;
        let u = Usage::parse_balance(credit).unwrap();
        assert_eq!(u.monthly, Some(1.0));
        assert_eq!(u.exhausted(0.98, now), Some((Window::Monthly, Window::Monthly.next_reset(now))));
        let half = Usage::parse_balance(br#"{"included":{"balance_usd":10,"allowance_usd":20}}"#).unwrap();
        assert_eq!(half.monthly, Some(0.5));
        assert_eq!(Usage::parse_balance(br#"{"path":"/api/balance"}"#), None, "not a balance");
        assert_eq!(Usage::parse_balance(br#"{"session":{"remaining_percent":"lots"}}"#), None);
        assert_eq!(Usage::parse_balance(b"nope"), None);
    }
}
