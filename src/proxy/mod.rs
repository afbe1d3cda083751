//! The client-facing proxy: the pingora `ProxyHttp` hooks, which only delegate — routes and
//! envelopes (`routes`, `envelope`), client auth (`auth`), the upstream header (`headers`),
//! key choice and failover (`crate::pool`), bodies over 64 KiB (`crate::forward`).
//!
//! Request flow: `request_filter` answers health/404/401/413 itself and reads the body whole
//! (so any attempt can replay it); ≤ 64 KiB continues on pingora's proxy path, where
//! `upstream_peer` takes a key from `Attempts` and `upstream_response_filter` /
//! `fail_to_connect` / `error_while_proxy` turn outcomes into retries; larger bodies go to
//! `forward::run`, which applies the same `Attempts` policy on its own connector.

pub mod auth;
pub mod cors;
pub mod envelope;
pub mod header_deadline;
pub mod headers;
pub mod observe;
pub mod routes;

use crate::lifecycle::{Drain, InFlight};
use crate::pool::{classify, outcome::ERROR_PEEK_BYTES, Attempts, Decision, Outcome, Pool, Window};
use crate::upstream::Upstream;
use async_trait::async_trait;
use auth::{Client, Clients};
use bytes::{Bytes, BytesMut};
use envelope::{ErrorKind, ProxyError};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorSource, ErrorType};
use routes::{AllowList, Family, Route};
use std::sync::Arc;

/// Everything the request path reads. Built once by `app.rs`; shared by all worker threads.
pub struct ProxyState {
    pub pool: Arc<Pool>,
    pub clients: Arc<Clients>,
    pub upstream: Arc<Upstream>,
    pub routes: AllowList,
    pub max_attempts: usize,
    pub max_request_body: u64,
    pub forward_client_ip: bool,
    /// Longest wait for the next piece of a request body.
    pub client_body_timeout: std::time::Duration,
    /// Connection pool of the large-body path (pingora's proxy path has its own).
    pub connector: Connector,
    /// In-flight requests and the draining flag (`crate::lifecycle`).
    pub drain: Arc<Drain>,
    /// None = CORS off (`cors.allow_origins` empty).
    pub cors: Option<cors::Cors>,
    /// `server.max_header_bytes` / `server.max_headers`: larger request headers get 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `server.keepalive_timeout` in seconds: idle client connections close after it.
    pub keepalive_secs: u64,
}

impl ProxyState {
    /// Ready = not stopping, the upstream has an address, no storm is on, and at least one key
    /// can serve.
    pub fn ready(&self) -> bool {
        !self.drain.stopping()
            && self.upstream.resolved()
            && self.pool.storm_since().is_none()
            && self.pool.usable_count() > 0
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
        if self.cors.is_some() {
            cors::decorate(header, ctx.cors_allow.as_ref());
        }
    }
}

pub struct PoolProxy {
    pub state: Arc<ProxyState>,
}

/// Per-request state.
pub struct Ctx {
    pub(crate) family: Family,
    pub(crate) client: Option<Arc<Client>>,
    pub(crate) attempts: Attempts,
    /// The error to answer with, when the proxy (not the upstream) decided the request fails.
    pub(crate) failure: Option<ProxyError>,
    /// The response had started when the upstream broke: the client saw a cut-off response.
    pub(crate) aborted: bool,
    /// `Access-Control-Allow-Origin` for this request's origin (CORS on and the origin allowed).
    pub(crate) cors_allow: Option<http::HeaderValue>,
    /// `/healthz`, `/readyz` or a CORS preflight: answered locally and not a proxied request in
    /// the metrics (a load balancer's probes would otherwise fill the request histograms).
    local_answer: bool,
    /// The start of a delivered upstream error body, kept to learn which usage window (if
    /// any) it names. None unless the delivered answer is a 4xx.
    error_peek: Option<BytesMut>,
    /// Timings and token usage, for metrics.
    pub(crate) observed: observe::Observed,
    /// Keeps the process alive until this request has finished (graceful shutdown).
    _in_flight: InFlight,
}

/// After an early 413: how long and how much of the rest of the body is read and thrown away.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// Reads and discards what is left of a request body we have already answered (bounded by
/// [`LINGER_TIME`] and [`LINGER_BYTES`]). Closing a socket with unread data sends a reset, and a
/// client still writing its body then sees "broken pipe" instead of our 413.
async fn linger(session: &mut Session) {
    let waiting_for_continue = session.req_header().headers.contains_key(http::header::EXPECT);
    if waiting_for_continue || session.is_body_done() {
        return; // nothing more is coming
    }
    let drain = async {
        let mut read = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Bodies up to this size are replayed by pingora's own retry buffer.
pub const PINGORA_REPLAY_LIMIT: usize = 64 * 1024;

impl PoolProxy {
    /// Answers the request with a proxy-made error in the route family's envelope.
    pub(crate) async fn respond(&self, session: &mut Session, ctx: &mut Ctx, err: ProxyError) -> pingora::Result<bool> {
        let body = err.body(ctx.family);
        let mut header = err.header(body.len());
        self.state.finish_header(session, &mut header, ctx);
        session.set_keepalive(None);
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(body), true).await?;
        if err.kind == ErrorKind::BodyTooLarge {
            linger(session).await;
        }
        Ok(true)
    }

    async fn respond_json(&self, session: &mut Session, status: u16, body: &'static str) -> pingora::Result<bool> {
        self.state.close_if_draining(session);
        let mut h = ResponseHeader::build(status, Some(3))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(Bytes::from_static(body.as_bytes())), true).await?;
        Ok(true)
    }

    /// Reads the whole request body (bounded by `max_request_body`) with pingora's retry buffer
    /// on. Returns the body only when it is too big for that buffer (the large-body path needs it).
    async fn read_body(&self, session: &mut Session) -> Result<Option<Bytes>, ProxyError> {
        let max = self.state.max_request_body;
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(ProxyError::new(ErrorKind::BodyTooLarge));
        }
        if session.is_body_empty() {
            return Ok(None);
        }
        // We read the body before choosing an upstream, so we answer `Expect: 100-continue`
        // ourselves (and never forward it: the upstream receives the whole body at once).
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session.req_header_mut().remove_header(&http::header::EXPECT);
            session.write_continue_response().await.map_err(|_| ProxyError::new(ErrorKind::BadRequest))?;
        }
        // A client that stops sending mid-body must not hold the request forever.
        session.set_read_timeout(Some(self.state.client_body_timeout));
        session.enable_retry_buffering();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total: u64 = 0;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    total += chunk.len() as u64;
                    if total > max {
                        return Err(ProxyError::new(ErrorKind::BodyTooLarge));
                    }
                    chunks.push(chunk);
                }
                Ok(None) => break,
                Err(e) if matches!(e.etype(), ErrorType::ReadTimedout) => {
                    return Err(ProxyError::new(ErrorKind::RequestTimeout))
                }
                Err(_) => return Err(ProxyError::new(ErrorKind::BadRequest)),
            }
        }
        if !session.retry_buffer_truncated() {
            return Ok(None); // pingora holds it and will replay it on every attempt
        }
        let mut body = BytesMut::with_capacity(total as usize);
        for c in chunks {
            body.extend_from_slice(&c);
        }
        Ok(Some(body.freeze()))
    }
}

#[async_trait]
impl ProxyHttp for PoolProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            family: Family::OpenAi,
            client: None,
            attempts: Attempts::new(self.state.max_attempts),
            failure: None,
            aborted: false,
            cors_allow: None,
            local_answer: false,
            error_peek: None,
            observed: Default::default(),
            _in_flight: self.state.drain.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        if !self.state.header_within_limits(session.req_header()) {
            // Nothing of an oversized header is forwarded, whatever route it asks for; the
            // answer uses the envelope of the family its path names.
            if let Some(f) = Family::of(session.req_header().uri.path()) {
                ctx.family = f;
            }
            return self.respond(session, ctx, ProxyError::new(ErrorKind::HeadersTooLarge)).await;
        }
        if !self.state.drain.draining() {
            // (pingora has already turned keep-alive off for a request that began after its
            // shutdown broadcast; that must stay so)
            session.set_keepalive(Some(self.state.keepalive_secs));
        }
        if let Some(c) = &self.state.cors {
            ctx.cors_allow = c.allow(session.req_header());
            if cors::Cors::is_preflight(session.req_header()) {
                let h = c.preflight(session.req_header(), ctx.cors_allow.as_ref());
                ctx.local_answer = true;
                self.state.close_if_draining(session);
                session.write_response_header(Box::new(h), true).await?;
                return Ok(true);
            }
        }
        let route = self.state.routes.resolve(session.req_header().uri.path());
        ctx.local_answer = matches!(route, Route::Healthz | Route::Readyz);
        match route {
            Route::Healthz => return self.respond_json(session, 200, r#"{"status":"ok"}"#).await,
            Route::Readyz if self.state.ready() => {
                return self.respond_json(session, 200, r#"{"status":"ready"}"#).await
            }
            Route::Readyz => return self.respond_json(session, 503, r#"{"status":"not ready"}"#).await,
            Route::Unknown => return self.respond(session, ctx, ProxyError::new(ErrorKind::NotFound)).await,
            Route::NotAllowed(f) => {
                ctx.family = f;
                return self.respond(session, ctx, ProxyError::new(ErrorKind::NotFound)).await;
            }
            Route::Forward(f) => ctx.family = f,
        }
        let now = self.state.pool.now_ms();
        let client = match self.state.clients.authenticate(&session.req_header().headers, now) {
            Some(c) => c,
            None => return self.respond(session, ctx, ProxyError::new(ErrorKind::Unauthorized)).await,
        };
        ctx.client = Some(client.clone());
        if let Err(wait) = client.admit(now) {
            let err = ProxyError { kind: ErrorKind::ClientRateLimited, retry_after: Some(wait) };
            return self.respond(session, ctx, err).await;
        }
        let large = match self.read_body(session).await {
            Ok(large) => large,
            Err(e) => return self.respond(session, ctx, e).await,
        };
        if !client.models.is_empty() {
            let body = large.clone().or_else(|| session.get_retry_buffer()).unwrap_or_default();
            if !client.allows_model(requested_model(&body).as_deref()) {
                return self.respond(session, ctx, ProxyError::new(ErrorKind::ModelNotAllowed)).await;
            }
        }
        match large {
            None => Ok(false),
            Some(large) => {
                crate::forward::run(self, session, ctx, large).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        if let Err(no_key) = ctx.attempts.begin(&self.state.pool) {
            ctx.failure = Some(ProxyError { kind: ErrorKind::NoUsableKey, retry_after: no_key.retry_after });
            return Error::e_explain(ErrorType::HTTPStatus(503), "no usable key");
        }
        ctx.observed.attempt_began();
        match self.state.upstream.peer() {
            Some(peer) => Ok(Box::new(peer)),
            None => {
                ctx.failure = Some(ProxyError::new(ErrorKind::UpstreamUnresolved));
                Error::e_explain(ErrorType::HTTPStatus(502), "upstream unresolved")
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let key =
            ctx.attempts.current().ok_or_else(|| Error::explain(ErrorType::InternalError, "no key for attempt"))?;
        headers::rewrite(upstream_request, key, &self.state.upstream, self.state.forward_client_ip)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let status = upstream_response.status.as_u16();
        let outcome = classify(status, &upstream_response.headers, None);
        let may_retry = session.response_written().is_none();
        if ctx.attempts.settle(&self.state.pool, outcome, may_retry) == Decision::Retry {
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "failing over to another key");
            e.set_retry(true);
            return Err(e);
        }
        ctx.observed.response_started(upstream_response);
        // This answer goes to the client. If it is a 4xx, look at its body on the way through:
        // a usage-limit message names the window the key must wait out (SPEC §3.2).
        if (400..500).contains(&status) {
            ctx.error_peek = Some(BytesMut::new());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        self.state.finish_header(session, upstream_response, ctx);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        if let Some(peek) = ctx.error_peek.as_mut() {
            if let Some(b) = body {
                let room = ERROR_PEEK_BYTES.saturating_sub(peek.len());
                peek.extend_from_slice(&b[..b.len().min(room)]);
            }
            if end_of_stream || peek.len() >= ERROR_PEEK_BYTES {
                let peek = ctx.error_peek.take().unwrap_or_default();
                if let (Some(w), Some(key)) =
                    (Window::named_in(&String::from_utf8_lossy(&peek)), ctx.attempts.current())
                {
                    let pool = &self.state.pool;
                    pool.park_rate_limited(key, None, Some(w), pool.now_ms());
                }
            }
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(ctx.attempts.settle(&self.state.pool, Outcome::Transient, true) == Decision::Retry);
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        // The client went away (or broke the request): not the key's fault, and nobody is left
        // to fail over for.
        let client_gone = matches!(e.esource(), ErrorSource::Downstream);
        let outcome = if client_gone { Outcome::CallerFault } else { Outcome::Transient };
        // Never fail over once the client has a response header: it would see two answers.
        let responded = session.response_written().is_some();
        let may_retry = !responded && !client_gone;
        // An attempt already settled (e.g. a status that asked for failover) keeps its decision.
        let decision = ctx.attempts.settle(&self.state.pool, outcome, may_retry);
        ctx.aborted |= responded;
        e.set_retry(may_retry && decision == Decision::Retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if session.response_written().is_some() {
            // Mid-response: closing the connection without the final chunk is the only honest signal.
            ctx.aborted = true;
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        let err = ctx.failure.take().unwrap_or_else(|| error_for(e));
        let code = err.status();
        if self.respond(session, ctx, err).await.is_err() {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        if let Some(b) = body {
            ctx.observed.body_chunk(b);
        }
        Ok(None)
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
        ctx.observed.finish(ctx.family, status, ctx.client.as_deref(), ctx.aborted);
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

/// The `model` of a JSON request body (OpenAI, Anthropic and Ollama all call it that).
fn requested_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        model: Option<String>,
    }
    serde_json::from_slice::<Probe>(body).ok()?.model
}

/// The client-facing error for a pingora error that we did not decide ourselves.
pub(crate) fn error_for(e: &Error) -> ProxyError {
    use ErrorType::*;
    let kind = match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => ErrorKind::UpstreamTimeout,
        _ => match e.esource() {
            ErrorSource::Upstream => ErrorKind::UpstreamFailed,
            ErrorSource::Downstream => ErrorKind::BadRequest,
            _ if matches!(e.etype(), HTTPStatus(_)) => ErrorKind::UpstreamFailed,
            _ => match e.etype() {
                ConnectError | ConnectRefused | ConnectNoRoute | TLSHandshakeFailure | ConnectionClosed => {
                    ErrorKind::UpstreamFailed
                }
                _ => ErrorKind::Internal,
            },
        },
    };
    ProxyError::new(kind)
}
