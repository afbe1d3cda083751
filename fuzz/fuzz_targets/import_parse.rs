//! Key files and JSON key lists (`keys.files`, `POST /admin/keys/import`): any text parses, every
//! key found can go in an HTTP header, and every problem is reported with a line and one of the
//! fixed reasons — never with text taken from the input (a bad line may hold a secret).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ollama_pool::import::{parse, DEFAULT_MAX_KEY_BYTES};
use std::collections::HashSet;
use std::sync::OnceLock;

/// Every reason the parser can give, collected from inputs that trigger each one.
fn reasons() -> &'static HashSet<String> {
    static ALL: OnceLock<HashSet<String>> = OnceLock::new();
    ALL.get_or_init(|| {
        let lines = format!(
            "short\n{}\nlabel----\nhas space\t1234\nctl\u{7}key0001\nnon-ascii-ключ01\n",
            "k".repeat(DEFAULT_MAX_KEY_BYTES + 1)
        );
        let mut all: HashSet<String> = HashSet::new();
        for text in [lines.as_str(), "[1]", "[oops"] {
            all.extend(parse(text, DEFAULT_MAX_KEY_BYTES).invalid.into_iter().map(|i| i.reason));
        }
        assert_eq!(all.len(), 7, "{all:?}");
        all
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let p = parse(&text, DEFAULT_MAX_KEY_BYTES);
    for k in &p.keys {
        let key = k.key.expose();
        assert!(key.len() >= 8 && key.len() <= DEFAULT_MAX_KEY_BYTES, "key of {} bytes", key.len());
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "a key that cannot go in a header");
        assert!(k.line >= 1);
    }
    for bad in &p.invalid {
        assert!(bad.line >= 1, "line 0");
        assert!(reasons().contains(&bad.reason), "a reason made from the input: {:?}", bad.reason);
    }
});
