//! CORS for browser clients (SPEC §2.3, `cors.allow_origins`). Off by default: with no
//! origins configured the proxy sends no CORS headers and treats `OPTIONS` like any request.
//! When on, a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
//! answered here, before client auth and without touching the upstream; every other answer
//! to an allowed origin carries `Access-Control-Allow-Origin`, and every answer `Vary: Origin`.

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::HashSet;

/// Headers a browser may send when the preflight does not list any (the SDKs' own).
const DEFAULT_ALLOW_HEADERS: &str = "authorization, content-type, x-api-key, anthropic-version, anthropic-beta";
/// Response headers a page's script may read besides the CORS-safelisted ones.
const EXPOSE_HEADERS: &str = "retry-after, x-request-id";

#[derive(Debug)]
pub struct Cors {
    /// `["*"]`: every origin, answered with `*` (no credentials are involved: the client token
    /// is a header the page sets itself).
    any: bool,
    origins: HashSet<String>,
    max_age: HeaderValue,
}

impl Cors {
    /// None when `allow_origins` is empty (CORS off).
    pub fn new(allow_origins: &[String], max_age: std::time::Duration) -> Option<Cors> {
        if allow_origins.is_empty() {
            return None;
        }
        Some(Cors {
            any: allow_origins.iter().any(|o| o == "*"),
            origins: allow_origins.iter().cloned().collect(),
            max_age: HeaderValue::from(max_age.as_secs()),
        })
    }

    /// The `Access-Control-Allow-Origin` value for this request, if its `Origin` is allowed.
    pub fn allow(&self, req: &RequestHeader) -> Option<HeaderValue> {
        let origin = req.headers.get(http::header::ORIGIN)?;
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let allowed = origin.to_str().is_ok_and(|o| self.origins.contains(o));
        allowed.then(|| origin.clone())
    }

    /// A CORS preflight: `OPTIONS` naming the method it asks for.
    pub fn is_preflight(req: &RequestHeader) -> bool {
        req.method == http::Method::OPTIONS
            && req.headers.contains_key(http::header::ORIGIN)
            && req.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: 204, with the permissions only when the origin is allowed.
    pub fn preflight(&self, req: &RequestHeader, allow: Option<&HeaderValue>) -> ResponseHeader {
        let mut h = ResponseHeader::build(204, Some(7)).expect("valid status");
        let _ = h.insert_header(http::header::VARY, "Origin");
        let _ = h.insert_header(http::header::CONTENT_LENGTH, "0");
        if let Some(origin) = allow {
            let headers = req
                .headers
                .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or(HeaderValue::from_static(DEFAULT_ALLOW_HEADERS));
            let _ = h.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            let _ = h.insert_header(http::header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS");
            let _ = h.insert_header(http::header::ACCESS_CONTROL_ALLOW_HEADERS, headers);
            let _ = h.insert_header(http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        }
        h
    }
}

/// Adds the CORS headers of a non-preflight answer (`allow` from [`Cors::allow`]).
pub fn decorate(h: &mut ResponseHeader, allow: Option<&HeaderValue>) {
    let _ = h.append_header(http::header::VARY, "Origin");
    if let Some(origin) = allow {
        let _ = h.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        let _ = h.insert_header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/v1/chat/completions", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn origins_are_matched_exactly_or_by_star() {
        assert!(Cors::new(&[], Duration::from_secs(600)).is_none(), "off by default");
        let list = Cors::new(&["https://app.example".into()], Duration::from_secs(600)).unwrap();
        let ok = req("POST", &[("origin", "https://app.example")]);
        assert_eq!(list.allow(&ok).unwrap(), "https://app.example");
        assert!(list.allow(&req("POST", &[("origin", "https://evil.example")])).is_none());
        assert!(list.allow(&req("POST", &[("origin", "https://app.example.evil")])).is_none());
        assert!(list.allow(&req("POST", &[])).is_none(), "no Origin, no CORS headers");
        let any = Cors::new(&["*".into()], Duration::from_secs(600)).unwrap();
        assert_eq!(any.allow(&ok).unwrap(), "*");
    }

    #[test]
    fn preflight_answers_with_permissions_only_for_allowed_origins() {
        let cors = Cors::new(&["https://app.example".into()], Duration::from_secs(600)).unwrap();
        let pre = req(
            "OPTIONS",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization, content-type"),
            ],
        );
        assert!(Cors::is_preflight(&pre));
        assert!(!Cors::is_preflight(&req("OPTIONS", &[("origin", "https://app.example")])));
        let h = cors.preflight(&pre, cors.allow(&pre).as_ref());
        assert_eq!(h.status, 204);
        assert_eq!(h.headers["access-control-allow-origin"], "https://app.example");
        assert_eq!(h.headers["access-control-allow-headers"], "authorization, content-type");
        assert_eq!(h.headers["access-control-max-age"], "600");
        assert_eq!(h.headers["vary"], "Origin");
        let denied = cors.preflight(&pre, None);
        assert!(denied.headers.get("access-control-allow-origin").is_none());
    }
}
