//! Reading the client's request body: whole and bounded (`pool.max_request_body`) before any
//! upstream is chosen, so every attempt can replay it; and, after an early answer, reading
//! what is left of it so the client sees that answer.

use super::envelope::{ErrorKind, ProxyError};
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::ErrorType;
use std::time::Duration;

/// After an early 413: how long and how much of the rest of the body is read and thrown away.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// Reads the whole request body, at most `max` bytes; a client that pauses longer than
/// `pause` between pieces gets 408.
pub(crate) async fn read_whole(session: &mut Session, max: u64, pause: Duration) -> Result<Bytes, ProxyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ProxyError::new(ErrorKind::BodyTooLarge));
    }
    if session.is_body_empty() {
        return Ok(Bytes::new());
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
    session.set_read_timeout(Some(pause));
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total: u64 = 0;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if total > max {
                    return Err(ProxyError::new(ErrorKind::BodyTooLarge));
                }
                // One chunk (the common case for a small body) is kept as it is, without a copy.
                match (&mut first, &mut rest) {
                    (None, None) => first = Some(chunk),
                    (Some(f), None) => {
                        let mut b = BytesMut::with_capacity(declared.unwrap_or(0).max(total) as usize);
                        b.extend_from_slice(f);
                        b.extend_from_slice(&chunk);
                        first = None;
                        rest = Some(b);
                    }
                    (_, Some(b)) => b.extend_from_slice(&chunk),
                }
                // The last piece of a body with a length says so: no read (and no read timer)
                // just to be told it ended.
                if session.is_body_done() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) if matches!(e.etype(), ErrorType::ReadTimedout) => {
                return Err(ProxyError::new(ErrorKind::RequestTimeout))
            }
            Err(_) => return Err(ProxyError::new(ErrorKind::BadRequest)),
        }
    }
    Ok(match (first, rest) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// Reads and discards what is left of a request body we have already answered (bounded by
/// [`LINGER_TIME`] and [`LINGER_BYTES`]). Closing a socket with unread data sends a reset, and a
/// client still writing its body then sees "broken pipe" instead of our answer.
pub(crate) async fn linger(session: &mut Session) {
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
