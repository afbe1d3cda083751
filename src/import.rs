//! Key-file parsing (SPEC §3.6), shared by `keys.files` at start-up, `POST /admin/keys/import`
//! and `ollama-pool keys import`. Pure: text in, keys and per-line problems out; no I/O.
//!
//! Formats, one entry per line (`#` comments and blank lines skipped; the key is the *last*
//! `----` field, the label the first when there are two or more):
//! `KEY`, `LABEL----KEY`, `email----password----session----KEY`,
//! `email----password----session----aid----KEY`; or JSON: `["k1", …]`, `[{"key": …, "label": …}]`,
//! `{"keys": [...]}`.

use crate::secret::Secret;
use serde::Deserialize;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub key: Secret,
    pub label: Option<String>,
    /// 1-based line (or array position for JSON) the key came from.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLine {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Distinct keys, in file order.
    pub keys: Vec<ParsedKey>,
    /// Entries repeating an earlier key of the same input.
    pub duplicates: usize,
    pub invalid: Vec<InvalidLine>,
}

/// Longest key accepted unless `keys.max_key_bytes` says otherwise. Real API keys are well
/// under 200 bytes; a megabyte "key" would be forwarded in every request's header (and an
/// upstream answers 431, which is not the key's fault class, so it would never be parked).
pub const DEFAULT_MAX_KEY_BYTES: usize = 512;

/// Why a string cannot be an API key. Never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("no key (empty last field)")]
    Empty,
    #[error("key is longer than {max} bytes (keys.max_key_bytes)")]
    TooLong { max: usize },
    #[error("key contains whitespace")]
    Whitespace,
    #[error("key contains characters other than printable ASCII (they cannot go in an HTTP header)")]
    NotPrintable,
    #[error("key is shorter than 8 characters")]
    TooShort,
}

/// Parses a key file or JSON key list; keys longer than `max_key_bytes` are invalid lines.
pub fn parse(text: &str, max_key_bytes: usize) -> Parsed {
    let body = text.trim_start_matches('\u{feff}');
    let trimmed = body.trim();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        // Lines the trim dropped, so a JSON error names the line of the file, not of the slice.
        let skipped = body[..body.len() - body.trim_start().len()].matches('\n').count();
        return parse_json(trimmed, skipped, max_key_bytes);
    }
    let mut out = Collector::new(max_key_bytes);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split("----").map(str::trim).collect();
        let key = fields[fields.len() - 1];
        let label = (fields.len() >= 2).then(|| fields[0]).filter(|l| !l.is_empty());
        out.push(i + 1, key, label);
    }
    out.parsed
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonEntry {
    Plain(String),
    Object {
        key: String,
        #[serde(default)]
        label: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonDoc {
    List(Vec<serde_json::Value>),
    Wrapped { keys: Vec<serde_json::Value> },
}

fn parse_json(text: &str, skipped_lines: usize, max_key_bytes: usize) -> Parsed {
    let mut out = Collector::new(max_key_bytes);
    let entries = match serde_json::from_str::<JsonDoc>(text) {
        Ok(JsonDoc::List(v)) | Ok(JsonDoc::Wrapped { keys: v }) => v,
        Err(e) => {
            out.parsed.invalid.push(InvalidLine {
                // serde reports line 0 when the syntax is fine but the shape is not.
                line: skipped_lines + e.line().max(1),
                reason: "not valid JSON: want [\"key\", …], [{\"key\": …, \"label\": …}] or {\"keys\": [...]}".into(),
            });
            return out.parsed;
        }
    };
    for (i, v) in entries.into_iter().enumerate() {
        match serde_json::from_value::<JsonEntry>(v) {
            Ok(JsonEntry::Plain(k)) => out.push(i + 1, k.trim(), None),
            Ok(JsonEntry::Object { key, label }) => {
                let label = label.as_deref().map(str::trim).filter(|l| !l.is_empty());
                out.push(i + 1, key.trim(), label)
            }
            Err(_) => out.parsed.invalid.push(InvalidLine {
                line: i + 1,
                reason: "entry is neither a string nor an object with a \"key\"".into(),
            }),
        }
    }
    out.parsed
}

/// The parse result so far, with what it needs to judge the next key.
struct Collector {
    parsed: Parsed,
    /// Hashes of the keys seen, to count duplicates.
    seen: HashSet<[u8; 32]>,
    max_key_bytes: usize,
}

impl Collector {
    fn new(max_key_bytes: usize) -> Collector {
        Collector { parsed: Parsed::default(), seen: HashSet::new(), max_key_bytes }
    }

    fn push(&mut self, line: usize, key: &str, label: Option<&str>) {
        if let Err(problem) = check_key(key, self.max_key_bytes) {
            self.parsed.invalid.push(InvalidLine { line, reason: problem.to_string() });
            return;
        }
        let key = Secret::new(key);
        if !self.seen.insert(key.sha256()) {
            self.parsed.duplicates += 1;
            return;
        }
        self.parsed.keys.push(ParsedKey { key, label: label.map(str::to_string), line });
    }
}

/// Whether `key` can be an API key: 8 to `max_key_bytes` bytes of printable ASCII, no spaces
/// or control characters (the rule for key files, imports and `POST /admin/keys`).
pub fn check_key(key: &str, max_key_bytes: usize) -> Result<(), KeyProblem> {
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if key.len() > max_key_bytes {
        return Err(KeyProblem::TooLong { max: max_key_bytes });
    }
    if key.chars().any(char::is_whitespace) {
        return Err(KeyProblem::Whitespace);
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyProblem::NotPrintable);
    }
    if key.len() < 8 {
        return Err(KeyProblem::TooShort);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_format() {
        let text = "\
# comment
plainkey0000000001

alice----labelledkey000002
a@b.c----pw----sess;x=1----fourfieldkey0003
a@b.c----pw----sess----aid----fivefieldkey0004
plainkey0000000001
bad key with spaces
x----
short
";
        let p = parse(text, DEFAULT_MAX_KEY_BYTES);
        let got: Vec<(&str, Option<&str>, usize)> =
            p.keys.iter().map(|k| (k.key.expose(), k.label.as_deref(), k.line)).collect();
        assert_eq!(
            got,
            vec![
                ("plainkey0000000001", None, 2),
                ("labelledkey000002", Some("alice"), 4),
                ("fourfieldkey0003", Some("a@b.c"), 5),
                ("fivefieldkey0004", Some("a@b.c"), 6),
            ]
        );
        assert_eq!(p.duplicates, 1);
        let lines: Vec<usize> = p.invalid.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![8, 9, 10]);
        assert!(p.invalid.iter().all(|i| !i.reason.contains("short") || i.line == 10));
    }

    #[test]
    fn five_fields_take_the_last_not_the_fourth() {
        let p = parse("e@x----pw----sess----aid123456----realkey123456\n", DEFAULT_MAX_KEY_BYTES);
        assert_eq!(p.keys[0].key.expose(), "realkey123456");
    }

    #[test]
    fn json_forms() {
        let p = parse(
            r#"["jsonkey00001", {"key": "jsonkey00002", "label": "bob"}, 7, "jsonkey00001"]"#,
            DEFAULT_MAX_KEY_BYTES,
        );
        assert_eq!(p.keys.len(), 2);
        assert_eq!(p.keys[1].label.as_deref(), Some("bob"));
        assert_eq!(p.duplicates, 1);
        assert_eq!(
            p.invalid,
            vec![InvalidLine { line: 3, reason: "entry is neither a string nor an object with a \"key\"".into() }]
        );
        assert_eq!(parse(r#"{"keys": ["jsonkey00003"]}"#, DEFAULT_MAX_KEY_BYTES).keys.len(), 1);
        assert_eq!(parse("[oops", DEFAULT_MAX_KEY_BYTES).invalid.len(), 1);
        // Well-formed JSON of the wrong shape, after blank lines: the line of the file, never 0.
        let lines: Vec<usize> = ["{}", "\n\n  {}", "\u{feff}\n[1"]
            .iter()
            .map(|t| parse(t, DEFAULT_MAX_KEY_BYTES).invalid[0].line)
            .collect();
        assert_eq!(lines, vec![1, 3, 2]);
    }

    #[test]
    fn key_rules_name_the_rule_never_the_key() {
        let long = "k".repeat(DEFAULT_MAX_KEY_BYTES + 1);
        let text = format!(
            "goodkey000001\n{long}\nlabel----has space\ttoo\nctl\u{7}key0001\nnon-ascii-ключ01\n{}\n",
            "k".repeat(512)
        );
        let p = parse(&text, DEFAULT_MAX_KEY_BYTES);
        assert_eq!(p.keys.len(), 2, "512 bytes is still a key");
        let reasons: Vec<(usize, &str)> = p.invalid.iter().map(|i| (i.line, i.reason.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (2, "key is longer than 512 bytes (keys.max_key_bytes)"),
                (3, "key contains whitespace"),
                (4, "key contains characters other than printable ASCII (they cannot go in an HTTP header)"),
                (5, "key contains characters other than printable ASCII (they cannot go in an HTTP header)"),
            ]
        );
        assert_eq!(parse(&long, 1024).keys.len(), 1, "the limit can be raised");
        assert_eq!(check_key(&"k".repeat(100_000), 512), Err(KeyProblem::TooLong { max: 512 }));
    }
}
