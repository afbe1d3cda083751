//! A TLS listener (`listen: [{address, tls: {cert, key}}]`): requests are served over HTTPS, and
//! the request-header deadline (`server.client_header_timeout`) holds on the decrypted stream.

mod common;

use common::{self_signed_localhost, Mock, Proxy, Setup, TOKEN};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn connect(addr: SocketAddr) -> SslStream<TcpStream> {
    let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
    c.set_verify(SslVerifyMode::NONE); // our own self-signed certificate
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.build().connect("localhost", tcp).unwrap()
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// Everything the proxy sends until it closes (or 10 s pass: `None`).
fn read_to_close(s: &mut SslStream<TcpStream>) -> (String, Option<Duration>) {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into(), Some(t.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if timed_out(&e) => return (String::from_utf8_lossy(&got).into(), None),
            Err(_) => return (String::from_utf8_lossy(&got).into(), Some(t.elapsed())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requests_are_served_and_a_trickled_header_still_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_localhost();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let mock = Mock::start().await;
    let proxy = Proxy::start_with(
        &mock,
        Setup {
            tls_listener: Some((cert_path, key_path)),
            server_extra: "client_header_timeout: 1s".into(),
            ..Default::default()
        },
    )
    .await;
    let addr = proxy.addr;
    let (answer, trickled) = tokio::task::spawn_blocking(move || {
        let mut s = connect(addr);
        let body = r#"{"model":"m1","messages":[]}"#;
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let answer = read_to_close(&mut s).0;

        // One header line every 200 ms, over TLS: the deadline counts decrypted header bytes.
        let mut s = connect(addr);
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n").unwrap();
        s.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for i in 0..50 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if timed_out(&e) => {}
                Err(_) => break,
            }
            if write!(s, "x-slow-{i}: 1\r\n").is_err() {
                break;
            }
        }
        (answer, (String::from_utf8_lossy(&got).to_string(), started.elapsed()))
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(common::mock::CHAT_JSON), "{answer}");
    assert!(trickled.0.starts_with("HTTP/1.1 408"), "{:?}", trickled.0);
    // 50 rounds of 200 ms would be 10 s: the proxy closed long before.
    assert!(trickled.1 < Duration::from_secs(8), "closed after {:?}", trickled.1);
    assert_eq!(mock.requests().len(), 1, "only the complete request reached the upstream");
}
