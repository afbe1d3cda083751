//! `GET /admin/events`: the hub's notices as Server-Sent Events, live, until the client goes,
//! the server shuts down, or the connection breaks. Each event is `id: <seq>`, `event: <type>`,
//! `data: <notice JSON>`; a comment line greets the client (so it knows it is subscribed), keeps
//! the connection alive every 15 s, and says how many notices a reader too slow to keep up
//! missed.

use super::Hub;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

const KEEPALIVE: Duration = Duration::from_secs(15);

enum Next {
    Send(String),
    Stop,
}

/// Streams notices to `http` (whose request was read and authorised). The connection is not
/// reused afterwards.
pub async fn stream(hub: &Hub, instance: &str, http: &mut ServerSession, shutdown: &ShutdownWatch) {
    let mut rx = hub.subscribe();
    let mut h = ResponseHeader::build(200, Some(4)).expect("valid status");
    let _ = h.insert_header(http::header::CONTENT_TYPE, "text/event-stream");
    let _ = h.insert_header(http::header::CACHE_CONTROL, "no-store");
    let _ = h.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    let _ = h.insert_header("x-accel-buffering", "no"); // nginx in front: do not buffer it
    http.set_keepalive(None);
    if http.write_response_header(Box::new(h)).await.is_err() {
        return;
    }
    let hello = format!(": ollama-pool {instance}: subscribed to key and pool events\n\n");
    if http.write_response_body(Bytes::from(hello), false).await.is_err() {
        return;
    }
    let mut shutdown = shutdown.clone();
    loop {
        let next = tokio::select! {
            r = rx.recv() => match r {
                Ok(n) => Next::Send(format!(
                    "id: {}\nevent: {}\ndata: {}\n\n",
                    n.seq,
                    n.kind,
                    serde_json::to_string(&*n).unwrap_or_default()
                )),
                Err(RecvError::Lagged(k)) => Next::Send(format!(": {k} events were dropped: this reader fell behind\n\n")),
                Err(RecvError::Closed) => Next::Stop,
            },
            _ = tokio::time::sleep(KEEPALIVE) => Next::Send(": keep-alive\n\n".into()),
            _ = shutdown.changed() => Next::Stop,
            // The client sends nothing more on a GET: any read result means it went away.
            _ = http.read_body_or_idle(true) => Next::Stop,
        };
        match next {
            Next::Send(text) => {
                if http.write_response_body(Bytes::from(text), false).await.is_err() {
                    return;
                }
            }
            Next::Stop => break,
        }
    }
    let _ = http.write_response_body(Bytes::new(), true).await;
}
