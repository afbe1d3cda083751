//! The fleet's live key state in Redis (SPEC §3.9): what pub/sub carries is also kept, so an
//! instance that starts, or comes back after Redis was away, takes the whole state over at once
//! (`reconcile`) instead of only the changes it happens to hear.
//!
//! - `<prefix>:live:<provider>`: key id → `status,reason,until_ms,at_ms` of its last move.
//! - `<prefix>:mparks:<provider>`: `key id \n model` → `until_ms,at_ms` of its last model park.
//!
//! A change is written and published by one script, and only when it is newer (`at_ms`) than
//! what Redis holds: a change an instance queued while Redis was away does not undo a later one
//! made elsewhere meanwhile. Expired model parks are pruned by the next reconcile.

use super::{Local, Message, WireChange, APPLYING};
use crate::pool::{Reason, Status};
use redis::Script;
use std::collections::{HashMap, HashSet};

/// KEYS: the state hash, the channel. ARGV: field, value, at_ms, message.
const WRITE_NEWER: &str = "local cur = redis.call('HGET', KEYS[1], ARGV[1])
    if cur then
      local at = tonumber(string.match(cur, '[^,]*$'))
      if at and at > tonumber(ARGV[3]) then return 0 end
    end
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    redis.call('PUBLISH', KEYS[2], ARGV[4])
    return 1";

/// KEYS: the state hash, the channel. ARGV: field, message. (A removed key's last state is
/// forgotten: added again later, it starts afresh.)
const FORGET: &str = "redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('PUBLISH', KEYS[2], ARGV[2])
    return 1";

pub struct Scripts {
    write_newer: Script,
    forget: Script,
}

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts { write_newer: Script::new(WRITE_NEWER), forget: Script::new(FORGET) }
    }
}

pub fn live_key(prefix: &str, provider: &str) -> String {
    format!("{prefix}:live:{provider}")
}

pub fn mparks_key(prefix: &str, provider: &str) -> String {
    format!("{prefix}:mparks:{provider}")
}

/// Publishes `m` on `channel` and records it in the live state. Ok(false): Redis holds a newer
/// state for that key, so this stale change was neither kept nor published.
pub fn publish(
    c: &mut redis::Connection,
    scripts: &Scripts,
    prefix: &str,
    channel: &str,
    m: &Message,
) -> redis::RedisResult<bool> {
    let text = serde_json::to_string(m).unwrap_or_default();
    let kept: i64 = match &m.change {
        WireChange::Moved { to, reason, until_ms } => scripts
            .write_newer
            .key(live_key(prefix, &m.provider))
            .key(channel)
            .arg(&m.key_id)
            .arg(format!("{to},{reason},{until_ms},{}", m.at_ms))
            .arg(m.at_ms)
            .arg(&text)
            .invoke(c)?,
        WireChange::ModelParked { model, until_ms } => scripts
            .write_newer
            .key(mparks_key(prefix, &m.provider))
            .key(channel)
            .arg(format!("{}\n{model}", m.key_id))
            .arg(format!("{until_ms},{}", m.at_ms))
            .arg(m.at_ms)
            .arg(&text)
            .invoke(c)?,
        WireChange::Removed => {
            scripts.forget.key(live_key(prefix, &m.provider)).key(channel).arg(&m.key_id).arg(&text).invoke(c)?
        }
        WireChange::Added
        | WireChange::TokenAdded { .. }
        | WireChange::TokenRemoved { .. }
        | WireChange::Resync
        | WireChange::Heartbeat => {
            redis::cmd("PUBLISH").arg(channel).arg(&text).query::<i64>(c)?;
            1
        }
    };
    Ok(kept == 1)
}

/// One key's last move as Redis holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveState {
    pub status: Status,
    pub reason: Reason,
    pub until_ms: u64,
}

fn parse_state(v: &str) -> Option<LiveState> {
    let mut f = v.split(',').map(|p| p.parse::<u64>().ok());
    let (status, reason, until_ms) = (f.next()??, f.next()??, f.next()??);
    Some(LiveState { status: Status::from_u8(status as u8), reason: Reason::from_u8(reason as u8), until_ms })
}

/// What a reconcile changed here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub keys_added: usize,
    pub keys_removed: usize,
    pub states: usize,
    pub model_parks: usize,
    pub tokens_added: usize,
    pub tokens_removed: usize,
}

impl Reconciled {
    pub fn is_empty(&self) -> bool {
        *self == Reconciled::default()
    }
}

/// Makes this instance's pools and client table what the store and the live state say:
/// keys and tokens added or removed elsewhere, and every key's last state. Runs as a remote
/// change (nothing it does is published again).
pub fn reconcile(c: &mut redis::Connection, prefix: &str, local: &Local) -> Result<Reconciled, String> {
    APPLYING.with(|a| a.set(true));
    let out = reconcile_inner(c, prefix, local);
    APPLYING.with(|a| a.set(false));
    out
}

fn reconcile_inner(c: &mut redis::Connection, prefix: &str, local: &Local) -> Result<Reconciled, String> {
    let mut done = Reconciled::default();
    let now = local.clock.now_ms();
    let stored = local.store.keys().map_err(|e| e.to_string())?;
    let rt = local.runtime.load();
    for p in &rt.providers {
        // One pool write each way (a bulk import elsewhere can bring 100k keys).
        let ids: HashSet<&str> = rt.stored_keys_of(p, &stored).map(|k| k.id.as_str()).collect();
        let missing = rt.stored_keys_of(p, &stored).filter(|k| p.pool.get(&k.id).is_none());
        done.keys_added += p.pool.add_all(missing.filter_map(|k| crate::admin::ops::to_pool_key(k, &p.auth, now))).0;
        let keys = p.pool.keys();
        let gone: HashSet<&str> = keys.iter().map(|k| k.id.as_str()).filter(|id| !ids.contains(id)).collect();
        done.keys_removed += p.pool.remove_all(&gone);

        let live: HashMap<String, String> =
            redis::cmd("HGETALL").arg(live_key(prefix, &p.name)).query(c).map_err(|e| e.to_string())?;
        for (id, v) in live {
            let (Some(s), Some(key)) = (parse_state(&v), p.pool.get(&id)) else { continue };
            let until = key.until_ms().unwrap_or(0);
            if (key.status(), key.reason(), until) != (s.status, s.reason, s.until_ms)
                && p.pool.transition(&key, s.status, s.reason, s.until_ms)
            {
                done.states += 1;
            }
        }

        let parks: HashMap<String, String> =
            redis::cmd("HGETALL").arg(mparks_key(prefix, &p.name)).query(c).map_err(|e| e.to_string())?;
        let mut expired = Vec::new();
        for (field, v) in parks {
            let until: u64 = v.split(',').next().and_then(|u| u.parse().ok()).unwrap_or(0);
            let Some((id, model)) = field.split_once('\n') else { continue };
            if until <= now {
                expired.push(field.clone());
                continue;
            }
            if let Some(key) = p.pool.get(id) {
                if key.model_returns_at(model, now).is_none_or(|at| at < until) {
                    p.pool.park_model(&key, model, until);
                    done.model_parks += 1;
                }
            }
        }
        if !expired.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("HDEL").arg(mparks_key(prefix, &p.name)).arg(&expired).query(c);
        }
    }

    let tokens = local.store.tokens().map_err(|e| e.to_string())?;
    let hashes: HashSet<[u8; 32]> = tokens.iter().map(|t| t.hash).collect();
    for t in &tokens {
        if local.clients.get(&t.hash).is_none() {
            let client = crate::admin::ops::to_client(t);
            local.clients.insert(t.hash, client);
            done.tokens_added += 1;
        }
    }
    let mut stale = Vec::new();
    local.clients.each_hashed(|h, cl| {
        if cl.from_store && !hashes.contains(h) {
            stale.push(*h);
        }
    });
    for h in stale {
        local.clients.remove(&h);
        done.tokens_removed += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_junk_does_not() {
        assert_eq!(
            parse_state("2,3,1700000000000,1699999999000"),
            Some(LiveState { status: Status::from_u8(2), reason: Reason::from_u8(3), until_ms: 1_700_000_000_000 })
        );
        assert_eq!(parse_state("x,1,2,3"), None);
        assert_eq!(parse_state("1,2"), None);
    }
}
