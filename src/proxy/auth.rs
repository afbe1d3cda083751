//! Client authentication (SPEC §2.3, §3.4): the presented token is hashed and the hash looked up,
//! so the table never holds a clear token and the lookup is the same for static (config) and
//! stored tokens. Lookups are lock-free reads of an `ArcSwap`'d map.

use crate::config::StaticToken;
use crate::secret::sha256;
use arc_swap::ArcSwap;
use http::HeaderMap;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// What logs and metrics call this client.
    pub name: String,
    /// ms since epoch; None = never expires.
    pub expires_at_ms: Option<u64>,
}

#[derive(Default)]
pub struct Clients {
    /// SHA-256(token) -> client. Replaced whole on change (rare); read on every request.
    by_hash: ArcSwap<HashMap<[u8; 32], Arc<Client>>>,
}

impl Clients {
    pub fn from_static(tokens: &[StaticToken]) -> Clients {
        let map = tokens
            .iter()
            .map(|t| (t.token.sha256(), Arc::new(Client { name: t.name.clone(), expires_at_ms: None })))
            .collect();
        Clients { by_hash: ArcSwap::from_pointee(map) }
    }

    /// Adds or replaces the client for a token hash (the admin/store issue feeds stored tokens here).
    pub fn insert(&self, hash: [u8; 32], client: Client) {
        self.by_hash.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(hash, Arc::new(client.clone()));
            m
        });
    }

    pub fn remove(&self, hash: &[u8; 32]) {
        self.by_hash.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(hash);
            m
        });
    }

    pub fn len(&self) -> usize {
        self.by_hash.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The client behind the request's token, if it is known and not expired.
    pub fn authenticate(&self, headers: &HeaderMap, now_ms: u64) -> Option<Arc<Client>> {
        let token = presented_token(headers)?;
        let client = self.by_hash.load().get(&sha256(token))?.clone();
        match client.expires_at_ms {
            Some(exp) if now_ms >= exp => None,
            _ => Some(client),
        }
    }
}

/// `Authorization: Bearer <t>` (scheme case-insensitive), else `x-api-key: <t>`.
pub fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            let t = v[7..].trim_ascii();
            if !t.is_empty() {
                return Some(t);
            }
        }
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_or_x_api_key() {
        let c = Clients::from_static(&[StaticToken { name: "app".into(), token: Secret::new("tok-1234567") }]);
        assert_eq!(c.authenticate(&headers(&[("authorization", "Bearer tok-1234567")]), 0).unwrap().name, "app");
        assert!(c.authenticate(&headers(&[("authorization", "bearer tok-1234567")]), 0).is_some());
        assert!(c.authenticate(&headers(&[("x-api-key", "tok-1234567")]), 0).is_some());
        assert!(c.authenticate(&headers(&[("authorization", "Bearer nope")]), 0).is_none());
        assert!(c.authenticate(&headers(&[("authorization", "Basic tok-1234567")]), 0).is_none());
        assert!(c.authenticate(&HeaderMap::new(), 0).is_none());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let c = Clients::default();
        c.insert(sha256(b"tok-abcdefg"), Client { name: "t".into(), expires_at_ms: Some(10) });
        assert!(c.authenticate(&headers(&[("x-api-key", "tok-abcdefg")]), 9).is_some());
        assert!(c.authenticate(&headers(&[("x-api-key", "tok-abcdefg")]), 10).is_none());
    }
}
