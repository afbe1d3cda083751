//! The one place that decides what an upstream answer means (SPEC §3.2). The forwarding path
//! and health probes call `classify`; nothing else interprets statuses.

use super::Window;
use http::HeaderMap;
use std::time::Duration;

/// How much of an upstream error body the classifier may look at.
pub const ERROR_PEEK_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx/2xx/3xx: the key works.
    Success,
    /// 401/403: the upstream rejects this key.
    Credential,
    /// 403 "requires a subscription", 402 "extra usage only" / "balance is empty": this key
    /// may not use the requested model, but serves others.
    ModelUnavailable,
    /// 429/402 or a usage/quota-limit error: this key is out of allowance for a while —
    /// until `retry_after`, or the reset of the usage `window` the error body named.
    RateLimited { retry_after: Option<Duration>, window: Option<Window> },
    /// 5xx of the retryable kind, connect errors, resets and timeouts before the response.
    Transient,
    /// Anything else (400, 404, 422, 501…): the request's own fault; passed through untouched.
    CallerFault,
}

impl Outcome {
    /// Worth trying again on another key.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Outcome::Credential | Outcome::ModelUnavailable | Outcome::RateLimited { .. } | Outcome::Transient
        )
    }

    /// Low-cardinality name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Credential => "credential",
            Outcome::ModelUnavailable => "model_unavailable",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::Transient => "transient",
            Outcome::CallerFault => "caller_fault",
        }
    }
}

/// Classifies an upstream answer from its status, headers and (when the caller could read one)
/// the first `ERROR_PEEK_BYTES` of its body.
pub fn classify(status: u16, headers: &HeaderMap, body: Option<&[u8]>) -> Outcome {
    if status < 400 {
        return Outcome::Success;
    }
    let retry_after = retry_after(headers);
    let window = body.and_then(|b| Window::named_in(&String::from_utf8_lossy(&b[..b.len().min(ERROR_PEEK_BYTES)])));
    if (status == 402 || status == 403) && body.is_some_and(names_a_model_plan) {
        return Outcome::ModelUnavailable;
    }
    if status == 429 || status == 402 {
        return Outcome::RateLimited { retry_after, window };
    }
    // Some providers report an exhausted allowance with a 400/403 and say so in the body.
    if body.is_some_and(mentions_usage_limit) {
        return Outcome::RateLimited { retry_after, window };
    }
    match status {
        401 | 403 => Outcome::Credential,
        408 | 500 | 502 | 503 | 504 | 529 => Outcome::Transient,
        _ => Outcome::CallerFault,
    }
}

/// `Retry-After` (seconds or an HTTP date) or `retry-after-ms`, whichever is present.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()) {
        if let Ok(ms) = ms.trim().parse::<f64>() {
            if ms.is_finite() && ms >= 0.0 {
                return Some(Duration::from_millis(ms as u64));
            }
        }
    }
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_to_system(v)?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

fn httpdate_to_system(v: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(v).ok().or_else(|| parse_imf_fixdate(v))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, the only date form RFC 9110 requires senders to use.
fn parse_imf_fixdate(v: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == parts[2])? + 1;
    let iso = format!("{}-{:02}-{:02}T{}Z", parts[3], month, parts[1].parse::<u32>().ok()?, parts[4]);
    humantime::parse_rfc3339(&iso).ok()
}

/// Ollama Cloud's answers for a model the key's plan does not include: 403 "this model
/// requires a subscription", 402 "this model is available with extra usage only" or "your
/// balance is empty" (credit plans).
pub fn names_a_model_plan(body: &[u8]) -> bool {
    let body = &body[..body.len().min(ERROR_PEEK_BYTES)];
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("requires a subscription") || text.contains("extra usage") || text.contains("balance is empty")
}

/// Ollama Cloud answers "you've reached your hourly/session/weekly usage limit"; others say
/// "quota exceeded" or "insufficient_quota".
pub fn mentions_usage_limit(body: &[u8]) -> bool {
    let body = &body[..body.len().min(ERROR_PEEK_BYTES)];
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("usage limit") || text.contains("quota") || text.contains("rate limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    #[test]
    fn statuses() {
        let none = HeaderMap::new();
        assert_eq!(classify(200, &none, None), Outcome::Success);
        assert_eq!(classify(401, &none, None), Outcome::Credential);
        assert_eq!(classify(403, &none, None), Outcome::Credential);
        assert_eq!(classify(429, &none, None), Outcome::RateLimited { retry_after: None, window: None });
        assert_eq!(classify(402, &none, None), Outcome::RateLimited { retry_after: None, window: None });
        for s in [500, 502, 503, 504, 529] {
            assert_eq!(classify(s, &none, None), Outcome::Transient, "{s}");
        }
        for s in [400, 404, 405, 409, 413, 415, 422, 501] {
            assert_eq!(classify(s, &none, None), Outcome::CallerFault, "{s}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let r = classify(429, &h(&[("retry-after", "30")]), None);
        assert_eq!(r, Outcome::RateLimited { retry_after: Some(Duration::from_secs(30)), window: None });
        let r = classify(429, &h(&[("retry-after-ms", "1500")]), None);
        assert_eq!(r, Outcome::RateLimited { retry_after: Some(Duration::from_millis(1500)), window: None });
        let past = classify(429, &h(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]), None);
        assert_eq!(past, Outcome::RateLimited { retry_after: Some(Duration::ZERO), window: None });
        assert_eq!(
            classify(429, &h(&[("retry-after", "soon")]), None),
            Outcome::RateLimited { retry_after: None, window: None }
        );
    }

    #[test]
    fn usage_limit_bodies() {
        let none = HeaderMap::new();
        let body = br#"{"error":"you've reached your weekly usage limit, please upgrade"}"#;
        let weekly = Outcome::RateLimited { retry_after: None, window: Some(Window::Weekly) };
        assert_eq!(classify(403, &none, Some(body)), weekly);
        assert_eq!(classify(429, &none, Some(body)), weekly);
        assert_eq!(classify(400, &none, Some(b"{\"error\":\"model not found\"}")), Outcome::CallerFault);
        assert_eq!(classify(200, &none, Some(body)), Outcome::Success);
    }

    #[test]
    fn model_plan_bodies() {
        let none = HeaderMap::new();
        let sub = br#"{"error":"this model requires a subscription, upgrade for access: https://ollama.com/upgrade"}"#;
        assert_eq!(classify(403, &none, Some(sub)), Outcome::ModelUnavailable);
        assert_eq!(
            classify(402, &none, Some(b"{\"error\":\"model is available with extra usage only\"}")),
            Outcome::ModelUnavailable
        );
        assert_eq!(classify(402, &none, Some(b"{\"error\":\"your balance is empty\"}")), Outcome::ModelUnavailable);
        assert_eq!(classify(403, &none, None), Outcome::Credential, "no body read: the key itself");
        assert_eq!(classify(400, &none, Some(sub)), Outcome::CallerFault, "only 402/403 say it");
    }
}
