//! The client-facing proxy: the pingora `ProxyHttp` hooks, which only delegate — routes and
//! envelopes (`routes`, `envelope`), client auth (`auth`), reading the body (`body`), answers
//! the proxy makes (`answer`), the upstream header (`headers`), the attempt loop (`forward`),
//! key choice and failover policy (`crate::pool`).
//!
//! Request flow: `request_filter` answers health/404/401/413/429 itself, reads the body whole
//! (so any attempt can replay it), then hands the request to `forward::run`, which makes every
//! attempt and writes the answer. Pingora's own upstream hooks are not used: one path, one
//! classification, whatever the body size (SPEC §3.2).

pub mod answer;
pub mod auth;
pub mod body;
pub mod cors;
pub mod ctx;
pub mod envelope;
pub mod forward;
pub mod header_deadline;
pub mod headers;
pub mod listing;
pub mod observe;
pub mod routes;

pub use ctx::Ctx;

use crate::lifecycle::Drain;
use crate::pool::Pool;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use auth::Clients;
use bytes::Bytes;
use envelope::{ErrorKind, ProxyError};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorType};
use routes::{Family, Route};
use std::sync::Arc;

/// Everything the request path reads. Built once by `app.rs`; shared by all worker threads.
/// What a reload may change lives in `runtime` (one `ArcSwap` load per request); the rest
/// needs a restart.
pub struct ProxyState {
    /// Shared with the admin API, the health checks and reload (they read or swap it too).
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub clients: Arc<Clients>,
    pub clock: Arc<dyn crate::pool::Clock>,
    /// Longest wait for the next piece of a request body.
    pub client_body_timeout: std::time::Duration,
    /// Upstream connection pool of the forwarding path.
    /// One connector (one upstream connection pool, one loaded CA store) for the proxy's own
    /// forwarding, health probes and webhooks.
    pub connector: Arc<Connector>,
    /// In-flight requests and the draining flag (`crate::lifecycle`).
    pub drain: Arc<Drain>,
    /// `server.max_header_bytes` / `server.max_headers`: larger request headers get 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `server.keepalive_timeout` in seconds: idle client connections close after it.
    pub keepalive_secs: u64,
    /// Usage by (day, client, provider, model), counted as requests finish (`crate::usage`).
    pub usage: Arc<crate::usage::Ledger>,
}

impl ProxyState {
    /// Ready = not stopping, and some provider has an address, no storm and a usable key.
    pub fn ready(&self) -> bool {
        !self.drain.stopping() && self.runtime.load().ready()
    }

    pub fn runtime_cell(&self) -> Arc<ArcSwap<Runtime>> {
        self.runtime.clone()
    }

    /// The pool of the home provider (`default`, else the first): for single-provider tools
    /// and tests.
    pub fn pool(&self) -> Arc<Pool> {
        self.runtime.load().home_provider().pool.clone()
    }

    /// Whether the request header is within `max_header_bytes` and `max_headers` (counted as
    /// on the wire: request line, and `name: value\r\n` per field).
    fn header_within_limits(&self, req: &RequestHeader) -> bool {
        if req.headers.len() > self.max_headers {
            return false;
        }
        let line = req.method.as_str().len() + req.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 11;
        let fields: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        line + fields <= self.max_header_bytes
    }

    /// While the process drains, a response closes its connection so the client's next request
    /// opens a new one (to the process that took over, or to another instance).
    pub(crate) fn close_if_draining(&self, session: &mut Session) {
        if self.drain.draining() {
            session.set_keepalive(None);
        }
    }

    /// What the header of every forwarded or proxy-made answer gets: `Connection: close` while
    /// draining, and the CORS headers when CORS is on.
    pub(crate) fn finish_header(&self, session: &mut Session, header: &mut ResponseHeader, ctx: &Ctx) {
        self.close_if_draining(session);
        if ctx.runtime.cors.is_some() {
            cors::decorate(header, ctx.cors_allow.as_ref());
        }
    }
}

pub struct PoolProxy {
    pub state: Arc<ProxyState>,
}

impl PoolProxy {
    /// Everything before the first upstream attempt: limits, CORS preflight, local routes,
    /// client auth and limits, the body. Returns the body to forward, or None when the request
    /// has been answered here.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Option<Bytes>> {
        let state = &*self.state;
        if !state.header_within_limits(session.req_header()) {
            // Nothing of an oversized header is forwarded, whatever route it asks for; the
            // answer uses the envelope of the family its path names.
            if let Some(f) = Family::of(session.req_header().uri.path()) {
                ctx.family = f;
            }
            return self.refuse(session, ctx, ProxyError::new(ErrorKind::HeadersTooLarge)).await;
        }
        if !state.drain.draining() {
            // (pingora has already turned keep-alive off for a request that began after its
            // shutdown broadcast; that must stay so)
            session.set_keepalive(Some(state.keepalive_secs));
        }
        let rt = ctx.runtime.clone();
        if let Some(c) = &rt.cors {
            ctx.cors_allow = c.allow(session.req_header());
            if cors::Cors::is_preflight(session.req_header()) {
                let h = c.preflight(session.req_header(), ctx.cors_allow.as_ref());
                ctx.local_answer = true;
                state.close_if_draining(session);
                session.write_response_header(Box::new(h), true).await?;
                return Ok(None);
            }
        }
        // A provider's path prefix (`/openrouter/v1/...`) selects it; the rest is the route.
        let prefixed = match rt.routing.by_prefix(session.req_header().uri.path()) {
            Some((i, rest)) => {
                let rest = match session.req_header().uri.query() {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest.to_string(),
                };
                match rest.parse::<http::Uri>() {
                    Ok(uri) => session.req_header_mut().set_uri(uri),
                    Err(_) => return self.refuse(session, ctx, ProxyError::new(ErrorKind::NotFound)).await,
                }
                Some(i)
            }
            None => None,
        };
        let route = rt.routes.resolve(session.req_header().uri.path());
        ctx.local_answer = matches!(route, Route::Healthz | Route::Readyz);
        match route {
            Route::Healthz => return self.local(session, 200, r#"{"status":"ok"}"#).await,
            Route::Readyz if state.ready() => return self.local(session, 200, r#"{"status":"ready"}"#).await,
            Route::Readyz => return self.local(session, 503, r#"{"status":"not ready"}"#).await,
            Route::Unknown => return self.refuse(session, ctx, ProxyError::new(ErrorKind::NotFound)).await,
            Route::NotAllowed(f) => {
                ctx.family = f;
                return self.refuse(session, ctx, ProxyError::new(ErrorKind::NotFound)).await;
            }
            Route::Forward(f) => ctx.family = f,
        }
        let now = crate::pool::Clock::now_ms(&*state.clock);
        let Some(client) = state.clients.authenticate(&session.req_header().headers, now) else {
            return self.refuse(session, ctx, ProxyError::new(ErrorKind::Unauthorized)).await;
        };
        ctx.client = Some(client.clone());
        // Budgets first: a request refused for its budget does not use up an rpm slot.
        if let Err((kind, wait)) = client.budgets.check(now) {
            crate::metrics::budget_rejected(client.metrics(), kind.as_str());
            let err = ProxyError::new(ErrorKind::BudgetExhausted(kind)).retry_after(Some(wait));
            return self.refuse(session, ctx, err).await;
        }
        if let Err(wait) = client.admit(now) {
            let err = ProxyError::new(ErrorKind::ClientRateLimited).retry_after(Some(wait));
            return self.refuse(session, ctx, err).await;
        }
        if client.rpm.is_some() {
            crate::fleet::limits::touch();
        }
        let mut body = match body::read_whole(session, rt.max_request_body, state.client_body_timeout).await {
            Ok(b) => b,
            Err(e) => return self.refuse(session, ctx, e).await,
        };
        // The model is read once, here; routing, key choice and the client's allow-list use it.
        let model: Option<Arc<str>> = requested_model(&body);
        if !client.models.is_empty() && !client.allows_model(model.as_deref()) {
            return self.refuse(session, ctx, ProxyError::new(ErrorKind::ModelNotAllowed).about_model(model)).await;
        }
        let routed = rt.routing.route(&rt.providers, prefixed, model);
        if routed.rewrite {
            if let Some(m) = &routed.model {
                body = crate::routing::rewrite_model(&body, m).unwrap_or(body);
            }
        }
        if prefixed.is_none() && rt.providers.len() > 1 && listing::is_listing(session.req_header()) {
            return listing::answer(&self.state, session, ctx).await.map(|()| None);
        }
        ctx.provider = Some(rt.providers[routed.provider].clone());
        ctx.attempts.for_model(routed.model);
        Ok(Some(body))
    }

    async fn refuse(&self, session: &mut Session, ctx: &Ctx, err: ProxyError) -> pingora::Result<Option<Bytes>> {
        answer::error(&self.state, session, ctx, err).await.map(|()| None)
    }

    async fn local(&self, session: &mut Session, status: u16, body: &'static str) -> pingora::Result<Option<Bytes>> {
        answer::json(&self.state, session, status, body).await.map(|()| None)
    }
}

#[async_trait]
impl ProxyHttp for PoolProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.state.runtime.load_full(), self.state.drain.enter())
    }

    /// No downstream modules. pingora's default adds its response compression module, disabled,
    /// which still costs every request a boxed context and a header and body filter call
    /// (~0.7k instructions, issue #14). Answers pass through as the upstream encoded them; the
    /// proxy never compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Every request is answered here: by the proxy itself, or by `forward::run`.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        if let Some(body) = self.admit(session, ctx).await? {
            forward::run(self, session, ctx, body).await?;
        }
        Ok(true)
    }

    /// Never reached: `request_filter` answers every request (see the module doc).
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        Error::e_explain(ErrorType::InternalError, "pingora's upstream path is not used")
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if session.response_written().is_some() {
            // Mid-response: closing the connection without the final chunk is the only honest signal.
            ctx.aborted = true;
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        let err = answer::error_for(e);
        let code = err.status();
        if answer::error(&self.state, session, ctx, err).await.is_err() {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true // `logging` writes one line per request instead
    }

    fn suppress_proxy_warn_log(&self, _s: &Session, _c: &Ctx, _e: &Error, _w: ProxyWarnLogContext) -> bool {
        true // retries are counted in metrics and summarised in the request's log line
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.local_answer {
            return;
        }
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let now = crate::pool::Clock::now_ms(&*self.state.clock);
        let done = observe::Done {
            family: ctx.family,
            status,
            client: ctx.client.as_deref(),
            provider: ctx.provider.as_deref(),
            model: ctx.attempts.model().map(|m| &**m),
            aborted: ctx.aborted,
        };
        ctx.observed.finish(&done, &self.state.usage, now);
        if log::log_enabled!(target: "ollama_pool::access", log::Level::Debug) {
            let keys: Vec<&str> = ctx.attempts.tried().iter().map(|k| k.id.as_str()).collect();
            let req = session.req_header();
            log::debug!(
                target: "ollama_pool::access",
                "{} {} status={} client={} attempts={} keys={} outcome={} aborted={} ms={} error={}",
                req.method,
                req.uri.path(),
                status,
                ctx.client.as_ref().map(|c| c.name.as_str()).unwrap_or("-"),
                ctx.attempts.count(),
                keys.join(","),
                ctx.attempts.last_outcome.map(|o| o.as_str()).unwrap_or("-"),
                ctx.aborted,
                ctx.observed.started().elapsed().as_millis(),
                e.map(|e| e.etype().as_str()).unwrap_or("-"),
            );
        }
    }
}

/// The `model` of a JSON request body (OpenAI, Anthropic and Ollama all call it that). The
/// prompt around it is skipped, not parsed (`usage::members`); serde parses the whole body
/// only when that scan gives up.
pub fn requested_model(body: &[u8]) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Probe {
        model: Option<String>,
    }
    let (mut model, mut twice) = (None, false);
    let scanned = crate::usage::members::each(body, |key, v| {
        if key == b"model" {
            twice |= model.replace(v).is_some();
        }
    });
    if scanned.is_none() || twice {
        return serde_json::from_slice::<Probe>(body).ok()?.model.map(Arc::from);
    }
    let model = model?;
    if let Some(name) = crate::usage::members::plain_str(model) {
        return Some(Arc::from(name)); // (the usual case: no escape, so no serde)
    }
    serde_json::from_slice::<Option<String>>(model).ok()?.map(Arc::from)
}
