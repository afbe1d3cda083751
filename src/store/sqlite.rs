//! The embedded SQLite store: WAL, `synchronous=FULL` (a 2xx admin answer survives SIGKILL and
//! power loss), a busy timeout so the CLI works while the server runs, and schema migrations
//! numbered in code (`PRAGMA user_version`).

use super::{Cipher, Counters, Result, SavedPark, Store, StoreError, StoredKey, StoredToken, UsageRow};
use crate::secret::Secret;
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::Mutex;

/// Migration N brings the schema from version N to N+1. Append only; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        secret BLOB NOT NULL,
        encrypted INTEGER NOT NULL DEFAULT 0,
        label TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        disabled_until INTEGER,
        models TEXT NOT NULL DEFAULT '[]',
        category TEXT,
        requests INTEGER NOT NULL DEFAULT 0,
        successes INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        last_used INTEGER NOT NULL DEFAULT 0,
        last_success INTEGER NOT NULL DEFAULT 0,
        last_failure INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        models TEXT NOT NULL DEFAULT '[]',
        rpm INTEGER
    );",
    // 1 -> 2: keys an operator removed, so a key file read at start does not bring them back.
    "CREATE TABLE removed_keys (id TEXT PRIMARY KEY, removed_at INTEGER NOT NULL);",
    // 2 -> 3: parks (cooling / invalid until a time), saved with the counter snapshots.
    "ALTER TABLE keys ADD COLUMN park_status INTEGER;
     ALTER TABLE keys ADD COLUMN park_reason INTEGER;
     ALTER TABLE keys ADD COLUMN park_until INTEGER;",
    // 3 -> 4: providers (SPEC §2.2.1) and where a key came from (a reload drops file keys that
    // left every file). Keys stored before are the home provider's and count as operator-added.
    "ALTER TABLE keys ADD COLUMN provider TEXT NOT NULL DEFAULT '';
     ALTER TABLE keys ADD COLUMN from_file INTEGER NOT NULL DEFAULT 0;",
    // 4 -> 5: token budgets and usage by (UTC day, client, provider, model) (SPEC §3.11).
    "ALTER TABLE tokens ADD COLUMN tpm INTEGER;
     ALTER TABLE tokens ADD COLUMN daily_tokens INTEGER;
     ALTER TABLE tokens ADD COLUMN monthly_tokens INTEGER;
     CREATE TABLE usage (
        day INTEGER NOT NULL,
        client TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, client, provider, model)
     ) WITHOUT ROWID;",
];

pub struct SqliteStore {
    /// One connection; admin writes are rare and short, and never on the request path.
    conn: Mutex<Connection>,
    cipher: Option<Cipher>,
}

impl SqliteStore {
    pub fn open(path: &Path, encryption_key: Option<&Secret>) -> Result<SqliteStore> {
        let fail = |message: String| StoreError::Open { path: path.display().to_string(), message };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| fail(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| fail(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| fail(e.to_string()))?;
        migrate(&conn).map_err(|e| fail(format!("migrating the schema: {e}")))?;
        let store = SqliteStore { conn: Mutex::new(conn), cipher: encryption_key.map(|k| Cipher::new(k.expose())) };
        crate::metrics::store_up(true);
        if store.cipher.is_none() {
            let encrypted: i64 =
                store.lock().query_row("SELECT COUNT(*) FROM keys WHERE encrypted = 1", [], |r| r.get(0))?;
            if encrypted > 0 {
                return Err(fail(format!("{encrypted} keys are encrypted but store.encryption_key is not set")));
            }
        }
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seal(&self, secret: &Secret) -> Result<(Vec<u8>, bool)> {
        match &self.cipher {
            Some(c) => Ok((c.seal(secret.expose().as_bytes())?, true)),
            None => Ok((secret.expose().as_bytes().to_vec(), false)),
        }
    }

    fn unseal(&self, blob: Vec<u8>, encrypted: bool) -> Result<Secret> {
        let plain = match (encrypted, &self.cipher) {
            (false, _) => blob,
            (true, Some(c)) => c.open(&blob)?,
            (true, None) => return Err(StoreError::Crypto("encrypted key but no store.encryption_key".into())),
        };
        String::from_utf8(plain).map(Secret::new).map_err(|_| StoreError::Crypto("stored key is not UTF-8".into()))
    }
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (n + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn opt(v: Option<i64>) -> Option<u64> {
    v.map(|x| x.max(0) as u64)
}

fn json_list(s: String) -> Vec<String> {
    serde_json::from_str(&s).unwrap_or_default()
}

impl Store for SqliteStore {
    fn release_memory(&self) {
        // The page cache (up to 2 MB) that reading and importing 100k keys filled.
        if let Err(e) = self.lock().execute_batch("PRAGMA shrink_memory") {
            log::debug!("store: shrink_memory: {e}");
        }
    }

    fn keys(&self) -> Result<Vec<StoredKey>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, secret, encrypted, label, created_at, expires_at, disabled_until, models, category,
                    requests, successes, failures, consecutive_failures, last_used, last_success, last_failure,
                    park_status, park_reason, park_until, provider, from_file
             FROM keys ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<String>>(8)?,
                Counters {
                    requests: r.get::<_, i64>(9)? as u64,
                    successes: r.get::<_, i64>(10)? as u64,
                    failures: r.get::<_, i64>(11)? as u64,
                    consecutive_failures: r.get::<_, i64>(12)? as u32,
                    last_used_ms: r.get::<_, i64>(13)? as u64,
                    last_success_ms: r.get::<_, i64>(14)? as u64,
                    last_failure_ms: r.get::<_, i64>(15)? as u64,
                    park: match (
                        r.get::<_, Option<i64>>(16)?,
                        r.get::<_, Option<i64>>(17)?,
                        r.get::<_, Option<i64>>(18)?,
                    ) {
                        (Some(status), Some(reason), Some(until)) => Some(SavedPark {
                            status: status as u8,
                            reason: reason as u8,
                            until_ms: until.max(0) as u64,
                        }),
                        _ => None,
                    },
                },
                r.get::<_, String>(19)?,
                r.get::<_, bool>(20)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                blob,
                encrypted,
                label,
                created,
                expires,
                disabled,
                models,
                category,
                counters,
                provider,
                from_file,
            ) = row?;
            out.push(StoredKey {
                secret: self.unseal(blob, encrypted)?,
                id,
                label,
                created_at_ms: created.max(0) as u64,
                expires_at_ms: opt(expires),
                disabled_until_ms: opt(disabled),
                models: json_list(models),
                category,
                counters,
                provider,
                from_file,
            });
        }
        Ok(out)
    }

    fn insert_keys(&self, keys: &[StoredKey], skip_removed: bool) -> Result<Vec<String>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut added = Vec::new();
        {
            let mut removed = tx.prepare("SELECT 1 FROM removed_keys WHERE id = ?1")?;
            let mut unremove = tx.prepare("DELETE FROM removed_keys WHERE id = ?1")?;
            let mut stmt = tx.prepare(
                "INSERT OR IGNORE INTO keys (id, secret, encrypted, label, created_at, expires_at, disabled_until, models, category, provider, from_file)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for k in keys {
                if skip_removed {
                    if removed.exists([&k.id])? {
                        continue;
                    }
                } else {
                    unremove.execute([&k.id])?; // an operator adding it again means it
                }
                let (blob, encrypted) = self.seal(&k.secret)?;
                let n = stmt.execute(params![
                    k.id,
                    blob,
                    encrypted,
                    k.label,
                    k.created_at_ms as i64,
                    k.expires_at_ms.map(|v| v as i64),
                    k.disabled_until_ms.map(|v| v as i64),
                    serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into()),
                    k.category,
                    k.provider,
                    k.from_file,
                ])?;
                if n == 1 {
                    added.push(k.id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(added)
    }

    fn delete_key(&self, id: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let found = tx.execute("DELETE FROM keys WHERE id = ?1", [id])? == 1;
        if found {
            let now = crate::pool::Clock::now_ms(&crate::pool::SystemClock) as i64;
            tx.execute("INSERT OR REPLACE INTO removed_keys (id, removed_at) VALUES (?1, ?2)", params![id, now])?;
        }
        tx.commit()?;
        Ok(found)
    }

    fn forget_key(&self, id: &str) -> Result<bool> {
        Ok(self.lock().execute("DELETE FROM keys WHERE id = ?1", [id])? == 1)
    }

    fn set_disabled(&self, id: &str, until_ms: Option<u64>) -> Result<bool> {
        let n = self
            .lock()
            .execute("UPDATE keys SET disabled_until = ?2 WHERE id = ?1", params![id, until_ms.map(|v| v as i64)])?;
        Ok(n == 1)
    }

    fn set_models(&self, id: &str, models: &[String], category: &str) -> Result<bool> {
        let models = serde_json::to_string(models).unwrap_or_else(|_| "[]".into());
        let n = self
            .lock()
            .execute("UPDATE keys SET models = ?2, category = ?3 WHERE id = ?1", params![id, models, category])?;
        Ok(n == 1)
    }

    fn save_counters(&self, counters: &[(String, Counters)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "UPDATE keys SET requests = ?2, successes = ?3, failures = ?4, consecutive_failures = ?5,
                        last_used = ?6, last_success = ?7, last_failure = ?8,
                        park_status = ?9, park_reason = ?10, park_until = ?11 WHERE id = ?1",
            )?;
            for (id, c) in counters {
                stmt.execute(params![
                    id,
                    c.requests as i64,
                    c.successes as i64,
                    c.failures as i64,
                    c.consecutive_failures as i64,
                    c.last_used_ms as i64,
                    c.last_success_ms as i64,
                    c.last_failure_ms as i64,
                    c.park.map(|p| p.status as i64),
                    c.park.map(|p| p.reason as i64),
                    c.park.map(|p| p.until_ms as i64),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<StoredToken>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, hash, name, created_at, expires_at, models, rpm, tpm, daily_tokens, monthly_tokens
             FROM tokens ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            let hash: Vec<u8> = r.get(1)?;
            Ok(StoredToken {
                id: r.get(0)?,
                hash: hash.try_into().unwrap_or([0; 32]),
                name: r.get(2)?,
                created_at_ms: r.get::<_, i64>(3)?.max(0) as u64,
                expires_at_ms: opt(r.get(4)?),
                models: json_list(r.get(5)?),
                rpm: r.get::<_, Option<i64>>(6)?.map(|v| v.clamp(0, u32::MAX as i64) as u32),
                budgets: crate::usage::Limits {
                    tpm: opt(r.get(7)?),
                    daily_tokens: opt(r.get(8)?),
                    monthly_tokens: opt(r.get(9)?),
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn insert_token(&self, t: &StoredToken) -> Result<()> {
        self.lock().execute(
            "INSERT INTO tokens (id, hash, name, created_at, expires_at, models, rpm, tpm, daily_tokens, monthly_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                t.id,
                t.hash.to_vec(),
                t.name,
                t.created_at_ms as i64,
                t.expires_at_ms.map(|v| v as i64),
                serde_json::to_string(&t.models).unwrap_or_else(|_| "[]".into()),
                t.rpm.map(i64::from),
                t.budgets.tpm.map(|v| v as i64),
                t.budgets.daily_tokens.map(|v| v as i64),
                t.budgets.monthly_tokens.map(|v| v as i64),
            ],
        )?;
        Ok(())
    }

    fn delete_token(&self, id: &str) -> Result<bool> {
        Ok(self.lock().execute("DELETE FROM tokens WHERE id = ?1", [id])? == 1)
    }

    fn add_usage(&self, rows: &[UsageRow]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO usage (day, client, provider, model, requests, errors, prompt_tokens, completion_tokens)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (day, client, provider, model) DO UPDATE SET
                    requests = requests + excluded.requests,
                    errors = errors + excluded.errors,
                    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                    completion_tokens = completion_tokens + excluded.completion_tokens",
            )?;
            for r in rows {
                stmt.execute(params![
                    r.day,
                    r.client,
                    r.provider,
                    r.model,
                    r.requests as i64,
                    r.errors as i64,
                    r.prompt_tokens as i64,
                    r.completion_tokens as i64,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn usage(&self, from_day: u32, to_day: u32) -> Result<Vec<UsageRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT day, client, provider, model, requests, errors, prompt_tokens, completion_tokens
             FROM usage WHERE day BETWEEN ?1 AND ?2 ORDER BY day, client, provider, model",
        )?;
        let rows = stmt.query_map(params![from_day, to_day], |r| {
            Ok(UsageRow {
                day: r.get(0)?,
                client: r.get(1)?,
                provider: r.get(2)?,
                model: r.get(3)?,
                requests: r.get::<_, i64>(4)?.max(0) as u64,
                errors: r.get::<_, i64>(5)?.max(0) as u64,
                prompt_tokens: r.get::<_, i64>(6)?.max(0) as u64,
                completion_tokens: r.get::<_, i64>(7)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::stored_key as key;

    #[test]
    fn keys_round_trip_and_duplicates_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("sub/x.db"), None).unwrap();
        assert_eq!(s.insert_keys(&[key("store-key-0001"), key("store-key-0002")], false).unwrap().len(), 2);
        assert_eq!(s.insert_keys(&[key("store-key-0001")], false).unwrap().len(), 0);
        assert!(s.set_disabled(&key("store-key-0001").id, Some(0)).unwrap());
        assert!(s.set_models(&key("store-key-0002").id, &["qwen3:8b".into()], "qwen").unwrap());
        let park = SavedPark { status: 3, reason: 1, until_ms: 1_900_000_000_000 };
        let c = Counters { requests: 5, successes: 4, failures: 1, park: Some(park), ..Default::default() };
        s.save_counters(&[(key("store-key-0002").id, c)]).unwrap();
        let keys = s.keys().unwrap();
        assert_eq!(keys.len(), 2);
        let k1 = keys.iter().find(|k| k.secret.expose() == "store-key-0001").unwrap();
        let k2 = keys.iter().find(|k| k.secret.expose() == "store-key-0002").unwrap();
        assert_eq!(k1.disabled_until_ms, Some(0));
        assert_eq!((k1.counters.park, k2.counters), (None, c), "counters and the park round-trip");
        assert_eq!((k2.models.clone(), k2.category.as_deref()), (vec!["qwen3:8b".to_string()], Some("qwen")));
        assert_eq!(k2.counters, c);
        assert!(s.delete_key(&k1.id).unwrap());
        assert!(!s.delete_key(&k1.id).unwrap());
        let again = key("store-key-0001");
        assert!(s.insert_keys(std::slice::from_ref(&again), true).unwrap().is_empty(), "a key file does not revive it");
        assert_eq!(s.insert_keys(std::slice::from_ref(&again), false).unwrap().len(), 1, "an operator can");
        s.delete_key(&again.id).unwrap();
        assert_eq!(s.insert_keys(&[again], true).unwrap().len(), 0);
    }

    #[test]
    fn encrypted_keys_need_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let pass = Secret::new("passphrase-for-tests");
        let s = SqliteStore::open(&path, Some(&pass)).unwrap();
        s.insert_keys(&[key("secret-upstream-key-42")], false).unwrap();
        drop(s);
        let raw = std::fs::read(&path).unwrap();
        let wal = std::fs::read(dir.path().join("x.db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(22).any(|w| w == b"secret-upstream-key-42"), "clear key on disk");
        }
        assert!(matches!(SqliteStore::open(&path, None), Err(StoreError::Open { .. })));
        let s = SqliteStore::open(&path, Some(&pass)).unwrap();
        assert_eq!(s.keys().unwrap()[0].secret.expose(), "secret-upstream-key-42");
    }
}
