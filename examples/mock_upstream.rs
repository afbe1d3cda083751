//! A fast mock of the upstream API for benchmarks (and manual tests): HTTP/1.1 keep-alive,
//! canned OpenAI/Ollama JSON, SSE streams of N chunks with a delay between them, optional
//! latency, and per-key failure injection.
//!
//! `cargo run --release --example mock_upstream -- [--listen 127.0.0.1:18080] [--latency-ms 0]
//!  [--chunks 20] [--chunk-delay-ms 0] [--fail-suffix -bad] [--fault-mix 429:5,503:3,reset:1,cut:1,slow:2]`
//! Requests whose `Authorization: Bearer <key>` ends with the fail suffix get a 401.
//! `--fault-mix` gives the percentage of the other requests that get each fault, spread evenly
//! over every 100 requests: `429` (with `Retry-After: 1`), `503`, `reset` (the connection closes
//! without an answer), `cut` (a stream stops after half its events, without the terminating
//! chunk; a non-stream answer is cut like `reset`) and `slow` (the answer waits 200 ms).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone)]
struct Opts {
    latency: Duration,
    chunks: usize,
    chunk_delay: Duration,
    fail_suffix: String,
    /// For each of the 100 slots of a request's number, the fault it gets.
    faults: Arc<[Fault; 100]>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    RateLimited,
    Unavailable,
    Reset,
    Cut,
    Slow,
}

/// Parses `429:5,503:3,...` into 100 slots, the faults spread out rather than in runs.
fn fault_slots(mix: &str) -> [Fault; 100] {
    let mut order = Vec::new();
    for part in mix.split(',').filter(|p| !p.is_empty()) {
        let (name, pct) = part.split_once(':').expect("--fault-mix: want name:percent");
        let fault = match name {
            "429" => Fault::RateLimited,
            "503" => Fault::Unavailable,
            "reset" => Fault::Reset,
            "cut" => Fault::Cut,
            "slow" => Fault::Slow,
            other => panic!("--fault-mix: unknown fault {other:?}"),
        };
        let pct: usize = pct.parse().expect("--fault-mix: percent");
        order.extend(std::iter::repeat_n(fault, pct));
    }
    assert!(order.len() <= 100, "--fault-mix: more than 100 %");
    let mut slots = [Fault::None; 100];
    // 37 is coprime with 100: consecutive faults land 37 slots apart.
    for (i, f) in order.into_iter().enumerate() {
        slots[(i * 37) % 100] = f;
    }
    slots
}

static REQUESTS: AtomicUsize = AtomicUsize::new(0);

const CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"m1","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen", "127.0.0.1:18080");
    let opts = Opts {
        latency: Duration::from_millis(arg(&args, "--latency-ms", "0").parse().expect("--latency-ms")),
        chunks: arg(&args, "--chunks", "20").parse().expect("--chunks"),
        chunk_delay: Duration::from_millis(arg(&args, "--chunk-delay-ms", "0").parse().expect("--chunk-delay-ms")),
        fail_suffix: arg(&args, "--fail-suffix", "-bad"),
        faults: Arc::new(fault_slots(&arg(&args, "--fault-mix", ""))),
    };
    // A backlog deep enough for the 256-stream burst of benches/load.sh (tokio's `bind` gives
    // 128: the rest of a burst overflowed it and waited a 1 s SYN retransmit).
    let addr: std::net::SocketAddr = listen.parse().expect("--listen: an IP:port");
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind");
    let listener = socket.listen(4096).expect("listen");
    eprintln!("mock upstream on {listen}");
    loop {
        let Ok((s, _)) = listener.accept().await else { continue };
        let _ = s.set_nodelay(true);
        let o = opts.clone();
        tokio::spawn(async move {
            let _ = serve(s, o).await;
        });
    }
}

async fn serve(mut s: TcpStream, o: Opts) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
        let len: usize = header("content-length:").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_end + len {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
        let auth = header("authorization:").unwrap_or_default();
        buf.drain(..head_end + len);
        if !o.latency.is_zero() {
            tokio::time::sleep(o.latency).await;
        }
        let fault = if auth.ends_with(&o.fail_suffix) && !o.fail_suffix.is_empty() {
            Fault::None
        } else {
            o.faults[REQUESTS.fetch_add(1, Ordering::Relaxed) % 100]
        };
        let stream = body.contains("\"stream\":true");
        // A per-request pace (benches' stream bursts), else the one given at start.
        let chunk_delay = header("x-mock-chunk-delay-ms:")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(o.chunk_delay);
        match fault {
            Fault::Reset => return Ok(()),
            Fault::Cut if !stream => return Ok(()),
            Fault::Slow => tokio::time::sleep(Duration::from_millis(200)).await,
            Fault::RateLimited | Fault::Unavailable => {
                let (status, b) = if fault == Fault::RateLimited {
                    ("429 Too Many Requests\r\nretry-after: 1", r#"{"error":"rate limited"}"#)
                } else {
                    ("503 Service Unavailable", r#"{"error":"overloaded"}"#)
                };
                let r = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
                    b.len()
                );
                s.write_all(r.as_bytes()).await?;
                continue;
            }
            _ => {}
        }
        if !o.fail_suffix.is_empty() && auth.ends_with(&o.fail_suffix) {
            let b = r#"{"error":"unauthorized"}"#;
            let r = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
                b.len()
            );
            s.write_all(r.as_bytes()).await?;
        } else if stream {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            for i in 0..o.chunks {
                if fault == Fault::Cut && i == o.chunks / 2 {
                    return Ok(());
                }
                let ev = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"tok{i}\"}}}}]}}\n\n");
                s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes()).await?;
                if !chunk_delay.is_zero() {
                    tokio::time::sleep(chunk_delay).await;
                }
            }
            let end = "data: [DONE]\n\n";
            s.write_all(format!("{:x}\r\n{end}\r\n0\r\n\r\n", end.len()).as_bytes()).await?;
        } else {
            let r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
                CHAT.len()
            );
            s.write_all(r.as_bytes()).await?;
        }
    }
}
