//! Token usage read from responses as they pass (SPEC §2.5), never holding them back: JSON
//! bodies are kept (bounded) until they end; SSE and NDJSON streams are scanned line by line,
//! and only lines that can carry usage are parsed. Understands OpenAI (`usage.prompt_tokens`,
//! `completion_tokens`, also in the final stream chunk), Anthropic (`usage.input_tokens`,
//! `output_tokens`, `message_start` / `message_delta` events) and Ollama (`prompt_eval_count`,
//! `eval_count` in the `done` object).

/// Longest JSON body kept for parsing; longer ones are not counted.
const MAX_JSON: usize = 1 << 20;
/// Longest single stream line kept; a longer one is skipped.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Lines,
}

#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    /// A JSON body's first chunk, held by reference: a body that comes in one chunk (most
    /// answers) is parsed where it lies, with no copy into `buf`.
    first: Option<bytes::Bytes>,
    buf: Vec<u8>,
    overflow: bool,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub model: Option<String>,
    /// A stream line was an error object (`{"error": …}`, or an SSE `event: error`'s data):
    /// the upstream failed after its 200 header.
    pub stream_error: bool,
}

impl UsageScanner {
    /// A scanner for a response of this content type, or None if it cannot carry usage.
    pub fn for_content_type(content_type: &[u8]) -> Option<UsageScanner> {
        let is = |prefix: &[u8]| {
            content_type.len() >= prefix.len() && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        let mode = if is(b"text/event-stream") || is(b"application/x-ndjson") {
            Mode::Lines
        } else if is(b"application/json") {
            Mode::Json
        } else {
            return None;
        };
        Some(UsageScanner {
            mode,
            first: None,
            buf: Vec::new(),
            overflow: false,
            prompt_tokens: None,
            completion_tokens: None,
            model: None,
            stream_error: false,
        })
    }

    pub fn is_stream(&self) -> bool {
        self.mode == Mode::Lines
    }

    /// `feed` for a chunk the caller holds as `Bytes`: a JSON body's first chunk is kept by
    /// reference, not copied.
    pub fn feed_bytes(&mut self, chunk: &bytes::Bytes) {
        if self.mode == Mode::Json && self.first.is_none() && self.buf.is_empty() && !self.overflow {
            if chunk.len() > MAX_JSON {
                self.overflow = true;
            } else if !chunk.is_empty() {
                self.first = Some(chunk.clone());
            }
            return;
        }
        self.feed(chunk);
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self.mode {
            Mode::Json => {
                if let Some(first) = self.first.take() {
                    self.buf.extend_from_slice(&first);
                }
                if self.buf.len() + chunk.len() > MAX_JSON {
                    self.overflow = true;
                    self.buf = Vec::new();
                } else if !self.overflow {
                    self.buf.extend_from_slice(chunk);
                }
            }
            Mode::Lines => {
                let mut rest = chunk;
                while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                    let (line, tail) = rest.split_at(nl);
                    if self.buf.is_empty() {
                        self.line(line);
                    } else {
                        self.buf.extend_from_slice(line);
                        let whole = std::mem::take(&mut self.buf);
                        self.line(&whole);
                        self.buf = whole;
                        self.buf.clear();
                    }
                    rest = &tail[1..];
                }
                if self.buf.len() + rest.len() <= MAX_LINE {
                    self.buf.extend_from_slice(rest);
                } else {
                    self.buf.clear();
                }
            }
        }
    }

    /// The response ended: parse what was kept.
    pub fn finish(&mut self) {
        if let Some(first) = self.first.take() {
            if !self.overflow {
                self.parse(&first);
            }
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        match self.mode {
            Mode::Json if !self.overflow => self.parse(&buf),
            Mode::Lines => self.line(&buf),
            _ => {}
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.trim_ascii();
        let line = line.strip_prefix(b"data:").map(<[u8]>::trim_ascii_start).unwrap_or(line);
        // Ollama reports a failure mid-stream as an NDJSON `{"error": "..."}` line under 200;
        // OpenAI-compatible servers as `data: {"error": {...}}`, Anthropic as `{"type":"error"…}`.
        if line.starts_with(b"{\"error\"") || line.starts_with(b"{\"type\":\"error\"") {
            self.stream_error = true;
            return;
        }
        // Parse only lines that can tell something new: usage counts, or the model until known
        // (OpenAI repeats "model" in every chunk; parsing each would cost ~0.5 µs a chunk).
        let wanted = contains(line, b"usage")
            || contains(line, b"eval_count")
            || (self.model.is_none() && contains(line, b"\"model\""));
        if !line.starts_with(b"{") || !wanted {
            return;
        }
        self.parse(line);
    }

    /// Parses one JSON object into just the fields usage lives in: the members that hold them
    /// are found by `members::each` and parsed alone; serde parses the whole document only
    /// when that scan gives up.
    fn parse(&mut self, bytes: &[u8]) {
        match UsageDoc::from_members(bytes) {
            Some(Ok(d)) => self.take_doc(d),
            Some(Err(())) => {} // a wanted member serde refuses: it refuses the document too
            None => {
                if let Ok(u) = serde_json::from_slice::<UsageDoc>(bytes) {
                    self.take_doc(u);
                }
            }
        }
    }

    fn take_doc(&mut self, d: UsageDoc) {
        let model = d.model.or_else(|| d.message.as_ref().and_then(|m| m.model.clone()));
        if self.model.is_none() {
            self.model = model;
        }
        for u in [d.usage, d.message.and_then(|m| m.usage)].into_iter().flatten() {
            if let Some(p) = u.prompt_tokens.or(u.input_tokens) {
                self.prompt_tokens = Some(p);
            }
            if let Some(c) = u.completion_tokens.or(u.output_tokens) {
                self.completion_tokens = Some(c);
            }
        }
        if let Some(p) = d.prompt_eval_count {
            self.prompt_tokens = Some(p);
        }
        if let Some(c) = d.eval_count {
            self.completion_tokens = Some(c);
        }
    }
}

#[derive(serde::Deserialize, Default, Debug, PartialEq)]
struct UsageDoc {
    model: Option<String>,
    usage: Option<UsageFields>,
    message: Option<MessageDoc>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
}

impl UsageDoc {
    /// The document from its wanted members alone: None when the member scan gives up (or a
    /// wanted member comes twice, which serde refuses), Err when serde refuses one of them.
    fn from_members(doc: &[u8]) -> Option<Result<UsageDoc, ()>> {
        fn put<T: serde::de::DeserializeOwned + Plain>(slot: &mut Option<T>, v: &[u8]) -> bool {
            if let Some(x) = Plain::read(v) {
                *slot = x;
                return true;
            }
            serde_json::from_slice::<Option<T>>(v).map(|x| *slot = x).is_ok()
        }
        let (mut d, mut seen, mut twice, mut refused) = (UsageDoc::default(), 0u8, false, false);
        super::members::each(doc, |key, v| {
            let bit = match key {
                b"model" => 1,
                b"usage" => 2,
                b"message" => 4,
                b"prompt_eval_count" => 8,
                b"eval_count" => 16,
                _ => return,
            };
            twice |= seen & bit != 0;
            seen |= bit;
            let ok = match bit {
                1 => put(&mut d.model, v),
                2 => put(&mut d.usage, v),
                4 => put(&mut d.message, v),
                8 => put(&mut d.prompt_eval_count, v),
                _ => put(&mut d.eval_count, v),
            };
            refused |= !ok;
        })?;
        if twice {
            return None;
        }
        Some(if refused { Err(()) } else { Ok(d) })
    }
}

/// A wanted member's value read without serde when it has its usual plain shape (a short
/// string, a count, an object of counts): `Some` is what serde would give, `None` hands the
/// value to serde. (About 0.9k fewer instructions per answer: benches/README.md, round 7.)
trait Plain: Sized {
    fn read(v: &[u8]) -> Option<Option<Self>>;
}

impl Plain for String {
    fn read(v: &[u8]) -> Option<Option<String>> {
        if v == b"null" {
            return Some(None);
        }
        super::members::plain_str(v).map(|s| Some(s.to_owned()))
    }
}

impl Plain for u64 {
    fn read(v: &[u8]) -> Option<Option<u64>> {
        if v == b"null" {
            return Some(None);
        }
        super::members::plain_u64(v).map(Some)
    }
}

impl Plain for UsageFields {
    /// An object whose counts are all plain (other members are skipped, as serde skips
    /// them); a count twice, or anything unusual, goes to serde.
    fn read(v: &[u8]) -> Option<Option<UsageFields>> {
        if v == b"null" {
            return Some(None);
        }
        let mut u =
            UsageFields { prompt_tokens: None, completion_tokens: None, input_tokens: None, output_tokens: None };
        let (mut seen, mut plain) = (0u8, true);
        super::members::each(v, |key, v| {
            let (bit, slot) = match key {
                b"prompt_tokens" => (1, &mut u.prompt_tokens),
                b"completion_tokens" => (2, &mut u.completion_tokens),
                b"input_tokens" => (4, &mut u.input_tokens),
                b"output_tokens" => (8, &mut u.output_tokens),
                _ => return,
            };
            plain &= seen & bit == 0;
            seen |= bit;
            match u64::read(v) {
                Some(n) => *slot = n,
                None => plain = false,
            }
        })?;
        plain.then_some(Some(u))
    }
}

impl Plain for MessageDoc {
    /// (Only Anthropic's stream start carries it: serde reads it.)
    fn read(_: &[u8]) -> Option<Option<MessageDoc>> {
        None
    }
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct MessageDoc {
    model: Option<String>,
    usage: Option<UsageFields>,
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct UsageFields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a scan of `chunks` finds; fed as slices and as `Bytes` (the proxy's way, which
    /// keeps a JSON body's first chunk uncopied), which must find the same.
    fn scan(ct: &str, chunks: &[&str]) -> (Option<u64>, Option<u64>, Option<String>) {
        let mut s = UsageScanner::for_content_type(ct.as_bytes()).unwrap();
        let mut b = UsageScanner::for_content_type(ct.as_bytes()).unwrap();
        for c in chunks {
            s.feed(c.as_bytes());
            b.feed_bytes(&bytes::Bytes::copy_from_slice(c.as_bytes()));
        }
        s.finish();
        b.finish();
        let found = (s.prompt_tokens, s.completion_tokens, s.model);
        assert_eq!((b.prompt_tokens, b.completion_tokens, b.model.clone()), found, "fed as Bytes");
        found
    }

    proptest::proptest! {
        /// The member scan reads the document serde reads, or refuses it where serde does. (On
        /// these objects no key comes twice, so the scan never has to hand over to serde.)
        #[test]
        fn the_member_scan_reads_what_serde_reads(
            doc in proptest::prop_oneof![crate::usage::members::tests::object(), crate::usage::members::tests::usage_like()]
        ) {
            let full = serde_json::from_str::<UsageDoc>(&doc).ok();
            match UsageDoc::from_members(doc.as_bytes()) {
                Some(Ok(d)) => proptest::prop_assert_eq!(Some(d), full),
                Some(Err(())) => proptest::prop_assert_eq!(full, None),
                None => proptest::prop_assert!(false, "the scan gave up on {}", doc),
            }
        }
    }

    /// Usage members the plain reads hand to serde: the document's answer is serde's.
    #[test]
    fn unusual_usage_members_are_read_as_serde_reads_them() {
        for doc in [
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1.5}}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":12345678901234567890,"completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":"3"}}"#,
            r#"{"usage":[1]}"#,
            r#"{"usage":null,"model":null,"eval_count":null}"#,
            r#"{"model":"caf\u00e9","usage":{"input_tokens":0,"output_tokens":0,"x":{"prompt_tokens":9}}}"#,
            r#"{"model":7}"#,
            r#"{"eval_count":01}"#,
        ] {
            let full = serde_json::from_str::<UsageDoc>(doc).ok();
            match UsageDoc::from_members(doc.as_bytes()) {
                Some(Ok(d)) => assert_eq!(Some(d), full, "{doc}"),
                Some(Err(())) => assert_eq!(full, None, "{doc}"),
                None => panic!("the scan gave up on {doc}"),
            }
        }
    }

    #[test]
    fn a_json_body_in_one_chunk_is_read_in_place_and_an_oversized_one_is_not_counted() {
        let body = r#"{"model":"m1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#;
        let mut s = UsageScanner::for_content_type(b"application/json").unwrap();
        s.feed_bytes(&bytes::Bytes::from_static(body.as_bytes()));
        assert!(s.buf.is_empty() && s.first.is_some());
        s.finish();
        assert_eq!((s.prompt_tokens, s.completion_tokens), (Some(3), Some(7)));
        // A first chunk kept by reference still counts toward the bound.
        let mut s = UsageScanner::for_content_type(b"application/json").unwrap();
        s.feed_bytes(&bytes::Bytes::from(vec![b' '; MAX_JSON - 10]));
        s.feed_bytes(&bytes::Bytes::from_static(body.as_bytes()));
        s.finish();
        assert_eq!((s.prompt_tokens, s.completion_tokens), (None, None));
    }

    #[test]
    fn openai_json_and_stream_split_across_chunks() {
        let body = r#"{"model":"m1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}"#;
        assert_eq!(scan("application/json", &[&body[..20], &body[20..]]), (Some(3), Some(7), Some("m1".into())));
        let sse =
            "data: {\"model\":\"m2\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usa";
        let sse2 = "ge\":{\"prompt_tokens\":5,\"completion_tokens\":9}}\n\ndata: [DONE]\n\n";
        assert_eq!(scan("text/event-stream", &[sse, sse2]), (Some(5), Some(9), Some("m2".into())));
    }

    #[test]
    fn anthropic_stream_events() {
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hello\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
        ];
        assert_eq!(scan("text/event-stream; charset=utf-8", &events), (Some(12), Some(42), Some("claude-x".into())));
    }

    #[test]
    fn ollama_ndjson_done_line_without_trailing_newline() {
        let lines = [
            "{\"model\":\"qwen3\",\"message\":{\"content\":\"a\"},\"done\":false}\n",
            "{\"done\":true,\"prompt_eval_count\":4,\"eval_count\":8}",
        ];
        assert_eq!(scan("application/x-ndjson", &lines), (Some(4), Some(8), Some("qwen3".into())));
    }

    #[test]
    fn an_error_line_mid_stream_is_seen() {
        let mut s = UsageScanner::for_content_type(b"application/x-ndjson").unwrap();
        s.feed(b"{\"model\":\"m\",\"message\":{\"content\":\"a\"},\"done\":false}\n{\"err");
        assert!(!s.stream_error);
        s.feed(b"or\":\"upstream overloaded\"}\n");
        assert!(s.stream_error);
        let mut s = UsageScanner::for_content_type(b"text/event-stream").unwrap();
        s.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n");
        assert!(s.stream_error);
        let mut s = UsageScanner::for_content_type(b"text/event-stream").unwrap();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"{\\\"error\\\": no\"}}]}\n\n");
        assert!(!s.stream_error, "content that quotes an error is not one");
    }

    #[test]
    fn other_types_and_garbage() {
        assert!(UsageScanner::for_content_type(b"text/plain").is_none());
        assert!(UsageScanner::for_content_type(b"Text/Event-Stream; charset=utf-8").is_some_and(|s| s.is_stream()));
        assert!(UsageScanner::for_content_type(b"app").is_none());
        assert_eq!(scan("application/json", &["{not json"]), (None, None, None));
        assert_eq!(scan("text/event-stream", &["data: {\"usage\": broken\n"]), (None, None, None));
    }
}
