//! Which requests the proxy answers and how: the route family of a path (it picks the error
//! envelope) and the allow-list of forwarded paths.

use std::collections::HashSet;

/// The protocol a client speaks, decided by path; errors the proxy makes use its envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `/v1/*` except `/v1/messages`.
    OpenAi,
    /// `/v1/messages*`.
    Anthropic,
    /// `/api/*`.
    Ollama,
}

impl Family {
    pub fn of(path: &str) -> Option<Family> {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Some(Family::Anthropic)
        } else if path.starts_with("/v1/") {
            Some(Family::OpenAi)
        } else if path.starts_with("/api/") {
            Some(Family::Ollama)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::OpenAi => "openai",
            Family::Anthropic => "anthropic",
            Family::Ollama => "ollama",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    /// Forward upstream.
    Forward(Family),
    /// Under `/v1/` or `/api/` but not in the allow-list (e.g. `/api/pull`).
    NotAllowed(Family),
    /// Anything else.
    Unknown,
}

/// The forwarded paths: exact entries and `prefix/*` entries.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    /// (foldhash, seeded per process: std's SipHash cost more than the rest of the lookup)
    exact: HashSet<String, foldhash::fast::RandomState>,
    prefixes: Vec<String>,
}

impl AllowList {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> AllowList {
        let mut list = AllowList::default();
        for p in patterns {
            match p.as_ref().strip_suffix('*') {
                Some(prefix) => list.prefixes.push(prefix.to_string()),
                None => {
                    list.exact.insert(p.as_ref().to_string());
                }
            }
        }
        list
    }

    pub fn allows(&self, path: &str) -> bool {
        self.exact.contains(path) || self.prefixes.iter().any(|p| path.len() > p.len() && path.starts_with(p.as_str()))
    }

    pub fn resolve(&self, path: &str) -> Route {
        match path {
            "/healthz" => return Route::Healthz,
            "/readyz" => return Route::Readyz,
            _ => {}
        }
        match Family::of(path) {
            // Dot segments could walk out of an allowed prefix upstream (`/v1/models/../x`).
            Some(f) if has_dot_or_empty_segment(path) => Route::NotAllowed(f),
            Some(f) if self.allows(path) => Route::Forward(f),
            Some(f) => Route::NotAllowed(f),
            None => Route::Unknown,
        }
    }
}

/// Whether a segment of `path` starts with `.` or is empty (`/.`, `//`): one pass over a path
/// of a few dozen bytes (two substring searches, or `memchr` per slash, cost more there).
fn has_dot_or_empty_segment(path: &str) -> bool {
    path.as_bytes().windows(2).any(|w| w[0] == b'/' && matches!(w[1], b'.' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_ALLOWED_ROUTES;

    #[test]
    fn default_routes() {
        let a = AllowList::new(DEFAULT_ALLOWED_ROUTES);
        assert_eq!(a.resolve("/v1/chat/completions"), Route::Forward(Family::OpenAi));
        assert_eq!(a.resolve("/v1/messages"), Route::Forward(Family::Anthropic));
        assert_eq!(a.resolve("/api/chat"), Route::Forward(Family::Ollama));
        assert_eq!(a.resolve("/v1/models/llama3:8b"), Route::Forward(Family::OpenAi));
        assert_eq!(a.resolve("/v1/models/"), Route::NotAllowed(Family::OpenAi));
        assert_eq!(a.resolve("/v1/models/../files"), Route::NotAllowed(Family::OpenAi));
        for p in ["/v1/chat//completions", "/v1/models/.x", "/v1/models/./x", "/v1//", "/api/chat/."] {
            assert!(
                a.resolve(p) != Route::Forward(Family::OpenAi) && a.resolve(p) != Route::Forward(Family::Ollama),
                "{p}"
            );
            assert!(has_dot_or_empty_segment(p), "{p}");
        }
        for p in ["/v1/chat/completions", "/v1/models/llama3.1:8b", "/api/chat", "/"] {
            assert!(!has_dot_or_empty_segment(p), "{p}");
        }
        for p in ["/api/pull", "/api/delete", "/api/create", "/api/push", "/api/copy"] {
            assert_eq!(a.resolve(p), Route::NotAllowed(Family::Ollama), "{p}");
        }
        assert_eq!(a.resolve("/"), Route::Unknown);
        assert_eq!(a.resolve("/admin/keys"), Route::Unknown);
        assert_eq!(a.resolve("/healthz"), Route::Healthz);
    }
}
