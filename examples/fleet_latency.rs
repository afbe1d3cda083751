//! Fleet propagation latency (benches/fleet.sh, issue #11): how long a key change made on one
//! instance takes to be applied by another. Subscribes to instance B's `GET /admin/events`,
//! then, N times, disables a key through instance A's admin API and waits for B's
//! `key.disabled` notice (and enables it again, waiting for `key.returned`). Prints p50, p99 and
//! max of the time from sending A's request to B's notice.
//!
//!   fleet_latency --a http://127.0.0.1:P1 --b http://127.0.0.1:P2 --token ADMIN --key ID [-n 200]

use futures_util::StreamExt;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (a, b, token, key) = (arg("--a").unwrap(), arg("--b").unwrap(), arg("--token").unwrap(), arg("--key").unwrap());
    let n: usize = arg("-n").and_then(|v| v.parse().ok()).unwrap_or(200);
    let http = reqwest::Client::new();
    let events = http.get(format!("{b}/admin/events")).bearer_auth(&token).send().await.expect("B's event stream");
    let mut stream = events.bytes_stream();
    let mut buf = String::new();
    // Waits for B's notice of `kind` for the key; false on a 5 s timeout.
    let mut wait_for = async |kind: &str| -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if block.contains(&format!("event: {kind}\n")) && block.contains(&key) {
                    return true;
                }
            }
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(chunk))) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return false,
            }
        }
    };
    let mut times = Vec::with_capacity(2 * n);
    let mut lost = 0;
    for _ in 0..n {
        for (action, kind) in [("disable", "key.disabled"), ("enable", "key.returned")] {
            let t = Instant::now();
            let r = http
                .post(format!("{a}/admin/keys/{key}/{action}"))
                .bearer_auth(&token)
                .body("{}")
                .send()
                .await
                .expect("A's admin API");
            assert!(r.status().is_success(), "{action}: {}", r.status());
            if wait_for(kind).await {
                times.push(t.elapsed());
            } else {
                lost += 1;
            }
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "changes {}  lost {lost}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        times.len(),
        pct(0.50),
        pct(0.99),
        times.last().unwrap().as_secs_f64() * 1000.0
    );
}
