//! Every metric the proxy exports, in one place (prefix `ollama_pool_`). Label children are
//! resolved once at start-up, so the request path only does atomic increments.

use crate::pool::{Key, Outcome};
use crate::proxy::routes::Family;
use prometheus::{register_int_counter, register_int_counter_vec, IntCounter};
use std::sync::LazyLock;

const FAMILIES: [&str; 3] = ["openai", "anthropic", "ollama"];
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
const OUTCOMES: [&str; 5] = ["success", "credential", "rate_limited", "transient", "caller_fault"];

struct Metrics {
    /// [family][status class]
    requests: Vec<Vec<IntCounter>>,
    /// [outcome]
    failovers: Vec<IntCounter>,
    attempts: IntCounter,
    stream_aborts: IntCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let requests = register_int_counter_vec!(
        "ollama_pool_requests_total",
        "Client requests answered, by route family and status class (none = connection cut).",
        &["family", "status_class"]
    )
    .expect("register requests_total");
    let failovers = register_int_counter_vec!(
        "ollama_pool_failovers_total",
        "Attempts abandoned for another key, by the outcome that caused it.",
        &["reason"]
    )
    .expect("register failovers_total");
    Metrics {
        requests: FAMILIES
            .iter()
            .map(|f| CLASSES.iter().map(|c| requests.with_label_values(&[*f, *c])).collect())
            .collect(),
        failovers: OUTCOMES.iter().map(|o| failovers.with_label_values(&[*o])).collect(),
        attempts: register_int_counter!("ollama_pool_upstream_attempts_total", "Upstream attempts started.")
            .expect("register upstream_attempts_total"),
        stream_aborts: register_int_counter!(
            "ollama_pool_stream_aborts_total",
            "Responses cut off because the upstream failed after the response had started."
        )
        .expect("register stream_aborts_total"),
    }
});

/// Registers every metric now (so `/metrics` lists them before the first request).
pub fn init() {
    LazyLock::force(&METRICS);
    LazyLock::force(&TRANSITIONS);
    LazyLock::force(&STORM);
    LazyLock::force(&PROBES);
    LazyLock::force(&USAGE);
}

pub fn attempt_started(_key: &Key) {
    METRICS.attempts.inc();
}

pub fn failover(reason: Outcome) {
    let i = OUTCOMES.iter().position(|o| *o == reason.as_str()).unwrap_or(0);
    METRICS.failovers[i].inc();
}

pub fn request_done(family: Family, status: u16, aborted: bool) {
    let f = family as usize;
    let class = if (100..600).contains(&status) { (status / 100) as usize } else { 0 };
    METRICS.requests[f][class].inc();
    if aborted {
        METRICS.stream_aborts.inc();
    }
}

static TRANSITIONS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ollama_pool_key_transitions_total",
        "Key state changes, by from/to status and reason.",
        &["from", "to", "reason"]
    )
    .expect("register key_transitions_total")
});

static STORM: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "ollama_pool_storm_active",
        "1 while the pool treats failures as an upstream-wide outage or throttle."
    )
    .expect("register storm_active")
});

/// A key changed state (rare: a label lookup here is fine).
pub fn key_transition(from: crate::pool::Status, to: crate::pool::Status, reason: crate::pool::Reason) {
    let reason = if reason.as_str().is_empty() { "time-up" } else { reason.as_str() };
    TRANSITIONS.with_label_values(&[from.as_str(), to.as_str(), reason]).inc();
}

pub fn storm(active: bool) {
    STORM.set(i64::from(active));
}

static PROBES: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("ollama_pool_probes_total", "Health probes, by outcome class.", &["result"])
        .expect("register probes_total")
});

static USAGE: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    prometheus::register_gauge_vec!(
        "ollama_pool_key_usage_ratio",
        "Share (0..1) of each usage window a key has used, from the usage probe; -1 = no limit.",
        &["key_id", "window"]
    )
    .expect("register key_usage_ratio")
});

pub fn probe(result: &str) {
    PROBES.with_label_values(&[result]).inc();
}

pub fn key_usage(key_id: &str, window: &str, fraction: Option<f64>) {
    USAGE.with_label_values(&[key_id, window]).set(fraction.unwrap_or(-1.0));
}
