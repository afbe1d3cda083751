//! Every metric the proxy exports, in one place (SPEC §2.5). Prefix `ollama_pool_`; labels are
//! bounded: route family, status class, outcome class, key id, client name and model — client
//! and model values beyond a cap fold into `other`. Request-path updates are atomic increments
//! on counters resolved once (per family/class at start, per key and per client on first use).
//! Pool state (keys by status, when parked keys return) is read from the pool at scrape time by
//! a collector, so it is exact and costs nothing per request.

use crate::pool::{Key, Outcome, Pool, Status};
use dashmap::DashMap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    Histogram, IntCounter, IntCounterVec, IntGauge, Opts,
};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

const FAMILIES: [&str; 3] = ["openai", "anthropic", "ollama"];
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
const OUTCOMES: [&str; 6] = ["success", "credential", "model_unavailable", "rate_limited", "transient", "caller_fault"];

/// Latencies of LLM calls run from milliseconds to many minutes.
const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// The proxy's own share should be well under a millisecond.
const OVERHEAD_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];

/// Caps on distinct label values (configurable: `metrics.max_models`, `metrics.max_clients`).
static CAPS: OnceLock<(usize, usize)> = OnceLock::new();

/// The route family's position in `FAMILIES` (the proxy names it; this module names nothing
/// above the pool).
fn family_index(f: &str) -> usize {
    FAMILIES.iter().position(|n| *n == f).unwrap_or(0)
}

fn outcome_index(o: Outcome) -> usize {
    OUTCOMES.iter().position(|n| *n == o.as_str()).unwrap_or(0)
}

struct Metrics {
    requests: IntCounterVec,
    provider_requests: IntCounterVec,
    failovers: Vec<IntCounter>,
    attempts: IntCounterVec,
    stream_aborts: IntCounter,
    stream_errors: IntCounterVec,
    active_streams: IntGauge,
    /// [family] for each timing histogram.
    request_seconds: Vec<Histogram>,
    upstream_seconds: Vec<Histogram>,
    ttfb_seconds: Vec<Histogram>,
    overhead_seconds: Vec<Histogram>,
    tokens: IntCounterVec,
    budget_rejections: IntCounterVec,
    webhook_deliveries: IntCounterVec,
    events_dropped: IntCounter,
    transitions: IntCounterVec,
    probes: IntCounterVec,
    usage: prometheus::GaugeVec,
    storm: IntGauge,
    store_up: IntGauge,
    fleet_events: IntCounterVec,
    reloads: IntCounterVec,
    generation: IntGauge,
    /// Model and client label values seen so far (for the caps).
    models: DashMap<String, ()>,
    clients: DashMap<String, ()>,
}

static M: LazyLock<Metrics> = LazyLock::new(|| {
    let hist = |name: &str, help: &str, buckets: &[f64]| {
        let h = register_histogram_vec!(name, help, &["family"], buckets.to_vec()).expect("register histogram");
        FAMILIES.iter().map(|f| h.with_label_values(&[*f])).collect::<Vec<_>>()
    };
    let failovers = register_int_counter_vec!(
        "ollama_pool_failovers_total",
        "Attempts abandoned for another key, by the outcome that caused it.",
        &["reason"]
    )
    .expect("register failovers_total");
    Metrics {
        requests: register_int_counter_vec!(
            "ollama_pool_requests_total",
            "Client requests answered, by route family, status class (none = connection cut) and client.",
            &["family", "status_class", "client"]
        )
        .expect("register requests_total"),
        provider_requests: register_int_counter_vec!(
            "ollama_pool_provider_requests_total",
            "Requests routed to a provider, by provider, route family and status class.",
            &["provider", "family", "status_class"]
        )
        .expect("register provider_requests_total"),
        failovers: OUTCOMES.iter().map(|o| failovers.with_label_values(&[*o])).collect(),
        attempts: register_int_counter_vec!(
            "ollama_pool_upstream_attempts_total",
            "Upstream attempts, by provider, key id and outcome class.",
            &["provider", "key_id", "outcome"]
        )
        .expect("register upstream_attempts_total"),
        stream_aborts: register_int_counter!(
            "ollama_pool_stream_aborts_total",
            "Responses cut off because the upstream failed after the response had started."
        )
        .expect("register stream_aborts_total"),
        stream_errors: register_int_counter_vec!(
            "ollama_pool_key_stream_errors_total",
            "Streams a key started with a 200 and then failed (cut off, or an error line inside), by key id.",
            &["provider", "key_id"]
        )
        .expect("register key_stream_errors_total"),
        active_streams: register_int_gauge!("ollama_pool_active_streams", "SSE/NDJSON responses in flight.")
            .expect("register active_streams"),
        request_seconds: hist(
            "ollama_pool_request_duration_seconds",
            "Whole request, first byte in to last byte out.",
            LATENCY_BUCKETS,
        ),
        upstream_seconds: hist(
            "ollama_pool_upstream_duration_seconds",
            "Time spent in upstream attempts (all of them) per request.",
            LATENCY_BUCKETS,
        ),
        ttfb_seconds: hist(
            "ollama_pool_time_to_first_byte_seconds",
            "Request start to the first response body byte.",
            LATENCY_BUCKETS,
        ),
        overhead_seconds: hist(
            "ollama_pool_proxy_overhead_seconds",
            "Request duration minus upstream time: what the proxy itself adds.",
            OVERHEAD_BUCKETS,
        ),
        webhook_deliveries: register_int_counter_vec!(
            "ollama_pool_webhook_deliveries_total",
            "Webhook deliveries by result: ok, retried (an attempt failed), failed (all attempts did), dropped (queue full).",
            &["result"]
        )
        .expect("register webhook_deliveries_total"),
        events_dropped: register_int_counter!(
            "ollama_pool_events_dropped_total",
            "Key and pool events dropped before the notifier saw them (its queue was full)."
        )
        .expect("register events_dropped_total"),
        budget_rejections: register_int_counter_vec!(
            "ollama_pool_budget_rejections_total",
            "Requests refused (429) because the client token used up a budget, by client and budget.",
            &["client", "budget"]
        )
        .expect("register budget_rejections_total"),
        tokens: register_int_counter_vec!(
            "ollama_pool_tokens_total",
            "Tokens reported by upstream `usage`, by model, client and kind (prompt|completion).",
            &["model", "client", "kind"]
        )
        .expect("register tokens_total"),
        transitions: register_int_counter_vec!(
            "ollama_pool_key_transitions_total",
            "Key state changes, by from/to status and reason.",
            &["from", "to", "reason"]
        )
        .expect("register key_transitions_total"),
        probes: register_int_counter_vec!("ollama_pool_probes_total", "Health probes, by outcome class.", &["result"])
            .expect("register probes_total"),
        usage: register_gauge_vec!(
            "ollama_pool_key_usage_ratio",
            "Share (0..1) of each usage window a key has used, from the usage probe; -1 = no limit.",
            &["key_id", "window"]
        )
        .expect("register key_usage_ratio"),
        reloads: register_int_counter_vec!(
            "ollama_pool_config_reloads_total",
            "Config reloads, by result (ok: applied; error: the file had problems, nothing changed).",
            &["result"]
        )
        .expect("register config_reloads_total"),
        generation: register_int_gauge!(
            "ollama_pool_config_generation",
            "The config generation in use: 1 at start, +1 per applied reload."
        )
        .expect("register config_generation"),
        fleet_events: register_int_counter_vec!(
            "ollama_pool_fleet_events_total",
            "Key events shared with other instances through Redis, by direction (out|in|dropped) and type.",
            &["direction", "type"]
        )
        .expect("register fleet_events_total"),
        store_up: register_int_gauge!(
            "ollama_pool_store_up",
            "1 while the store (SQLite file or Redis) answers; 0 while it cannot be reached (admin writes get 503)."
        )
        .expect("register store_up"),
        storm: register_int_gauge!(
            "ollama_pool_storm_active",
            "1 while the pool treats failures as an upstream-wide outage or throttle."
        )
        .expect("register storm_active"),
        models: DashMap::new(),
        clients: DashMap::new(),
    }
});

/// Registers every metric now, with the label caps (so `/metrics` lists them before traffic).
pub fn init(max_models: usize, max_clients: usize) {
    let _ = CAPS.set((max_models, max_clients));
    LazyLock::force(&M);
}

/// A label value under its cap: known values pass, new ones pass until the cap, then `other`.
fn capped<'a>(seen: &DashMap<String, ()>, value: &'a str, cap: usize) -> &'a str {
    if seen.contains_key(value) {
        return value;
    }
    if seen.len() >= cap {
        return "other";
    }
    seen.insert(value.to_string(), ());
    value
}

/// A provider's request counters ([family][status class]), resolved once per provider.
pub struct ProviderMetrics {
    requests: Vec<Vec<IntCounter>>,
}

impl ProviderMetrics {
    pub fn new(provider: &str) -> ProviderMetrics {
        let requests = FAMILIES
            .iter()
            .map(|f| CLASSES.iter().map(|c| M.provider_requests.with_label_values(&[provider, *f, *c])).collect())
            .collect();
        ProviderMetrics { requests }
    }
}

/// Per-client counters, resolved on the client's first request and kept in the client.
pub struct ClientMetrics {
    /// [family][status class]
    requests: Vec<Vec<IntCounter>>,
    name: String,
    /// model -> [prompt, completion] token counters of this client. Read lock-free on every
    /// request that reports usage; replaced whole when a new model shows up (bounded by the cap).
    tokens: arc_swap::ArcSwap<std::collections::HashMap<String, [IntCounter; 2]>>,
}

impl ClientMetrics {
    fn token_counters(&self, model: &str) -> [IntCounter; 2] {
        if let Some(c) = self.tokens.load().get(model) {
            return c.clone();
        }
        let cap = CAPS.get().map(|c| c.0).unwrap_or(50);
        let label = capped(&M.models, model, cap);
        let counters = ["prompt", "completion"].map(|k| M.tokens.with_label_values(&[label, self.name.as_str(), k]));
        // Models past the cap share the `other` counters and are not remembered one by one.
        if label != "other" {
            self.tokens.rcu(|m| {
                let mut m = std::collections::HashMap::clone(m);
                m.insert(model.to_string(), counters.clone());
                m
            });
        }
        counters
    }
}

impl ClientMetrics {
    pub fn new(client_name: &str) -> ClientMetrics {
        let cap = CAPS.get().map(|c| c.1).unwrap_or(100);
        let name = capped(&M.clients, client_name, cap).to_string();
        let requests = FAMILIES
            .iter()
            .map(|f| CLASSES.iter().map(|c| M.requests.with_label_values(&[*f, *c, name.as_str()])).collect())
            .collect();
        ClientMetrics { requests, name, tokens: Default::default() }
    }
}

/// Requests that never authenticated are counted under client `-`.
static ANONYMOUS: LazyLock<ClientMetrics> = LazyLock::new(|| ClientMetrics::new("-"));

/// Per-key attempt counters, resolved on the key's first attempt and kept in its sink slot
/// (`Key::sink`), so the request path does no lookup.
pub struct KeyMetrics {
    attempts: [IntCounter; OUTCOMES.len()],
    stream_errors: IntCounter,
}

impl KeyMetrics {
    pub fn new(provider: &str, key_id: &str) -> KeyMetrics {
        KeyMetrics {
            attempts: OUTCOMES.map(|o| M.attempts.with_label_values(&[provider, key_id, o])),
            stream_errors: M.stream_errors.with_label_values(&[provider, key_id]),
        }
    }
}

fn key_metrics<'k>(provider: &str, key: &'k Key) -> Option<&'k KeyMetrics> {
    key.sink(|| KeyMetrics::new(provider, &key.id))
}

/// An attempt on `key` (of `provider`) ended with `outcome`.
pub fn attempt(provider: &str, key: &Key, outcome: Outcome) {
    if let Some(m) = key_metrics(provider, key) {
        m.attempts[outcome_index(outcome)].inc();
    }
}

/// A stream `key` had started failed inside (SPEC §3.3; never retried).
pub fn stream_error(provider: &str, key: &Key) {
    if let Some(m) = key_metrics(provider, key) {
        m.stream_errors.inc();
    }
}

/// The pool's events, as metrics: key transitions (by reason), keys leaving (their series
/// go), the storm gauge.
pub struct EventMetrics;

impl crate::pool::Subscriber for EventMetrics {
    fn on_event(&self, e: &crate::pool::PoolEvent) {
        use crate::pool::{Change, PoolEvent};
        match e {
            PoolEvent::Key(k) => match &k.change {
                Change::Moved { from, to, reason, .. } => key_transition(*from, *to, *reason),
                Change::Removed => forget_key(&k.provider, &k.key_id),
                Change::ModelParked { .. } => {
                    M.transitions.with_label_values(&["active", "model-parked", "model-unavailable"]).inc()
                }
                Change::Added => {}
            },
            PoolEvent::Storm { active, .. } => storm(*active),
        }
    }
}

/// A key left the pool: its series go too, so a deleted key does not linger in dashboards.
pub fn forget_key(provider: &str, key_id: &str) {
    for o in OUTCOMES {
        let _ = M.attempts.remove_label_values(&[provider, key_id, o]);
    }
    let _ = M.stream_errors.remove_label_values(&[provider, key_id]);
    for w in ["session", "weekly", "monthly"] {
        let _ = M.usage.remove_label_values(&[key_id, w]);
    }
}

pub fn failover(reason: Outcome) {
    M.failovers[outcome_index(reason)].inc();
}

/// Everything measured about one request, recorded once when it is done.
pub struct RequestRecord<'a> {
    /// The route family: `openai`, `anthropic` or `ollama`.
    pub family: &'static str,
    pub status: u16,
    pub client: Option<&'a ClientMetrics>,
    /// The provider routing chose, if the request got that far.
    pub provider: Option<&'a ProviderMetrics>,
    pub aborted: bool,
    pub total: Duration,
    pub upstream: Duration,
    pub ttfb: Option<Duration>,
    pub tokens: Option<(Option<&'a str>, Option<u64>, Option<u64>)>,
}

pub fn request_done(r: RequestRecord<'_>) {
    let f = family_index(r.family);
    let class = if (100..600).contains(&r.status) { (r.status / 100) as usize } else { 0 };
    let client = r.client.unwrap_or(&ANONYMOUS);
    client.requests[f][class].inc();
    if let Some(p) = r.provider {
        p.requests[f][class].inc();
    }
    if r.aborted {
        M.stream_aborts.inc();
    }
    M.request_seconds[f].observe(r.total.as_secs_f64());
    if !r.upstream.is_zero() {
        M.upstream_seconds[f].observe(r.upstream.as_secs_f64());
        M.overhead_seconds[f].observe(r.total.saturating_sub(r.upstream).as_secs_f64());
    }
    if let Some(t) = r.ttfb {
        M.ttfb_seconds[f].observe(t.as_secs_f64());
    }
    if let Some((model, prompt, completion)) = r.tokens {
        let [p, c] = client.token_counters(model.unwrap_or("unknown"));
        p.inc_by(prompt.unwrap_or(0));
        c.inc_by(completion.unwrap_or(0));
    }
}

/// A webhook delivery's outcome: `ok`, `retried` (an attempt failed, another follows), `failed`
/// (every attempt failed) or `dropped` (no room in its queue).
pub fn webhook_delivery(result: &str) {
    M.webhook_deliveries.with_label_values(&[result]).inc();
}

/// Pool events the notifier had no room for.
pub fn events_dropped(n: u64) {
    M.events_dropped.inc_by(n);
}

/// A request refused before forwarding because its client used up a token budget.
pub fn budget_rejected(client: &ClientMetrics, budget: &'static str) {
    M.budget_rejections.with_label_values(&[client.name.as_str(), budget]).inc();
}

pub fn stream_started() {
    M.active_streams.inc();
}

pub fn stream_ended() {
    M.active_streams.dec();
}

/// A key changed state (rare: a label lookup here is fine).
pub fn key_transition(from: Status, to: Status, reason: crate::pool::Reason) {
    let reason = if reason.as_str().is_empty() { "time-up" } else { reason.as_str() };
    M.transitions.with_label_values(&[from.as_str(), to.as_str(), reason]).inc();
}

pub fn config_reload(ok: bool, generation: u64) {
    M.reloads.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    M.generation.set(generation as i64);
}

pub fn config_generation(generation: u64) {
    M.generation.set(generation as i64);
}

/// A fleet key event: `direction` = out (published), in (applied from another instance) or
/// dropped (not published: queue full or Redis away); `kind` = added|removed|moved|model_parked.
pub fn fleet_event(direction: &str, kind: &str) {
    M.fleet_events.with_label_values(&[direction, kind]).inc();
}

pub fn store_up(up: bool) {
    M.store_up.set(i64::from(up));
}

pub fn storm(active: bool) {
    M.storm.set(i64::from(active));
}

pub fn probe(result: &str) {
    M.probes.with_label_values(&[result]).inc();
}

pub fn key_usage(key_id: &str, window: &str, fraction: Option<f64>) {
    M.usage.with_label_values(&[key_id, window]).set(fraction.unwrap_or(-1.0));
}

/// Reads the pool at scrape time: keys by status, usable keys, and when each parked key returns.
/// Where the collector finds the pools to report: (provider name, pool) of the current
/// runtime. A function, so this module names nothing above the pool.
pub type PoolSource = Arc<dyn Fn() -> Vec<(String, Arc<Pool>)> + Send + Sync>;

pub struct PoolCollector {
    /// The pools of the server built last (tests build several in one process; the default
    /// registry takes one collector per metric name, so it follows the newest server).
    slot: Arc<Mutex<Option<PoolSource>>>,
    descs: Vec<Desc>,
}

impl PoolCollector {
    pub fn register(source: PoolSource) {
        static SLOT: OnceLock<Arc<Mutex<Option<PoolSource>>>> = OnceLock::new();
        let slot = SLOT.get_or_init(|| {
            let slot = Arc::new(Mutex::new(None));
            let d = |name: &str, help: &str, labels: &[&str]| {
                Desc::new(name.into(), help.into(), labels.iter().map(|s| s.to_string()).collect(), Default::default())
                    .expect("valid desc")
            };
            let descs = vec![
                d("ollama_pool_keys", KEYS_HELP, &["provider", "status"]),
                d("ollama_pool_keys_usable", USABLE_HELP, &["provider"]),
                d("ollama_pool_key_return_seconds", RETURN_HELP, &["provider", "key_id", "status", "reason", "until"]),
                d("ollama_pool_key_model_parked", MODEL_PARKED_HELP, &["provider", "model"]),
            ];
            let _ = prometheus::register(Box::new(PoolCollector { slot: slot.clone(), descs }));
            slot
        });
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }
}

const KEYS_HELP: &str = "Keys in the pool, by provider and status.";
const USABLE_HELP: &str = "Keys that can serve a request right now, by provider.";
const RETURN_HELP: &str = "Seconds until a parked key returns to rotation, by key id, status, reason and return time.";
const MODEL_PARKED_HELP: &str =
    "Keys parked for one model only (model unavailable on their plan), by provider and model.";

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use prometheus::GaugeVec;
        let Some(source) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone() else { return Vec::new() };
        let by_status = GaugeVec::new(Opts::new("ollama_pool_keys", KEYS_HELP), &["provider", "status"]).expect("opts");
        let usable = GaugeVec::new(Opts::new("ollama_pool_keys_usable", USABLE_HELP), &["provider"]).expect("opts");
        let returns = GaugeVec::new(
            Opts::new("ollama_pool_key_return_seconds", RETURN_HELP),
            &["provider", "key_id", "status", "reason", "until"],
        )
        .expect("opts");
        let model_parked =
            GaugeVec::new(Opts::new("ollama_pool_key_model_parked", MODEL_PARKED_HELP), &["provider", "model"])
                .expect("opts");
        let cap = CAPS.get().map_or(50, |c| c.0);
        for (provider, pool) in source() {
            let now = pool.now_ms();
            for st in ["active", "cooling", "disabled", "invalid", "expired"] {
                by_status.with_label_values(&[provider.as_str(), st]).set(0.0);
            }
            for v in pool.views() {
                by_status.with_label_values(&[provider.as_str(), v.status.as_str()]).inc();
                if let (Some(until), Status::Cooling | Status::Invalid | Status::Disabled) = (v.until_ms, v.status) {
                    let reason = if v.reason.as_str().is_empty() { "none" } else { v.reason.as_str() };
                    returns
                        .with_label_values(&[
                            &provider,
                            &v.id,
                            v.status.as_str(),
                            reason,
                            &crate::pool::clock::rfc3339(until),
                        ])
                        .set(until.saturating_sub(now) as f64 / 1000.0);
                }
                for p in &v.model_parks {
                    let model = capped(&M.models, &p.model, cap);
                    model_parked.with_label_values(&[provider.as_str(), model]).inc();
                }
            }
            usable.with_label_values(&[provider.as_str()]).set(pool.usable_count() as f64);
        }
        let mut out = by_status.collect();
        out.extend(usable.collect());
        out.extend(returns.collect());
        out.extend(model_parked.collect());
        out
    }
}
