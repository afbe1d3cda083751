//! Micro-benchmarks of the request path's own work (issue #6): key selection at 1k and 100k
//! keys with 0 %, 50 % and 99 % of them parked, outcome classification, token-usage scanning of
//! an SSE chunk, the requested model of a chat body, and client-token lookup. Besides criterion's means, prints the p99 of single
//! `pick` calls, since the target is a tail latency, beside the p99 of the clock reads alone.
//! Run: `cargo bench --bench micro`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ollama_pool::config::StaticToken;
use ollama_pool::pool::{classify, Key, ManualClock, Policy, Pool};
use ollama_pool::proxy::auth::Clients;
use ollama_pool::secret::Secret;
use ollama_pool::usage::UsageScanner;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

fn pool(n: usize, parked_pct: u64) -> Pool {
    let p = Pool::new(Policy::default(), Arc::new(ManualClock::new(1_000_000)));
    p.add_all((0..n).map(|i| Key::new(Secret::new(format!("bench-key-{i:08}-xxxxxxxxxxxx")), None, None).unwrap()));
    // Park a pseudo-random share (a fixed LCG, so every run parks the same keys).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for k in p.keys().iter() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        if (x >> 33) % 100 < parked_pct {
            p.disable(&k.id, None);
        }
    }
    p
}

/// The p50 and p99 of `n` single `pick` calls, and the same of the clock reads alone (the
/// measurement's own floor). Counted in a 1-ns histogram (16 KB) rather than a sample list:
/// 200k samples (1.6 MB) would compete with the keys for the cache and fault in a page every
/// 512 picks, which is the measurement's cost, not the pick's.
fn p99_of_picks(p: &Pool, n: usize) -> ((u64, u64), (u64, u64)) {
    let mut picks = Histogram::default();
    let mut clock = Histogram::default();
    for _ in 0..n {
        let t = Instant::now();
        black_box(p.pick(&[]).ok());
        picks.add(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        clock.add(black_box(t).elapsed().as_nanos() as u64);
    }
    ((picks.at(0.50), picks.at(0.99)), (clock.at(0.50), clock.at(0.99)))
}

/// Counts of latencies by nanosecond, up to 4 µs (the last bucket takes the rest).
struct Histogram {
    counts: Box<[u32; 4096]>,
    n: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: Box::new([0; 4096]), n: 0 }
    }
}

impl Histogram {
    fn add(&mut self, ns: u64) {
        self.counts[(ns as usize).min(4095)] += 1;
        self.n += 1;
    }

    /// The smallest latency that `q` of the samples are at or below.
    fn at(&self, q: f64) -> u64 {
        let want = (self.n as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (ns, &c) in self.counts.iter().enumerate() {
            seen += c as u64;
            if seen >= want {
                return ns as u64;
            }
        }
        4095
    }
}

fn selection(c: &mut Criterion) {
    println!("\nkey selection, single-call latency (ns):");
    println!("{:>8} {:>7} {:>8} {:>8}   {:>9} {:>9}", "keys", "parked", "p50", "p99", "clock p50", "clock p99");
    for n in [1_000, 100_000] {
        for parked in [0, 50, 99] {
            let p = pool(n, parked);
            let ((p50, p99), (c50, c99)) = p99_of_picks(&p, 1_000_000);
            println!("{n:>8} {parked:>6}% {p50:>8} {p99:>8}   {c50:>9} {c99:>9}");
            c.bench_function(&format!("pick/{n}keys/{parked}pct_parked"), |b| b.iter(|| black_box(p.pick(&[]).ok())));
        }
    }
}

fn classification(c: &mut Criterion) {
    let mut h = http::HeaderMap::new();
    h.insert("retry-after", "30".parse().unwrap());
    let body = br#"{"error":"you've reached your weekly usage limit, please upgrade"}"#;
    c.bench_function("classify/429_retry_after", |b| b.iter(|| black_box(classify(black_box(429), &h, None))));
    c.bench_function("classify/403_usage_body", |b| b.iter(|| black_box(classify(black_box(403), &h, Some(body)))));
    c.bench_function("classify/200", |b| b.iter(|| black_box(classify(black_box(200), &h, None))));
}

fn usage(c: &mut Criterion) {
    let delta = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello world\"}}]}\n\n";
    let last = "data: {\"id\":\"c1\",\"model\":\"m1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34}}\n\ndata: [DONE]\n\n";
    c.bench_function("usage/sse_delta_chunk", |b| {
        b.iter_batched(
            || UsageScanner::for_content_type(b"text/event-stream").unwrap(),
            |mut s| s.feed(black_box(delta.as_bytes())),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("usage/sse_final_chunk", |b| {
        b.iter_batched(
            || UsageScanner::for_content_type(b"text/event-stream").unwrap(),
            |mut s| {
                s.feed(black_box(last.as_bytes()));
                s.completion_tokens
            },
            BatchSize::SmallInput,
        )
    });
}

fn token_lookup(c: &mut Criterion) {
    let tokens: Vec<StaticToken> = (0..1000)
        .map(|i| StaticToken::new(format!("app{i}"), Secret::new(format!("sk-client-token-{i:040}"))))
        .collect();
    let clients = Clients::from_static(&tokens);
    let mut h = http::HeaderMap::new();
    h.insert("authorization", format!("Bearer sk-client-token-{:040}", 777).parse().unwrap());
    c.bench_function("auth/lookup_1000_tokens", |b| b.iter(|| black_box(clients.authenticate(&h, 0).is_some())));
}

/// The requested model of a chat body with a short and a 100 kB prompt (prose, a line end every
/// 57 bytes: each is an escape in JSON): the member scan the
/// proxy uses against a full serde parse of the body (how it was read before), same run.
fn requested_model(c: &mut Criterion) {
    #[derive(serde::Deserialize)]
    struct Probe {
        model: Option<String>,
    }
    for (name, len) in [("short", 20), ("100kB", 100_000)] {
        let text: String =
            "lorem ipsum dolor sit amet, consectetur adipiscing elit.\n".chars().cycle().take(len).collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
            "model": "qwen3:32b",
            "stream": false,
        }))
        .unwrap();
        c.bench_function(&format!("model/{name}_prompt/scan"), |b| {
            b.iter(|| ollama_pool::proxy::requested_model(black_box(&body)))
        });
        c.bench_function(&format!("model/{name}_prompt/full_parse"), |b| {
            b.iter(|| serde_json::from_slice::<Probe>(black_box(&body)).ok().and_then(|p| p.model))
        });
    }
}

criterion_group!(benches, selection, classification, usage, requested_model, token_lookup);
criterion_main!(benches);
