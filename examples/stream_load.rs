//! A load client for streaming responses (wrk cannot time a stream's first byte): keeps C
//! connections each sending streaming chat requests back to back for D seconds, and reports
//! time to first body byte and total time (p50/p99, ms), the count of complete streams and of
//! broken ones (the connection closed mid-answer; it is reopened so the load stays at C).
//!
//! `cargo run --release --example stream_load -- --url http://127.0.0.1:18081 -c 256 -d 5 [--token T]`
//!
//! `--burst`: instead, C streams opened at the same moment, one request each on a new
//! connection (issue #14 item 5), timed from just before the connect; ends when all are done
//! or after D seconds. `--ready-file F` (burst): creates F once every stream has its first
//! event, so a script can sample the proxy while all C are open and idle between chunks.
//! `--chunk-delay-ms N` asks the mock upstream (header `x-mock-chunk-delay-ms`) for N ms between
//! events.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url", "http://127.0.0.1:18081");
    let conns: usize = arg(&args, "-c", "1").parse().unwrap();
    let secs: u64 = arg(&args, "-d", "5").parse().unwrap();
    let token = arg(&args, "--token", "bench-client-token-123");
    let delay = arg(&args, "--chunk-delay-ms", "");
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let body = r#"{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let extra = if delay.is_empty() { String::new() } else { format!("x-mock-chunk-delay-ms: {delay}\r\n") };
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    if args.iter().any(|a| a == "--burst") {
        let ready_file = args.iter().position(|a| a == "--ready-file").and_then(|i| args.get(i + 1)).cloned();
        let (all, broken) = burst(&addr, &req, conns, deadline, ready_file).await;
        report(all, broken);
        return;
    }
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, req) = (addr.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut broken = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            // A stream the proxy breaks (an upstream cut mid-stream) closes its connection:
            // count it and open a new one, so the load stays at C streams.
            'connect: while Instant::now() < deadline {
                let Ok(mut s) = TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    if s.write_all(req.as_bytes()).await.is_err() {
                        broken += 1;
                        continue 'connect;
                    }
                    let mut got: Vec<u8> = Vec::new();
                    let mut ttfb = None;
                    let mut head_end = None;
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(n) if n > 0 => n,
                            _ => {
                                broken += 1;
                                continue 'connect;
                            }
                        };
                        got.extend_from_slice(&buf[..n]);
                        if head_end.is_none() {
                            head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
                        }
                        if let Some(h) = head_end {
                            if ttfb.is_none() && got.len() > h {
                                ttfb = Some(t0.elapsed());
                            }
                            if got.ends_with(b"0\r\n\r\n") {
                                break;
                            }
                        }
                    }
                    out.push((ttfb.unwrap_or_default(), t0.elapsed()));
                }
            }
            (out, broken)
        }));
    }
    let mut all = Vec::new();
    let mut broken = 0;
    for t in tasks {
        let (done, cut) = t.await.unwrap_or_default();
        all.extend(done);
        broken += cut;
    }
    report(all, broken);
}

/// `n` streams opened at once, one request each: (time to first event, total) of each
/// complete one, and how many broke or did not finish by `deadline`.
async fn burst(
    addr: &str,
    req: &str,
    n: usize,
    deadline: Instant,
    ready_file: Option<String>,
) -> (Vec<(Duration, Duration)>, usize) {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let first = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (addr, req, start, first, ready_file) =
            (addr.to_string(), req.to_string(), start.clone(), first.clone(), ready_file.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let t0 = Instant::now();
            let work = async {
                let mut s = TcpStream::connect(&addr).await.ok()?;
                let _ = s.set_nodelay(true);
                s.write_all(req.as_bytes()).await.ok()?;
                let (mut got, mut buf) = (Vec::new(), vec![0u8; 8192]);
                let (mut ttfb, mut head_end) = (None, None);
                loop {
                    let n_read = s.read(&mut buf).await.ok().filter(|&k| k > 0)?;
                    got.extend_from_slice(&buf[..n_read]);
                    if head_end.is_none() {
                        head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
                    }
                    if let Some(h) = head_end {
                        if ttfb.is_none() && got.len() > h {
                            ttfb = Some(t0.elapsed());
                            let opened = first.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                            if let (true, Some(f)) = (opened == n, &ready_file) {
                                let _ = std::fs::write(f, b"open\n");
                            }
                        }
                        if got.ends_with(b"0\r\n\r\n") {
                            return Some((ttfb.unwrap_or_default(), t0.elapsed()));
                        }
                    }
                }
            };
            tokio::time::timeout_at(deadline.into(), work).await.ok().flatten()
        }));
    }
    let (mut all, mut broken) = (Vec::new(), 0);
    for t in tasks {
        match t.await.ok().flatten() {
            Some(x) => all.push(x),
            None => broken += 1,
        }
    }
    (all, broken)
}

fn report(all: Vec<(Duration, Duration)>, broken: usize) {
    if all.is_empty() {
        println!("requests=0 broken={broken}");
        return;
    }
    let pct = |mut v: Vec<Duration>, p: usize| {
        v.sort_unstable();
        v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1000.0
    };
    let ttfb: Vec<Duration> = all.iter().map(|x| x.0).collect();
    let total: Vec<Duration> = all.iter().map(|x| x.1).collect();
    println!(
        "requests={} broken={broken} ttfb_p50_ms={:.3} ttfb_p99_ms={:.3} total_p50_ms={:.3} total_p99_ms={:.3}",
        all.len(),
        pct(ttfb.clone(), 50),
        pct(ttfb, 99),
        pct(total.clone(), 50),
        pct(total, 99)
    );
}
