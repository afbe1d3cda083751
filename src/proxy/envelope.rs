//! Errors the proxy itself answers (SPEC §2.3), each in the envelope of the route family:
//! OpenAI `{"error":{"message","type","code"}}`, Anthropic `{"type":"error","error":{…}}`,
//! Ollama `{"error":"…"}`. Messages are fixed text: never a secret, never upstream internals.

use super::routes::Family;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Unauthorized,
    NotFound,
    BodyTooLarge,
    HeadersTooLarge,
    BadRequest,
    /// The client stopped sending its body.
    RequestTimeout,
    /// The client's token may not use the requested model.
    ModelNotAllowed,
    /// The client is over its own requests-per-minute limit.
    ClientRateLimited,
    /// The client token has used up one of its token budgets.
    BudgetExhausted(crate::usage::BudgetKind),
    /// No key can serve the request now.
    NoUsableKey,
    /// The upstream could not be reached / broke before answering, on every attempt.
    UpstreamFailed,
    UpstreamTimeout,
    /// The upstream host name has no known address yet.
    UpstreamUnresolved,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub kind: ErrorKind,
    /// Seconds until it makes sense to try again (503 and 429).
    pub retry_after: Option<Duration>,
    /// The model the request asked for, when the error is about it (named in the message).
    pub model: Option<std::sync::Arc<str>>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind) -> ProxyError {
        ProxyError { kind, retry_after: None, model: None }
    }

    pub fn retry_after(mut self, d: Option<Duration>) -> ProxyError {
        self.retry_after = d;
        self
    }

    pub fn about_model(mut self, model: Option<std::sync::Arc<str>>) -> ProxyError {
        self.model = model;
        self
    }

    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::BadRequest => 400,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::ModelNotAllowed => 403,
            ErrorKind::ClientRateLimited | ErrorKind::BudgetExhausted(_) => 429,
            ErrorKind::NoUsableKey => 503,
            ErrorKind::UpstreamFailed | ErrorKind::UpstreamUnresolved => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::Internal => 500,
        }
    }

    fn message(&self) -> &'static str {
        match self.kind {
            ErrorKind::Unauthorized => {
                "missing or invalid client token: send Authorization: Bearer <token> or x-api-key"
            }
            ErrorKind::NotFound => "no such route on this proxy",
            ErrorKind::BodyTooLarge => "request body exceeds the proxy's pool.max_request_body limit",
            ErrorKind::HeadersTooLarge => {
                "request headers exceed the proxy's limits (server.max_header_bytes, server.max_headers)"
            }
            ErrorKind::BadRequest => "could not read the request body",
            ErrorKind::RequestTimeout => "the request body did not arrive in time (server.client_body_timeout)",
            ErrorKind::ModelNotAllowed => "this client token may not use the requested model",
            ErrorKind::ClientRateLimited => "this client token is over its requests-per-minute limit",
            ErrorKind::BudgetExhausted(crate::usage::BudgetKind::Tpm) => {
                "this client token has used its tpm budget (tokens per minute); retry after Retry-After"
            }
            ErrorKind::BudgetExhausted(crate::usage::BudgetKind::Daily) => {
                "this client token has used its daily_tokens budget (resets at 00:00 UTC)"
            }
            ErrorKind::BudgetExhausted(crate::usage::BudgetKind::Monthly) => {
                "this client token has used its monthly_tokens budget (resets on the 1st, 00:00 UTC)"
            }
            ErrorKind::NoUsableKey => "no upstream key is available right now; retry later",
            ErrorKind::UpstreamFailed => "the upstream failed on every attempt",
            ErrorKind::UpstreamTimeout => "the upstream timed out on every attempt",
            ErrorKind::UpstreamUnresolved => "the upstream host has no known address yet",
            ErrorKind::Internal => "internal proxy error",
        }
    }

    /// (OpenAI type, OpenAI code, Anthropic type)
    fn types(&self) -> (&'static str, &'static str, &'static str) {
        match self.kind {
            ErrorKind::Unauthorized => ("invalid_request_error", "invalid_api_key", "authentication_error"),
            ErrorKind::NotFound => ("invalid_request_error", "not_found", "not_found_error"),
            ErrorKind::BodyTooLarge => ("invalid_request_error", "request_too_large", "request_too_large"),
            ErrorKind::HeadersTooLarge => ("invalid_request_error", "headers_too_large", "invalid_request_error"),
            ErrorKind::BadRequest => ("invalid_request_error", "bad_request", "invalid_request_error"),
            ErrorKind::RequestTimeout => ("invalid_request_error", "request_timeout", "invalid_request_error"),
            ErrorKind::ModelNotAllowed => ("permission_error", "model_not_allowed", "permission_error"),
            ErrorKind::ClientRateLimited => ("rate_limit_error", "rate_limit_exceeded", "rate_limit_error"),
            ErrorKind::BudgetExhausted(_) => ("rate_limit_error", "budget_exceeded", "rate_limit_error"),
            ErrorKind::NoUsableKey => ("service_unavailable", "no_usable_key", "overloaded_error"),
            ErrorKind::UpstreamFailed | ErrorKind::UpstreamUnresolved => {
                ("upstream_error", "upstream_failed", "api_error")
            }
            ErrorKind::UpstreamTimeout => ("upstream_error", "upstream_timeout", "api_error"),
            ErrorKind::Internal => ("server_error", "internal_error", "api_error"),
        }
    }

    pub fn body(&self, family: Family) -> Bytes {
        let message = match (&self.model, self.kind) {
            (Some(m), ErrorKind::NoUsableKey) => {
                format!("no upstream key can serve model {m:?} right now; retry later")
            }
            (Some(m), ErrorKind::ModelNotAllowed) => format!("this client token may not use model {m:?}"),
            _ => self.message().to_string(),
        };
        let (oa_type, oa_code, an_type) = self.types();
        let v = match family {
            Family::OpenAi => serde_json::json!({"error": {"message": message, "type": oa_type, "code": oa_code}}),
            Family::Anthropic => serde_json::json!({"type": "error", "error": {"type": an_type, "message": message}}),
            Family::Ollama => serde_json::json!({"error": message}),
        };
        Bytes::from(v.to_string())
    }

    /// The full response header for this error (status, JSON type, length, Retry-After).
    pub fn header(&self, body_len: usize) -> ResponseHeader {
        let mut h = ResponseHeader::build(self.status(), Some(4)).expect("valid status");
        let _ = h.insert_header(http::header::CONTENT_TYPE, "application/json");
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string());
        let _ = h.insert_header(http::header::CACHE_CONTROL, "no-store");
        if let Some(ra) = self.retry_after {
            // Round up: "retry in 0 s" would invite a hot loop.
            let secs = ra.as_secs() + u64::from(ra.subsec_nanos() > 0);
            let _ = h.insert_header(http::header::RETRY_AFTER, secs.max(1).to_string());
        }
        if self.kind == ErrorKind::Unauthorized {
            let _ = h.insert_header(http::header::WWW_AUTHENTICATE, "Bearer");
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: Bytes) -> serde_json::Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn envelopes_per_family() {
        let e = ProxyError::new(ErrorKind::Unauthorized);
        assert_eq!(json(e.body(Family::OpenAi))["error"]["code"], "invalid_api_key");
        let a = json(e.body(Family::Anthropic));
        assert_eq!((a["type"].as_str(), a["error"]["type"].as_str()), (Some("error"), Some("authentication_error")));
        assert!(json(e.body(Family::Ollama))["error"].is_string());
    }

    #[test]
    fn budget_errors_name_the_budget() {
        for kind in crate::usage::BudgetKind::ALL {
            let e = ProxyError::new(ErrorKind::BudgetExhausted(kind));
            assert_eq!(e.status(), 429);
            for f in [Family::OpenAi, Family::Anthropic, Family::Ollama] {
                assert!(String::from_utf8_lossy(&e.body(f)).contains(kind.as_str()), "{f:?} {kind:?}");
            }
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        let e = ProxyError::new(ErrorKind::NoUsableKey).retry_after(Some(Duration::from_millis(1500)));
        assert_eq!(e.header(0).headers.get("retry-after").unwrap(), "2");
        assert_eq!(e.status(), 503);
    }
}
