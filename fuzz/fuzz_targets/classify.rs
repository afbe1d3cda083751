//! `classify` decides what an upstream answer means for the key that got it, from the status,
//! headers and a bounded peek of the body: the answer never depends on bytes past the peek, a
//! success status is always a success, and 429/402 always rate-limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ollama_pool::pool::outcome::ERROR_PEEK_BYTES;
use ollama_pool::pool::{classify, Outcome};

fuzz_target!(|data: &[u8]| {
    // [status: 2 bytes] [retry-after length] [retry-after value] [body]
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let (retry, body) = data[3..].split_at((data[2] as usize % 16).min(data.len() - 3));
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(retry) {
        if !retry.is_empty() {
            headers.insert(http::header::RETRY_AFTER, v);
        }
    }
    let whole = classify(status, &headers, Some(body));
    let peeked = classify(status, &headers, Some(&body[..body.len().min(ERROR_PEEK_BYTES)]));
    assert_eq!(whole, peeked);
    if status < 400 {
        assert_eq!(whole, Outcome::Success);
    }
    if status == 429 || status == 402 {
        assert!(matches!(whole, Outcome::RateLimited { .. }), "{status}: {whole:?}");
    }
});
