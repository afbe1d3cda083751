//! The demo's simulated upstream: an Ollama-Cloud-like API on loopback whose keys each play a
//! part (good, revoked, rate-limited, flaky), and which records every request it answers so
//! the demo can tell what the proxy did.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The request header the demo's own traffic carries, so answers can be told apart.
pub const REQUEST_HEADER: &str = "x-demo-request";

/// What a simulated key does.
pub enum Part {
    /// Answers everything.
    Good,
    /// The upstream rejects it (401) — for traffic and probes alike.
    Revoked,
    /// The first request it serves starts a rate-limit window: 429 with Retry-After until it
    /// ends; then it is fine again.
    Limited { window: Duration, since: Mutex<Option<Instant>> },
    /// Its first `failures` answers to traffic are 503; then it is fine.
    Flaky { failures: AtomicU32 },
}

pub struct SimKey {
    pub label: &'static str,
    pub secret: String,
    pub part: Part,
}

/// One answer the simulated upstream gave.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The demo request it belonged to (None for health probes and other traffic).
    pub request: Option<u32>,
    pub label: &'static str,
    pub path: String,
    pub status: u16,
    pub retry_after: Option<u64>,
}

pub struct SimUpstream {
    pub keys: Vec<SimKey>,
    log: Mutex<Vec<Hit>>,
}

impl SimUpstream {
    pub fn new(keys: Vec<SimKey>) -> SimUpstream {
        SimUpstream { keys, log: Mutex::new(Vec::new()) }
    }

    /// The answers given for demo request `n`, in order.
    pub fn hits_for(&self, n: u32) -> Vec<Hit> {
        self.lock().iter().filter(|h| h.request == Some(n)).cloned().collect()
    }

    /// Probes (requests without a demo number) answered since `from`; returns the new `from`.
    pub fn probes_since(&self, from: usize) -> (Vec<Hit>, usize) {
        let log = self.lock();
        (log[from.min(log.len())..].iter().filter(|h| h.request.is_none()).cloned().collect(), log.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Hit>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (status, Retry-After) that `key` earns for a request to `path` now.
    fn verdict(key: &SimKey, probe: bool) -> (u16, Option<u64>) {
        match &key.part {
            Part::Good => (200, None),
            Part::Revoked => (401, None),
            Part::Limited { window, since } => {
                let mut since = since.lock().unwrap_or_else(|p| p.into_inner());
                let start = match *since {
                    Some(s) => s,
                    None if probe => return (200, None),
                    None => *since.insert(Instant::now()),
                };
                let left = window.saturating_sub(start.elapsed());
                if left.is_zero() {
                    (200, None)
                } else {
                    (429, Some(left.as_secs().max(1)))
                }
            }
            Part::Flaky { failures } => {
                let failing =
                    !probe && failures.fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| f.checked_sub(1)).is_ok();
                if failing {
                    (503, None)
                } else {
                    (200, None)
                }
            }
        }
    }
}

#[async_trait]
impl ServeHttp for SimUpstream {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let header = s.req_header();
        let path = header.uri.path().to_string();
        let request = header.headers.get(REQUEST_HEADER).and_then(|v| v.to_str().ok()?.parse().ok());
        let bearer = header
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer ").map(str::to_string));
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = s.read_request_body().await {
            body.extend_from_slice(&chunk);
        }
        let Some(key) = bearer.and_then(|b| self.keys.iter().find(|k| k.secret == b)) else {
            return answer(401, None, "application/json", json!({"error": "unauthorized"}).to_string());
        };
        let probe = request.is_none() && path == "/api/me";
        let (status, retry_after) = Self::verdict(key, probe);
        self.lock().push(Hit { request, label: key.label, path: path.clone(), status, retry_after });
        match status {
            200 => success(&path, &body),
            401 => answer(401, None, "application/json", json!({"error": "unauthorized: invalid API key"}).to_string()),
            429 => answer(429, retry_after, "application/json", json!({"error": "rate limit exceeded"}).to_string()),
            _ => answer(
                status,
                None,
                "application/json",
                json!({"error": "service temporarily unavailable"}).to_string(),
            ),
        }
    }
}

fn answer(status: u16, retry_after: Option<u64>, content_type: &str, body: String) -> Response<Vec<u8>> {
    let mut r = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len());
    if let Some(s) = retry_after {
        r = r.header(http::header::RETRY_AFTER, s);
    }
    r.body(body.into_bytes()).unwrap_or_default()
}

/// A plausible answer for each API family (JSON, SSE or NDJSON, with token usage).
fn success(path: &str, body: &[u8]) -> Response<Vec<u8>> {
    let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("demo-model").to_string();
    let stream = req["stream"].as_bool();
    let text = "Hello from the simulated upstream!";
    match path {
        "/api/me" => answer(200, None, "application/json", json!({"id": "demo-account"}).to_string()),
        "/api/tags" => answer(200, None, "application/json", json!({"models": [{"name": "demo-model"}]}).to_string()),
        "/v1/models" => answer(
            200,
            None,
            "application/json",
            json!({"object": "list", "data": [{"id": "demo-model", "object": "model", "owned_by": "demo"}]}).to_string(),
        ),
        "/v1/messages" => answer(
            200,
            None,
            "application/json",
            json!({"id": "msg_demo", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                   "usage": {"input_tokens": 9, "output_tokens": 8}})
            .to_string(),
        ),
        "/v1/chat/completions" if stream == Some(true) => {
            let mut sse = String::new();
            for word in text.split_inclusive(' ') {
                let chunk = json!({"object": "chat.completion.chunk", "model": model,
                                   "choices": [{"index": 0, "delta": {"content": word}}]});
                sse.push_str(&format!("data: {chunk}\n\n"));
            }
            let usage = json!({"object": "chat.completion.chunk", "model": model, "choices": [],
                               "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}});
            sse.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
            answer(200, None, "text/event-stream", sse)
        }
        "/api/chat" | "/api/generate" if stream != Some(false) => {
            let field = if path == "/api/chat" { "message" } else { "response" };
            let mut lines = String::new();
            for word in text.split_inclusive(' ') {
                let content = if field == "message" { json!({"role": "assistant", "content": word}) } else { json!(word) };
                lines.push_str(&format!("{}\n", json!({"model": model, field: content, "done": false})));
            }
            lines.push_str(&format!("{}\n", json!({"model": model, "done": true, "prompt_eval_count": 9, "eval_count": 8})));
            answer(200, None, "application/x-ndjson", lines)
        }
        "/api/chat" => answer(
            200,
            None,
            "application/json",
            json!({"model": model, "message": {"role": "assistant", "content": text}, "done": true,
                   "prompt_eval_count": 9, "eval_count": 8})
            .to_string(),
        ),
        "/api/generate" => answer(
            200,
            None,
            "application/json",
            json!({"model": model, "response": text, "done": true, "prompt_eval_count": 9, "eval_count": 8}).to_string(),
        ),
        _ => answer(
            200,
            None,
            "application/json",
            json!({"id": "chatcmpl-demo", "object": "chat.completion", "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}})
            .to_string(),
        ),
    }
}
