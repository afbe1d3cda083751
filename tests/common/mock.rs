//! A scriptable mock upstream speaking just enough HTTP/1.1: keep-alive, content-length and
//! chunked bodies, and per-key misbehaviour (statuses, resets, streams cut mid-way, gated
//! streams). Every request it receives is recorded, body bytes included.

#![allow(deprecated)] // set_linger(0): the RST is the point

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Clone)]
pub enum Behavior {
    /// Answer like the real API for the path (JSON, SSE or NDJSON).
    Normal,
    /// Answer this status, extra headers and body.
    Status { status: u16, headers: Vec<(String, String)>, body: String },
    /// Read the request, then close the connection with an RST before any response byte.
    Reset,
    /// Send a streaming header and two chunks, then drop the connection (no final chunk).
    CutMidStream,
    /// Answer the first request of each connection normally; close a kept-alive connection
    /// when its next request arrives, without answering (an upstream that dropped an idle
    /// connection just as the proxy reused it).
    CloseOnReuse,
    /// Ollama Cloud's mid-stream failure: a 200 NDJSON stream with one line, then an
    /// `{"error": ...}` line, then a clean end.
    ErrorLineMidStream,
    /// Stream: send the first event, wait for `gate`, then send the rest.
    Gated(Arc<Notify>),
    /// Never answer (the connection stays open).
    Hang,
    /// Stream `events` SSE events `gap` apart, then `[DONE]` (a long generation).
    Slow { events: usize, gap: std::time::Duration },
    /// Answer normally, after this long (a slow upstream).
    Delayed(std::time::Duration),
}

impl Behavior {
    pub fn status(status: u16, body: &str) -> Behavior {
        Behavior::Status { status, headers: vec![], body: body.to_string() }
    }
    pub fn status_with(status: u16, headers: &[(&str, &str)], body: &str) -> Behavior {
        Behavior::Status {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The bearer token the request carried (the upstream key), if any.
    pub key: Option<String>,
    /// Socket reads it took to receive this request (1: header and body came in one piece).
    pub reads: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    by_key: Mutex<HashMap<String, Behavior>>,
    /// (key, path) overrides, checked before `by_key`.
    by_key_path: Mutex<HashMap<(String, String), Behavior>>,
    /// For every key without an entry of its own.
    default: Mutex<Option<Behavior>>,
    /// (body substring, behaviour), checked before everything else.
    by_body: Mutex<Vec<(String, Behavior)>>,
    /// (key, body substring, behaviour), checked first: one key's answer for one model.
    by_key_body: Mutex<Vec<(String, String, Behavior)>>,
    log: Mutex<Vec<Recorded>>,
    /// When `/api/balance` was asked (Ollama Cloud allows 10 a minute per account).
    balance_asks: Mutex<Vec<std::time::Instant>>,
}

#[derive(Clone)]
pub struct Mock {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept_task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn accept_loop(listener: TcpListener, s: Arc<State>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let s = s.clone();
            tokio::spawn(async move {
                let _ = serve(stream, s).await;
            });
        }
    })
}

impl Mock {
    pub async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let task = accept_loop(listener, state.clone());
        Mock { addr, state, accept_task: Arc::new(Mutex::new(Some(task))) }
    }

    /// Stops listening: new connections are refused until `resume`.
    pub fn pause(&self) {
        if let Some(t) = self.accept_task.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&self) {
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        let task = accept_loop(listener.expect("rebind mock address"), self.state.clone());
        *self.accept_task.lock().unwrap() = Some(task);
    }

    /// How the mock treats requests to `path` made with `key` (wins over `set`).
    pub fn set_path(&self, key: &str, path: &str, b: Behavior) {
        self.state.by_key_path.lock().unwrap().insert((key.to_string(), path.to_string()), b);
    }

    /// How the mock treats every request whose body contains `needle`, whatever its key.
    pub fn set_for_body(&self, needle: &str, b: Behavior) {
        self.state.by_body.lock().unwrap().push((needle.to_string(), b));
    }

    /// How the mock treats requests made with `key` whose body contains `needle` (e.g. one
    /// model: `"model":"big"`), before every other rule.
    pub fn set_for_key_body(&self, key: &str, needle: &str, b: Behavior) {
        self.state.by_key_body.lock().unwrap().push((key.to_string(), needle.to_string(), b));
    }

    /// How the mock treats every key that has no behaviour of its own (None = Normal).
    pub fn set_default(&self, b: Option<Behavior>) {
        *self.state.default.lock().unwrap() = b;
    }

    /// Requests whose path (without query) is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.target.split('?').next() == Some(path)).collect()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How the mock treats requests made with `key`.
    pub fn set(&self, key: &str, b: Behavior) {
        self.state.by_key.lock().unwrap().insert(key.to_string(), b);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.state.log.lock().unwrap().clear();
    }
}

async fn serve(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    // Requests answered on this connection so far.
    let mut answered = 0usize;
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await? else { return Ok(()) };
        let path = req.target.split('?').next().unwrap_or("").to_string();
        let by_body = {
            let rules = state.by_body.lock().unwrap();
            rules.iter().find(|(needle, _)| find(&req.body, needle.as_bytes()).is_some()).map(|(_, b)| b.clone())
        };
        let by_key_body = {
            let rules = state.by_key_body.lock().unwrap();
            rules
                .iter()
                .find(|(k, needle, _)| req.key.as_deref() == Some(k) && find(&req.body, needle.as_bytes()).is_some())
                .map(|(_, _, b)| b.clone())
        };
        let behavior = by_key_body
            .or(by_body)
            .or_else(|| {
                req.key.as_ref().and_then(|k| {
                    let by_path = state.by_key_path.lock().unwrap().get(&(k.clone(), path.clone())).cloned();
                    by_path.or_else(|| state.by_key.lock().unwrap().get(k).cloned())
                })
            })
            .or_else(|| state.default.lock().unwrap().clone())
            .unwrap_or(Behavior::Normal);
        state.log.lock().unwrap().push(req.clone());
        match behavior {
            Behavior::Normal if path == "/api/balance" => {
                let over = {
                    let mut asks = state.balance_asks.lock().unwrap();
                    asks.retain(|t| t.elapsed() < std::time::Duration::from_secs(60));
                    asks.push(std::time::Instant::now());
                    asks.len() > 10
                };
                if over {
                    let body = r#"{"error":"too many requests"}"#;
                    let head = format!(
                        "HTTP/1.1 429 X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(body.as_bytes()).await?;
                } else {
                    write_json(&mut stream, BALANCE_JSON).await?
                }
            }
            Behavior::Normal => normal(&mut stream, &req).await?,
            Behavior::Status { status, headers, body } => {
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await?;
            }
            Behavior::Reset => {
                stream.set_linger(Some(std::time::Duration::ZERO))?;
                return Ok(());
            }
            Behavior::CutMidStream => {
                stream.write_all(stream_head("text/event-stream").as_bytes()).await?;
                stream.write_all(chunk(b"data: {\"n\":1}\n\n").as_slice()).await?;
                stream.write_all(chunk(b"data: {\"n\":2}\n\n").as_slice()).await?;
                stream.flush().await?;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                stream.set_linger(Some(std::time::Duration::ZERO))?;
                return Ok(());
            }
            Behavior::CloseOnReuse if answered > 0 => return Ok(()),
            Behavior::CloseOnReuse => normal(&mut stream, &req).await?,
            Behavior::ErrorLineMidStream => {
                stream.write_all(stream_head("application/x-ndjson").as_bytes()).await?;
                stream
                    .write_all(&chunk(b"{\"model\":\"m1\",\"message\":{\"content\":\"a\"},\"done\":false}\n"))
                    .await?;
                stream.write_all(&chunk(b"{\"error\":\"an upstream error occurred mid-stream\"}\n")).await?;
                stream.write_all(b"0\r\n\r\n").await?;
            }
            Behavior::Gated(gate) => {
                stream.write_all(stream_head("text/event-stream").as_bytes()).await?;
                stream.write_all(chunk(b"data: {\"n\":1}\n\n").as_slice()).await?;
                stream.flush().await?;
                gate.notified().await;
                stream.write_all(chunk(b"data: {\"n\":2}\n\n").as_slice()).await?;
                stream.write_all(chunk(b"data: [DONE]\n\n").as_slice()).await?;
                stream.write_all(b"0\r\n\r\n").await?;
            }
            Behavior::Hang => {
                std::future::pending::<()>().await;
            }
            Behavior::Delayed(d) => {
                tokio::time::sleep(d).await;
                normal(&mut stream, &req).await?;
            }
            Behavior::Slow { events, gap } => {
                stream.write_all(stream_head("text/event-stream").as_bytes()).await?;
                for n in 0..events {
                    stream.write_all(&chunk(format!("data: {{\"n\":{n}}}\n\n").as_bytes())).await?;
                    stream.flush().await?;
                    tokio::time::sleep(gap).await;
                }
                stream.write_all(&chunk(b"data: [DONE]\n\n")).await?;
                stream.write_all(b"0\r\n\r\n").await?;
            }
        }
        stream.flush().await?;
        answered += 1;
    }
}

fn stream_head(content_type: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n")
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

async fn write_json(stream: &mut TcpStream, body: &str) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

async fn write_stream(stream: &mut TcpStream, content_type: &str, events: &[&str]) -> std::io::Result<()> {
    stream.write_all(stream_head(content_type).as_bytes()).await?;
    for e in events {
        stream.write_all(&chunk(e.as_bytes())).await?;
    }
    stream.write_all(b"0\r\n\r\n").await
}

pub const CHAT_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"m1","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
pub const SSE_EVENTS: &[&str] = &[
    "data: {\"choices\":[{\"delta\":{\"content\":\"hel\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
    "data: {\"model\":\"m1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
    "data: [DONE]\n\n",
];
pub const NDJSON_LINES: &[&str] = &[
    "{\"model\":\"m1\",\"message\":{\"role\":\"assistant\",\"content\":\"hel\"},\"done\":false}\n",
    "{\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n",
    "{\"done\":true,\"prompt_eval_count\":3,\"eval_count\":2}\n",
];
pub const ANTHROPIC_JSON: &str = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"hello"}],"usage":{"input_tokens":3,"output_tokens":1}}"#;
pub const TAGS_JSON: &str = r#"{"models":[{"name":"qwen3-coder:480b"},{"name":"kimi-k2:1t"},{"name":"qwen3:8b"}]}"#;
pub const MODELS_JSON: &str =
    r#"{"object":"list","data":[{"id":"m1","object":"model","created":0,"owned_by":"ollama"}]}"#;

async fn normal(stream: &mut TcpStream, req: &Recorded) -> std::io::Result<()> {
    let path = req.target.split('?').next().unwrap_or("");
    let body = String::from_utf8_lossy(&req.body);
    let streaming = body.contains("\"stream\":true") || body.contains("\"stream\": true");
    match path {
        "/v1/chat/completions" if streaming => write_stream(stream, "text/event-stream", SSE_EVENTS).await,
        "/v1/chat/completions" => write_json(stream, CHAT_JSON).await,
        "/v1/messages" => write_json(stream, ANTHROPIC_JSON).await,
        "/api/chat" => write_stream(stream, "application/x-ndjson", NDJSON_LINES).await,
        "/v1/models" => write_json(stream, MODELS_JSON).await,
        "/api/tags" => write_json(stream, TAGS_JSON).await,
        _ => write_json(stream, &format!("{{\"path\":{:?},\"bytes\":{}}}", path, req.body.len())).await,
    }
}

/// Reads one request (None on a clean close between requests).
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Recorded>> {
    let mut reads = 0;
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut tmp = [0u8; 8192];
        let n = stream.read(&mut tmp).await?;
        reads += 1;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 256]; // pingora's own limit
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(&buf[..head_len]).map_err(|e| std::io::Error::other(e.to_string()))?;
    let method = parsed.method.unwrap_or("").to_string();
    let target = parsed.path.unwrap_or("").to_string();
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).to_string()))
        .collect();
    buf.drain(..head_len);
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.trim().parse().unwrap_or(0);
        fill(stream, buf, len, &mut reads).await?;
        buf.drain(..len).collect()
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(stream, buf, buf.len() + 1, &mut reads).await?;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            buf.drain(..line_end + 2);
            fill(stream, buf, size + 2, &mut reads).await?;
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
        body
    } else {
        Vec::new()
    };
    let key = get("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
    Ok(Some(Recorded { method, target, headers, body, key, reads }))
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, want: usize, reads: &mut usize) -> std::io::Result<()> {
    while buf.len() < want {
        let mut tmp = [0u8; 65536];
        let n = stream.read(&mut tmp).await?;
        *reads += 1;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET /api/balance` of a legacy-plan key with everything left (Ollama Cloud's documented shape).
pub const BALANCE_JSON: &str = r#"{"session":{"remaining_percent":100,"resets_at":"2099-01-01T00:00:00Z"},"weekly":{"remaining_percent":100,"resets_at":"2099-01-05T00:00:00Z"}}"#;
