//! Micro-benchmarks of the request path's own work (issue #6): key selection at 1k and 100k
//! keys with 0 %, 50 % and 99 % of them parked, outcome classification, token-usage scanning of
//! an SSE chunk, and client-token lookup. Besides criterion's means, prints the p99 of single
//! `pick` calls, since the target is a tail latency. Run: `cargo bench --bench micro`.

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

fn p99_of_picks(p: &Pool, n: usize) -> (f64, f64) {
    let mut samples: Vec<u64> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        black_box(p.pick(&[]).ok());
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    (samples[n / 2] as f64, samples[n * 99 / 100] as f64)
}

fn selection(c: &mut Criterion) {
    println!("\nkey selection, single-call latency (ns):");
    println!("{:>8} {:>7} {:>8} {:>8}", "keys", "parked", "p50", "p99");
    for n in [1_000, 100_000] {
        for parked in [0, 50, 99] {
            let p = pool(n, parked);
            let (p50, p99) = p99_of_picks(&p, 200_000);
            println!("{n:>8} {parked:>6}% {p50:>8.0} {p99:>8.0}");
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

criterion_group!(benches, selection, classification, usage, token_lookup);
criterion_main!(benches);
