//! ollama-pool: a Pingora edge proxy that pools many upstream LLM API keys behind one endpoint.
//!
//! Layout (where each behaviour lives):
//! - `cli` — command line and the offline `keys …` / `tokens …` commands; `main.rs` only wires it.
//! - `config` — YAML schema, defaults, `${ENV}` expansion, validation with YAML paths.
//! - `admin` — the admin API (its own connection handler, so `/admin/events` can stream) and
//!   `admin::ops`, the key/token operations it shares with the CLI.
//! - `demo` — `ollama-pool demo`: the proxy in front of a simulated upstream, narrated.
//! - `app` — builds the pingora `Server`: listeners, the proxy service, background services.
//! - `runtime` — what a reload may change, built from the config as a whole and swapped with
//!   `ArcSwap`: providers, routing, routes, CORS, attempt limits.
//! - `provider` — one upstream API: its upstream, key pool, auth form, probe, model rules.
//! - `routing` — prefix → alias → provider models → `routing.default`; the alias body rewrite.
//! - `reload` — SIGHUP / `POST /admin/reload`: validate, rebuild the runtime, swap, sync key files.
//! - `proxy` — the `ProxyHttp` hooks; `proxy::forward` (the one attempt loop: every body size,
//!   one classification), `proxy::body` (reading the request body), `proxy::answer` (answers
//!   the proxy writes), `proxy::ctx` (per-request state), `proxy::routes` (allow-list, route family),
//!   `proxy::auth` (client tokens, rpm, model lists), `proxy::envelope` (error bodies),
//!   `proxy::headers` (the upstream request header), `proxy::observe` (per-request measurements),
//!   `proxy::cors` (CORS), `proxy::header_deadline` (the connection wrapper behind
//!   `server.client_header_timeout`).
//! - `pool` — keys, their state machine, round-robin selection, outcome classification,
//!   the per-request attempt policy, usage windows, the storm guard, the clock.
//! - `health` — background probes per provider: parked keys back, bad/exhausted keys out, storm recovery.
//! - `upstream` — upstream URL, address discovery + TCP health check, each address's `HttpPeer`
//!   and idle keep-alive connections (`upstream::idle`), and the one-request exchange
//!   (`send`, `release`) used by the forwarding path and the prober.
//! - `lifecycle` — SIGTERM drains in-flight requests and streams, then exits; `serve --upgrade`
//!   finds the running instance by its pid file and takes its listeners over (SIGQUIT).
//! - `import` — key-file parsing shared by start-up, the admin API and the CLI.
//! - `store` — durable state: `Store` trait + SQLite (keys, hashed tokens, counter snapshots, usage).
//! - `usage` — token usage read from JSON/SSE/NDJSON responses as they pass (`usage::scan`;
//!   `usage::members` finds a body's `model` / `usage` members without parsing the rest), the
//!   per (day, client, provider, model) ledger, reports (`usage::report`) and token budgets
//!   (`usage::budget`).
//! - `fleet` — several instances on one Redis: key changes published and applied across them,
//!   the live key state and its reconcile (`live`), fleet-wide client limits (`limits`).
//! - `notify` — key and pool events as notices: the SSE stream of `/admin/events`
//!   (`notify::sse`) and webhooks (`notify::webhooks`).
//! - `metrics` — every Prometheus metric.
//! - `secret` — the `Secret` type that never prints.
//! - `logging` — logger set-up that keeps pingora's header dumps out of the logs.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod health;
pub mod import;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod provider;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod secret;
pub mod store;
pub mod upstream;
pub mod usage;
