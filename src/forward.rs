//! The large-body path: requests whose body is over pingora's 64 KiB replay buffer. The body
//! is already read whole (proxy::read_body); each attempt sends it on a connection from our own
//! `Connector`, under the same `Attempts` policy and `classify` as the pingora path. Because we
//! hold the upstream answer here before the client sees anything, error bodies are peeked
//! (bounded) so usage-limit messages classify as rate limits.

use crate::pool::{classify, outcome::ERROR_PEEK_BYTES, Decision, Outcome};
use crate::proxy::envelope::{ErrorKind, ProxyError};
use crate::proxy::{error_for, headers, Ctx, PoolProxy};
use crate::upstream;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;

/// Headers that describe one hop's connection, not the message.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Runs every attempt of one large-body request and writes the answer (or an error) downstream.
pub async fn run(proxy: &PoolProxy, session: &mut Session, ctx: &mut Ctx, body: Bytes) -> pingora::Result<()> {
    let state = &proxy.state;
    loop {
        let key = match ctx.attempts.begin(&state.pool) {
            Ok(k) => k,
            Err(no_key) => {
                let err = ProxyError { kind: ErrorKind::NoUsableKey, retry_after: no_key.retry_after };
                return proxy.respond(session, ctx, err).await.map(drop);
            }
        };
        ctx.observed.attempt_began();
        let Some(peer) = state.upstream.peer() else {
            return proxy.respond(session, ctx, ProxyError::new(ErrorKind::UpstreamUnresolved)).await.map(drop);
        };
        match attempt(proxy, session, &peer, &key, &body).await {
            Ok((up, header, peek)) => {
                let outcome = classify(header.status.as_u16(), &header.headers, peek.as_deref());
                if ctx.attempts.settle(&state.pool, outcome, true) == Decision::Retry {
                    continue; // dropping `up` closes that connection: its body was not drained
                }
                return deliver(proxy, session, ctx, &peer, up, header, peek).await;
            }
            Err(e) => {
                if ctx.attempts.settle(&state.pool, Outcome::Transient, true) == Decision::Retry {
                    continue;
                }
                return proxy.respond(session, ctx, error_for(&e)).await.map(drop);
            }
        }
    }
}

/// One attempt up to the response header (plus a peek at an error body).
async fn attempt(
    proxy: &PoolProxy,
    session: &Session,
    peer: &HttpPeer,
    key: &crate::pool::Key,
    body: &Bytes,
) -> pingora::Result<(HttpSession, ResponseHeader, Option<Bytes>)> {
    let state = &proxy.state;
    let mut req = session.req_header().clone();
    headers::rewrite(&mut req, key, &state.upstream, state.forward_client_ip)?;
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.remove_header(&http::header::EXPECT);
    req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    let (mut up, header) = upstream::send(&state.connector, peer, req, body.clone()).await?;
    let peek =
        if header.status.as_u16() >= 400 { Some(upstream::read_up_to(&mut up, ERROR_PEEK_BYTES).await?) } else { None };
    Ok((up, header, peek))
}

/// Streams the chosen upstream answer to the client chunk by chunk.
async fn deliver(
    proxy: &PoolProxy,
    session: &mut Session,
    ctx: &mut Ctx,
    peer: &HttpPeer,
    mut up: HttpSession,
    mut header: ResponseHeader,
    peek: Option<Bytes>,
) -> pingora::Result<()> {
    for h in HOP_BY_HOP {
        header.remove_header(*h);
    }
    ctx.observed.response_started(&header);
    proxy.state.finish_header(session, &mut header, ctx);
    session.write_response_header(Box::new(header), false).await?;
    if let Some(p) = peek.filter(|p| !p.is_empty()) {
        ctx.observed.body_chunk(&p);
        session.write_response_body(Some(p), false).await?;
    }
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => {
                ctx.observed.body_chunk(&chunk);
                session.write_response_body(Some(chunk), false).await?
            }
            Ok(None) => break,
            Err(e) => {
                // Headers are out: the only honest signal left is an incomplete response.
                ctx.aborted = true;
                return Err(e);
            }
        }
    }
    session.write_response_body(None, true).await?;
    if up.response_done() {
        proxy.state.connector.release_http_session(up, peer, Some(proxy.state.upstream.idle_timeout())).await;
    }
    Ok(())
}
