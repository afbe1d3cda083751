//! What one request is measured by, for `metrics`: its timings (total, time in upstream
//! attempts, time to first byte) and the token usage read from its response as it passes.
//! The forwarding path feeds it through three calls.

use super::auth::Client;
use super::routes::Family;
use crate::metrics::{self, RequestRecord};
use crate::usage::UsageScanner;
use pingora::http::ResponseHeader;
use std::time::{Duration, Instant};

pub struct Observed {
    started: Instant,
    attempt_started: Option<Instant>,
    upstream: Duration,
    ttfb: Option<Duration>,
    streaming: bool,
    usage: Option<UsageScanner>,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            started: Instant::now(),
            attempt_started: None,
            upstream: Duration::ZERO,
            ttfb: None,
            streaming: false,
            usage: None,
        }
    }
}

impl Observed {
    pub fn started(&self) -> Instant {
        self.started
    }

    /// An upstream attempt begins (closing the previous one, if any).
    pub fn attempt_began(&mut self) {
        self.attempt_ended();
        self.attempt_started = Some(Instant::now());
    }

    fn attempt_ended(&mut self) {
        if let Some(t) = self.attempt_started.take() {
            self.upstream += t.elapsed();
        }
    }

    /// The upstream answer that goes to the client has its header.
    pub fn response_started(&mut self, header: &ResponseHeader) {
        let ct = header.headers.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()).unwrap_or(b"");
        let scanner = UsageScanner::for_content_type(ct);
        if scanner.as_ref().is_some_and(UsageScanner::is_stream) && !self.streaming {
            self.streaming = true;
            metrics::stream_started();
        }
        if header.status.is_success() {
            self.usage = scanner;
        }
    }

    /// A piece of that answer's body went by.
    pub fn body_chunk(&mut self, chunk: &[u8]) {
        if self.ttfb.is_none() && !chunk.is_empty() {
            self.ttfb = Some(self.started.elapsed());
        }
        if let Some(u) = self.usage.as_mut() {
            u.feed(chunk);
        }
    }

    /// The upstream reported an error inside a stream it had started with a 200.
    pub fn stream_error_seen(&self) -> bool {
        self.usage.as_ref().is_some_and(|u| u.stream_error)
    }

    /// The request is over: record it.
    pub fn finish(
        &mut self,
        family: Family,
        status: u16,
        client: Option<&Client>,
        provider: Option<&crate::provider::Provider>,
        aborted: bool,
    ) {
        self.attempt_ended();
        if self.streaming {
            self.streaming = false;
            metrics::stream_ended();
        }
        let tokens = self.usage.as_mut().map(|u| {
            u.finish();
            (u.model.as_deref(), u.prompt_tokens, u.completion_tokens)
        });
        metrics::request_done(RequestRecord {
            family: family.as_str(),
            status,
            client: client.map(Client::metrics),
            provider: provider.map(|p| &p.metrics),
            aborted,
            total: self.started.elapsed(),
            upstream: self.upstream,
            ttfb: self.ttfb,
            tokens: tokens.filter(|(_, p, c)| p.is_some() || c.is_some()),
        });
    }
}
