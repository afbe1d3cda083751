//! The Redis store (`store.kind: redis`, SPEC §3.9, §4): the same durable records as SQLite —
//! keys per provider with labels, expiry, manual disables, model lists and counter snapshots;
//! hashed tokens with their limits; usage by day — in one Redis that several instances share.
//!
//! Client: the `redis` crate (redis-rs), the maintained Rust client, here through its
//! synchronous connection: the `Store` trait is synchronous (admin writes, the CLI, start-up),
//! exactly as with SQLite, so a blocking connection behind a mutex is the honest fit; the
//! fleet's pub/sub will use the same crate's async side. No TLS (`rediss://`): that would link a
//! second TLS stack beside pingora's OpenSSL; reach a remote Redis through a private network or
//! a TLS tunnel.
//!
//! Layout under `<prefix>:` (schema 1, in `<prefix>:schema`):
//! - `keys` (sorted set: id by created_at), `key:<id>` (hash), `removed` (set of ids);
//! - `tokens` (sorted set), `token:<id>` (hash; the token's SHA-256, never the token);
//! - `usage:days` (sorted set of day numbers), `usage:<day>` (hash: `["client","provider",
//!   "model","requests"]` -> count, added to with HINCRBY, so instances add up).
//!
//! Every write that touches more than one Redis key is one Lua script or one MULTI/EXEC, so it
//! lands whole or not at all; a write answers only after Redis has acknowledged it. With
//! `appendonly no` Redis keeps nothing across its own restart: opening warns about that.

use super::{Cipher, Counters, Result, SavedPark, Store, StoreError, StoredKey, StoredToken, UsageRow};
use crate::secret::Secret;
use redis::{Connection, Script, Value};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const SCHEMA: &str = "1";
/// Keys and counters written per round trip (each chunk is atomic).
const CHUNK: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a `store.url` cannot be used, or Ok.
pub fn url_problem(url: &str) -> std::result::Result<(), String> {
    if url.starts_with("rediss://") {
        return Err("rediss:// (TLS) is not supported: use redis:// over a private network or a TLS tunnel".into());
    }
    if !url.starts_with("redis://") {
        return Err(format!("{:?} is not a redis:// URL", redact(url)));
    }
    redis::Client::open(url).map(|_| ()).map_err(|e| format!("{}: {e}", redact(url)))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub struct RedisStore {
    client: redis::Client,
    /// The one connection, made again after it breaks (writes are rare and short).
    conn: Mutex<Link>,
    prefix: String,
    url: String,
    cipher: Option<Cipher>,
    insert_key: Script,
    if_exists_hset: Script,
    delete_key: Script,
}

/// The connection, or when it broke and when to try again.
struct Link {
    conn: Option<Connection>,
    /// While Redis is unreachable: the next connection attempt waits until this, so a burst of
    /// admin calls or flushes does not hammer it (backoff 0.5 s doubling to 30 s).
    retry_at: Option<std::time::Instant>,
    backoff: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn fail(url: &str, e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        StoreError::Unavailable(format!("Redis at {}: {e}", redact(url)))
    } else {
        StoreError::Redis(e.to_string())
    }
}

impl RedisStore {
    /// Connects, checks (or writes, on an empty prefix) the schema version, and warns when Redis
    /// would not keep its data across a restart of its own. Unreachable: an error naming the URL.
    pub fn open(url: &str, prefix: &str, encryption_key: Option<&Secret>) -> Result<RedisStore> {
        url_problem(url).map_err(|m| StoreError::Open { path: redact(url), message: m })?;
        let client = redis::Client::open(url).map_err(|e| fail(url, e))?;
        let store = RedisStore {
            client,
            conn: Mutex::new(Link { conn: None, retry_at: None, backoff: BACKOFF_MIN }),
            prefix: prefix.to_string(),
            url: url.to_string(),
            cipher: encryption_key.map(|k| Cipher::new(k.expose())),
            // KEYS: key hash, keys zset, removed set. ARGV: id, created_at, skip_removed, fields...
            insert_key: Script::new(
                "if ARGV[3] == '1' and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
                 if ARGV[3] ~= '1' then redis.call('SREM', KEYS[3], ARGV[1]) end
                 if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
                 redis.call('HSET', KEYS[1], unpack(ARGV, 4))
                 redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
                 return 1",
            ),
            // KEYS: a hash. ARGV: n, then n field/value pairs to set, then fields to delete.
            if_exists_hset: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
                 local n = tonumber(ARGV[1])
                 if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + 2 * n)) end
                 if #ARGV > 1 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 2 + 2 * n)) end
                 return 1",
            ),
            // KEYS: the hash, its sorted set, the removed set (or a dummy). ARGV: id, remember.
            delete_key: Script::new(
                "if redis.call('DEL', KEYS[1]) == 0 then return 0 end
                 redis.call('ZREM', KEYS[2], ARGV[1])
                 if ARGV[2] == '1' then redis.call('SADD', KEYS[3], ARGV[1]) end
                 return 1",
            ),
        };
        store.check_schema()?;
        store.check_persistence();
        if store.cipher.is_none() {
            let encrypted = store.keys_raw()?.iter().filter(|h| h.get("encrypted").is_some_and(|v| v == "1")).count();
            if encrypted > 0 {
                return Err(StoreError::Open {
                    path: redact(url),
                    message: format!("{encrypted} keys are encrypted but store.encryption_key is not set"),
                });
            }
        }
        Ok(store)
    }

    fn k(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Runs `f` on the connection, connecting first if needed. A broken connection is dropped,
    /// and the next attempt to connect waits out a backoff (calls meanwhile fail at once, with
    /// nothing written). Logs once when Redis goes away and once when it is back.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T> {
        let mut link: MutexGuard<'_, Link> = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if link.conn.is_none() {
            if let Some(at) = link.retry_at.filter(|at| std::time::Instant::now() < *at) {
                let wait = at.saturating_duration_since(std::time::Instant::now());
                return Err(StoreError::Unavailable(format!(
                    "Redis at {} (next try in {wait:.1?})",
                    redact(&self.url)
                )));
            }
            match self.connect() {
                Ok(c) => {
                    if link.retry_at.take().is_some() {
                        log::info!("store: Redis at {} is reachable again", redact(&self.url));
                    }
                    link.backoff = BACKOFF_MIN;
                    link.conn = Some(c);
                }
                Err(e) => return Err(self.went_away(&mut link, e)),
            }
        }
        let conn = link.conn.as_mut().expect("connected above");
        match f(conn) {
            Ok(v) => {
                crate::metrics::store_up(true);
                Ok(v)
            }
            Err(e) => match fail(&self.url, e) {
                StoreError::Unavailable(m) => Err(self.went_away(&mut link, StoreError::Unavailable(m))),
                other => Err(other),
            },
        }
    }

    fn connect(&self) -> Result<Connection> {
        let c = self.client.get_connection_with_timeout(TIMEOUT).map_err(|e| fail(&self.url, e))?;
        c.set_read_timeout(Some(TIMEOUT)).map_err(|e| fail(&self.url, e))?;
        c.set_write_timeout(Some(TIMEOUT)).map_err(|e| fail(&self.url, e))?;
        Ok(c)
    }

    fn went_away(&self, link: &mut Link, e: StoreError) -> StoreError {
        if link.retry_at.is_none() {
            log::warn!("store: {e}; admin writes answer 503 until it is back (serving goes on from memory)");
        }
        crate::metrics::store_up(false);
        link.conn = None;
        link.retry_at = Some(std::time::Instant::now() + link.backoff);
        link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
        e
    }

    fn check_schema(&self) -> Result<()> {
        let key = self.k("schema");
        let pattern = self.k("*");
        let (version, any): (Option<String>, bool) = self.with(|c| {
            let version: Option<String> = redis::cmd("GET").arg(&key).query(c)?;
            // SCAN until the cursor comes back to 0: one batch may miss the prefix in a big database.
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) =
                    redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query(c)?;
                if !found.is_empty() {
                    return Ok((version, true));
                }
                if next == 0 {
                    return Ok((version, false));
                }
                cursor = next;
            }
        })?;
        let open_err = |message: String| StoreError::Open { path: redact(&self.url), message };
        match version.as_deref() {
            Some(SCHEMA) => Ok(()),
            Some(v) => Err(open_err(format!(
                "prefix {:?} holds schema version {v}; this build knows {SCHEMA}: nothing was written (use another store.prefix, or the matching ollama-pool version)",
                self.prefix
            ))),
            None if any => Err(open_err(format!(
                "prefix {:?} holds data without a schema version: nothing was written (use another store.prefix)",
                self.prefix
            ))),
            None => self.with(|c| redis::cmd("SET").arg(&key).arg(SCHEMA).arg("NX").query::<()>(c)),
        }
    }

    fn check_persistence(&self) {
        let aof: redis::RedisResult<Vec<String>> = {
            let mut link = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            match link.conn.as_mut() {
                Some(c) => redis::cmd("CONFIG").arg("GET").arg("appendonly").query(c),
                None => return,
            }
        };
        match aof {
            Ok(v) if v.get(1).is_some_and(|s| s == "yes") => {}
            Ok(_) => log::warn!(
                "store: Redis at {} has appendonly off: what it holds is lost if Redis itself restarts (set appendonly yes)",
                redact(&self.url)
            ),
            Err(e) => log::warn!("store: could not read Redis's appendonly setting ({e}); make sure it is on"),
        }
    }

    fn seal(&self, secret: &Secret) -> Result<(String, bool)> {
        match &self.cipher {
            Some(c) => Ok((hex::encode(c.seal(secret.expose().as_bytes())?), true)),
            None => Ok((hex::encode(secret.expose().as_bytes()), false)),
        }
    }

    fn unseal(&self, hexed: &str, encrypted: bool) -> Result<Secret> {
        let blob = hex::decode(hexed).map_err(|_| StoreError::Crypto("stored key is not hex".into()))?;
        let plain = match (encrypted, &self.cipher) {
            (false, _) => blob,
            (true, Some(c)) => c.open(&blob)?,
            (true, None) => return Err(StoreError::Crypto("encrypted key but no store.encryption_key".into())),
        };
        String::from_utf8(plain).map(Secret::new).map_err(|_| StoreError::Crypto("stored key is not UTF-8".into()))
    }

    /// Every key hash, in created order (ids in the `keys` set whose hash is gone are skipped).
    fn keys_raw(&self) -> Result<Vec<HashMap<String, String>>> {
        let set = self.k("keys");
        let ids: Vec<String> = self.with(|c| redis::cmd("ZRANGE").arg(&set).arg(0).arg(-1).query(c))?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let mut p = redis::pipe();
            for id in chunk {
                p.cmd("HGETALL").arg(self.k(&format!("key:{id}")));
            }
            let maps: Vec<HashMap<String, String>> = self.with(|c| p.query(c))?;
            for (id, mut m) in chunk.iter().zip(maps) {
                if !m.is_empty() {
                    m.insert("id".into(), id.clone());
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    fn parse_key(&self, m: HashMap<String, String>) -> Result<StoredKey> {
        let park = match (opt(&m, "park_status"), opt(&m, "park_reason"), opt(&m, "park_until")) {
            (Some(s), Some(r), Some(u)) => Some(SavedPark { status: s as u8, reason: r as u8, until_ms: u }),
            _ => None,
        };
        Ok(StoredKey {
            secret: self.unseal(
                m.get("secret").map(String::as_str).unwrap_or(""),
                m.get("encrypted").is_some_and(|v| v == "1"),
            )?,
            id: m.get("id").cloned().unwrap_or_default(),
            label: m.get("label").cloned(),
            created_at_ms: num(&m, "created_at"),
            expires_at_ms: opt(&m, "expires_at"),
            disabled_until_ms: opt(&m, "disabled_until"),
            models: m.get("models").and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default(),
            category: m.get("category").cloned(),
            counters: Counters {
                requests: num(&m, "requests"),
                successes: num(&m, "successes"),
                failures: num(&m, "failures"),
                consecutive_failures: num(&m, "consecutive_failures") as u32,
                last_used_ms: num(&m, "last_used"),
                last_success_ms: num(&m, "last_success"),
                last_failure_ms: num(&m, "last_failure"),
                park,
            },
            provider: m.get("provider").cloned().unwrap_or_default(),
            from_file: m.get("from_file").is_some_and(|v| v == "1"),
        })
    }

    /// Sets `set` and deletes `del` fields of an existing hash; false when it does not exist.
    fn update(&self, key: &str, set: &[(&str, String)], del: &[&str]) -> Result<bool> {
        let mut inv = self.if_exists_hset.key(key);
        inv.arg(set.len());
        for (f, v) in set {
            inv.arg(*f).arg(v);
        }
        for f in del {
            inv.arg(*f);
        }
        self.with(|c| inv.invoke::<i64>(c)).map(|n| n == 1)
    }
}

fn num(m: &HashMap<String, String>, f: &str) -> u64 {
    m.get(f).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn opt(m: &HashMap<String, String>, f: &str) -> Option<u64> {
    m.get(f).and_then(|v| v.parse().ok())
}

fn key_fields(k: &StoredKey, secret: String, encrypted: bool) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("secret", secret),
        ("encrypted", if encrypted { "1" } else { "0" }.to_string()),
        ("created_at", k.created_at_ms.to_string()),
        ("models", serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into())),
        ("provider", k.provider.clone()),
        ("from_file", if k.from_file { "1" } else { "0" }.to_string()),
    ];
    for (name, v) in [
        ("label", k.label.clone()),
        ("expires_at", k.expires_at_ms.map(|v| v.to_string())),
        ("disabled_until", k.disabled_until_ms.map(|v| v.to_string())),
        ("category", k.category.clone()),
    ] {
        if let Some(v) = v {
            f.push((name, v));
        }
    }
    f
}

fn usage_field(r: &UsageRow, counter: &str) -> String {
    serde_json::to_string(&[r.client.as_str(), r.provider.as_str(), r.model.as_str(), counter]).unwrap_or_default()
}

impl Store for RedisStore {
    fn keys(&self) -> Result<Vec<StoredKey>> {
        self.keys_raw()?.into_iter().map(|m| self.parse_key(m)).collect()
    }

    fn key(&self, id: &str) -> Result<Option<StoredKey>> {
        let mut m: HashMap<String, String> =
            self.with(|c| redis::cmd("HGETALL").arg(self.k(&format!("key:{id}"))).query(c))?;
        if m.is_empty() {
            return Ok(None);
        }
        m.insert("id".into(), id.to_string());
        self.parse_key(m).map(Some)
    }

    fn insert_keys(&self, keys: &[StoredKey], skip_removed: bool) -> Result<Vec<String>> {
        let mut added = Vec::new();
        for chunk in keys.chunks(CHUNK) {
            let mut p = redis::pipe();
            p.atomic();
            for k in chunk {
                let (secret, encrypted) = self.seal(&k.secret)?;
                let mut inv = self.insert_key.key(self.k(&format!("key:{}", k.id)));
                inv.key(self.k("keys")).key(self.k("removed"));
                inv.arg(&k.id).arg(k.created_at_ms).arg(if skip_removed { "1" } else { "0" });
                for (f, v) in key_fields(k, secret, encrypted) {
                    inv.arg(f).arg(v);
                }
                p.invoke_script(&inv);
            }
            self.with(|c| self.insert_key.prepare_invoke().load(c).map(|_: String| ()))?;
            let results: Vec<i64> = self.with(|c| p.query(c))?;
            added.extend(chunk.iter().zip(results).filter(|(_, n)| *n == 1).map(|(k, _)| k.id.clone()));
        }
        Ok(added)
    }

    fn delete_key(&self, id: &str) -> Result<bool> {
        let mut inv = self.delete_key.key(self.k(&format!("key:{id}")));
        inv.key(self.k("keys")).key(self.k("removed")).arg(id).arg("1");
        self.with(|c| inv.invoke::<i64>(c)).map(|n| n == 1)
    }

    fn forget_key(&self, id: &str) -> Result<bool> {
        let mut inv = self.delete_key.key(self.k(&format!("key:{id}")));
        inv.key(self.k("keys")).key(self.k("removed")).arg(id).arg("0");
        self.with(|c| inv.invoke::<i64>(c)).map(|n| n == 1)
    }

    fn set_disabled(&self, id: &str, until_ms: Option<u64>) -> Result<bool> {
        let key = self.k(&format!("key:{id}"));
        match until_ms {
            Some(t) => self.update(&key, &[("disabled_until", t.to_string())], &[]),
            None => self.update(&key, &[], &["disabled_until"]),
        }
    }

    fn set_models(&self, id: &str, models: &[String], category: &str) -> Result<bool> {
        let models = serde_json::to_string(models).unwrap_or_else(|_| "[]".into());
        self.update(&self.k(&format!("key:{id}")), &[("models", models), ("category", category.to_string())], &[])
    }

    fn save_counters(&self, counters: &[(String, Counters)]) -> Result<()> {
        for chunk in counters.chunks(CHUNK) {
            let mut p = redis::pipe();
            for (id, c) in chunk {
                let mut inv = self.if_exists_hset.key(self.k(&format!("key:{id}")));
                let mut set = vec![
                    ("requests", c.requests.to_string()),
                    ("successes", c.successes.to_string()),
                    ("failures", c.failures.to_string()),
                    ("consecutive_failures", c.consecutive_failures.to_string()),
                    ("last_used", c.last_used_ms.to_string()),
                    ("last_success", c.last_success_ms.to_string()),
                    ("last_failure", c.last_failure_ms.to_string()),
                ];
                if let Some(park) = c.park {
                    set.push(("park_status", park.status.to_string()));
                    set.push(("park_reason", park.reason.to_string()));
                    set.push(("park_until", park.until_ms.to_string()));
                }
                inv.arg(set.len());
                for (f, v) in &set {
                    inv.arg(*f).arg(v);
                }
                if c.park.is_none() {
                    inv.arg("park_status").arg("park_reason").arg("park_until");
                }
                p.invoke_script(&inv);
            }
            self.with(|c| self.if_exists_hset.prepare_invoke().load(c).map(|_: String| ()))?;
            self.with(|c| p.query::<Vec<Value>>(c))?;
        }
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<StoredToken>> {
        let set = self.k("tokens");
        let ids: Vec<String> = self.with(|c| redis::cmd("ZRANGE").arg(&set).arg(0).arg(-1).query(c))?;
        let mut p = redis::pipe();
        for id in &ids {
            p.cmd("HGETALL").arg(self.k(&format!("token:{id}")));
        }
        let maps: Vec<HashMap<String, String>> = if ids.is_empty() { Vec::new() } else { self.with(|c| p.query(c))? };
        Ok(ids
            .into_iter()
            .zip(maps)
            .filter(|(_, m)| !m.is_empty())
            .map(|(id, m)| StoredToken {
                hash: m
                    .get("hash")
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 32]),
                name: m.get("name").cloned().unwrap_or_default(),
                created_at_ms: num(&m, "created_at"),
                expires_at_ms: opt(&m, "expires_at"),
                models: m.get("models").and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default(),
                rpm: opt(&m, "rpm").map(|v| v.min(u32::MAX as u64) as u32),
                budgets: crate::usage::Limits {
                    tpm: opt(&m, "tpm"),
                    daily_tokens: opt(&m, "daily_tokens"),
                    monthly_tokens: opt(&m, "monthly_tokens"),
                },
                id,
            })
            .collect())
    }

    fn insert_token(&self, t: &StoredToken) -> Result<()> {
        let mut fields = vec![
            ("hash", hex::encode(t.hash)),
            ("name", t.name.clone()),
            ("created_at", t.created_at_ms.to_string()),
            ("models", serde_json::to_string(&t.models).unwrap_or_else(|_| "[]".into())),
        ];
        for (f, v) in [
            ("expires_at", t.expires_at_ms),
            ("rpm", t.rpm.map(u64::from)),
            ("tpm", t.budgets.tpm),
            ("daily_tokens", t.budgets.daily_tokens),
            ("monthly_tokens", t.budgets.monthly_tokens),
        ] {
            if let Some(v) = v {
                fields.push((f, v.to_string()));
            }
        }
        let key = self.k(&format!("token:{}", t.id));
        let mut p = redis::pipe();
        p.atomic().cmd("DEL").arg(&key).ignore();
        p.cmd("HSET").arg(&key);
        for (f, v) in &fields {
            p.arg(*f).arg(v);
        }
        p.ignore().cmd("ZADD").arg(self.k("tokens")).arg(t.created_at_ms).arg(&t.id).ignore();
        self.with(|c| p.query::<()>(c))
    }

    fn delete_token(&self, id: &str) -> Result<bool> {
        let mut inv = self.delete_key.key(self.k(&format!("token:{id}")));
        inv.key(self.k("tokens")).key(self.k("removed-tokens")).arg(id).arg("0");
        self.with(|c| inv.invoke::<i64>(c)).map(|n| n == 1)
    }

    fn add_usage(&self, rows: &[UsageRow]) -> Result<()> {
        for chunk in rows.chunks(CHUNK / 4) {
            let mut p = redis::pipe();
            p.atomic();
            for r in chunk {
                let day = self.k(&format!("usage:{}", r.day));
                p.cmd("ZADD").arg(self.k("usage:days")).arg(r.day).arg(r.day).ignore();
                for (name, n) in [
                    ("requests", r.requests),
                    ("errors", r.errors),
                    ("prompt_tokens", r.prompt_tokens),
                    ("completion_tokens", r.completion_tokens),
                ] {
                    if n > 0 {
                        p.cmd("HINCRBY").arg(&day).arg(usage_field(r, name)).arg(n).ignore();
                    }
                }
            }
            self.with(|c| p.query::<()>(c))?;
        }
        Ok(())
    }

    fn usage(&self, from_day: u32, to_day: u32) -> Result<Vec<UsageRow>> {
        let days: Vec<u32> =
            self.with(|c| redis::cmd("ZRANGEBYSCORE").arg(self.k("usage:days")).arg(from_day).arg(to_day).query(c))?;
        let mut out = Vec::new();
        for day in days {
            let m: HashMap<String, u64> =
                self.with(|c| redis::cmd("HGETALL").arg(self.k(&format!("usage:{day}"))).query(c))?;
            let mut rows: std::collections::BTreeMap<(String, String, String), UsageRow> = Default::default();
            for (field, n) in m {
                let Ok([client, provider, model, counter]) = serde_json::from_str::<[String; 4]>(&field) else {
                    continue;
                };
                let r = rows.entry((client.clone(), provider.clone(), model.clone())).or_insert_with(|| UsageRow {
                    day,
                    client,
                    provider,
                    model,
                    ..Default::default()
                });
                match counter.as_str() {
                    "requests" => r.requests = n,
                    "errors" => r.errors = n,
                    "prompt_tokens" => r.prompt_tokens = n,
                    "completion_tokens" => r.completion_tokens = n,
                    _ => {}
                }
            }
            out.extend(rows.into_values());
        }
        Ok(out)
    }
}
