//! The one forwarding path (SPEC §3.2–3.3), whatever the body size: the body is already read
//! whole (`body::read_whole`); each attempt takes a key from `Attempts`, sends header and body
//! on a pooled upstream connection, and — before the client sees anything — reads the response
//! header and, for an error, a bounded peek at its body. `classify` decides from those same
//! inputs every time, so an answer's class never depends on the request's size. The chosen
//! answer then streams to the client chunk by chunk.
//!
//! Measured against pingora's own proxy path (which can only look at the header before it
//! decides): this path did 1.04–1.11× its requests/s (benches/README.md).

use super::answer;
use super::ctx::Ctx;
use super::envelope::{ErrorKind, ProxyError};
use super::{headers, PoolProxy};
use crate::metrics;
use crate::pool::{classify, outcome::ERROR_PEEK_BYTES, Decision, Key, Outcome};
use crate::provider::Provider;
use crate::upstream::{self, Target};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;

/// Headers that describe one hop's connection, not the message.
static HOP_BY_HOP: [http::HeaderName; 6] = [
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];

/// The client's body framing: the upstream gets the whole body with its length (and never
/// `Expect`: the body was already read).
static FRAMING: [http::HeaderName; 2] = [http::header::TRANSFER_ENCODING, http::header::EXPECT];

/// Runs every attempt of one request and writes the answer (or an error) downstream.
pub(crate) async fn run(proxy: &PoolProxy, session: &mut Session, ctx: &mut Ctx, body: Bytes) -> pingora::Result<()> {
    let state = &proxy.state;
    let Some(provider) = ctx.provider.clone() else {
        return answer::error(state, session, ctx, ProxyError::new(ErrorKind::Internal)).await;
    };
    loop {
        let key = match ctx.attempts.begin(&provider.pool, provider.max_concurrency_per_key) {
            Ok(k) => k,
            Err(no_key) => {
                let model = ctx.attempts.model().cloned();
                let err = ProxyError::new(ErrorKind::NoUsableKey).retry_after(no_key.retry_after).about_model(model);
                return answer::error(state, session, ctx, err).await;
            }
        };
        ctx.observed.attempt_began();
        let Some(target) = provider.upstream.target() else {
            return answer::error(state, session, ctx, ProxyError::new(ErrorKind::UpstreamUnresolved)).await;
        };
        match attempt(proxy, &provider, session, &target, &key, &body).await {
            Ok((up, header, peek)) => {
                let outcome = classify(header.status.as_u16(), &header.headers, peek.as_deref());
                if settle(ctx, &provider, &key, outcome) == Decision::Retry {
                    continue; // dropping `up` closes that connection: its body was not drained
                }
                return deliver(proxy, &provider, session, ctx, &target, &key, up, header, peek).await;
            }
            Err(e) => {
                if settle(ctx, &provider, &key, Outcome::Transient) == Decision::Retry {
                    continue;
                }
                return answer::error(state, session, ctx, answer::upstream_error_for(&e)).await;
            }
        }
    }
}

/// Records an attempt's outcome (the pool's state, then metrics) and decides what is next.
fn settle(ctx: &mut Ctx, provider: &Provider, key: &Key, outcome: Outcome) -> Decision {
    let decision = ctx.attempts.settle(&provider.pool, outcome, true);
    metrics::attempt(&provider.name, key, outcome);
    if decision == Decision::Retry {
        metrics::failover(outcome);
    }
    decision
}

/// One attempt up to the response header (plus a bounded peek at an error body).
async fn attempt(
    proxy: &PoolProxy,
    provider: &Provider,
    session: &Session,
    target: &Target,
    key: &Key,
    body: &Bytes,
) -> pingora::Result<(HttpSession, ResponseHeader, Option<Bytes>)> {
    let state = &proxy.state;
    let build = || {
        let mut req = session.req_header().clone();
        headers::rewrite(&mut req, key, provider)?;
        for h in headers::held(&FRAMING, &req.headers) {
            req.remove_header(h);
        }
        // The body's length, unless the client's own header already says it (nearly always:
        // then no new value is built).
        let sent =
            req.headers.get(http::header::CONTENT_LENGTH).map(|v| crate::usage::members::plain_u64(v.as_bytes()));
        let stated = matches!(sent, Some(Some(n)) if n == body.len() as u64);
        if !stated && (!body.is_empty() || sent.is_some()) {
            req.insert_header(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()))?;
        }
        Ok(req)
    };
    let (mut up, header) =
        upstream::send(&state.connector, &target.peer, target.idle.as_ref(), &build, body.clone()).await?;
    let peek =
        if header.status.as_u16() >= 400 { Some(upstream::read_up_to(&mut up, ERROR_PEEK_BYTES).await?) } else { None };
    Ok((up, header, peek))
}

/// Streams the chosen upstream answer to the client chunk by chunk.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    proxy: &PoolProxy,
    provider: &Provider,
    session: &mut Session,
    ctx: &mut Ctx,
    target: &Target,
    key: &Key,
    mut up: HttpSession,
    mut header: ResponseHeader,
    peek: Option<Bytes>,
) -> pingora::Result<()> {
    let state = &proxy.state;
    for h in headers::held(&HOP_BY_HOP, &header.headers) {
        header.remove_header(h);
    }
    // No length: a stream (SSE, NDJSON) or a body the upstream generates as it goes.
    let streamed = !header.headers.contains_key(http::header::CONTENT_LENGTH);
    ctx.observed.response_started(&header);
    state.finish_header(session, &mut header, ctx);
    session.write_response_header(Box::new(header), false).await?;
    if let Some(p) = peek.filter(|p| !p.is_empty()) {
        ctx.observed.body_chunk(&p);
        session.write_response_body(Some(p), false).await?;
    }
    let end = if streamed { relay(session, ctx, &mut up).await } else { copy(session, ctx, &mut up).await };
    match end {
        BodyEnd::Done => {}
        BodyEnd::Downstream(e) => return Err(e),
        BodyEnd::Upstream(e) => {
            // Headers are out: the only honest signal left is an incomplete response.
            ctx.aborted = true;
            provider.pool.stream_error(key);
            metrics::stream_error(&provider.name, key);
            return Err(e);
        }
    }
    if ctx.observed.stream_error_seen() {
        // Passed through as the upstream sent it (never a retry: the client has the stream).
        provider.pool.stream_error(key);
        metrics::stream_error(&provider.name, key);
    }
    session.write_response_body(None, true).await?;
    if up.response_done() {
        let idle_timeout = provider.upstream.idle_timeout();
        upstream::release(&state.connector, &target.peer, target.idle.as_ref(), up, idle_timeout).await;
    }
    Ok(())
}

/// How the relay of an upstream body ended.
enum BodyEnd {
    Done,
    /// The upstream broke (after the header went out).
    Upstream(Box<pingora::Error>),
    /// The client went away or a write to it failed.
    Downstream(Box<pingora::Error>),
}

/// Chunks queued between the upstream reader and the client writer of a stream.
const RELAY_DEPTH: usize = 32;

/// A body with a length: read a chunk, write it, until the end.
async fn copy(session: &mut Session, ctx: &mut Ctx, up: &mut HttpSession) -> BodyEnd {
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => {
                ctx.observed.body_chunk(&chunk);
                if let Err(e) = session.write_response_body(Some(chunk), false).await {
                    return BodyEnd::Downstream(e);
                }
            }
            Ok(None) => return BodyEnd::Done,
            Err(e) => return BodyEnd::Upstream(e),
        }
    }
}

/// A stream: the upstream is read and the client written at the same time, and every chunk
/// that arrived while the last write was going out is written in one go (one write and one
/// flush, not one per chunk). A burst of events — or many streams on a busy box — then costs
/// a few syscalls, not one per event; a lone event still goes out at once.
async fn relay(session: &mut Session, ctx: &mut Ctx, up: &mut HttpSession) -> BodyEnd {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<pingora::Result<Option<Bytes>>>(RELAY_DEPTH);
    let read = async move {
        loop {
            let r = up.read_response_body().await;
            let more = matches!(r, Ok(Some(_)));
            if tx.send(r).await.is_err() || !more {
                return;
            }
        }
    };
    let write = async move {
        let mut batch = Vec::with_capacity(RELAY_DEPTH);
        loop {
            if rx.recv_many(&mut batch, RELAY_DEPTH).await == 0 {
                return BodyEnd::Done; // (the reader always sends its end first)
            }
            let mut tasks = Vec::with_capacity(batch.len());
            let mut end = None;
            for r in batch.drain(..) {
                match r {
                    Ok(Some(chunk)) => {
                        ctx.observed.body_chunk(&chunk);
                        tasks.push(HttpTask::Body(Some(chunk), false));
                    }
                    Ok(None) => end = Some(BodyEnd::Done),
                    Err(e) => end = Some(BodyEnd::Upstream(e)),
                }
            }
            if !tasks.is_empty() {
                if let Err(e) = session.write_response_tasks(tasks).await {
                    return BodyEnd::Downstream(e);
                }
            }
            if let Some(end) = end {
                return end;
            }
        }
    };
    tokio::pin!(read, write);
    let mut reading = true;
    loop {
        tokio::select! {
            // Once the writer is done (the end, or the client gone), an upstream read still
            // waiting is dropped: that connection is not reused.
            end = &mut write => return end,
            _ = &mut read, if reading => reading = false,
        }
    }
}
