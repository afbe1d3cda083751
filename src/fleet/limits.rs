//! Fleet-wide client limits (SPEC §3.9, issue #11 item 3): a client's `rpm` and token budgets
//! hold across every instance on one Redis, with no Redis round trip on the request path.
//!
//! Each instance counts its own requests and tokens in the client's atomics, as alone. A sync
//! thread adds what it counted since the last sync to one Redis counter per (client, window,
//! period) — `<prefix>:limit:<token hash, 16 hex>:<rpm|tpm|daily|monthly>:<period>`, INCRBY in
//! one pipeline for every client that is active — and keeps the rest of the fleet's count
//! (`others`) beside its own; admission checks own + others.
//!
//! The thread syncs as soon as a limited client is used (the request path wakes it: one
//! atomic load, and one `unpark` per sync at most), at most once per `MIN_GAP`; it fetches the
//! others' counts of the clients in use every `REFRESH`, and of every limited client every
//! `EVERYTHING`. So the others' count an instance sees lags by about one Redis round trip plus
//! `MIN_GAP` for a client it serves: a fleet over-admits by what its instances take in that time
//! (a few requests at the limit's edge), and by at most one request per instance for a client
//! it had not served for `EVERYTHING`. It never under-admits.
//!
//! Daily and monthly budgets come from the counters too (the usage rows in the store still sum
//! every instance's use, for reports). For each token with such a budget — at start, and each
//! one made, loaded or changed later — a counter that does not exist yet is created with what
//! the store's usage says its client name used (SET NX), as a single instance seeds its
//! budgets: a fleet that starts after SQLite, a new token for a name that used tokens today,
//! or a budget added mid-day, counts the day from its start.
//!
//! The wake-up is process-wide: one fleet per process (a second one, as in tests that run
//! several servers in one process, syncs on its timers only).
//!
//! While Redis is away each instance goes on counting alone with the last others' count it
//! saw; what it counted meanwhile is added when Redis is back.

use crate::proxy::auth::{Client, Clients, Table};
use crate::store::Store;
use crate::usage::BudgetKind;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The shortest time between two syncs under load.
const MIN_GAP: Duration = Duration::from_millis(2);
/// How often the others' counts are fetched for windows that count nothing new here.
const REFRESH: Duration = Duration::from_millis(50);
/// How often every limited client's counts are fetched, used here or not (a client that
/// another instance exhausts is refused here within this, before its first request here).
const EVERYTHING: Duration = Duration::from_secs(1);

static WAKE: OnceLock<std::thread::Thread> = OnceLock::new();
static DIRTY: AtomicBool = AtomicBool::new(false);

/// A limited client was used: have the sync thread run soon. Costs one atomic load when fleet
/// mode is off, or when a sync is already due.
#[inline]
pub fn touch() {
    if let Some(t) = WAKE.get() {
        if !DIRTY.load(Relaxed) && !DIRTY.swap(true, Relaxed) {
            t.unpark();
        }
    }
}

/// Bits of a share's atomic that hold the count; the period number is above them (a minute
/// number needs 25 bits until the year 2033, 26 until 2097).
const COUNT_BITS: u32 = 38;

#[inline]
fn pack(period: u64, n: u64) -> u64 {
    (period << COUNT_BITS) | n.min((1 << COUNT_BITS) - 1)
}

#[inline]
fn unpack(v: u64) -> (u64, u64) {
    (v >> COUNT_BITS, v & ((1 << COUNT_BITS) - 1))
}

/// The count of `period` in a packed value (0 when it holds another period).
#[inline]
fn count_in(v: u64, period: u64) -> u64 {
    let (p, n) = unpack(v);
    if p == period {
        n
    } else {
        0
    }
}

/// One window's fleet share: how much of the local count Redis has, and what the rest of the
/// fleet used, both for the period they name. Only the sync thread writes them.
#[derive(Debug, Default)]
pub struct Share {
    synced: AtomicU64,
    others: AtomicU64,
}

impl Share {
    /// What the rest of the fleet used in `period`, as last seen.
    #[inline]
    pub fn others(&self, period: u64) -> u64 {
        count_in(self.others.load(Relaxed), period)
    }

    pub fn carry_from(&self, old: &Share) {
        self.synced.store(old.synced.load(Relaxed), Relaxed);
        self.others.store(old.others.load(Relaxed), Relaxed);
    }
}

/// A window of one client that a sync covers.
struct Slot {
    client: Arc<Client>,
    window: Window,
    period: u64,
    local: u64,
    pushed: u64,
}

#[derive(Clone, Copy)]
enum Window {
    Rpm,
    Budget(BudgetKind),
}

impl Window {
    fn name(self) -> &'static str {
        match self {
            Window::Rpm => "rpm",
            Window::Budget(BudgetKind::Tpm) => "tpm",
            Window::Budget(BudgetKind::Daily) => "daily",
            Window::Budget(BudgetKind::Monthly) => "monthly",
        }
    }

    /// How long Redis keeps a period's counter: a little past its end.
    fn ttl_secs(self) -> u64 {
        match self {
            Window::Rpm | Window::Budget(BudgetKind::Tpm) => 120,
            Window::Budget(BudgetKind::Daily) => 2 * 86_400,
            Window::Budget(BudgetKind::Monthly) => 32 * 86_400,
        }
    }

    fn share(self, c: &Client) -> &Share {
        match self {
            Window::Rpm => c.rpm_share(),
            Window::Budget(k) => c.budgets.share(k),
        }
    }

    /// The period now and this instance's count in it.
    fn local(self, c: &Client, now_ms: u64) -> (u64, u64) {
        match self {
            Window::Rpm => {
                let minute = now_ms / 60_000;
                (minute, c.rpm_local(minute))
            }
            Window::Budget(k) => {
                let p = k.period(now_ms);
                (p, c.budgets.local(k, p))
            }
        }
    }
}

pub fn counter_key(prefix: &str, hash: &[u8; 32], window: &str, period: u64) -> String {
    format!("{prefix}:limit:{}:{window}:{period}", hex::encode(&hash[..8]))
}

/// The windows of `c` that count fleet-wide.
fn windows(c: &Client) -> impl Iterator<Item = Window> + '_ {
    c.rpm
        .map(|_| Window::Rpm)
        .into_iter()
        .chain(BudgetKind::ALL.into_iter().filter(|k| c.budgets.limits.get(*k).is_some()).map(Window::Budget))
}

/// Which windows a sync covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Those that counted something here since the last sync (their totals come back with it).
    Pushes,
    /// Those too whose period saw use anywhere in the fleet (the others' counts, refreshed).
    Refresh,
    /// Every limited client's windows (at start, after Redis was away, and every `EVERYTHING`).
    All,
}

/// One sync: pushes what each client counted here since the last sync and reads the fleet's
/// totals, in one pipeline. Returns how many windows it covered.
pub fn sync_once(
    c: &mut redis::Connection,
    prefix: &str,
    clients: &Clients,
    now_ms: u64,
    scope: Scope,
) -> redis::RedisResult<usize> {
    let mut slots = Vec::new();
    let mut pipe = redis::pipe();
    clients.each_hashed(|hash, client| {
        for w in windows(client) {
            let (period, local) = w.local(client, now_ms);
            let share = w.share(client);
            let pushed = count_in(share.synced.load(Relaxed), period);
            let wanted = match scope {
                Scope::Pushes => local > pushed,
                Scope::Refresh => local > 0 || share.others(period) > 0,
                Scope::All => true,
            };
            if !wanted {
                continue;
            }
            let key = counter_key(prefix, hash, w.name(), period);
            if local > pushed {
                pipe.cmd("INCRBY").arg(&key).arg(local - pushed).cmd("EXPIRE").arg(&key).arg(w.ttl_secs()).ignore();
            } else {
                pipe.cmd("GET").arg(&key);
            }
            slots.push(Slot { client: client.clone(), window: w, period, local, pushed });
        }
    });
    if slots.is_empty() {
        return Ok(0);
    }
    let totals: Vec<Option<u64>> = pipe.query(c)?;
    for (s, total) in slots.iter().zip(totals) {
        let share = s.window.share(&s.client);
        let mine = s.local.max(s.pushed);
        share.synced.store(pack(s.period, mine), Relaxed);
        share.others.store(pack(s.period, total.unwrap_or(0).saturating_sub(mine)), Relaxed);
    }
    Ok(slots.len())
}

/// For each client with a daily or monthly budget not in `seeded` (at start: every one; later:
/// tokens made, loaded or changed since), creates today's and this month's counters, if they
/// do not exist yet, with what the store's usage rows record for its client name. So the
/// fleet's counters, which are then the budgets' truth, start where a single instance's
/// budgets would. Reads the store only when there is such a client.
pub fn seed_new(
    c: &mut redis::Connection,
    prefix: &str,
    table: &Table,
    store: &dyn Store,
    now_ms: u64,
    seeded: &mut HashSet<[u8; 32]>,
) -> Result<(), String> {
    let has_calendar = |cl: &Client| {
        cl.budgets.limits.get(BudgetKind::Daily).is_some() || cl.budgets.limits.get(BudgetKind::Monthly).is_some()
    };
    // A client that already used tokens here is not seeded: the usage rows may hold that use
    // (a report saves them at once), and its counter would then count it twice.
    let unused = |cl: &Client| {
        [BudgetKind::Daily, BudgetKind::Monthly].iter().all(|k| cl.budgets.local(*k, k.period(now_ms)) == 0)
    };
    type Entry<'a> = (&'a [u8; 32], &'a Arc<Client>);
    let (new, used): (Vec<Entry>, Vec<Entry>) =
        table.iter().filter(|(h, cl)| has_calendar(cl) && !seeded.contains(*h)).partition(|(_, cl)| unused(cl));
    seeded.extend(used.into_iter().map(|(h, _)| *h));
    if new.is_empty() {
        return Ok(());
    }
    let sums = crate::usage::used_by_name(store, now_ms).map_err(|e| e.to_string())?;
    let mut pipe = redis::pipe();
    for (hash, client) in &new {
        let Some(&(day, month)) = sums.get(client.name.as_str()) else { continue };
        for (kind, used) in [(BudgetKind::Daily, day), (BudgetKind::Monthly, month)] {
            if client.budgets.limits.get(kind).is_none() || used == 0 {
                continue;
            }
            let w = Window::Budget(kind);
            let key = counter_key(prefix, hash, w.name(), kind.period(now_ms));
            pipe.cmd("SET").arg(key).arg(used).arg("NX").arg("EX").arg(w.ttl_secs()).ignore();
        }
    }
    pipe.query::<()>(c).map_err(|e| e.to_string())?;
    seeded.extend(new.into_iter().map(|(h, _)| *h));
    Ok(())
}

/// Starts the sync thread (it lives as long as the process).
pub fn start(
    client: redis::Client,
    prefix: String,
    clients: Arc<Clients>,
    store: Arc<dyn Store>,
    clock: Arc<dyn crate::pool::Clock>,
) {
    let handle = std::thread::Builder::new()
        .name("fleet-limits".into())
        .spawn(move || run(&client, &prefix, &clients, &*store, &*clock))
        .expect("a thread");
    let _ = WAKE.set(handle.thread().clone());
}

fn run(client: &redis::Client, prefix: &str, clients: &Clients, store: &dyn Store, clock: &dyn crate::pool::Clock) {
    let mut wait = Duration::from_millis(200);
    let (mut seeded, mut seen): (HashSet<[u8; 32]>, Option<Arc<Table>>) = (HashSet::new(), None);
    let (mut lost, mut seed_failed) = (false, false);
    loop {
        let mut conn = match client.get_connection_with_timeout(Duration::from_secs(5)) {
            Ok(c) => c,
            Err(_) => {
                super::backoff(&mut wait);
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        if std::mem::take(&mut lost) {
            log::info!("fleet: client limits are shared again");
        }
        wait = Duration::from_millis(200);
        let mut scope = Scope::All;
        let (mut refreshed, mut all) = (std::time::Instant::now(), std::time::Instant::now());
        loop {
            DIRTY.store(false, Relaxed);
            // A new client table (tokens made, revoked or reloaded): seed the new ones first,
            // before anything of theirs is added to their counters. A failed seed (the store
            // away) is tried again with the next full sync.
            let table = clients.snapshot();
            if seen.as_ref().is_none_or(|t| !Arc::ptr_eq(t, &table)) {
                match seed_new(&mut conn, prefix, &table, store, clock.now_ms(), &mut seeded) {
                    Ok(()) => seed_failed = false,
                    Err(e) => {
                        if !seed_failed {
                            log::warn!("fleet: seeding new budgets' counters from the usage rows: {e}; trying again");
                        }
                        seed_failed = true;
                    }
                }
                seen = Some(table);
            }
            if sync_once(&mut conn, prefix, clients, clock.now_ms(), scope).is_err() {
                if !lost {
                    log::warn!("fleet: lost Redis for client limits; each instance counts alone until it is back");
                }
                lost = true;
                break;
            }
            std::thread::sleep(MIN_GAP);
            if !DIRTY.load(Relaxed) {
                std::thread::park_timeout(REFRESH.saturating_sub(refreshed.elapsed()));
            }
            scope = if all.elapsed() >= EVERYTHING {
                (refreshed, all) = (std::time::Instant::now(), std::time::Instant::now());
                if seed_failed {
                    seen = None;
                }
                Scope::All
            } else if refreshed.elapsed() >= REFRESH {
                refreshed = std::time::Instant::now();
                Scope::Refresh
            } else {
                Scope::Pushes
            };
        }
        super::backoff(&mut wait);
    }
}
