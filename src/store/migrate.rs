//! `ollama-pool store migrate --from FILE --to FILE` (issue #11 item 5): copies keys (provider,
//! label, expiry, disable, models, counters and parks), tokens and usage from one config's store
//! to another's — SQLite to Redis or back. Idempotent: a second run changes nothing (usage adds
//! only what the target lacks). Keys are decrypted with the source's `store.encryption_key` and
//! sealed with the target's.
//!
//! Not copied: which keys an operator removed (the store keeps no list to read); a removed key
//! is simply absent from the source.

use super::{Result, Store, UsageRow};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub keys: usize,
    pub keys_new: usize,
    pub tokens: usize,
    pub tokens_new: usize,
    /// Usage rows the target lacked (in whole or in part).
    pub usage_rows: usize,
}

pub fn migrate(from: &dyn Store, to: &dyn Store) -> Result<Migrated> {
    let mut m = Migrated::default();
    let keys = from.keys()?;
    m.keys = keys.len();
    for chunk in keys.chunks(1000) {
        m.keys_new += to.insert_keys(chunk, false)?.len();
        for k in chunk {
            to.set_disabled(&k.id, k.disabled_until_ms)?;
            if !k.models.is_empty() || k.category.is_some() {
                to.set_models(&k.id, &k.models, k.category.as_deref().unwrap_or(""))?;
            }
        }
        let counters: Vec<_> = chunk.iter().map(|k| (k.id.clone(), k.counters)).collect();
        to.save_counters(&counters)?;
    }
    let have: std::collections::HashSet<String> = to.tokens()?.into_iter().map(|t| t.id).collect();
    for t in from.tokens()? {
        m.tokens += 1;
        if !have.contains(&t.id) {
            to.insert_token(&t)?;
            m.tokens_new += 1;
        }
    }
    let target: std::collections::HashMap<(u32, String, String, String), UsageRow> = to
        .usage(0, u32::MAX)?
        .into_iter()
        .map(|r| ((r.day, r.client.clone(), r.provider.clone(), r.model.clone()), r))
        .collect();
    let missing: Vec<UsageRow> = from
        .usage(0, u32::MAX)?
        .into_iter()
        .filter_map(|r| {
            let t = target.get(&(r.day, r.client.clone(), r.provider.clone(), r.model.clone()));
            let less = |a: u64, f: fn(&UsageRow) -> u64| a.saturating_sub(t.map(f).unwrap_or(0));
            let d = UsageRow {
                requests: less(r.requests, |t| t.requests),
                errors: less(r.errors, |t| t.errors),
                prompt_tokens: less(r.prompt_tokens, |t| t.prompt_tokens),
                completion_tokens: less(r.completion_tokens, |t| t.completion_tokens),
                ..r
            };
            (d.requests + d.errors + d.prompt_tokens + d.completion_tokens > 0).then_some(d)
        })
        .collect();
    m.usage_rows = missing.len();
    to.add_usage(&missing)?;
    Ok(m)
}
