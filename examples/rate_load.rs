//! An open-loop load client (issue #14, "added p99 below saturation"): sends non-streaming chat
//! requests at a fixed total rate over C keep-alive connections for D seconds, whether or not
//! the answers keep up, and reports latency percentiles. wrk cannot do this: it sends the next
//! request when the last answer is in, so it always runs at saturation and its p99 is mostly
//! the time its own requests wait for a CPU.
//!
//! `cargo run --release --example rate_load -- --url http://127.0.0.1:18081 -c 8 -r 5000 -d 5 [--token T]`
//!
//! Each connection has its own thread and sends every C/R seconds, on a schedule fixed at the
//! start (staggered across connections). A request's latency runs from the moment the schedule
//! said to send it, not from when it was sent: an answer that comes late delays the requests
//! behind it on its connection, and that wait counts (wrk2's correction for coordinated
//! omission). The service time (from the actual write) is reported too, and the client's own
//! lateness, how far past its moment a request went out on an idle connection: that part is
//! this client's scheduling, the same for every contender.
//!
//! Prints one line: `sent= ok= errors= rps= p50_ms= p90_ms= p99_ms= p999_ms= max_ms=
//! service_p99_ms= late_p99_ms=`. A non-2xx answer or a broken connection is an error (the
//! connection is reopened); its latency is left out. `--samples FILE` also appends every
//! latency to FILE, a line each: µs, then when the request was due (ms from the start). A
//! script can then pool several runs: on a VM whose threads stall for a few ms a few times a
//! second, one run's p99 is mostly which stalls it met.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

#[derive(Default)]
struct Tally {
    sent: usize,
    errors: usize,
    latency_us: Vec<u32>,
    due_ms: Vec<u32>,
    service_us: Vec<u32>,
    late_us: Vec<u32>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url", "http://127.0.0.1:18081");
    let conns: usize = arg(&args, "-c", "8").parse().expect("-c: a number of connections");
    let rate: f64 = arg(&args, "-r", "1000").parse().expect("-r: requests per second");
    let secs: f64 = arg(&args, "-d", "5").parse().expect("-d: seconds");
    let token = arg(&args, "--token", "bench-client-token-123");
    let samples = arg(&args, "--samples", "");
    assert!(conns > 0 && rate > 0.0 && secs > 0.0, "-c, -r and -d must be positive");
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let body = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let period = Duration::from_secs_f64(conns as f64 / rate);
    // Connect everything first, so connection set-up is not timed.
    let streams: Vec<TcpStream> = (0..conns).map(|_| connect(&addr).expect("connect")).collect();
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let (addr, req) = (addr.clone(), req.clone());
            let first = start + period.mul_f64(i as f64 / conns as f64);
            std::thread::spawn(move || run(stream, &addr, req.as_bytes(), (start, first), period, end))
        })
        .collect();
    let mut all = Tally::default();
    for t in threads {
        let t = t.join().expect("a load thread panicked");
        all.sent += t.sent;
        all.errors += t.errors;
        all.latency_us.extend(t.latency_us);
        all.due_ms.extend(t.due_ms);
        all.service_us.extend(t.service_us);
        all.late_us.extend(t.late_us);
    }
    if !samples.is_empty() {
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&samples).expect("--samples: open");
        let text: String = all.latency_us.iter().zip(&all.due_ms).map(|(us, ms)| format!("{us} {ms}\n")).collect();
        out.write_all(text.as_bytes()).expect("--samples: write");
    }
    let ok = all.latency_us.len();
    for v in [&mut all.latency_us, &mut all.service_us, &mut all.late_us] {
        v.sort_unstable();
    }
    println!(
        "sent={} ok={ok} errors={} rps={:.0} p50_ms={} p90_ms={} p99_ms={} p999_ms={} max_ms={} service_p99_ms={} late_p99_ms={}",
        all.sent,
        all.errors,
        ok as f64 / secs,
        pct(&all.latency_us, 0.50),
        pct(&all.latency_us, 0.90),
        pct(&all.latency_us, 0.99),
        pct(&all.latency_us, 0.999),
        pct(&all.latency_us, 1.0),
        pct(&all.service_us, 0.99),
        pct(&all.late_us, 0.99),
    );
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// One connection's schedule: request k goes out at `first + k * period` (or as soon as the
/// previous answer is in, if that is later) until `end`; `start` is the run's.
fn run(
    mut stream: TcpStream,
    addr: &str,
    req: &[u8],
    (start, first): (Instant, Instant),
    period: Duration,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut due = first;
    while due < end {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let sent_at = Instant::now();
        tally.sent += 1;
        match exchange(&mut stream, req, &mut buf) {
            Ok(true) => {
                let done = Instant::now();
                tally.latency_us.push(micros(done - due));
                tally.due_ms.push(micros(due - start) / 1000);
                tally.service_us.push(micros(done - sent_at));
                if due > now {
                    // The connection was idle at its moment: how late the client itself was.
                    tally.late_us.push(micros(sent_at.saturating_duration_since(due)));
                }
            }
            Ok(false) => tally.errors += 1,
            Err(_) => {
                tally.errors += 1;
                match connect(addr) {
                    Ok(s) => stream = s,
                    Err(_) => break,
                }
            }
        }
        due += period;
    }
    tally
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Writes the request and reads one whole answer (content-length or chunked). `Ok(false)`: a
/// complete answer that was not 2xx; `Err`: the connection broke or the answer was malformed.
fn exchange(stream: &mut TcpStream, req: &[u8], buf: &mut [u8]) -> std::io::Result<bool> {
    stream.write_all(req)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut got = 0usize;
    let head_end = loop {
        let n = stream.read(&mut buf[got..])?;
        if n == 0 {
            return Err(bad("closed"));
        }
        got += n;
        if let Some(i) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if got == buf.len() {
            return Err(bad("header too large"));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("header not UTF-8"))?.to_ascii_lowercase();
    let ok = head.get(9..10) == Some("2");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().map_err(|_| bad("content-length")))
        .transpose()?;
    match length {
        Some(len) => {
            let mut have = got - head_end;
            while have < len {
                let n = stream.read(&mut buf[..])?;
                if n == 0 {
                    return Err(bad("closed mid-body"));
                }
                have += n;
            }
        }
        None if head.contains("transfer-encoding: chunked") => {
            // Enough for a bench: the answer ends with the zero-length chunk.
            let mut tail: Vec<u8> = buf[head_end..got].to_vec();
            while !tail.ends_with(b"0\r\n\r\n") {
                let n = stream.read(&mut buf[..])?;
                if n == 0 {
                    return Err(bad("closed mid-body"));
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 8 {
                    tail.drain(..tail.len() - 8);
                }
            }
        }
        None => return Err(bad("no content-length and not chunked")),
    }
    Ok(ok)
}

/// The q-quantile of `v` (sorted), in ms with three decimals ("n/a" when empty).
fn pct(v: &[u32], q: f64) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    format!("{:.3}", v[i] as f64 / 1000.0)
}
