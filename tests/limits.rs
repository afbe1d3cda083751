//! Request header limits (SPEC §5: `server.max_header_bytes`, `server.max_headers` → 431 in the
//! route family's envelope, nothing forwarded), the request-header deadline and the idle
//! keep-alive timeout.

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

/// Reads until the proxy closes the connection (or 10 s pass); returns what arrived and when the
/// close came.
fn read_to_close(c: &mut std::net::TcpStream) -> (String, Option<Duration>) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into(), Some(t.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into(), Some(t.elapsed()))
            }
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
        }
    }
}

#[tokio::test]
async fn a_request_header_that_trickles_past_the_deadline_gets_408_and_the_connection_closes() {
    let mock = Mock::start().await;
    let proxy =
        Proxy::start_with(&mock, Setup { server_extra: "client_header_timeout: 1s".into(), ..Default::default() })
            .await;
    let addr = proxy.addr;
    let (trickled, silent) = tokio::task::spawn_blocking(move || {
        // One header line every 200 ms: each read is quick, the header as a whole never ends.
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = write!(w, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n");
            for i in 0..50 {
                std::thread::sleep(Duration::from_millis(200));
                if write!(w, "x-slow-{i}: 1\r\n").is_err() {
                    break;
                }
            }
        });
        let trickled = read_to_close(&mut c);
        writer.join().unwrap();
        // A connection that never sends a byte is held no longer.
        let mut quiet = std::net::TcpStream::connect(addr).unwrap();
        (trickled, read_to_close(&mut quiet))
    })
    .await
    .unwrap();
    for (what, (text, closed)) in [("trickled", trickled), ("silent", silent)] {
        assert!(text.starts_with("HTTP/1.1 408"), "{what}: {text:?}");
        assert!(text.contains("server.client_header_timeout"), "{what}: {text:?}");
        // Pingora alone would wait 60 s per read; 10 s is our read timeout.
        assert!(closed.is_some(), "{what}: the proxy closed the connection");
    }
    assert!(mock.requests().is_empty(), "nothing of an unfinished header was forwarded");
}

#[tokio::test]
async fn idle_time_and_slow_bodies_do_not_count_against_the_header_deadline() {
    let mock = Mock::start().await;
    let proxy =
        Proxy::start_with(&mock, Setup { server_extra: "client_header_timeout: 1s".into(), ..Default::default() })
            .await;
    let addr = proxy.addr;
    let answers = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = r#"{"model":"m1","messages":[{"role":"user","content":"slow body"}]}"#;
        let mut answers = Vec::new();
        for round in 0..2 {
            write!(
                c,
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            // The body takes 2 s, twice the header deadline.
            for piece in body.as_bytes().chunks(body.len() / 4 + 1) {
                std::thread::sleep(Duration::from_millis(500));
                c.write_all(piece).unwrap();
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = c.read(&mut buf).unwrap();
            answers.push(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string());
            if round == 0 {
                // Idle on the kept-alive connection for longer than the header deadline.
                std::thread::sleep(Duration::from_millis(2500));
            }
        }
        answers
    })
    .await
    .unwrap();
    assert_eq!(answers, vec!["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]);
    assert_eq!(mock.requests().len(), 2);
}
