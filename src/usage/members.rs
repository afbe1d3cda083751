//! The members of a JSON object, found without parsing what they hold: what the request path
//! needs from a body is one or two top-level fields (`model`, `usage`), and a full parse of a
//! chat answer or a long prompt spends most of its time on text it then drops. The skip jumps
//! from quote to quote (`memchr`) and counts brackets; each wanted value is then parsed alone
//! by serde.
//!
//! The scan is a shortcut, not a second parser: it gives up (None) on anything it does not
//! plainly understand — not one object, an escaped key, a wanted key twice, a value it cannot
//! skip — and the caller then parses the whole document with serde as before. On well-formed
//! JSON both ways give the same answer (tested against serde). On malformed JSON whose
//! structure holds (an invalid number or escape inside a member nobody wants), the scan may
//! still read the wanted members where serde refused the whole document.

/// Calls `f(key, value)` for each member of the object that `doc` is (key without its quotes,
/// value as raw JSON), in order. None if `doc` is not plainly one object: the caller falls
/// back to a full parse.
pub(crate) fn each<'a>(doc: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) -> Option<()> {
    let mut i = skip_ws(doc, 0);
    if doc.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(doc, i + 1);
    if doc.get(i) == Some(&b'}') {
        return (skip_ws(doc, i + 1) == doc.len()).then_some(());
    }
    loop {
        if doc.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(doc, i)?;
        let key = &doc[i + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None; // an escaped name: serde decodes it
        }
        i = skip_ws(doc, key_end);
        if doc.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(doc, i + 1);
        let end = value_end(doc, start)?;
        f(key, &doc[start..end]);
        i = skip_ws(doc, end);
        match doc.get(i) {
            Some(b',') => i = skip_ws(doc, i + 1),
            Some(b'}') => return (skip_ws(doc, i + 1) == doc.len()).then_some(()),
            _ => return None,
        }
    }
}

/// A value in the two shapes a wanted member nearly always has, read without serde: a string
/// with no escape and no control character (its text), and a plain unsigned integer. None for
/// anything else (an escape, a sign, a fraction, an exponent, a leading zero, more than 19
/// digits): the caller then asks serde, whose answer stands. `null` is the caller's to check.
pub(crate) fn plain_str(v: &[u8]) -> Option<&str> {
    let text = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if text.iter().any(|&b| b == b'\\' || b == b'"' || b < 0x20) {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// See [`plain_str`].
pub(crate) fn plain_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || (v[0] == b'0' && v.len() > 1) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

fn skip_ws(doc: &[u8], mut i: usize) -> usize {
    while matches!(doc.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Just past the string that opens at `doc[at]` (a quote): the next quote not escaped, i.e.
/// after an even run of backslashes (so a prompt's many `\n` do not stop the search).
///
/// Most strings in a chat body are short (names, roles, ids, a model), where `memchr`'s set-up
/// costs more than the search: their first [`SHORT_STRING`] bytes are searched a word (8
/// bytes) at a time. A longer string (a prompt, an answer) then jumps with `memchr`. (Inlined:
/// out of line, saving and restoring registers cost as much as the search.)
#[inline(always)]
fn string_end(doc: &[u8], at: usize) -> Option<usize> {
    let from = at + 1;
    let ends = |q: usize| doc[from..q].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0;
    let mut i = from;
    while i - from < SHORT_STRING {
        let Some(word) = doc.get(i..i + 8) else { break };
        let quotes = zero_bytes(u64::from_le_bytes(word.try_into().unwrap()) ^ (u64::from(b'"') * LOW_BITS));
        if quotes == 0 {
            i += 8;
            continue;
        }
        // The lowest flagged byte is a quote (only bytes above a real match can be false).
        let q = i + (quotes.trailing_zeros() / 8) as usize;
        if ends(q) {
            return Some(q + 1);
        }
        i = q + 1;
    }
    loop {
        i += memchr::memchr(b'"', doc.get(i..)?)?;
        if ends(i) {
            return Some(i + 1);
        }
        i += 1;
    }
}

/// How much of a string [`string_end`] searches a word at a time before it uses `memchr`.
const SHORT_STRING: usize = 32;
const LOW_BITS: u64 = 0x0101_0101_0101_0101;

/// The high bit of each zero byte of `x` (and perhaps of bytes above the lowest zero byte).
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LOW_BITS) & !x & (LOW_BITS << 7)
}

/// Just past the value that starts at `doc[at]`.
fn value_end(doc: &[u8], at: usize) -> Option<usize> {
    match *doc.get(at)? {
        b'"' => string_end(doc, at),
        b'{' | b'[' => {
            // Which brackets are open, as bits (1: `{`), so `{]` is refused; deeper than 64
            // gives up. Strings are skipped whole, so brackets inside them do not count.
            let (mut open, mut depth) = (0u64, 0u32);
            let mut i = at;
            loop {
                let b = *doc.get(i)?;
                match b {
                    b'"' => {
                        i = string_end(doc, i)?;
                        continue;
                    }
                    b'{' | b'[' if depth < 64 => {
                        open = open << 1 | u64::from(b == b'{');
                        depth += 1;
                    }
                    b'{' | b'[' => return None,
                    b'}' | b']' => {
                        if depth == 0 || (open & 1 == 1) != (b == b'}') {
                            return None;
                        }
                        open >>= 1;
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            // A number, true, false or null: up to the next delimiter.
            let n = doc[at..].iter().position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
            let end = at + n.unwrap_or(doc.len() - at);
            (end > at).then_some(end)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const KEYS: &[&str] = &[
        "model",
        "usage",
        "message",
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "eval_count",
        "prompt_eval_count",
        "choices",
        "content",
        "x",
    ];

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0u64..1000).prop_map(Value::from),
            (-1000i64..0).prop_map(Value::from),
            Just(Value::from(1.5)),
            // Quotes, backslashes, brackets and non-ASCII inside strings: what the skip must get past.
            // Both sides of `string_end`'s word search: up to 40 characters, escapes anywhere.
            "[a-z\"\\\\{}\\[\\],: é\n]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    /// Any JSON object serde writes (compact or pretty), with usage-like members in it.
    pub(crate) fn object() -> impl Strategy<Value = String> {
        (proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..7), any::<bool>()).prop_map(
            |(m, pretty)| {
                let v = Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
                if pretty {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    serde_json::to_string(&v).unwrap()
                }
            },
        )
    }

    /// A JSON object with the members usage lives in, well typed (so serde reads it, and a
    /// wrong value shows), among others of any kind.
    pub(crate) fn usage_like() -> impl Strategy<Value = String> {
        // (Any u64 too: past 19 digits the plain read hands the count to serde.)
        let count =
            || prop_oneof![Just(Value::Null), (0u64..10_000).prop_map(Value::from), any::<u64>().prop_map(Value::from)];
        let counts = proptest::collection::vec(
            (
                proptest::sample::select(
                    &["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "x"][..],
                ),
                count(),
            ),
            0..4,
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
        let name = prop_oneof![Just(Value::Null), "[a-z:\"é]{1,8}".prop_map(Value::String)];
        let message = (name.clone(), counts.clone()).prop_map(|(m, u)| serde_json::json!({"model": m, "usage": u}));
        let member = prop_oneof![
            name.prop_map(|v| ("model", v)),
            counts.prop_map(|v| ("usage", v)),
            message.prop_map(|v| ("message", v)),
            count().prop_map(|v| ("prompt_eval_count", v)),
            count().prop_map(|v| ("eval_count", v)),
            (proptest::sample::select(&["choices", "id", "x"][..]), value()),
        ];
        proptest::collection::vec(member, 0..7).prop_map(|m| {
            serde_json::to_string(&Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())).unwrap()
        })
    }

    /// The members serde sees, as (key, value) pairs.
    fn serde_members(doc: &str) -> Vec<(String, Value)> {
        let v: serde_json::Map<String, Value> = serde_json::from_str(doc).unwrap();
        v.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// On any object serde writes, the scan finds the members serde reads, with the same
        /// values; on any cut of it, it finds nothing (the caller then asks serde, which refuses).
        #[test]
        fn the_scan_finds_what_serde_finds_and_gives_up_on_a_cut(doc in object(), cut in 0usize..400) {
            let mut found = Vec::new();
            let scanned = each(doc.as_bytes(), |k, v| {
                found.push((String::from_utf8(k.to_vec()).unwrap(), serde_json::from_slice::<Value>(v).unwrap()));
            });
            prop_assert_eq!(scanned, Some(()));
            let mut want = serde_members(&doc);
            found.sort_by(|a, b| a.0.cmp(&b.0));
            want.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(found, want);
            let cut = cut.min(doc.len().saturating_sub(1));
            if doc.is_char_boundary(cut) && doc[..cut].trim_end() != doc.trim_end() {
                prop_assert_eq!(each(&doc.as_bytes()[..cut], |_, _| {}), None, "cut at {}", cut);
            }
        }

        /// The request's model comes out as serde alone gives it (the answer's usage: in
        /// `usage::scan`'s tests).
        #[test]
        fn the_model_matches_a_full_parse(doc in object()) {
            #[derive(serde::Deserialize)]
            struct Probe { model: Option<String> }
            let full = serde_json::from_str::<Probe>(&doc).ok().and_then(|p| p.model);
            let scanned = crate::proxy::requested_model(doc.as_bytes());
            prop_assert_eq!(scanned.as_deref(), full.as_deref());
        }
    }

    proptest! {
        /// What the plain reads give, serde gives: any JSON value, and any number's text.
        #[test]
        fn plain_values_read_as_serde_reads_them(v in value(), n in any::<u64>(), f in any::<f64>(), i in any::<i64>()) {
            let texts = [serde_json::to_string(&v).unwrap(), n.to_string(), format!("{f:?}"), i.to_string(), format!("0{n}")];
            for t in &texts {
                if let Some(s) = plain_str(t.as_bytes()) {
                    prop_assert_eq!(Some(s.to_string()), serde_json::from_str::<String>(t).ok(), "{}", t);
                }
                if let Some(x) = plain_u64(t.as_bytes()) {
                    prop_assert_eq!(Some(x), serde_json::from_str::<u64>(t).ok(), "{}", t);
                }
            }
            prop_assert_eq!(plain_u64(n.to_string().as_bytes()).is_some(), n < 10u64.pow(19));
        }
    }

    #[test]
    fn plain_values_leave_the_unusual_to_serde() {
        assert_eq!(plain_str(br#""qwen3:8b""#), Some("qwen3:8b"));
        assert_eq!(plain_str(r#""modèle""#.as_bytes()), Some("modèle"));
        assert_eq!(plain_str(br#""""#), Some(""));
        for v in [&br#""a\nb""#[..], b"\"a\tb\"", b"\"", b"x", b"\"\xff\"", b"null", b"\"a\"b", b"\"a\"b\""] {
            assert_eq!(plain_str(v), None, "{}", String::from_utf8_lossy(v));
        }
        assert_eq!(plain_u64(b"0"), Some(0));
        assert_eq!(plain_u64(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        for v in ["", "01", "-1", "-0", "1.0", "1e3", "18446744073709551615", "1 ", "null", "\"1\""] {
            assert_eq!(plain_u64(v.as_bytes()), None, "{v}");
        }
    }

    /// Every place an escape or the end can sit against the word search's words and end, and the
    /// `memchr` jump after it.
    #[test]
    fn string_end_across_the_word_search() {
        for k in 0..2 * SHORT_STRING + 2 {
            // (`#` is `"` + 1: after a quote, the word trick may flag it too.)
            for escape in [r#"\""#, r"\\", r"\n", r#"\\\""#, r##"\"#"##] {
                // `"aaa…<escape>bb"x`: the string ends at the last quote, whatever k is.
                let doc = format!("\"{}{escape}bb\"x", "a".repeat(k));
                assert_eq!(string_end(doc.as_bytes(), 0), Some(doc.len() - 1), "{doc}");
                // Cut before its closing quote: no end.
                assert_eq!(string_end(&doc.as_bytes()[..doc.len() - 2], 0), None, "{doc}");
            }
            // `"aaa…\\"`: an escaped backslash, then the quote that ends it.
            let doc = format!("\"{}\\\\\"", "a".repeat(k));
            assert_eq!(string_end(doc.as_bytes(), 0), Some(doc.len()), "{doc}");
            // Ends on a lone backslash: no end.
            let doc = format!("\"{}\\", "a".repeat(k));
            assert_eq!(string_end(doc.as_bytes(), 0), None, "{doc}");
        }
    }

    #[test]
    fn the_scan_gives_up_on_what_it_does_not_plainly_understand() {
        for doc in [
            "",
            "[]",
            r#"{"a":1"#,
            r#"{"a":1}x"#,
            r#"{"a":{]}"#,
            r#"{"a":[}]}"#,
            r#"{"mod\u0065l":"x"}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":"unterminated}"#,
        ] {
            assert_eq!(each(doc.as_bytes(), |_, _| {}), None, "{doc}");
        }
        assert_eq!(each(b" { } ", |_, _| {}), Some(()));
        // A key twice: serde refuses the document, so the model is not taken from either.
        assert_eq!(crate::proxy::requested_model(br#"{"model":"a","model":"b"}"#), None);
        // An escaped key: serde decodes it, so the fallback still finds the model.
        assert_eq!(crate::proxy::requested_model(br#"{"mod\u0065l":"q"}"#).as_deref(), Some("q"));
        assert_eq!(
            crate::proxy::requested_model(br#"{"messages":[{"content":"{\"model\":\"no\"}"}],"model":"yes"}"#)
                .as_deref(),
            Some("yes")
        );
    }
}
