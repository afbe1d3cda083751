//! The upstream request header, shared by both forwarding paths: the client's credentials and
//! identifying headers removed, the key's `Authorization` and the upstream `Host` set.

use crate::pool::Key;
use crate::upstream::Upstream;
use pingora::http::RequestHeader;

/// Dropped always: client credentials and cookies.
const CREDENTIALS: &[&str] = &["authorization", "x-api-key", "proxy-authorization", "cookie"];
/// Dropped unless `upstream.forward_client_ip_headers`: who the client is.
const CLIENT_IDENTITY: &[&str] =
    &["forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-real-ip"];

pub fn rewrite(
    req: &mut RequestHeader,
    key: &Key,
    upstream: &Upstream,
    forward_client_ip: bool,
) -> pingora::Result<()> {
    for h in CREDENTIALS {
        req.remove_header(*h);
    }
    if !forward_client_ip {
        for h in CLIENT_IDENTITY {
            req.remove_header(*h);
        }
    }
    // Cloning a HeaderValue bumps a refcount; the `Bearer …` bytes were built once per key.
    req.insert_header(http::header::AUTHORIZATION, key.auth_header().clone())?;
    req.insert_header(http::header::HOST, upstream.host_header.clone())?;
    if !upstream.url.base_path.is_empty() {
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri: http::Uri = format!("{}{}", upstream.url.base_path, pq)
            .parse()
            .map_err(|_| pingora::Error::explain(pingora::ErrorType::InternalError, "bad upstream path"))?;
        req.set_uri(uri);
    }
    Ok(())
}
