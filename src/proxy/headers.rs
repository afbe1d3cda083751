//! The upstream request header, shared by both forwarding paths: the client's credentials and
//! identifying headers removed, the key's auth header (its provider's form), the upstream
//! `Host` and the provider's default headers (anthropic: `anthropic-version`) set.

use crate::pool::Key;
use crate::provider::Provider;
use http::header::{self, HeaderName};
use pingora::http::RequestHeader;

/// Dropped: the first [`CREDENTIALS`] always (client credentials and cookies), the rest unless
/// `upstream.forward_client_ip_headers` (who the client is). Names, not strings: a `&str` is
/// parsed into a header name on every comparison.
static DROPPED: [HeaderName; 10] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
];
const CREDENTIALS: usize = 4;

/// The names of `names` that `map` holds, each once, in `names`' order. One pass over what the
/// message has (a handful of headers), so that only those are removed: a removal costs two
/// hash lookups even when it finds nothing (pingora keeps each name's case in a second map),
/// and a request has a dozen names to drop. At most 64 names.
pub(crate) fn held<'n>(names: &'n [HeaderName], map: &http::HeaderMap) -> impl Iterator<Item = &'n HeaderName> {
    debug_assert!(names.len() <= 64);
    let mut bits = 0u64;
    for k in map.keys() {
        if let Some(i) = names.iter().position(|n| n == k) {
            bits |= 1 << i;
        }
    }
    names.iter().enumerate().filter(move |(i, _)| bits >> i & 1 == 1).map(|(_, n)| n)
}

pub fn rewrite(req: &mut RequestHeader, key: &Key, provider: &Provider) -> pingora::Result<()> {
    let upstream = &provider.upstream;
    let dropped = if provider.forward_client_ip { &DROPPED[..CREDENTIALS] } else { &DROPPED[..] };
    for h in held(dropped, &req.headers) {
        req.remove_header(h);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_finds_each_present_name_once_and_only_those() {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        req.append_header("X-Forwarded-For", "10.0.0.1").unwrap();
        req.append_header("x-forwarded-for", "10.0.0.2").unwrap();
        req.append_header("Cookie", "a=b").unwrap();
        req.append_header("User-Agent", "app").unwrap();
        req.append_header("X-Real-IP", "10.0.0.3").unwrap();
        let found: Vec<&HeaderName> = held(&DROPPED, &req.headers).collect();
        assert_eq!(found, [&header::COOKIE, &DROPPED[5], &DROPPED[9]], "in DROPPED's order, once each");
        assert_eq!(held(&DROPPED[..CREDENTIALS], &req.headers).collect::<Vec<_>>(), [&header::COOKIE]);
        for h in held(&DROPPED, &req.headers) {
            req.remove_header(h);
        }
        // What goes upstream, as pingora writes it (names in the case they came in).
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert_eq!(String::from_utf8(wire).unwrap(), "User-Agent: app\r\n", "every value of a dropped name goes");
        assert_eq!(held(&DROPPED, &http::HeaderMap::new()).count(), 0);
    }
}
