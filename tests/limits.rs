//! Request header limits (SPEC §5: `server.max_header_bytes`, `server.max_headers` → 431 in the
//! route family's envelope, nothing forwarded) and the idle keep-alive timeout.

mod common;

use common::{Mock, Proxy, Setup, TOKEN};
use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

#[tokio::test]
async fn oversized_or_too_many_headers_get_431_and_reach_nobody() {
    let mock = Mock::start().await;
    let proxy = Proxy::start(&mock).await;
    let big = "x".repeat(70 * 1024);
    let r = proxy.post("/v1/chat/completions", r#"{"model":"m1"}"#).header("x-big", &big).send().await.unwrap();
    assert_eq!(r.status(), 431);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "headers_too_large", "OpenAI envelope: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("server.max_header_bytes"));

    let mut many = proxy.post("/api/chat", r#"{"model":"m1"}"#);
    for i in 0..120 {
        many = many.header(format!("x-h{i}"), "1");
    }
    let r = many.send().await.unwrap();
    assert_eq!(r.status(), 431);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().is_some_and(|e| e.contains("server.max_headers")), "Ollama envelope: {v}");
    assert!(mock.requests().is_empty(), "nothing of an oversized header was forwarded");

    let fine = proxy.post("/v1/chat/completions", r#"{"model":"m1"}"#).header("x-big", "y".repeat(10 * 1024));
    assert_eq!(fine.send().await.unwrap().status(), 200);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn limits_can_be_raised() {
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(
        &mock,
        Setup { server_extra: "max_header_bytes: 128KiB, max_headers: 200".into(), ..Default::default() },
    )
    .await;
    let mut r = proxy.post("/v1/chat/completions", r#"{"model":"m1"}"#).header("x-big", "x".repeat(70 * 1024));
    for i in 0..120 {
        r = r.header(format!("x-h{i}"), "1");
    }
    assert_eq!(r.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_idle_client_connection_is_closed_after_the_keepalive_timeout() {
    let mock = Mock::start().await;
    let proxy =
        Proxy::start_with(&mock, Setup { server_extra: "keepalive_timeout: 1s".into(), ..Default::default() }).await;
    let addr = proxy.addr;
    let closed = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = r#"{"model":"m1","messages":[]}"#;
        write!(
            c,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = c.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        // Idle now: the proxy closes the connection after ~1 s (before our 10 s read timeout).
        let t = std::time::Instant::now();
        let read = c.read(&mut buf).map_err(|e| e.kind());
        (read, t.elapsed())
    })
    .await
    .unwrap();
    // Ok(0) is the proxy's close; a read timeout (10 s) would mean it kept the connection.
    assert_eq!(closed.0, Ok(0), "the proxy closed the idle connection (after {:?})", closed.1);
}
