//! The three client protocols end to end: OpenAI (JSON + SSE), Anthropic, Ollama-native NDJSON,
//! model listing, what is forwarded and what is stripped, routes and client auth.

mod common;

use common::{client, mock, Mock, Proxy, KEYS, TOKEN};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_non_stream_and_headers() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let body = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = proxy
        .post("/v1/chat/completions?trace=1&x=a%20b", body)
        .header("user-agent", "my-app/1.0")
        .header("accept", "application/json")
        .header("cookie", "session=secret")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-api-key", "also-stripped")
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-encoding").is_none(), "the proxy never compresses an answer");
    assert_eq!(resp.text().await.unwrap(), mock::CHAT_JSON, "body passed through unchanged");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/v1/chat/completions?trace=1&x=a%20b", "path and query preserved");
    assert_eq!(r.body, body.as_bytes());
    let key = r.key.as_deref().expect("upstream key sent");
    assert!(KEYS.contains(&key), "Authorization carries a pool key");
    assert_eq!(r.header("user-agent"), Some("my-app/1.0"));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(r.header("accept-encoding"), Some("gzip, br"), "the upstream chooses the encoding");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("host"), Some(mock.addr.to_string().as_str()));
    for stripped in ["cookie", "x-forwarded-for", "x-api-key"] {
        assert_eq!(r.header(stripped), None, "{stripped} must not be forwarded");
    }
    assert!(!r.headers.iter().any(|(_, v)| v.contains(TOKEN)), "client token never forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sse_stream_passes_through() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let resp =
        proxy.post("/v1/chat/completions", r#"{"model":"m1","stream":true,"messages":[]}"#).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("content-encoding").is_none(), "event streams are not compressed");
    assert_eq!(resp.text().await.unwrap(), mock::SSE_EVENTS.concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_with_x_api_key() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let resp = client()
        .post(proxy.url("/v1/messages"))
        .header("x-api-key", TOKEN)
        .header("anthropic-version", "2023-06-01")
        .body(r#"{"model":"m1","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), mock::ANTHROPIC_JSON);
    let r = &mock.requests()[0];
    assert_eq!(r.header("x-api-key"), None);
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert!(r.key.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_chat_ndjson_stream() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let resp = proxy.post("/api/chat", r#"{"model":"m1","messages":[]}"#).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    assert_eq!(resp.text().await.unwrap(), mock::NDJSON_LINES.concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_listing() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let resp = client().get(proxy.url("/v1/models")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(mock.requests()[0].method, "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_token_is_401_in_each_envelope_and_never_reaches_upstream() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let cases = [
        ("/v1/chat/completions", None, "openai"),
        ("/v1/chat/completions", Some("Bearer wrong-token-123"), "openai"),
        ("/v1/messages", Some("Bearer nope-nope-nope"), "anthropic"),
        ("/api/chat", None, "ollama"),
    ];
    for (path, auth, family) in cases {
        let mut req = client().post(proxy.url(path)).body("{}");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let v: Value = resp.json().await.unwrap();
        match family {
            "openai" => assert_eq!(v["error"]["code"], "invalid_api_key"),
            "anthropic" => {
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["type"], "authentication_error");
            }
            _ => assert!(v["error"].is_string()),
        }
        assert!(!v.to_string().contains("wrong-token"), "the presented token is not echoed");
    }
    assert!(mock.requests().is_empty(), "no upstream request for unauthenticated clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_unknown_and_not_allowed_are_404() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    for (path, ollama) in [("/nope", false), ("/api/pull", true), ("/api/delete", true), ("/v1/files", false)] {
        let resp = client().post(proxy.url(path)).bearer_auth(TOKEN).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"].is_string(), ollama, "{path}: {v}");
    }
    assert!(mock.requests().is_empty());
    let h = client().get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = client().get(proxy.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_limit_is_413() {
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(
        &mock,
        common::Setup { extra: "pool: {max_request_body: 100KiB}\n".into(), ..Default::default() },
    )
    .await;
    let big = vec![b'x'; 150 * 1024];
    let resp = proxy.post("/v1/chat/completions", big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    // Without a Content-Length (chunked) the limit still holds.
    let stream =
        futures_util::stream::iter(big.chunks(8192).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let resp = proxy.post("/api/chat", reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert!(mock.requests().is_empty());
}

/// The upstream always gets the body with its length: the client's own Content-Length when it
/// is right, one the proxy sets for a chunked body; never the client's framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_body_with_its_length() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let body = r#"{"model":"m1","messages":[{"role":"user","content":"a body sent in pieces"}]}"#;
    assert_eq!(proxy.post("/v1/chat/completions", body).send().await.unwrap().status(), 200);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body.as_bytes().chunks(7).map(|c| Ok(c.to_vec())).collect();
    let chunked = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    assert_eq!(proxy.post("/v1/chat/completions", chunked).send().await.unwrap().status(), 200);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.body, body.as_bytes());
        let lengths: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(lengths, [body.len().to_string()], "one Content-Length, the body's");
        assert_eq!(r.header("transfer-encoding"), None);
    }
}

/// A request reaches the upstream in one write, header and body together (one segment on
/// loopback: the mock receives it in one read), three times in a row on the kept-alive
/// connection; a body over 64 KiB is not copied for that, and still arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_header_and_body_in_one_write() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let body = r#"{"model":"m1","messages":[{"role":"user","content":"one write"}]}"#;
    for _ in 0..3 {
        let resp = proxy.post("/v1/chat/completions", body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), mock::CHAT_JSON);
    }
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3, "one request each");
    for r in &reqs {
        assert_eq!(r.body, body.as_bytes());
        assert_eq!(r.reads, 1, "header and body in one piece");
    }
    let large = format!(r#"{{"model":"m1","messages":[],"pad":"{}"}}"#, "p".repeat(100_000));
    let resp = proxy.post("/v1/chat/completions", large.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), mock::CHAT_JSON);
    assert_eq!(mock.requests()[3].body, large.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_without_keys() {
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(&mock, common::Setup { keys: vec![], ..Default::default() }).await;
    assert_eq!(client().get(proxy.url("/readyz")).send().await.unwrap().status(), 503);
    let resp = proxy.post("/v1/chat/completions", "{}").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_none(), "no key will return: no promise");
}

/// Sends raw bytes on a fresh connection and reads until `until` appears or the peer closes.
async fn raw_exchange(stream: &mut tokio::net::TcpStream, send: &[u8], until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(send).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("timed out waiting for {until:?}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_by_the_proxy() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let body = r#"{"model":"m1","messages":[]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let interim = raw_exchange(&mut s, head.as_bytes(), "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100"), "got {interim:?}");
    let resp = raw_exchange(&mut s, body.as_bytes(), "\"usage\"").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "got {resp:?}");
    let r = &mock.requests()[0];
    assert_eq!(r.header("expect"), None, "the upstream gets the whole body at once, no Expect");
    assert_eq!(r.body, body.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_body_gets_408() {
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(
        &mock,
        common::Setup { server_extra: "client_body_timeout: 1s".into(), ..Default::default() },
    )
    .await;
    let head = format!(
        "POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let resp = raw_exchange(&mut s, head.as_bytes(), "}").await;
    assert!(resp.starts_with("HTTP/1.1 408"), "got {resp:?}");
    assert!(resp.contains("\"error\":\"the request body did not arrive in time"), "Ollama envelope: {resp:?}");
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_failovers_without_secrets() {
    let mock = Mock::start().await;
    mock.set(KEYS[0], common::Behavior::status(401, "{}"));
    let port = common::free_port();
    let proxy = Proxy::start_with(
        &mock,
        common::Setup { extra: format!("metrics: {{listen: \"127.0.0.1:{port}\"}}\n"), ..Default::default() },
    )
    .await;
    assert_eq!(proxy.post("/v1/chat/completions", "{}").send().await.unwrap().status(), 200);
    // The request is counted in the proxy's logging hook, which may run just after the client
    // has its answer: scrape until it shows (bounded).
    let mut text = String::new();
    for _ in 0..100 {
        text = client().get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
        if text.contains(r#"ollama_pool_requests_total{client="app",family="openai",status_class="2xx"}"#) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert!(value(r#"ollama_pool_requests_total{client="app",family="openai",status_class="2xx"}"#) >= 1.0);
    assert!(value(r#"ollama_pool_failovers_total{reason="credential"}"#) >= 1.0);
    let k0 = proxy.key_id(KEYS[0]);
    assert!(
        value(&format!(
            r#"ollama_pool_upstream_attempts_total{{key_id="{k0}",outcome="credential",provider="default"}}"#
        )) >= 1.0
    );
    assert!(value(r#"ollama_pool_key_transitions_total{from="active",reason="credential",to="invalid"}"#) >= 1.0);
    for secret in KEYS.iter().chain([&TOKEN]) {
        assert!(!text.contains(secret), "a secret in /metrics");
    }
}
