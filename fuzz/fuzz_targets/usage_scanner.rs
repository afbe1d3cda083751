//! The usage scanner reads responses as they pass, in whatever chunks the network delivers:
//! for any body and any split (bodies well under its 64 KiB line limit), it finds the same
//! usage as when the body arrives whole.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ollama_pool::usage::UsageScanner;

fn scan(content_type: &str, chunks: &[&[u8]]) -> (Option<u64>, Option<u64>, Option<String>) {
    let mut s = UsageScanner::for_content_type(content_type.as_bytes()).unwrap();
    for c in chunks {
        s.feed(c);
    }
    s.finish();
    (s.prompt_tokens, s.completion_tokens, s.model.clone())
}

fuzz_target!(|data: &[u8]| {
    // [content type] [up to 4 cut positions] [body]
    let Some((&kind, rest)) = data.split_first() else { return };
    let content_type = ["text/event-stream", "application/x-ndjson", "application/json"][kind as usize % 3];
    let (cuts, body) = rest.split_at(rest.len().min(4));
    let mut at: Vec<usize> = cuts.iter().map(|&c| c as usize * body.len() / 255).collect();
    at.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for c in at {
        chunks.push(&body[from..c]);
        from = c;
    }
    chunks.push(&body[from..]);
    assert_eq!(scan(content_type, &chunks), scan(content_type, &[body]), "{content_type} split {chunks:?}");
});
