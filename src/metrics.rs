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
