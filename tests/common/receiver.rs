//! A webhook receiver on loopback for notification tests: records each POST (headers, body)
//! and answers 204, or accepts and never answers.

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One delivery as received: its headers (lower-case names) and body.
pub type Delivery = (Vec<(String, String)>, Vec<u8>);

#[derive(Clone, Default)]
pub struct Received(pub Arc<Mutex<Vec<Delivery>>>);

impl Received {
    pub fn events(&self) -> Vec<Value> {
        let all = self.0.lock().unwrap().clone();
        all.iter()
            .flat_map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["events"].as_array().unwrap().clone())
            .collect()
    }

    pub async fn wait_for(&self, kind: &str, key_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| e["type"] == kind && e["key_id"] == key_id) {
                return e;
            }
            assert!(Instant::now() < deadline, "no {kind} for {key_id}; got {:?}", self.events());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A webhook receiver on loopback: records each POST and answers 204, or (`hang`) accepts and
/// never answers.
pub async fn receiver(hang: bool) -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/pool?via=test", listener.local_addr().unwrap());
    let got = Received::default();
    let rec = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut tmp = [0u8; 8192];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    let mut hs = [httparse::EMPTY_HEADER; 32];
                    let mut req = httparse::Request::new(&mut hs);
                    req.parse(&buf[..head_end]).unwrap();
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).to_string()))
                        .collect();
                    assert_eq!(req.path, Some("/hooks/pool?via=test"));
                    let len: usize =
                        headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.parse().unwrap()).unwrap();
                    while buf.len() < head_end + len {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    rec.0.lock().unwrap().push((headers, body));
                    if s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}
