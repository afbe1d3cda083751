//! Usage: what each client used (SPEC §3.11).
//!
//! - `scan`: reads the token usage a response reports as it passes (JSON bodies, the final
//!   SSE/NDJSON chunk).
//! - `Ledger` (here): per (UTC day, client, provider, model) requests, errors and tokens,
//!   counted in memory with atomics (no lock on the request path), flushed to the store every
//!   `store.flush_interval`, before every report and at shutdown.
//! - `report`: the rows of `GET /admin/usage` and `ollama-pool usage`, filtered and grouped.
//! - `budget`: a token's `tpm` / `daily_tokens` / `monthly_tokens`, checked before forwarding.

pub mod budget;
pub(crate) mod members;
pub mod report;
mod scan;

pub use budget::{BudgetKind, Budgets, Limits};
pub use scan::UsageScanner;

use crate::pool::calendar;
use crate::store::Store;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One row of usage: a (day, client, provider, model) and what it counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    /// Days since 1970-01-01 (UTC).
    pub day: u32,
    pub client: String,
    pub provider: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Distinct (day, client, provider, model) cells kept in memory between flushes; past it, new
/// models of a day are counted under `other` (a client inventing model names cannot grow it).
const MAX_CELLS: usize = 4096;
/// Longest model name kept; a longer one (a client's, not a real model) counts as `other`.
const MAX_MODEL: usize = 200;

struct Cell {
    day: u32,
    client: Arc<str>,
    provider: Arc<str>,
    model: Arc<str>,
    requests: AtomicU64,
    errors: AtomicU64,
    prompt: AtomicU64,
    completion: AtomicU64,
}

impl Cell {
    fn is(&self, day: u32, client: &str, provider: &str, model: &str) -> bool {
        self.day == day && &*self.client == client && &*self.provider == provider && &*self.model == model
    }

    fn add(&self, u: &Used<'_>) {
        self.requests.fetch_add(1, Relaxed);
        if u.error {
            self.errors.fetch_add(1, Relaxed);
        }
        if u.prompt_tokens > 0 {
            self.prompt.fetch_add(u.prompt_tokens, Relaxed);
        }
        if u.completion_tokens > 0 {
            self.completion.fetch_add(u.completion_tokens, Relaxed);
        }
    }
}

/// The cell of (day, client, provider, model) in `cells`, if it is there.
fn find_in<'m>(cells: &'m Cells, day: u32, client: &str, provider: &str, model: &str) -> Option<&'m Arc<Cell>> {
    cells.get(&cell_hash(cells, day, client, provider, model))?.iter().find(|c| c.is(day, client, provider, model))
}

/// hash of (day, client, provider, model) -> the cells with that hash. Its hasher (foldhash,
/// seeded once per process: std's SipHash cost more than the rest of a request's count) also
/// hashes the cells' names, and every copy of the map keeps it, so a hash stays the same.
type Cells = HashMap<u64, Vec<Arc<Cell>>, foldhash::fast::RandomState>;

fn cell_hash(cells: &Cells, day: u32, client: &str, provider: &str, model: &str) -> u64 {
    cells.hasher().hash_one((day, client, provider, model))
}

/// One finished request, as the ledger counts it.
pub struct Used<'a> {
    pub at_ms: u64,
    pub client: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub error: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The in-memory usage counters of this process since their last flush.
#[derive(Default)]
pub struct Ledger {
    /// Read lock-free on every request; replaced whole when a new (day, client, provider,
    /// model) appears, which is rare.
    cells: ArcSwap<Cells>,
    /// Serialises flushes (the periodic one and a report's), so a row is written once.
    flushing: std::sync::Mutex<()>,
}

impl Ledger {
    pub fn record(&self, u: &Used<'_>) {
        let day = calendar::day_of(u.at_ms);
        let model = if u.model.len() > MAX_MODEL { "other" } else { u.model };
        // Counted in place under the map's guard: every request of a client and model meets the
        // same cell, so a clone of its `Arc` would be two more atomic writes on a line that
        // both cores write.
        if let Some(cell) = find_in(&self.cells.load(), day, u.client, u.provider, model) {
            cell.add(u);
            return;
        }
        self.cell(day, u.client, u.provider, model).add(u);
    }

    fn find(&self, day: u32, client: &str, provider: &str, model: &str) -> Option<Arc<Cell>> {
        find_in(&self.cells.load(), day, client, provider, model).cloned()
    }

    fn cell(&self, day: u32, client: &str, provider: &str, mut model: &str) -> Arc<Cell> {
        if let Some(c) = self.find(day, client, provider, model) {
            return c;
        }
        if self.len() >= MAX_CELLS {
            model = "other";
            if let Some(c) = self.find(day, client, provider, model) {
                return c;
            }
        }
        let fresh = Arc::new(Cell {
            day,
            client: client.into(),
            provider: provider.into(),
            model: model.into(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            prompt: AtomicU64::new(0),
            completion: AtomicU64::new(0),
        });
        let mut chosen = fresh.clone();
        self.cells.rcu(|m| {
            let mut m = HashMap::clone(m);
            let list = m.entry(cell_hash(&m, day, client, provider, model)).or_default();
            // Another thread may have added it meanwhile: use that one.
            match list.iter().find(|c| c.is(day, client, provider, model)) {
                Some(c) => chosen = c.clone(),
                None => {
                    chosen = fresh.clone();
                    list.push(fresh.clone());
                }
            }
            m
        });
        chosen
    }

    fn len(&self) -> usize {
        self.cells.load().values().map(Vec::len).sum()
    }

    /// Writes what was counted since the last flush to the store, adding to what it holds. On
    /// a store error the counts are kept for the next flush. Cells of days before yesterday
    /// that counted nothing since are dropped (a request that began before midnight may still
    /// add to yesterday's).
    pub fn flush(&self, store: &dyn Store, now_ms: u64) -> crate::store::Result<()> {
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let cells = self.cells.load_full();
        let mut taken: Vec<(&Arc<Cell>, UsageRow)> = Vec::new();
        for c in cells.values().flatten() {
            let row = UsageRow {
                day: c.day,
                client: c.client.to_string(),
                provider: c.provider.to_string(),
                model: c.model.to_string(),
                requests: c.requests.swap(0, Relaxed),
                errors: c.errors.swap(0, Relaxed),
                prompt_tokens: c.prompt.swap(0, Relaxed),
                completion_tokens: c.completion.swap(0, Relaxed),
            };
            if row.requests + row.errors + row.prompt_tokens + row.completion_tokens > 0 {
                taken.push((c, row));
            }
        }
        if !taken.is_empty() {
            let rows: Vec<UsageRow> = taken.iter().map(|(_, r)| r.clone()).collect();
            if let Err(e) = store.add_usage(&rows) {
                for (c, r) in &taken {
                    c.requests.fetch_add(r.requests, Relaxed);
                    c.errors.fetch_add(r.errors, Relaxed);
                    c.prompt.fetch_add(r.prompt_tokens, Relaxed);
                    c.completion.fetch_add(r.completion_tokens, Relaxed);
                }
                return Err(e);
            }
        }
        let stale_before = calendar::day_of(now_ms).saturating_sub(1);
        if cells.values().flatten().any(|c| c.day < stale_before) {
            self.cells.rcu(|m| {
                let mut m = HashMap::clone(m);
                for list in m.values_mut() {
                    list.retain(|c| c.day >= stale_before || c.requests.load(Relaxed) > 0);
                }
                m.retain(|_, l| !l.is_empty());
                m
            });
        }
        Ok(())
    }
}

/// Flushes the ledger every `interval` and once more at shutdown.
pub struct UsageFlusher {
    pub ledger: Arc<Ledger>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn crate::pool::Clock>,
    pub interval: std::time::Duration,
}

impl UsageFlusher {
    pub fn flush(&self) {
        match self.ledger.flush(&*self.store, self.clock.now_ms()) {
            Ok(()) => {}
            // The store logged that it went away; nothing is lost, the counts wait in memory.
            Err(crate::store::StoreError::Unavailable(e)) => log::debug!("store: usage kept for the next flush ({e})"),
            Err(e) => log::warn!("store: saving usage failed (kept for the next flush): {e}"),
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for UsageFlusher {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        crate::store::flush_every(self.interval, shutdown, || self.flush()).await;
    }
}

/// Tokens each client name used today and this month, by the store.
pub fn used_by_name(store: &dyn Store, now_ms: u64) -> crate::store::Result<HashMap<String, (u64, u64)>> {
    let today = calendar::day_of(now_ms);
    let month_start = calendar::first_day_of_month(calendar::month_of_day(today));
    let mut sums: HashMap<String, (u64, u64)> = HashMap::new();
    for r in store.usage(month_start, today)? {
        let t = r.prompt_tokens + r.completion_tokens;
        let s = sums.entry(r.client).or_default();
        s.1 += t;
        if r.day == today {
            s.0 += t;
        }
    }
    Ok(sums)
}

/// Seeds every client's daily and monthly budgets with what the store says its name used today
/// and this month, so a restart does not reset them.
pub fn seed_budgets(clients: &crate::proxy::auth::Clients, store: &dyn Store, now_ms: u64) -> crate::store::Result<()> {
    let sums = used_by_name(store, now_ms)?;
    clients.each(|c| {
        if let Some((day, month)) = sums.get(c.name.as_str()) {
            c.budgets.seed(now_ms, *day, *month);
        }
    });
    Ok(())
}

/// The same for one new client.
pub fn seed_client(client: &crate::proxy::auth::Client, store: &dyn Store, now_ms: u64) -> crate::store::Result<()> {
    if let Some((day, month)) = used_by_name(store, now_ms)?.get(client.name.as_str()) {
        client.budgets.seed(now_ms, *day, *month);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn used<'a>(at_ms: u64, client: &'a str, model: &'a str, p: u64, c: u64) -> Used<'a> {
        Used { at_ms, client, provider: "ollama", model, error: false, prompt_tokens: p, completion_tokens: c }
    }

    #[test]
    fn counts_flush_and_add_up_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("u.db"), None).unwrap();
        let l = Ledger::default();
        let t = 1_796_083_200_000;
        l.record(&used(t, "app", "m1", 10, 5));
        l.record(&used(t + 1, "app", "m1", 1, 2));
        l.record(&Used { error: true, ..used(t, "app", "m2", 0, 0) });
        l.flush(&store, t).unwrap();
        l.flush(&store, t).unwrap(); // nothing new: nothing written twice
        l.record(&used(t, "app", "m1", 100, 0));
        l.flush(&store, t).unwrap();
        let mut rows = store.usage(0, u32::MAX).unwrap();
        rows.sort_by(|a, b| a.model.cmp(&b.model));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].requests, rows[0].errors, rows[0].prompt_tokens, rows[0].completion_tokens),
            (3, 0, 111, 7)
        );
        assert_eq!((rows[1].model.as_str(), rows[1].requests, rows[1].errors), ("m2", 1, 1));
    }

    #[test]
    fn old_idle_cells_are_dropped_and_models_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("u.db"), None).unwrap();
        let l = Ledger::default();
        let t = 1_796_083_200_000;
        l.record(&used(t, "app", "m1", 1, 1));
        l.flush(&store, t + 3 * calendar::DAY_MS).unwrap();
        assert_eq!(l.len(), 0, "a cell of three days ago that was flushed is gone");
        for i in 0..MAX_CELLS + 10 {
            l.record(&used(t, "app", &format!("model-{i}"), 1, 0));
        }
        assert_eq!(l.len(), MAX_CELLS + 1, "past the cap, new models count under `other`");
        l.flush(&store, t).unwrap();
        let rows = store.usage(0, u32::MAX).unwrap();
        let other = rows.iter().find(|r| r.model == "other").unwrap();
        assert_eq!(other.requests, 10);
        assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), MAX_CELLS as u64 + 11);
        let long = "m".repeat(MAX_MODEL + 1);
        let l = Ledger::default();
        l.record(&used(t, "app", &long, 1, 0));
        assert!(l.find(calendar::day_of(t), "app", "ollama", "other").is_some(), "a huge model name is not kept");
    }
}
