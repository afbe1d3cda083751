//! One request on an upstream connection, up to the response header (`send`), and the
//! connection's way back for reuse (`release`). Shared by the forwarding path, the prober and
//! webhook deliveries.
//!
//! The request goes out in one write when it can (issue #14 item 2): pingora's
//! `write_request_header` flushes the header on its own, so header and body took two
//! `sendto`s (two TCP segments, and often two wake-ups of the upstream). Here the header is
//! serialised with pingora's own `http_req_header_to_wire`, the body appended, and the whole
//! written to the connection before the HTTP session is built on it to read the answer.
//! What pingora's session learns from the request it wrote is only whether it was a `HEAD`
//! (no response body), asked for an upgrade (a connection that becomes a tunnel) or for the
//! connection to close: those requests, and bodies over [`ONE_WRITE_MAX`], go through
//! `write_request_header` as before.

use super::IdlePool;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as H1Session};
use pingora::protocols::Stream;
use pingora::ErrorType;
use std::time::Duration;

/// How many idle pooled connections one request may find closed before it asks for a new one.
const STALE_RETRIES: usize = 4;

/// The largest body sent in the header's write; a larger one is written on its own (copying
/// it would cost more than the write it saves).
const ONE_WRITE_MAX: usize = 64 * 1024;

/// One request on a pooled connection to `peer`, up to the response header.
///
/// An idle keep-alive connection the upstream has closed meanwhile fails on its first use,
/// before any answer: that says nothing about the key or the upstream, so the request is sent
/// again on the next connection (a fresh one at the latest), as pingora's own proxy path does.
/// Only a reused connection that closed or broke gets this; a timeout, or a new connection
/// failing, is the attempt's outcome. `header` builds the request header for each try (the
/// session keeps the one it writes), so the common case builds it once. A connection comes
/// from `idle` when it has one, else from the connector (its pool, or a new connection).
///
/// The session reads and writes under the peer's `read_timeout` and `write_timeout` (the time
/// allowed between bytes, `upstream.read_timeout` and `upstream.write_timeout`): the connector
/// hands out sessions without them, and pingora's own proxy path sets them the same way.
pub async fn send(
    connector: &pingora::connectors::http::Connector,
    peer: &HttpPeer,
    idle: Option<&IdlePool>,
    header: &(dyn Fn() -> pingora::Result<RequestHeader> + Sync),
    body: Bytes,
) -> pingora::Result<(HttpSession, ResponseHeader)> {
    for _ in 0..STALE_RETRIES {
        let (stream, reused) = match idle.and_then(IdlePool::take) {
            Some(stream) => (stream, true),
            None => match connector.get_http_session(peer).await? {
                (HttpSession::H1(h1), reused) => (h1.into_inner(), reused),
                // Upstream peers speak HTTP/1.1 only (`ALPN::H1`).
                _ => return Err(pingora::Error::explain(ErrorType::InternalError, "upstream session is not HTTP/1.1")),
            },
        };
        match exchange(peer, stream, header()?, &body).await {
            Ok(done) => return Ok(done),
            Err(e) if reused && stale(&e) => {
                log::debug!("upstream: a pooled connection was closed by the upstream; sending again on another");
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(pingora::Error::explain(ErrorType::ConnectionClosed, "every pooled connection was closed"))
}

async fn exchange(
    peer: &HttpPeer,
    mut stream: Stream,
    req: RequestHeader,
    body: &Bytes,
) -> pingora::Result<(HttpSession, ResponseHeader)> {
    let write_timeout = peer.options.write_timeout;
    let whole = body.len() <= ONE_WRITE_MAX && !session_must_see(&req);
    if whole {
        write_whole(&mut stream, &req, body, write_timeout).await?;
    }
    let mut s = H1Session::new_with_options(stream, peer);
    s.read_timeout = peer.options.read_timeout;
    s.write_timeout = write_timeout;
    let mut s = HttpSession::H1(s);
    if !whole {
        s.write_request_header(Box::new(req)).await?;
        if !body.is_empty() {
            s.write_request_body(body.clone(), true).await?;
        }
        s.finish_request_body().await?;
    }
    s.read_response_header().await?;
    let header = s
        .response_header()
        .cloned()
        .ok_or_else(|| pingora::Error::explain(ErrorType::InvalidHTTPHeader, "upstream sent no response header"))?;
    Ok((s, header))
}

/// Header and body in one buffer, one write, under the peer's write timeout.
async fn write_whole(
    stream: &mut Stream,
    req: &RequestHeader,
    body: &[u8],
    timeout: Option<Duration>,
) -> pingora::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut wire = http_req_header_to_wire(req).ok_or_else(|| {
        pingora::Error::explain(
            ErrorType::InvalidHTTPHeader,
            "request-line contains forbidden delimiter bytes or unsupported HTTP version",
        )
    })?;
    wire.extend_from_slice(body);
    let write = async {
        stream.write_all(&wire).await?;
        stream.flush().await
    };
    let written = match timeout {
        Some(t) => tokio::time::timeout(t, write).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    };
    written.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => pingora::Error::because(ErrorType::WriteTimedout, "writing the request", e),
        _ => pingora::Error::because(ErrorType::WriteError, "writing the request", e),
    })
}

/// Whether pingora's session must have written the request itself to read its answer right:
/// a `HEAD` (its answer has no body whatever its length says), an upgrade (a 101 answer makes
/// the connection a tunnel) or `Connection: close` (the connection is not kept).
fn session_must_see(req: &RequestHeader) -> bool {
    req.method == http::Method::HEAD
        || req.headers.contains_key(http::header::UPGRADE)
        || req
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")))
}

/// Hands a session whose exchange is over back for reuse: into `idle` when there is one (and
/// the connection may be kept alive: the answer allowed it and was read to its end), else to
/// the connector's pool.
pub async fn release(
    connector: &pingora::connectors::http::Connector,
    peer: &HttpPeer,
    idle: Option<&IdlePool>,
    session: HttpSession,
    idle_timeout: Duration,
) {
    match (idle, session) {
        (Some(idle), HttpSession::H1(mut h1)) => {
            h1.respect_keepalive();
            if let Some(stream) = h1.reuse().await {
                idle.put(stream);
            }
        }
        (_, session) => connector.release_http_session(session, peer, Some(idle_timeout)).await,
    }
}

/// A failure that means "this connection was already closed", not "the upstream is slow".
fn stale(e: &pingora::Error) -> bool {
    use pingora::ErrorType::*;
    matches!(e.etype(), ConnectionClosed | ReadError | WriteError | ConnectError)
}

/// Reads the response body until `max` bytes (a chunk may overshoot; nothing is dropped) or its end.
pub async fn read_up_to(s: &mut HttpSession, max: usize) -> pingora::Result<bytes::Bytes> {
    let mut buf = bytes::BytesMut::new();
    while buf.len() < max {
        match s.read_response_body().await? {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(buf.freeze())
}
