//! The upstream request header, shared by both forwarding paths: the client's credentials and
//! identifying headers removed, the key's auth header (its provider's form), the upstream
//! `Host` and the provider's default headers (anthropic: `anthropic-version`) set.

use crate::pool::Key;
use crate::provider::Provider;
use http::header::{self, HeaderName};
use pingora::http::RequestHeader;

/// Dropped always: client credentials and cookies. (Names, not strings: a `&str` is parsed
/// into a header name on every removal, ten of them per attempt.)
static CREDENTIALS: [HeaderName; 4] =
    [header::AUTHORIZATION, HeaderName::from_static("x-api-key"), header::PROXY_AUTHORIZATION, header::COOKIE];
/// Dropped unless `upstream.forward_client_ip_headers`: who the client is.
static CLIENT_IDENTITY: [HeaderName; 6] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
];

pub fn rewrite(req: &mut RequestHeader, key: &Key, provider: &Provider) -> pingora::Result<()> {
    let upstream = &provider.upstream;
    for h in &CREDENTIALS {
        req.remove_header(h);
    }
    if !provider.forward_client_ip {
        for h in &CLIENT_IDENTITY {
            req.remove_header(h);
        }
    }
    // The `Bearer …` bytes were built once per key; this copies them into the request.
    let (name, value) = key.auth();
    req.insert_header(name, value)?;
    req.insert_header(http::header::HOST, upstream.host_header.clone())?;
    for (name, value) in &provider.default_headers {
        if !req.headers.contains_key(name) {
            req.insert_header(name.clone(), value.clone())?;
        }
    }
    if !upstream.url.base_path.is_empty() {
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri: http::Uri = format!("{}{}", upstream.url.base_path, pq)
            .parse()
            .map_err(|_| pingora::Error::explain(pingora::ErrorType::InternalError, "bad upstream path"))?;
        req.set_uri(uri);
    }
    Ok(())
}
