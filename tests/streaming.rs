//! Streaming (SPEC §3.3): chunks reach the client as the upstream sends them, and an upstream
//! failure mid-stream ends the client's response abnormally — never a clean, fabricated end.

mod common;

use common::{Behavior, Mock, Proxy, Setup, KEYS};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

fn bodies() -> [Vec<u8>; 2] {
    let small = br#"{"model":"m1","stream":true,"messages":[]}"#.to_vec();
    let pad = "p".repeat(100_000);
    let large = format!(r#"{{"model":"m1","stream":true,"messages":[],"pad":"{pad}"}}"#).into_bytes();
    [small, large]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_event_arrives_before_the_upstream_sends_the_rest() {
    for body in bodies() {
        let mock = Mock::start().await;
        let gate = Arc::new(Notify::new());
        mock.set(KEYS[0], Behavior::Gated(gate.clone()));
        let proxy = Proxy::start_with(&mock, Setup { keys: vec![KEYS[0]], ..Default::default() }).await;
        let resp = proxy.post("/v1/chat/completions", body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        // The mock holds everything after the first event until the gate opens, so receiving
        // it proves the proxy did not buffer the response.
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("first event must arrive while the upstream is still holding the rest")
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], b"data: {\"n\":1}\n\n");
        gate.notify_one();
        let mut rest = Vec::new();
        while let Some(chunk) = stream.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(rest, b"data: {\"n\":2}\n\ndata: [DONE]\n\n");
    }
}

/// A stream whose upstream goes silent after its first event is cut off once
/// `upstream.read_timeout` passes: the client sees an abnormal end (not a hang until it gives
/// up, not a fabricated clean end), and the key is charged one stream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_goes_silent_is_cut_at_read_timeout() {
    for body in bodies() {
        let mock = Mock::start().await;
        let gate = Arc::new(Notify::new()); // never opened
        mock.set(KEYS[0], Behavior::Gated(gate.clone()));
        let setup = Setup { keys: vec![KEYS[0]], upstream_extra: "read_timeout: 1s".into(), ..Default::default() };
        let proxy = Proxy::start_with(&mock, setup).await;
        let resp = proxy.post("/v1/chat/completions", body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut got = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => got.extend_from_slice(&c),
                    Err(_) => return true,
                }
            }
            false
        })
        .await
        .expect("the proxy ends the stream before the client gives up");
        assert!(end, "an abnormal end, got a clean one after {:?}", String::from_utf8_lossy(&got));
        assert_eq!(&got[..], b"data: {\"n\":1}\n\n", "the event that came, and nothing made up");
        let key = proxy.key(KEYS[0]);
        assert_eq!(key.stream_errors, 1, "{key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cut_mid_stream_breaks_the_client_response() {
    for body in bodies() {
        let mock = Mock::start().await;
        mock.set(KEYS[0], Behavior::CutMidStream);
        let proxy = Proxy::start_with(&mock, Setup { keys: vec![KEYS[0], KEYS[1]], ..Default::default() }).await;
        let resp = proxy.post("/v1/chat/completions", body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "the header had already gone out");
        let mut stream = resp.bytes_stream();
        let mut got = Vec::new();
        let mut broke = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => got.extend_from_slice(&c),
                Err(_) => {
                    broke = true;
                    break;
                }
            }
        }
        assert!(broke, "the client must see an abnormal end, got a clean one after {got:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains("[DONE]"), "no fabricated end of stream");
        assert_eq!(mock.requests().len(), 1, "no failover once the response has started");
    }
}

/// Ollama Cloud reports some failures inside a 200 stream, as an NDJSON `{"error": ...}` line.
/// The client gets the stream as the upstream sent it (never a retry: it has started), and
/// the key is charged one stream error (key stats, metrics) without being parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_line_inside_a_200_stream_counts_against_its_key() {
    for body in bodies() {
        let mock = Mock::start().await;
        mock.set(KEYS[0], Behavior::ErrorLineMidStream);
        let proxy =
            Proxy::start_with(&mock, Setup { keys: vec![KEYS[0], KEYS[1]], admin: true, ..Default::default() }).await;
        let resp = proxy.post("/api/chat", body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(text.ends_with("{\"error\":\"an upstream error occurred mid-stream\"}\n"), "passed through: {text}");
        assert_eq!(mock.requests().len(), 1, "no retry once the stream has started");
        let id = proxy.key_id(KEYS[0]);
        let k = proxy.key(KEYS[0]);
        assert_eq!((k.stream_errors, k.status), (1, ollama_pool::pool::Status::Active));
        let metrics = common::client().get(proxy.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        let line = format!("ollama_pool_key_stream_errors_total{{key_id=\"{id}\",provider=\"default\"}}");
        assert!(metrics.lines().any(|l| l.starts_with(&line)), "counted in metrics");
        // A cut-off stream is a stream error too.
        mock.set(KEYS[0], Behavior::CutMidStream);
        mock.set(KEYS[1], Behavior::CutMidStream);
        let resp = proxy.post("/v1/chat/completions", bodies()[0].clone()).send().await.unwrap();
        let _ = resp.bytes().await;
        assert_eq!(proxy.key(KEYS[0]).stream_errors + proxy.key(KEYS[1]).stream_errors, 2);
    }
}
