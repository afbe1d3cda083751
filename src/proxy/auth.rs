//! Client authentication (SPEC §2.3, §3.4): the presented token is hashed and the hash looked up,
//! so the table never holds a clear token and the lookup is the same for static (config) and
//! stored tokens. Lookups are lock-free reads of an `ArcSwap`'d map.

use crate::config::StaticToken;
use crate::secret::sha256;
use arc_swap::ArcSwap;
use http::HeaderMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct Client {
    /// What logs and metrics call this client.
    pub name: String,
    /// ms since epoch; None = never expires.
    pub expires_at_ms: Option<u64>,
    /// Models this client may use; empty = all.
    pub models: Vec<String>,
    /// Requests per minute; None = unlimited.
    pub rpm: Option<u32>,
    /// Fixed one-minute window of the rpm limit: (minute number, requests in it), packed so
    /// one atomic holds both and no lock is taken.
    window: AtomicU64,
    /// Fleet mode: the rpm window's share of the fleet-wide count (`crate::fleet::limits`).
    rpm_share: crate::fleet::limits::Share,
    /// Made by an operator and kept in the store (false: a `clients.tokens` entry).
    pub from_store: bool,
    /// Token budgets (`tpm`, `daily_tokens`, `monthly_tokens`) and what they have used.
    pub budgets: crate::usage::Budgets,
    /// This client's request counters, resolved on its first request.
    metrics: std::sync::OnceLock<crate::metrics::ClientMetrics>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(name: impl Into<String>, expires_at_ms: Option<u64>, models: Vec<String>, rpm: Option<u32>) -> Client {
        Client {
            name: name.into(),
            expires_at_ms,
            models,
            rpm,
            window: AtomicU64::new(0),
            rpm_share: Default::default(),
            from_store: false,
            budgets: Default::default(),
            metrics: Default::default(),
        }
    }

    pub fn with_budgets(mut self, limits: crate::usage::Limits) -> Client {
        self.budgets = crate::usage::Budgets::new(limits);
        self
    }

    pub fn metrics(&self) -> &crate::metrics::ClientMetrics {
        self.metrics.get_or_init(|| crate::metrics::ClientMetrics::new(&self.name))
    }

    pub fn rpm_share(&self) -> &crate::fleet::limits::Share {
        &self.rpm_share
    }

    /// Requests this instance admitted in `minute`.
    pub fn rpm_local(&self, minute: u64) -> u64 {
        let cur = self.window.load(Relaxed);
        if cur >> 32 == minute {
            cur & 0xffff_ffff
        } else {
            0
        }
    }

    /// Counts one request against the rpm limit (in fleet mode, with what the other instances
    /// admitted this minute). Err(wait) when over it, with the time until the next minute.
    pub fn admit(&self, now_ms: u64) -> Result<(), Duration> {
        let Some(rpm) = self.rpm else { return Ok(()) };
        let minute = now_ms / 60_000;
        let others = self.rpm_share.others(minute);
        let mut cur = self.window.load(Relaxed);
        loop {
            let (m, used) = (cur >> 32, cur & 0xffff_ffff);
            let used = if m == minute { used } else { 0 };
            if used + others >= u64::from(rpm) {
                return Err(Duration::from_millis((minute + 1) * 60_000 - now_ms));
            }
            let next = (minute << 32) | (used + 1);
            match self.window.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether this client may use `model` (a request without a model is not restricted here).
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        match model {
            _ if self.models.is_empty() => true,
            None => true,
            Some(m) => self.models.iter().any(|a| a == m),
        }
    }
}

/// A new client token: `sk-` + 48 alphanumerics from the OS CSPRNG (rejection-sampled, so
/// every character is uniform).
pub fn new_token() -> crate::secret::Secret {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(51);
    out.push_str("sk-");
    let mut buf = [0u8; 64];
    while out.len() < 51 {
        getrandom::fill(&mut buf).expect("the OS random source works");
        for b in buf {
            // 248 = 4 * 62: bytes above it would bias the first letters.
            if b < 248 && out.len() < 51 {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    crate::secret::Secret::new(out)
}

/// SHA-256(token) -> client. Hashed with foldhash, seeded per process: std's SipHash cost more
/// than the rest of the lookup, and the keys are digests the operator's tokens give.
pub type Table = HashMap<[u8; 32], Arc<Client>, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Clients {
    /// Replaced whole on change (rare); read on every request.
    by_hash: ArcSwap<Table>,
}

impl Clients {
    pub fn from_static(tokens: &[StaticToken]) -> Clients {
        let map: Table = tokens.iter().map(|t| (t.token.sha256(), Arc::new(static_client(t)))).collect();
        Clients { by_hash: ArcSwap::from_pointee(map) }
    }

    /// Adds or replaces the client for a token hash (the admin/store issue feeds stored tokens here).
    pub fn insert(&self, hash: [u8; 32], client: Client) {
        let client = Arc::new(client);
        self.by_hash.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(hash, client.clone());
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

    /// A reload changed `clients.tokens`: tokens no longer listed stop working, new ones start;
    /// a token listed in both keeps its client (its rpm window and what its budgets used), or,
    /// when its name or limits changed, gets a new one that carries over what the budgets used.
    pub fn replace_static(&self, old: &[StaticToken], new: &[StaticToken]) {
        let keep: std::collections::HashSet<[u8; 32]> = new.iter().map(|t| t.token.sha256()).collect();
        self.by_hash.rcu(|m| {
            let mut m = HashMap::clone(m);
            for t in old {
                let h = t.token.sha256();
                if !keep.contains(&h) {
                    m.remove(&h);
                }
            }
            for t in new {
                let h = t.token.sha256();
                match m.get(&h) {
                    Some(c) if c.name == t.name && c.rpm == t.rpm && c.budgets.limits == t.budgets() => {}
                    Some(c) if c.name == t.name => {
                        let fresh = static_client(t);
                        fresh.budgets.carry_from(&c.budgets);
                        m.insert(h, Arc::new(fresh));
                    }
                    _ => {
                        m.insert(h, Arc::new(static_client(t)));
                    }
                }
            }
            m
        });
    }

    pub fn len(&self) -> usize {
        self.by_hash.load().len()
    }

    /// Calls `f` with every client (admin views, seeding budgets at start).
    pub fn each(&self, mut f: impl FnMut(&Client)) {
        for c in self.by_hash.load().values() {
            f(c);
        }
    }

    /// The table as it is now (fleet sync notices a change by comparing two of these).
    pub fn snapshot(&self) -> Arc<Table> {
        self.by_hash.load_full()
    }

    /// Calls `f` with every client and its token's hash (fleet sync).
    pub fn each_hashed(&self, mut f: impl FnMut(&[u8; 32], &Arc<Client>)) {
        for (h, c) in self.by_hash.load().iter() {
            f(h, c);
        }
    }

    /// The client of a token hash.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<Client>> {
        self.by_hash.load().get(hash).cloned()
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

/// The client of a `clients.tokens` entry.
fn static_client(t: &StaticToken) -> Client {
    Client::new(t.name.clone(), None, vec![], t.rpm).with_budgets(t.budgets())
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
        let c = Clients::from_static(&[StaticToken::new("app", Secret::new("tok-1234567"))]);
        assert_eq!(c.authenticate(&headers(&[("authorization", "Bearer tok-1234567")]), 0).unwrap().name, "app");
        assert!(c.authenticate(&headers(&[("authorization", "bearer tok-1234567")]), 0).is_some());
        assert!(c.authenticate(&headers(&[("x-api-key", "tok-1234567")]), 0).is_some());
        assert!(c.authenticate(&headers(&[("authorization", "Bearer nope")]), 0).is_none());
        assert!(c.authenticate(&headers(&[("authorization", "Basic tok-1234567")]), 0).is_none());
        assert!(c.authenticate(&HeaderMap::new(), 0).is_none());
    }

    #[test]
    fn static_tokens_carry_limits_and_a_reload_keeps_what_their_budgets_used() {
        let t = |daily| StaticToken {
            rpm: Some(5),
            daily_tokens: daily,
            ..StaticToken::new("app", Secret::new("tok-1234567"))
        };
        let h = headers(&[("x-api-key", "tok-1234567")]);
        let now = 1_796_083_200_000;
        let c = Clients::from_static(&[t(Some(100))]);
        let before = c.authenticate(&h, now).unwrap();
        assert_eq!((before.rpm, before.budgets.limits.daily_tokens), (Some(5), Some(100)));
        before.budgets.debit(now, 90);
        c.replace_static(&[t(Some(100))], &[t(Some(80))]);
        let after = c.authenticate(&h, now).unwrap();
        assert_eq!(after.budgets.limits.daily_tokens, Some(80));
        assert!(after.budgets.check(now).is_err(), "90 used of the new 80");
        c.replace_static(&[t(Some(80))], &[t(Some(80))]);
        assert!(Arc::ptr_eq(&after, &c.authenticate(&h, now).unwrap()), "unchanged: the same client");
    }

    #[test]
    fn expired_tokens_are_refused() {
        let c = Clients::default();
        c.insert(sha256(b"tok-abcdefg"), Client::new("t", Some(10), vec![], None));
        assert!(c.authenticate(&headers(&[("x-api-key", "tok-abcdefg")]), 9).is_some());
        assert!(c.authenticate(&headers(&[("x-api-key", "tok-abcdefg")]), 10).is_none());
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn rpm_is_a_fixed_minute_window() {
        let c = Client::new("t", None, vec![], Some(2));
        let t0 = 60_000 * 1000 + 10_000;
        assert!(c.admit(t0).is_ok());
        assert!(c.admit(t0 + 1).is_ok());
        assert_eq!(c.admit(t0 + 2), Err(Duration::from_millis(50_000 - 2)));
        assert!(c.admit(t0 + 50_000).is_ok(), "a new minute");
    }

    #[test]
    fn model_allow_list() {
        let c = Client::new("t", None, vec!["qwen3:8b".into()], None);
        assert!(c.allows_model(Some("qwen3:8b")) && c.allows_model(None));
        assert!(!c.allows_model(Some("llama3")));
        assert!(Client::new("u", None, vec![], None).allows_model(Some("anything")));
    }

    #[test]
    fn tokens_are_sk_plus_48_alphanumerics_and_distinct() {
        let a = new_token();
        assert_eq!(a.len(), 51);
        assert!(a.expose().starts_with("sk-"));
        assert!(a.expose()[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), new_token().expose());
    }
}
