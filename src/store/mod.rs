//! Durable state (SPEC §4): upstream keys, client tokens (hashes only, with their limits), per-key
//! model lists, counter snapshots and usage by day. `Store` is the seam: SQLite (`sqlite`, one
//! instance) or Redis (`redis_store`, a fleet sharing one Redis). Nothing on the request path
//! calls it: routing reads the in-memory pool, which every admin write updates after the store
//! has committed.

mod crypto;
pub mod migrate;
mod redis_store;
mod sqlite;

pub use crypto::Cipher;
pub use redis_store::{redact as redact_url, url_problem as redis_url_problem, RedisStore};
pub use sqlite::SqliteStore;

use crate::secret::Secret;
pub use crate::usage::UsageRow;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Open { path: String, message: String },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Crypto(String),
    #[error("store: {0}")]
    Redis(String),
    /// The store cannot be reached now (Redis down): nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One upstream key as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub id: String,
    pub secret: Secret,
    pub label: Option<String>,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Manual disable: None = enabled; Some(0) = until enabled; Some(t) = until t.
    pub disabled_until_ms: Option<u64>,
    pub models: Vec<String>,
    pub category: Option<String>,
    pub counters: Counters,
    /// The provider whose pool the key is in; empty = the home provider (`default` or the
    /// first), which is where keys stored before providers existed belong.
    pub provider: String,
    /// Read from a key file (a reload removes it once no file lists it); false = added by an
    /// operator (admin API, CLI), which only an operator removes.
    pub from_file: bool,
}

pub use crate::pool::{Counters, SavedPark};

/// One client token as stored: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredToken {
    pub id: String,
    pub hash: [u8; 32],
    pub name: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Empty = every model.
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    /// Token budgets (`tpm`, `daily_tokens`, `monthly_tokens`); none = unlimited.
    pub budgets: crate::usage::Limits,
}

pub trait Store: Send + Sync + 'static {
    fn keys(&self) -> Result<Vec<StoredKey>>;
    /// One key by id (fleet sync reads a key another instance added).
    fn key(&self, id: &str) -> Result<Option<StoredKey>> {
        Ok(self.keys()?.into_iter().find(|k| k.id == id))
    }
    /// Inserts keys in one transaction; keys whose id is present are skipped. With `skip_removed`
    /// (key files read at start) keys an operator removed are skipped too; without it (an
    /// operator adding keys) their removal is forgotten. Returns the ids added.
    fn insert_keys(&self, keys: &[StoredKey], skip_removed: bool) -> Result<Vec<String>>;
    /// Removes a key and remembers that it was removed.
    fn delete_key(&self, id: &str) -> Result<bool>;
    /// Removes a key that left every key file (a reload), without remembering it: listed in a
    /// file again, it comes back.
    fn forget_key(&self, id: &str) -> Result<bool>;
    /// `None` enables; `Some(0)` disables until enabled; `Some(t)` until `t`.
    fn set_disabled(&self, id: &str, until_ms: Option<u64>) -> Result<bool>;
    fn set_models(&self, id: &str, models: &[String], category: &str) -> Result<bool>;
    fn save_counters(&self, counters: &[(String, Counters)]) -> Result<()>;
    fn tokens(&self) -> Result<Vec<StoredToken>>;
    fn insert_token(&self, token: &StoredToken) -> Result<()>;
    fn delete_token(&self, id: &str) -> Result<bool>;
    /// Adds usage counts to what the store holds for each (day, client, provider, model), in
    /// one transaction.
    fn add_usage(&self, rows: &[UsageRow]) -> Result<()>;
    /// Usage rows of the days `from..=to` (days since 1970-01-01, UTC).
    fn usage(&self, from_day: u32, to_day: u32) -> Result<Vec<UsageRow>>;
    /// Lets go of caches a big load filled (the start's keys); they refill as needed.
    fn release_memory(&self) {}
}

/// Saves every key's counters to the store every `interval` and once more at shutdown, so
/// statistics survive restarts without any store write on the request path.
pub struct CounterFlusher {
    pub store: std::sync::Arc<dyn Store>,
    /// Every pool whose counters are saved (those of the current runtime's providers).
    pub pools: Box<dyn Fn() -> Vec<std::sync::Arc<crate::pool::Pool>> + Send + Sync>,
    pub interval: std::time::Duration,
    /// When (pool clock, ms) the last snapshot that was fully saved began: keys that have not
    /// changed since are not written again. Start it at the time the keys were loaded.
    pub saved_upto: std::sync::atomic::AtomicU64,
}

/// Keys whose last change is this close before the last snapshot's start are saved again: a
/// change stamped in the same millisecond, or by a clock a little behind, is not missed.
const SNAPSHOT_OVERLAP_MS: u64 = 2_000;

impl CounterFlusher {
    /// Saves the counters of every key that changed since the last snapshot, a thousand keys
    /// per write, so a large pool needs no snapshot of all its keys at once and an idle one
    /// writes nothing (issue #14: 100k keys). Returns how many keys it saved.
    pub fn flush(&self) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let pools = (self.pools)();
        let Some(now) = pools.first().map(|p| p.now_ms()) else { return 0 };
        let since = self.saved_upto.load(Relaxed).saturating_sub(SNAPSHOT_OVERLAP_MS);
        let mut saved = 0;
        for pool in pools {
            let keys = pool.keys();
            let changed: Vec<&std::sync::Arc<crate::pool::Key>> =
                keys.iter().filter(|k| k.changed_since(since)).collect();
            for keys in changed.chunks(1000) {
                let counters: Vec<(String, Counters)> = keys.iter().map(|k| (k.id.to_string(), k.counters())).collect();
                match self.store.save_counters(&counters) {
                    Ok(()) => saved += counters.len(),
                    // The store logged that it went away; the next flush saves these too (the
                    // snapshot's start stays where it was).
                    Err(StoreError::Unavailable(e)) => {
                        log::debug!("store: key counters not saved ({e}); the next flush tries again");
                        return saved;
                    }
                    Err(e) => {
                        log::warn!("store: saving key counters failed: {e}");
                        return saved;
                    }
                }
            }
        }
        self.saved_upto.store(now, Relaxed);
        saved
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for CounterFlusher {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        flush_every(self.interval, shutdown, || {
            self.flush();
        })
        .await;
    }
}

/// Runs `flush` every `interval` until shutdown, and once more then (the store's periodic
/// writers: key counters, usage).
pub async fn flush_every(
    interval: std::time::Duration,
    mut shutdown: pingora::server::ShutdownWatch,
    flush: impl Fn() + Send + Sync,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(interval) => flush(),
        }
    }
    flush();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pool::{Clock, Key, ManualClock, Outcome, Policy, Pool};
    use crate::secret::Secret;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::Duration;

    /// A stored key of the default provider, labelled "l", with nothing else set.
    pub(crate) fn stored_key(s: &str) -> StoredKey {
        let secret = Secret::new(s);
        StoredKey {
            id: secret.id(),
            secret,
            label: Some("l".into()),
            created_at_ms: 1,
            expires_at_ms: None,
            disabled_until_ms: None,
            models: vec![],
            category: None,
            counters: Counters::default(),
            provider: String::new(),
            from_file: false,
        }
    }

    #[test]
    fn the_counter_snapshot_writes_only_the_keys_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db"), None).unwrap());
        let clock = ManualClock::new(1_000_000);
        let pool = Arc::new(Pool::new(Policy::default(), Arc::new(clock.clone())));
        let stored: Vec<StoredKey> = (0..3).map(|i| stored_key(&format!("snapshot-key-{i:04}"))).collect();
        store.insert_keys(&stored, false).unwrap();
        for k in &stored {
            pool.add(Key::new(k.secret.clone(), None, None).unwrap()).unwrap();
        }
        let keys = pool.keys();
        let p = pool.clone();
        let flusher = CounterFlusher {
            store: store.clone(),
            pools: Box::new(move || vec![p.clone()]),
            interval: Duration::from_secs(30),
            saved_upto: AtomicU64::new(clock.now_ms()),
        };
        let saved = |id: &str| store.keys().unwrap().into_iter().find(|k| k.id == id).unwrap().counters;
        let later = |s| clock.advance(Duration::from_secs(s));

        later(30);
        assert_eq!(flusher.flush(), 0, "nothing happened: nothing is written");
        pool.report(&keys[0], Outcome::Success);
        later(30);
        assert_eq!(flusher.flush(), 1);
        assert_eq!((saved(&keys[0].id).requests, saved(&keys[0].id).successes), (1, 1));
        later(30);
        assert_eq!(flusher.flush(), 0, "saved once, not again while idle");

        // A park is saved; so is a park pushed out (a failed probe), and its end by the clock.
        pool.report(&keys[1], Outcome::Credential);
        later(30);
        assert_eq!(flusher.flush(), 1);
        let park = saved(&keys[1].id).park.expect("the park is saved");
        later(30);
        keys[1].extend_park(park.until_ms + 60_000, clock.now_ms());
        later(30);
        assert_eq!(flusher.flush(), 1);
        assert_eq!(saved(&keys[1].id).park.unwrap().until_ms, park.until_ms + 60_000);
        clock.advance(Duration::from_millis(park.until_ms + 60_000 - clock.now_ms()));
        let mut picked = Vec::new();
        while picked.len() < 3 {
            picked.push(pool.pick(&picked).unwrap());
        }
        later(30);
        assert!(flusher.flush() >= 1);
        assert_eq!(saved(&keys[1].id).park, None, "its return is saved");
        assert_eq!(saved(&keys[2].id).requests, 0);
    }
}
