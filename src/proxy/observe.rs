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
    pub fn body_chunk(&mut self, chunk: &bytes::Bytes) {
        if self.ttfb.is_none() && !chunk.is_empty() {
            self.ttfb = Some(self.started.elapsed());
        }
        if let Some(u) = self.usage.as_mut() {
            u.feed_bytes(chunk);
        }
    }

    /// The upstream reported an error inside a stream it had started with a 200.
    pub fn stream_error_seen(&self) -> bool {
        self.usage.as_ref().is_some_and(|u| u.stream_error)
    }

    /// The request is over: record it in the metrics and, when it was forwarded for a client,
    /// in the usage ledger and that client's budgets.
    pub fn finish(&mut self, d: &Done<'_>, ledger: &crate::usage::Ledger, now_ms: u64) {
        self.attempt_ended();
        if self.streaming {
            self.streaming = false;
            metrics::stream_ended();
        }
        if let Some(u) = self.usage.as_mut() {
            u.finish();
        }
        let stream_error = self.stream_error_seen();
        let tokens = self.usage.as_ref().map(|u| (u.model.as_deref(), u.prompt_tokens, u.completion_tokens));
        let (reported_model, prompt, completion) = tokens.unwrap_or_default();
        let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        if let (Some(client), Some(provider)) = (d.client, d.provider) {
            ledger.record(&crate::usage::Used {
                at_ms: now_ms,
                client: &client.name,
                provider: &provider.name,
                model: d.model.or(reported_model).unwrap_or("unknown"),
                error: d.aborted || stream_error || !(200..400).contains(&d.status),
                prompt_tokens: prompt,
                completion_tokens: completion,
            });
            client.budgets.debit(now_ms, prompt + completion);
            if !client.budgets.limits.is_empty() {
                crate::fleet::limits::touch();
            }
        }
        metrics::request_done(RequestRecord {
            family: d.family.as_str(),
            status: d.status,
            client: d.client.map(Client::metrics),
            provider: d.provider.map(|p| &p.metrics),
            aborted: d.aborted,
            total: self.started.elapsed(),
            upstream: self.upstream,
            ttfb: self.ttfb,
            tokens: tokens.filter(|(_, p, c)| p.is_some() || c.is_some()),
        });
    }
}

/// How a request ended, for `Observed::finish`.
pub struct Done<'a> {
    pub family: Family,
    pub status: u16,
    pub client: Option<&'a Client>,
    /// The provider routing chose, if it got that far.
    pub provider: Option<&'a crate::provider::Provider>,
    /// The model the request was routed with (after aliases).
    pub model: Option<&'a str>,
    pub aborted: bool,
}
