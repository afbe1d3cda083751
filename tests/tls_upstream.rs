//! HTTPS upstreams: SNI, certificate and host-name verification (against a CA we control),
//! and the refusal to talk to an upstream whose certificate does not verify.

mod common;

use common::{self_signed_localhost, Proxy, Setup, KEYS};
use openssl::ssl::{NameType, SslAcceptor, SslMethod};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// (SNI, Host header, Authorization) of one request served.
type Seen = (Option<String>, String, String);

struct TlsMock {
    port: u16,
    cert_pem: Vec<u8>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A blocking one-connection-at-a-time HTTPS server answering every request with chat JSON.
fn start_tls_mock() -> TlsMock {
    let (cert, key) = self_signed_localhost();
    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acc.set_private_key(&key).unwrap();
    acc.set_certificate(&cert).unwrap();
    let acc = acc.build();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(mut tls) = acc.accept(stream) else { continue }; // failed handshakes are the point of one test
            let sni = tls.ssl().servername(NameType::HOST_NAME).map(str::to_string);
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_string())
                    })
                    .unwrap_or_default()
            };
            let len: usize = header("content-length").parse().unwrap_or(0);
            let body_start = head.find("\r\n\r\n").map(|i| i + 4).unwrap_or(buf.len());
            while buf.len() < body_start + len {
                match tls.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            s.lock().unwrap().push((sni, header("host"), header("authorization")));
            let body = common::mock::CHAT_JSON;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(resp.as_bytes());
            let _ = tls.shutdown();
        }
    });
    TlsMock { port, cert_pem: cert.to_pem().unwrap(), seen }
}

async fn proxy_for(mock: &TlsMock, upstream_extra: &str) -> (Proxy, common::Mock) {
    // The plain mock gets no traffic (upstream.url points at the TLS mock); Setup wants one.
    let plain = common::Mock::start().await;
    let setup = Setup {
        keys: vec![KEYS[0], KEYS[1]],
        // "localhost" must be the name verified and sent as SNI, while the address is pinned.
        url: Some(format!("https://localhost:{}", mock.port)),
        addresses: vec![format!("127.0.0.1:{}", mock.port)],
        upstream_extra: upstream_extra.to_string(),
        ..Default::default()
    };
    (Proxy::start_with(&plain, setup).await, plain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_sni_and_verified_certificate() {
    let mock = start_tls_mock();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &mock.cert_pem).unwrap();
    let (proxy, _plain) = proxy_for(&mock, &format!("ca_file: \"{}\"", ca.display())).await;
    let resp = proxy.post("/v1/chat/completions", r#"{"model":"m1","messages":[]}"#).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), common::mock::CHAT_JSON);
    let seen = mock.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (sni, host, auth) = &seen[0];
    assert_eq!(sni.as_deref(), Some("localhost"), "SNI is the URL's host name");
    assert_eq!(host, &format!("localhost:{}", mock.port));
    assert_eq!(auth, &format!("Bearer {}", KEYS[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_certificate_is_refused() {
    let mock = start_tls_mock();
    let (proxy, _plain) = proxy_for(&mock, "").await;
    let resp = proxy.post("/v1/chat/completions", r#"{"model":"m1","messages":[]}"#).send().await.unwrap();
    assert_eq!(resp.status(), 502, "a self-signed certificate must not verify against the system store");
    assert!(mock.seen.lock().unwrap().is_empty(), "no request went over the unverified connection");
}
