//! Property tests (proptest): the parsers and deciders that untrusted input reaches — key files,
//! `${ENV}` expansion and config loading, the usage scanner under every chunk split, `classify`,
//! usage windows — never panic, and keep their promises for any input.

use ollama_pool::import::{parse, DEFAULT_MAX_KEY_BYTES};
use ollama_pool::pool::outcome::ERROR_PEEK_BYTES;
use ollama_pool::pool::{classify, Outcome, Window};
use ollama_pool::usage::UsageScanner;
use proptest::prelude::*;

const SSE: &str = "data: {\"model\":\"m1\",\"choices\":[{\"delta\":{\"content\":\"hel\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n\
                   data: {\"model\":\"m1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
                   data: [DONE]\n\n";
const NDJSON: &str = "{\"model\":\"m1\",\"message\":{\"content\":\"hel\"},\"done\":false}\n\
                      {\"message\":{\"content\":\"lo\"},\"done\":false}\n\
                      {\"done\":true,\"prompt_eval_count\":3,\"eval_count\":2}\n";

fn scan(content_type: &str, chunks: &[&[u8]]) -> (Option<u64>, Option<u64>, Option<String>) {
    let mut s = UsageScanner::for_content_type(content_type.as_bytes()).unwrap();
    for c in chunks {
        s.feed(c);
    }
    s.finish();
    (s.prompt_tokens, s.completion_tokens, s.model.clone())
}

/// Every reason the import parser gives, collected from inputs that trigger each one.
fn import_reasons() -> &'static std::collections::HashSet<String> {
    static ALL: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let lines = format!(
            "short\n{}\nlabel----\nhas space\t1234\nctl\u{7}key0001\nnon-ascii-ключ01\n",
            "k".repeat(DEFAULT_MAX_KEY_BYTES + 1)
        );
        let all: std::collections::HashSet<String> = [lines.as_str(), "[1]", "[oops"]
            .iter()
            .flat_map(|t| parse(t, DEFAULT_MAX_KEY_BYTES).invalid.into_iter().map(|i| i.reason))
            .collect();
        assert_eq!(all.len(), 7, "{all:?}");
        all
    })
}

/// `body` cut at the given (sorted, deduplicated) positions.
fn split<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut from = 0;
    for &c in cuts {
        out.push(&body[from..c]);
        from = c;
    }
    out.push(&body[from..]);
    out
}

#[test]
fn usage_scanner_gives_the_same_answer_for_every_single_and_double_split() {
    for (ct, body, want) in [
        ("text/event-stream", SSE, (Some(5), Some(2), Some("m1".to_string()))),
        ("application/x-ndjson", NDJSON, (Some(3), Some(2), Some("m1".to_string()))),
    ] {
        let b = body.as_bytes();
        assert_eq!(scan(ct, &[b]), want);
        for i in 0..=b.len() {
            assert_eq!(scan(ct, &split(b, &[i])), want, "{ct} split at {i}");
            for j in (i..=b.len()).step_by(7) {
                assert_eq!(scan(ct, &split(b, &[i, j])), want, "{ct} split at {i}, {j}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn usage_scanner_is_split_invariant(mut cuts in proptest::collection::vec(0usize..=SSE.len(), 0..40), ndjson: bool) {
        let (ct, body) = if ndjson { ("application/x-ndjson", NDJSON) } else { ("text/event-stream", SSE) };
        cuts.retain(|&c| c <= body.len());
        cuts.sort_unstable();
        cuts.dedup();
        let b = body.as_bytes();
        prop_assert_eq!(scan(ct, &split(b, &cuts)), scan(ct, &[b]));
    }

    #[test]
    fn usage_scanner_survives_any_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        for ct in ["text/event-stream", "application/x-ndjson", "application/json"] {
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let _ = scan(ct, &refs);
        }
    }

    #[test]
    fn import_finds_exactly_the_keys_written_in_any_format(
        // A key holding the separator `----` cannot be written in the line formats (JSON can).
        keys in proptest::collection::vec("[A-Za-z0-9_.-]{8,64}".prop_filter("no ----", |k| !k.contains("----")), 1..30),
        formats in proptest::collection::vec(0u8..4, 30),
    ) {
        let mut text = String::from("# generated\n");
        let mut distinct: Vec<String> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match formats[i] {
                0 => text.push_str(&format!("{k}\n")),
                1 => text.push_str(&format!("label{i}----{k}\n")),
                2 => text.push_str(&format!("u{i}@x.io----pw----sess----{k}\n\n")),
                _ => text.push_str(&format!("u{i}@x.io----pw----sess----aid{i}----{k}\n")),
            }
            if !distinct.contains(k) {
                distinct.push(k.clone());
            }
        }
        let p = parse(&text, DEFAULT_MAX_KEY_BYTES);
        let found: Vec<String> = p.keys.iter().map(|k| k.key.expose().to_string()).collect();
        prop_assert_eq!(found, distinct.clone());
        prop_assert_eq!(p.duplicates, keys.len() - distinct.len());
        prop_assert!(p.invalid.is_empty());
    }

    #[test]
    fn import_never_panics_nor_quotes_a_line(text in prop_oneof![
        "\\PC{0,400}",
        // Text that takes the JSON path: mostly JSON punctuation, rarely well formed.
        "\u{feff}?[ \n]{0,3}[\\[{][\\[\\]{}\",:a-z0-9 \n]{0,200}",
    ]) {
        let p = parse(&text, DEFAULT_MAX_KEY_BYTES);
        let lines = text.lines().count().max(1);
        // A JSON entry is numbered by its array position, which may exceed the line count.
        let json = matches!(text.trim_start_matches('\u{feff}').trim_start().chars().next(), Some('[' | '{'));
        for bad in &p.invalid {
            prop_assert!(bad.line >= 1, "line {} of {}", bad.line, lines);
            prop_assert!(json || bad.line <= lines, "line {} of {}", bad.line, lines);
            // Never text from the input (a bad line may hold a secret): one of the fixed reasons.
            prop_assert!(import_reasons().contains(&bad.reason), "a reason made from the input: {:?}", bad.reason);
        }
        for k in &p.keys {
            prop_assert!(k.key.expose().len() >= 8 && k.key.expose().bytes().all(|b| b.is_ascii_graphic()));
        }
    }

    #[test]
    fn env_expansion_replaces_exactly_the_variables(
        before in "[a-z :/.]{0,20}", value in "[A-Za-z0-9 ._/-]{0,30}", after in "[a-z :/.]{0,20}",
    ) {
        let env = |name: &str| (name == "PROP_VAR").then(|| value.clone());
        let yaml = format!("upstream: {{url: 'https://ollama.com'}}\nclients: {{tokens: [{{name: a, token: '{before}${{PROP_VAR}}{after}-0123456789abcdefghij'}}]}}\n");
        let cfg = ollama_pool::config::parse(&yaml, &env).unwrap();
        prop_assert_eq!(cfg.clients.tokens[0].token.expose(), format!("{before}{value}{after}-0123456789abcdefghij"));
        let with_default = yaml.replace("${PROP_VAR}", "${PROP_UNSET:-fallback}");
        let cfg = ollama_pool::config::parse(&with_default, &env).unwrap();
        prop_assert_eq!(cfg.clients.tokens[0].token.expose(), format!("{before}fallback{after}-0123456789abcdefghij"));
        let missing = yaml.replace("PROP_VAR", "PROP_UNSET");
        let errors = ollama_pool::config::parse(&missing, &env).unwrap_err();
        prop_assert!(errors.iter().any(|e| e.path == "clients.tokens[0].token" && e.message.contains("PROP_UNSET")));
    }

    #[test]
    fn config_loading_never_panics(text in "\\PC{0,300}") {
        let _ = ollama_pool::config::parse(&text, &|_| None);
    }

    #[test]
    fn classify_never_depends_on_more_than_the_peeked_body(
        status in 100u16..600, retry in proptest::option::of(0u32..100_000), body in proptest::collection::vec(any::<u8>(), 0..(2 * ERROR_PEEK_BYTES)),
        usage_limit: bool,
    ) {
        let mut headers = http::HeaderMap::new();
        if let Some(r) = retry {
            headers.insert(http::header::RETRY_AFTER, r.into());
        }
        let mut body = body;
        if usage_limit {
            body.splice(0..0, b"weekly usage limit reached".iter().copied());
        }
        let whole = classify(status, &headers, Some(&body));
        let peeked = classify(status, &headers, Some(&body[..body.len().min(ERROR_PEEK_BYTES)]));
        prop_assert_eq!(whole, peeked);
        if status < 400 {
            prop_assert_eq!(whole, Outcome::Success);
        }
        if status == 429 || status == 402 {
            let is_rate_limited = matches!(whole, Outcome::RateLimited { .. });
            prop_assert!(is_rate_limited);
        }
    }

    #[test]
    fn a_window_resets_once_per_period_and_always_in_the_future(now in 0u64..4_102_444_800_000) {
        for w in [Window::Hourly, Window::Session, Window::Weekly, Window::Monthly] {
            let reset = w.next_reset(now);
            prop_assert!(reset > now, "{w:?}");
            prop_assert_eq!(w.next_reset(reset - 1), reset, "{:?}: every moment up to the reset points at it", w);
            prop_assert!(w.next_reset(reset) > reset, "{w:?}");
            prop_assert!(reset - now <= 31 * 86_400_000, "{w:?}: at most a month away");
        }
    }
}
