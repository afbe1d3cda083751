//! Answers the proxy writes itself: errors in the route family's envelope, the small JSON of
//! `/healthz` and `/readyz`, and the mapping from a pingora error to a client-facing one.

use super::ctx::Ctx;
use super::envelope::{ErrorKind, ProxyError};
use super::ProxyState;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

/// Answers the request with a proxy-made error in the route family's envelope, then closes.
pub(crate) async fn error(
    state: &ProxyState,
    session: &mut Session,
    ctx: &Ctx,
    err: ProxyError,
) -> pingora::Result<()> {
    let body = err.body(ctx.family);
    let mut header = err.header(body.len());
    state.finish_header(session, &mut header, ctx);
    session.set_keepalive(None);
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(body), true).await?;
    if err.kind == ErrorKind::BodyTooLarge {
        super::body::linger(session).await;
    }
    Ok(())
}

/// A fixed JSON answer (`/healthz`, `/readyz`).
pub(crate) async fn json(
    state: &ProxyState,
    session: &mut Session,
    status: u16,
    body: &'static str,
) -> pingora::Result<()> {
    state.close_if_draining(session);
    let mut h = ResponseHeader::build(status, Some(3))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(Bytes::from_static(body.as_bytes())), true).await?;
    Ok(())
}

/// The client-facing error after the last attempt failed before any answer: whatever went
/// wrong (refused, reset, TLS, a bad response) happened upstream.
pub(crate) fn upstream_error_for(e: &Error) -> ProxyError {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => ProxyError::new(ErrorKind::UpstreamTimeout),
        _ => ProxyError::new(ErrorKind::UpstreamFailed),
    }
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
