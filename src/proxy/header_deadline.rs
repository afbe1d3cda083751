//! `server.client_header_timeout`: a total deadline for each request header.
//!
//! Pingora 0.9 reads a request header with a fixed per-read timeout and offers no hook before the
//! header is complete, so a client that sends one byte a minute holds its connection forever. This
//! module wraps every accepted connection's stream before Pingora's HTTP/1 code sees it and
//! watches the bytes go by:
//!
//! - **Header**: the deadline runs. It starts at accept for the first request and at the first
//!   byte of each later request on a kept-alive connection (idle time between requests belongs to
//!   `server.keepalive_timeout`). When the blank line that ends the header arrives, the deadline
//!   stops; when it passes first, the read fails with `TimedOut` and the connection closes.
//! - **Body**: no deadline here (`server.client_body_timeout` covers it, per read).
//! - **Answered**: a final response (`HTTP/1.x` with a status of 200 or more) was written; the next
//!   byte read starts the next request's header.
//!
//! It costs one state check per read and write, a clock read per request and a scan of header
//! bytes. The timer behind the deadline is made only when a header read has to wait: a header
//! that arrives whole (nearly every request) never touches tokio's timer wheel.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A [`ServerApp`] that hands `app` every connection wrapped in a [`HeaderClock`].
pub struct HeaderDeadline<A> {
    app: Arc<A>,
    limit: Duration,
}

impl<A> HeaderDeadline<A> {
    pub fn new(app: A, limit: Duration) -> HeaderDeadline<A> {
        HeaderDeadline { app: Arc::new(app), limit }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // The phases read HTTP/1 framing; an HTTP/2 connection (never offered today: no listener
        // enables h2) would never show a blank line, so it passes unwrapped.
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            return self.app.process_new(stream, shutdown).await;
        }
        let clocked: Stream = Box::new(HeaderClock::new(stream, self.limit));
        self.app.process_new(clocked, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// Where the connection is in its request/response cycle (see the module comment).
enum Phase {
    /// Reading a request header until `until`; `tail` finds the blank line across reads.
    /// `timer` wakes the connection at `until`; it is made by the first read that waits.
    Header {
        until: tokio::time::Instant,
        timer: Option<Pin<Box<Sleep>>>,
        tail: Tail,
    },
    Body,
    Answered,
}

impl Phase {
    /// A request header begins now: `limit` to complete it.
    fn header(limit: Duration) -> Phase {
        Phase::Header { until: tokio::time::Instant::now() + limit, timer: None, tail: Tail::default() }
    }
}

/// The end of the header read so far: enough to see `\r\n\r\n` or `\n\n` split across reads.
/// Line ends before the first other byte do not count (a client cannot stop the clock by
/// opening with a blank line).
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Tail {
    content: bool,
    newlines: u8,
    cr: bool,
}

impl Tail {
    /// Inside a line, where every byte but CR and LF leaves the state as it is.
    const IN_LINE: Tail = Tail { content: true, newlines: 0, cr: false };

    /// Feeds `bytes`; returns the index just past the blank line that ends the header, if any.
    /// Inside a line it jumps to the next CR or LF (`memchr2`) instead of looking at each byte:
    /// this runs on every request header.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if *self == Tail::IN_LINE {
                i += memchr::memchr2(b'\r', b'\n', &bytes[i..])?;
            }
            if self.step(bytes[i]) {
                return Some(i + 1);
            }
            i += 1;
        }
        None
    }

    /// One byte of `feed`: whether it ends the header.
    #[inline]
    fn step(&mut self, b: u8) -> bool {
        match b {
            b'\n' if self.content => {
                self.newlines += 1;
                self.cr = false;
                return self.newlines == 2;
            }
            b'\n' | b'\r' if !self.content => {}
            // A CR only continues a line end when an LF follows it.
            b'\r' if !self.cr => self.cr = true,
            _ => *self = Tail::IN_LINE,
        }
        false
    }
}

/// A connection stream with the header deadline applied; everything else passes straight through.
pub struct HeaderClock {
    inner: Stream,
    limit: Duration,
    phase: Phase,
}

impl HeaderClock {
    fn new(inner: Stream, limit: Duration) -> HeaderClock {
        HeaderClock { inner, limit, phase: Phase::header(limit) }
    }

    /// Moves the phase on for `read`, the bytes a read just returned.
    fn saw(&mut self, read: &[u8]) {
        if read.is_empty() {
            return;
        }
        if let Phase::Answered = self.phase {
            self.phase = Phase::header(self.limit);
        }
        if let Phase::Header { tail, .. } = &mut self.phase {
            if tail.feed(read).is_some() {
                self.phase = Phase::Body;
            }
        }
    }

    /// Moves the phase on for `written`, the bytes a write is about to send.
    fn writes(&mut self, written: &[u8]) {
        if is_final_status_line(written) {
            self.phase = Phase::Answered;
        }
    }
}

const TIMED_OUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
content-length: 97\r\nconnection: close\r\n\r\n\
{\"error\":{\"message\":\"the request header did not arrive in time (server.client_header_timeout)\"}}\n";

/// Whether `buf` starts an HTTP/1 response with a final (non-1xx) status.
fn is_final_status_line(buf: &[u8]) -> bool {
    buf.len() >= 12 && buf.starts_with(b"HTTP/1.") && buf[8] == b' ' && (b'2'..=b'5').contains(&buf[9])
}

impl AsyncRead for HeaderClock {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let timed_out = match (&polled, &mut this.phase) {
            // Bytes (or the end) while a header is due: too late if its timer has fired (there
            // is a timer only if an earlier read of this header had to wait).
            (Poll::Ready(Ok(())), Phase::Header { timer, .. }) => timer.as_ref().is_some_and(|t| t.is_elapsed()),
            // Waiting for the header: the timer wakes this connection at the deadline.
            (Poll::Pending, Phase::Header { until, timer, .. }) => {
                let until = *until;
                timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until))).as_mut().poll(cx).is_ready()
            }
            _ => false,
        };
        if timed_out {
            // Best effort: tell the client why before the connection closes. Nothing of a
            // response has been written in this phase; if the socket cannot take it now, the
            // close alone has to do.
            let inner = Pin::new(&mut this.inner);
            if let Poll::Ready(Ok(_)) = inner.poll_write(cx, TIMED_OUT_RESPONSE) {
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
            }
            this.phase = Phase::Answered;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request header did not arrive in time (server.client_header_timeout)",
            )));
        }
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            this.saw(read);
        }
        polled
    }
}

impl AsyncWrite for HeaderClock {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.writes(buf);
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&polled, bufs.iter().find(|b| !b.is_empty())) {
            if *n > 0 {
                let first: &[u8] = first;
                self.writes(first);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeaderClock {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderClock {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderClock {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderClock {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderClock {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderClock {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderClock {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl std::fmt::Debug for HeaderClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Header { .. } => "header",
            Phase::Body => "body",
            Phase::Answered => "answered",
        };
        f.debug_struct("HeaderClock").field("inner", &self.inner).field("phase", &phase).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends_at(text: &[u8], cuts: &[usize]) -> Option<usize> {
        let mut tail = Tail::default();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&text.len())) {
            if let Some(i) = tail.feed(&text[from..c]) {
                return Some(from + i);
            }
            from = c;
        }
        None
    }

    #[test]
    fn the_blank_line_is_found_however_the_reads_split_it() {
        let text = b"GET / HTTP/1.1\r\nhost: x\r\n\r\nbody";
        let end = text.len() - 4;
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(ends_at(text, &[i, j]), Some(end), "cuts {i} {j}");
            }
        }
        assert_eq!(ends_at(b"GET / HTTP/1.1\nhost: x\n\nrest", &[3]), Some(24));
        assert_eq!(ends_at(b"GET / HTTP/1.1\r\nhost: x\r\n", &[]), None);
        assert_eq!(ends_at(b"GET / HTTP/1.1\r\nhost: x\r\r\n", &[]), None, "CR CR LF is not a blank line");
        assert_eq!(ends_at(b"GET / HTTP/1.1\r\nx: \r\n", &[]), None);
        assert_eq!(ends_at(b"\r\n\r\n\nGET / HTTP/1.1\r\n", &[2]), None, "leading blank lines do not end it");
        assert_eq!(ends_at(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", &[1]), Some(22));
    }

    proptest::proptest! {
        /// The skip to the next CR or LF finds what a look at every byte finds, on any bytes
        /// split anywhere (header-like bytes, so blank lines and CR runs are frequent).
        #[test]
        fn the_skip_inside_lines_finds_what_a_byte_walk_finds(
            text in proptest::collection::vec(proptest::sample::select(b"ab:\r\n ".to_vec()), 0..80),
            cut in 0usize..80,
        ) {
            let cut = cut.min(text.len());
            let mut walk = Tail::default();
            let mut want = None;
            for (i, &b) in text.iter().enumerate() {
                if walk.step(b) {
                    want = Some(i + 1);
                    break;
                }
            }
            proptest::prop_assert_eq!(ends_at(&text, &[cut]), want);
        }
    }

    #[test]
    fn the_timeout_answer_is_well_formed() {
        let text = std::str::from_utf8(TIMED_OUT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head} / {}", body.len());
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn only_a_final_status_line_answers() {
        assert!(is_final_status_line(b"HTTP/1.1 200 OK\r\n"));
        assert!(is_final_status_line(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(is_final_status_line(b"HTTP/1.0 503 x"));
        assert!(!is_final_status_line(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!is_final_status_line(b"data: HTTP/1.1 200"));
        assert!(!is_final_status_line(b"HTTP/1.1 2"));
    }
}
