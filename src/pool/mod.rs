//! The key pool (SPEC §3.1–3.3): keys, their state machine, lock-free round-robin selection,
//! outcome classification (`outcome`), the per-request attempt policy (`attempt`) and time (`clock`).
//!
//! Not here: how keys get in (import.rs, store/, admin/ops.rs) and what is sent upstream (proxy/).

pub mod attempt;
pub mod calendar;
pub mod clock;
pub mod events;
pub mod key;
pub mod outcome;
pub mod snapshot;
mod view;
pub mod window;

pub use attempt::{Attempts, Decision, MAX_ATTEMPTS};
pub use clock::{Clock, ManualClock, SystemClock};
pub use events::{Change, Events, KeyEvent, PoolEvent, Subscriber};
pub use key::{same_model, AuthForm, Key, KeyError, KeyId, KeyMeta, KeyView, ModelPark, Reason, Status};
pub use outcome::{classify, Outcome};
pub use snapshot::{Counters, SavedPark};
pub use window::Window;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use view::View;

/// What the pool does with failures (from `pool.*` in the config).
#[derive(Debug, Clone)]
pub struct Policy {
    pub failure_threshold: u32,
    pub cooldown: Duration,
    pub rate_limit_backoff: Duration,
    pub storm: StormPolicy,
}

/// When failures stop being the keys' fault (SPEC §3.2): within one `window`, at least
/// `fraction` of the pool (and `min_keys`) failed with rate-limit/transient outcomes and almost
/// nothing succeeded. Then the pool parks no more keys, answers 503 for `retry_after`, and the
/// health checker's probes decide when it is over.
#[derive(Debug, Clone)]
pub struct StormPolicy {
    pub window: Duration,
    pub fraction: f64,
    pub min_keys: u32,
    pub retry_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            failure_threshold: 3,
            cooldown: Duration::from_secs(3600),
            rate_limit_backoff: Duration::from_secs(60),
            storm: StormPolicy::default(),
        }
    }
}

impl Default for StormPolicy {
    fn default() -> Self {
        StormPolicy {
            window: Duration::from_secs(10),
            fraction: 0.5,
            min_keys: 3,
            retry_after: Duration::from_secs(60),
        }
    }
}

/// Storm-guard counters for the current *run* of failures: one that goes on while failures
/// come less than `storm.window` apart and outnumber the successes, however long that is — so
/// an outage that begins in the middle of traffic, and parks keys one by one, is seen as one
/// event, while a few bad keys among good ones never add up to one. Approximate on
/// purpose: a few racing updates do not change the verdict, and the request path stays
/// lock-free (a success writes here only while a run is on).
#[derive(Default)]
struct Storm {
    /// When the run began (ms; 0 = no run). Also the run's id in each key's `storm_run`.
    run_start_ms: AtomicU64,
    last_failure_ms: AtomicU64,
    /// Distinct keys that failed in the run, and the run's failed / successful attempts.
    failing_keys: AtomicU32,
    failures: AtomicU32,
    successes: AtomicU32,
    /// When the storm began (ms); 0 = no storm.
    since_ms: AtomicU64,
}

/// No key can serve this request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoKey {
    /// How long until the earliest parked key returns, if any will.
    pub retry_after: Option<Duration>,
}

pub struct Pool {
    /// The immutable list of keys and the index `pick` walks (`view.rs`), replaced whole on
    /// add/remove and rebuilt after transitions. Readers take no lock: a request loads the
    /// current one and keeps using it even if a writer swaps in a new one.
    view: ArcSwap<View>,
    /// When the view must be rebuilt because a key it does not hold may be usable: the
    /// earliest return among the keys it left out, lowered by every transition since (a key
    /// back now, a park that ends sooner). `pick` rebuilds once `now` reaches it.
    due_ms: AtomicU64,
    /// A view is being built: picks walk every key meanwhile.
    building: AtomicBool,
    /// Parked keys that picks walked past since the view was built (`note_stale`).
    stale: AtomicUsize,
    /// Round-robin position shared by all threads; relaxed is enough, fairness is statistical.
    /// On a line of its own: every pick writes it, and the flags above are read by every pick.
    cursor: Padded,
    /// id -> key, for admin lookups without scanning the keys.
    by_id: DashMap<u64, Arc<Key>>,
    /// Serialises view writers (admin path, and one rebuilding pick) so two adds cannot lose
    /// each other.
    writer: Mutex<()>,
    /// Replaced whole by a config reload.
    policy: ArcSwap<Policy>,
    clock: Arc<dyn Clock>,
    storm: Storm,
    /// The provider this pool serves (named in its events).
    provider: Arc<str>,
    events: Arc<Events>,
}

#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicUsize);

#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    Duplicate(String),
}

impl Pool {
    /// A pool of its own (tools and tests): provider `default`, nobody listening to its events.
    pub fn new(policy: Policy, clock: Arc<dyn Clock>) -> Pool {
        Pool::for_provider("default", policy, clock, Arc::new(Events::default()))
    }

    /// The pool of provider `name`, whose changes go to `events`.
    pub fn for_provider(name: &str, policy: Policy, clock: Arc<dyn Clock>, events: Arc<Events>) -> Pool {
        Pool {
            provider: Arc::from(name),
            events,
            view: ArcSwap::from_pointee(View::build(Arc::new(Vec::new()), 0)),
            due_ms: AtomicU64::new(u64::MAX),
            building: AtomicBool::new(false),
            stale: AtomicUsize::new(0),
            cursor: Padded::default(),
            by_id: DashMap::new(),
            writer: Mutex::new(()),
            policy: ArcSwap::from_pointee(policy),
            clock,
            storm: Storm::default(),
        }
    }

    fn emit(&self, key_id: &str, change: Change) {
        let at_ms = self.clock.now_ms();
        self.events.emit(PoolEvent::Key(KeyEvent {
            provider: self.provider.clone(),
            key_id: key_id.to_string(),
            change,
            at_ms,
        }));
    }

    fn emit_storm(&self, active: bool, returned: usize, at_ms: u64) {
        self.events.emit(PoolEvent::Storm { provider: self.provider.clone(), active, returned, at_ms });
    }

    /// The one place a key changes state (SPEC: requests, probes, operators and reloads all come
    /// here): moves `key` to `to` for `reason` until `until` (0 = no scheduled return) and
    /// emits the change. Returns whether the key moved.
    pub fn transition(&self, key: &Key, to: Status, reason: Reason, until: u64) -> bool {
        let now = self.clock.now_ms();
        match key.set_state(to, reason, until, now) {
            Some(from) => {
                let back = if to == Status::Active { now } else { until };
                if back != 0 {
                    self.due_ms.fetch_min(back, AcqRel);
                }
                self.emit(&key.id, Change::Moved { from, to, reason, until_ms: Some(until).filter(|&u| u != 0) });
                true
            }
            None => false,
        }
    }

    /// Parks `key` for `model` only, until `until`; emits the change when it is a new park.
    pub fn park_model(&self, key: &Key, model: &str, until: u64) {
        if key.park_model(model, until, self.clock.now_ms()) {
            self.emit(&key.id, Change::ModelParked { model: model.to_string(), until_ms: until });
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// A reload's new `pool.*` policy: applies to the next outcome.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Every key, for background work (probes, reports). Not for the request path.
    pub fn keys(&self) -> Arc<Vec<Arc<Key>>> {
        self.view.load().keys.clone()
    }

    /// Swaps in the view of `keys` (the caller holds `writer`). `due_ms` is reset before the
    /// keys are read, so a transition either is seen by the build or lowers `due_ms` after
    /// it; picks meanwhile walk every key.
    fn publish(&self, keys: Arc<Vec<Arc<Key>>>) {
        self.building.store(true, SeqCst);
        self.due_ms.swap(u64::MAX, SeqCst);
        self.stale.store(0, Relaxed);
        let view = View::build(keys, self.clock.now_ms());
        let next = view.next_return_ms;
        self.view.store(Arc::new(view));
        self.due_ms.fetch_min(next, SeqCst);
        self.building.store(false, SeqCst);
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn len(&self) -> usize {
        self.view.load().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a key; a key already present (same secret) is refused.
    pub fn add(&self, key: Key) -> Result<Arc<Key>, AddError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(&key.id).is_some() {
            return Err(AddError::Duplicate(key.id.to_string()));
        }
        let key = Arc::new(key);
        let mut keys = Vec::clone(&self.view.load().keys);
        keys.push(key.clone());
        self.by_id.insert(id_key(&key.id), key.clone());
        self.publish(Arc::new(keys));
        self.emit(&key.id, Change::Added);
        Ok(key)
    }

    /// Adds many keys in one view swap; returns (added, duplicates).
    pub fn add_all(&self, keys: impl IntoIterator<Item = Key>) -> (usize, usize) {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = Vec::clone(&self.view.load().keys);
        let (mut added, mut dups) = (0, 0);
        for key in keys {
            if self.get(&key.id).is_some() {
                dups += 1;
                continue;
            }
            let key = Arc::new(key);
            self.by_id.insert(id_key(&key.id), key.clone());
            list.push(key);
            added += 1;
        }
        let list = Arc::new(list);
        self.publish(list.clone());
        for key in &list[list.len() - added..] {
            self.emit(&key.id, Change::Added);
        }
        (added, dups)
    }

    pub fn remove(&self, id: &str) -> bool {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(id).is_none() {
            return false;
        }
        self.by_id.remove(&id_key(id));
        let keys: Vec<Arc<Key>> = self.view.load().keys.iter().filter(|k| k.id != id).cloned().collect();
        self.publish(Arc::new(keys));
        self.emit(id, Change::Removed);
        true
    }

    /// Removes every key in `ids` in one view swap (a reload that dropped many file keys);
    /// returns how many were here.
    pub fn remove_all(&self, ids: &std::collections::HashSet<&str>) -> usize {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let view = self.view.load_full();
        let (gone, kept): (Vec<&Arc<Key>>, Vec<&Arc<Key>>) =
            view.keys.iter().partition(|k| ids.contains(k.id.as_str()));
        if gone.is_empty() {
            return 0;
        }
        for k in &gone {
            self.by_id.remove(&id_key(&k.id));
        }
        self.publish(Arc::new(kept.into_iter().cloned().collect()));
        for k in &gone {
            self.emit(&k.id, Change::Removed);
        }
        gone.len()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Key>> {
        self.by_id.get(&id_key(id)).filter(|k| k.id == id).map(|k| k.clone())
    }

    /// Operator switch-off, for `for_` or until enabled. Takes effect on the next request.
    pub fn disable(&self, id: &str, for_: Option<Duration>) -> bool {
        let Some(key) = self.get(id) else { return false };
        let now = self.now_ms();
        let until = for_.map(|d| now + d.as_millis() as u64).unwrap_or(0);
        self.transition(&key, Status::Disabled, Reason::Manual, until);
        true
    }

    pub fn enable(&self, id: &str) -> bool {
        let Some(key) = self.get(id) else { return false };
        self.transition(&key, Status::Active, Reason::Manual, 0);
        true
    }

    /// Picks the next usable key round-robin, skipping `exclude` (keys this request already
    /// used). Lock-free and allocation-free: one atomic add plus two atomic loads per key looked at,
    /// and a second add when keys were skipped — the cursor moves past them too, so the key after
    /// a run of parked keys does not also take their turns (every usable key gets an equal share).
    pub fn pick(&self, exclude: &[Arc<Key>]) -> Result<Arc<Key>, NoKey> {
        self.pick_for(exclude, None, 0)
    }

    /// `pick`, among the keys that serve `model` (when given): not parked for it, and listing
    /// it when they have a discovered model list. With `cap` > 0 only keys with fewer than
    /// `cap` attempts in flight are picked, and the picked key's slot is taken (the caller
    /// gives it back with `Key::release_lease`).
    pub fn pick_for(&self, exclude: &[Arc<Key>], model: Option<&str>, cap: u32) -> Result<Arc<Key>, NoKey> {
        let now = self.clock.now_ms();
        // Read before the view: a view stored after this read is at least as fresh.
        let due = self.building.load(Acquire) || now >= self.due_ms.load(Acquire);
        let mut view = self.view.load();
        if view.keys.is_empty() {
            return Err(NoKey { retry_after: None });
        }
        if self.storm.since_ms.load(Relaxed) != 0 {
            return Err(NoKey { retry_after: Some(self.policy.load().storm.retry_after) });
        }
        // A key may be back that the index does not hold: rebuild it, or, while another thread
        // does, walk every key (exactly what the index would have given).
        let mut whole = false;
        if due {
            if self.rebuild() {
                view = self.view.load(); // (a key may have left meanwhile: n is taken below)
            } else {
                whole = true;
            }
        }
        let n = view.keys.len();
        if n == 0 {
            return Err(NoKey { retry_after: None });
        }
        let start = self.cursor.0.fetch_add(1, Relaxed) % n;
        let first = view.first_at(start, whole);
        view.prefetch_after(first, 0, whole);
        let mut stale = 0;
        for j in 0..view.walk_len(whole) {
            let p = view.nth_from(first, j, whole);
            let key = &view.keys[p];
            if !key.usable_at(now) {
                stale += 1;
                continue;
            }
            if model.is_none_or(|m| key.serves(m, now))
                && !exclude.iter().any(|e| Arc::ptr_eq(e, key))
                && key.try_lease(cap)
            {
                // The cursor moves past every position skipped, indexed or not.
                let skipped = if p >= start { p - start } else { p + n - start };
                if skipped > 0 {
                    self.cursor.0.fetch_add(skipped, Relaxed);
                }
                if stale > 0 {
                    self.note_stale(stale, n);
                }
                if let Some(from) = key.revive(now) {
                    let change = Change::Moved { from, to: Status::Active, reason: Reason::None, until_ms: None };
                    self.emit(&key.id, change);
                }
                return Ok(key.clone());
            }
        }
        if stale > 0 {
            self.note_stale(stale, n);
        }
        Err(self.no_key(&view.keys, exclude, model, now))
    }

    /// Counts parked keys a pick walked past; once they add up to a quarter of the pool, the
    /// index is rebuilt without them. So a rebuild (one pass over the keys) never costs more
    /// than the walking it saves, however fast keys are parked, and no clock is involved.
    #[inline(never)]
    fn note_stale(&self, stale: usize, n: usize) {
        if self.stale.fetch_add(stale, Relaxed) + stale >= n / 4 + 16 {
            self.rebuild();
        }
    }

    /// Rebuilds the view of the current keys, unless another writer is at work (then false:
    /// the caller goes on with the view it has).
    #[cold]
    fn rebuild(&self) -> bool {
        let _w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        self.publish(self.view.load_full().keys.clone());
        true
    }

    /// Why nothing was picked: the soonest return among keys this request has not used (for
    /// `model`: when the key is back and its park for that model is over).
    #[cold]
    fn no_key(&self, keys: &[Arc<Key>], exclude: &[Arc<Key>], model: Option<&str>, now: u64) -> NoKey {
        let soonest = keys
            .iter()
            .filter(|k| !exclude.iter().any(|e| Arc::ptr_eq(e, k)))
            .filter(|k| model.is_none_or(|m| k.serves(m, now) || k.model_returns_at(m, now).is_some()))
            .filter_map(|k| {
                let back = k.returns_at(now)?;
                Some(back.max(model.and_then(|m| k.model_returns_at(m, now)).unwrap_or(0)))
            })
            .min();
        NoKey { retry_after: soonest.map(|at| Duration::from_millis(at.saturating_sub(now))) }
    }

    /// Applies an upstream outcome to `key`: counters, and parking it when the outcome says so.
    pub fn report(&self, key: &Key, outcome: Outcome) {
        self.report_for(key, outcome, None)
    }

    /// `report` for a request that asked for `model` (a "model unavailable" answer parks the
    /// key for that model only).
    pub fn report_for(&self, key: &Key, outcome: Outcome, model: Option<&str>) {
        let now = self.clock.now_ms();
        let s = &key.stats;
        s.requests.fetch_add(1, Relaxed);
        s.last_used_ms.store(now, Relaxed);
        match outcome {
            Outcome::Success => {
                s.successes.fetch_add(1, Relaxed);
                s.last_success_ms.store(now, Relaxed);
                if let Some(c) = key.cold_if_any() {
                    c.consecutive_failures.store(0, Relaxed);
                    c.backoff_level.store(0, Relaxed);
                }
                self.storm_success(now);
            }
            Outcome::CallerFault => {}
            Outcome::ModelUnavailable => {
                let c = key.cold();
                c.failures.fetch_add(1, Relaxed);
                c.last_failure_ms.store(now, Relaxed);
                // Not the key's fault, and not a streak: it serves other models. Without a
                // model name there is nothing to park it for.
                if let Some(m) = model {
                    self.park_model(key, m, now + ms(self.policy.load().cooldown));
                }
            }
            Outcome::Credential => {
                self.count_failure(key, now);
                self.transition(key, Status::Invalid, Reason::Credential, now + ms(self.policy.load().cooldown));
            }
            Outcome::RateLimited { retry_after, window } => {
                self.count_failure(key, now);
                // A named usage window is this key's own allowance, not an upstream-wide storm.
                if window.is_none() && self.storm_failure(key, now) {
                    return;
                }
                self.park_rate_limited(key, retry_after, window, now);
            }
            Outcome::Transient => {
                let streak = self.count_failure(key, now);
                if self.storm_failure(key, now) {
                    return;
                }
                if streak >= self.policy.load().failure_threshold {
                    self.transition(key, Status::Cooling, Reason::AutoDisabled, now + ms(self.policy.load().cooldown));
                }
            }
        }
    }

    /// A stream this key started with a 200 failed inside it (an error line, or a cut). The
    /// client already has the stream, so nothing is retried and the key is not parked for it;
    /// it is counted (key stats, metrics) so a key that keeps breaking streams shows.
    pub fn stream_error(&self, key: &Key) {
        let c = key.cold();
        c.stream_errors.fetch_add(1, Relaxed);
        c.last_failure_ms.store(self.clock.now_ms(), Relaxed);
    }

    /// Parks a rate-limited key: until `retry_after`, else the named window's reset, else the
    /// doubling backoff.
    pub(crate) fn park_rate_limited(&self, key: &Key, retry_after: Option<Duration>, window: Option<Window>, now: u64) {
        let until = match (retry_after, window) {
            (Some(ra), _) => now + ms(ra.clamp(Duration::from_secs(1), Duration::from_secs(31 * 86_400))),
            (None, Some(w)) => w.next_reset(now),
            (None, None) => now + ms(self.backoff(key)),
        };
        let reason = window.map(Reason::quota).unwrap_or(Reason::RateLimited);
        self.transition(key, Status::Cooling, reason, until);
    }

    /// A success while a run of failures is on counts against it. The run is over once
    /// successes outnumber its failures (a few bad keys among good ones) or failures have been
    /// quiet for a window; then successes stop touching the shared counters.
    fn storm_success(&self, now: u64) {
        let start = self.storm.run_start_ms.load(Relaxed);
        if start == 0 {
            return;
        }
        let quiet = now.saturating_sub(self.storm.last_failure_ms.load(Relaxed)) > ms(self.policy.load().storm.window);
        let successes = self.storm.successes.fetch_add(1, Relaxed) + 1;
        if quiet || successes > self.storm.failures.load(Relaxed) {
            let _ = self.storm.run_start_ms.compare_exchange(start, 0, Relaxed, Relaxed);
        }
    }

    /// Counts a rate-limit/transient failure for the storm guard. Returns true when the pool is
    /// in a storm, in which case the key must not be parked for it. A storm begins when, within
    /// one run, at least `fraction` of the keys (and `min_keys`) have failed and failures are at
    /// least 80 % of the run's attempts: judged on the share of recent attempts, so successes
    /// from before the outage began do not hide it.
    fn storm_failure(&self, key: &Key, now: u64) -> bool {
        if self.storm.since_ms.load(Relaxed) != 0 {
            return true;
        }
        let policy = self.policy.load();
        let p = &policy.storm;
        let last = self.storm.last_failure_ms.swap(now, Relaxed);
        let mut run = self.storm.run_start_ms.load(Relaxed);
        if run == 0 || now.saturating_sub(last) > ms(p.window) {
            let fresh = now.max(1);
            if self.storm.run_start_ms.compare_exchange(run, fresh, Relaxed, Relaxed).is_ok() {
                self.storm.failing_keys.store(0, Relaxed);
                self.storm.failures.store(0, Relaxed);
                self.storm.successes.store(0, Relaxed);
            }
            run = self.storm.run_start_ms.load(Relaxed);
        }
        let failures = self.storm.failures.fetch_add(1, Relaxed) + 1;
        let failing = if key.cold().storm_run.swap(run, Relaxed) == run {
            self.storm.failing_keys.load(Relaxed) // this key already counted in this run
        } else {
            self.storm.failing_keys.fetch_add(1, Relaxed) + 1
        };
        let needed = p.min_keys.max((p.fraction * self.len() as f64).ceil() as u32);
        let successes = self.storm.successes.load(Relaxed);
        if failing >= needed
            && successes.saturating_mul(4) <= failures
            && self.storm.since_ms.compare_exchange(0, now.max(1), Relaxed, Relaxed).is_ok()
        {
            log::warn!(
                "pool: {failing} keys failed ({failures} failed attempts, {successes} successful) in {} s: treating it \
                 as an upstream outage or throttle; keys are no longer parked for it and clients get 503 until a \
                 probe succeeds",
                now.saturating_sub(run) / 1000
            );
            self.emit_storm(true, 0, now);
            return true;
        }
        false
    }

    /// When the current storm began, if there is one.
    pub fn storm_since(&self) -> Option<u64> {
        Some(self.storm.since_ms.load(Relaxed)).filter(|&s| s != 0)
    }

    /// Ends a storm (a probe got through): keys parked for rate limits or transient failures
    /// since shortly before it began return at once. Returns how many came back.
    pub fn end_storm(&self) -> usize {
        let since = self.storm.since_ms.swap(0, Relaxed);
        if since == 0 {
            return 0;
        }
        let now = self.now_ms();
        // Every key the run parked comes back, from the run's first failure on.
        let run = self.storm.run_start_ms.swap(0, Relaxed);
        let from = if run != 0 { run.min(since) } else { since.saturating_sub(ms(self.policy.load().storm.window)) };
        let mut back = 0;
        for key in self.keys().iter() {
            let parked_by_storm = matches!(key.reason(), Reason::RateLimited | Reason::AutoDisabled)
                && key.status() == Status::Cooling
                && key.cold_if_any().is_some_and(|c| c.parked_at_ms.load(Relaxed) >= from);
            if parked_by_storm && self.transition(key, Status::Active, Reason::StormOver, 0) {
                back += 1;
            }
        }
        self.storm.failing_keys.store(0, Relaxed);
        self.storm.failures.store(0, Relaxed);
        self.storm.successes.store(0, Relaxed);
        self.emit_storm(false, back, now);
        log::warn!("pool: upstream storm over after {} s; {back} keys returned", now.saturating_sub(since) / 1000);
        back
    }

    fn count_failure(&self, key: &Key, now: u64) -> u32 {
        let c = key.cold();
        c.failures.fetch_add(1, Relaxed);
        c.last_failure_ms.store(now, Relaxed);
        c.consecutive_failures.fetch_add(1, Relaxed) + 1
    }

    /// `rate_limit_backoff`, doubling with each rate limit since the last success, capped at `cooldown`.
    fn backoff(&self, key: &Key) -> Duration {
        let level = key.cold().backoff_level.fetch_add(1, Relaxed).min(20);
        let p = self.policy.load();
        (p.rate_limit_backoff * 2u32.pow(level)).min(p.cooldown)
    }

    /// Number of keys usable right now (a scan: for readiness and reports, not the request path).
    pub fn usable_count(&self) -> usize {
        let now = self.clock.now_ms();
        self.view.load().keys.iter().filter(|k| k.usable_at(now)).count()
    }

    pub fn views(&self) -> Vec<KeyView> {
        let now = self.clock.now_ms();
        self.view.load().keys.iter().map(|k| k.view_at(now)).collect()
    }
}

/// The map key for a key id: its 12 hex digits as a number (8 bytes instead of a string per
/// key); anything else, which is never a key's id, maps to a number no id has.
fn id_key(id: &str) -> u64 {
    match u64::from_str_radix(id, 16) {
        Ok(v) if id.len() == 12 => v,
        _ => u64::MAX,
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn pool(n: usize) -> (Pool, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        let p = Pool::new(Policy::default(), Arc::new(clock.clone()));
        for i in 0..n {
            p.add(Key::new(Secret::new(format!("key-{i:04}")), None, None).unwrap()).unwrap();
        }
        (p, clock)
    }

    #[test]
    fn a_key_takes_the_allocators_128_byte_class() {
        // An `Arc<Key>` is the key plus two counts; 100k keys are mostly these and their auth
        // value (issue #14, benches/memory.sh). mimalloc's classes around it are 112, 128, 160
        // and 192 bytes.
        let arc = std::mem::size_of::<Key>() + 16;
        assert!(arc <= 128, "Arc<Key> is {arc} bytes: move rarely used state to `Cold`");
    }

    #[test]
    fn a_plain_key_has_no_rare_state_or_description_and_the_rest_keep_theirs() {
        let plain = Key::new(Secret::new("sk-plain-0001"), None, None).unwrap();
        assert!(plain.cold_if_any().is_none() && plain.label().is_none());
        let now = 1_000;
        let k = Key::new(Secret::new("sk-dated-0001"), Some("team a".into()), Some(now + 10)).unwrap();
        assert_eq!(k.label().as_deref(), Some("team a"));
        assert!(k.usable_at(now) && !k.usable_at(now + 10));
        assert_eq!(k.view_at(now).expires_at_ms, Some(now + 10));
        // New models from an import keep the label, and the label alone survives their removal.
        k.set_meta(KeyMeta { models: vec!["qwen3".into()], category: None });
        assert_eq!(k.label().as_deref(), Some("team a"));
        assert!(k.serves("qwen3:latest", now) && !k.serves("llama3", now));
        k.set_meta(KeyMeta::default());
        assert_eq!(k.label().as_deref(), Some("team a"));
        assert!(k.serves("llama3", now));
        // The header carries the key as built once, marked sensitive, every time it is asked.
        let (name, value) = k.auth();
        assert_eq!((name, value.as_bytes()), (&http::header::AUTHORIZATION, &b"Bearer sk-dated-0001"[..]));
        assert!(value.is_sensitive() && k.auth().1 == value);
        assert!(Key::new(Secret::new("sk-caf\u{e9}"), None, None).is_err(), "visible ASCII only");
    }

    #[test]
    fn only_a_key_that_fails_or_parks_gets_its_rare_state() {
        let (p, clock) = pool(2);
        let keys = p.keys();
        for _ in 0..3 {
            p.report(&keys[0], Outcome::Success);
        }
        assert!(keys[0].cold_if_any().is_none(), "successes alone need no rare state");
        p.report(&keys[1], Outcome::RateLimited { retry_after: None, window: None });
        let cold = keys[1].cold_if_any().expect("a rate-limited key has its backoff and park time");
        assert_eq!(cold.backoff_level.load(Relaxed), 1);
        assert_eq!(cold.parked_at_ms.load(Relaxed), clock.now_ms());
        // Its backoff is forgotten by the next success, as before.
        clock.advance(Duration::from_secs(3600));
        p.report(&keys[1], Outcome::Success);
        assert_eq!(keys[1].cold_if_any().unwrap().backoff_level.load(Relaxed), 0);
    }

    #[test]
    fn round_robin_visits_every_key() {
        let (p, _) = pool(4);
        let mut seen: Vec<String> = (0..8).map(|_| p.pick(&[]).unwrap().id.to_string()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4);
    }

    /// (busiest, least busy) usable key over `picks` picks with the keys at `parked` disabled.
    fn shares(n: usize, parked: &[usize], picks: usize) -> (usize, usize) {
        let (p, _) = pool(n);
        let keys = p.keys();
        for &i in parked {
            assert!(p.disable(&keys[i].id, None));
        }
        let mut count = std::collections::HashMap::new();
        for _ in 0..picks {
            *count.entry(p.pick(&[]).unwrap().id).or_insert(0usize) += 1;
        }
        assert_eq!(count.len(), n - parked.len(), "every usable key serves");
        (*count.values().max().unwrap(), *count.values().min().unwrap())
    }

    #[test]
    fn rotation_is_fair_around_runs_of_parked_keys() {
        // 30 % of 20 keys parked in runs: within 1.2x over 1,000 picks.
        let (most, least) = shares(20, &[2, 3, 4, 11, 12, 13], 1000);
        assert!(most as f64 <= least as f64 * 1.2, "busiest {most}, least busy {least}");
        // Two good keys after a run of parked ones: 10 / 10, not 16 / 4.
        assert_eq!(shares(10, &[1, 2, 3, 4, 5, 6, 7, 8], 20), (10, 10));
        // Nothing parked: exact round-robin.
        assert_eq!(shares(7, &[], 700), (100, 100));
    }

    #[test]
    fn rotation_stays_fair_with_concurrent_pickers() {
        let (p, _) = pool(20);
        let keys = p.keys();
        for i in [0, 1, 2, 9, 10, 11] {
            assert!(p.disable(&keys[i].id, None));
        }
        let p = Arc::new(p);
        let counts: Vec<std::collections::HashMap<String, usize>> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut c = std::collections::HashMap::new();
                    for _ in 0..2500 {
                        *c.entry(p.pick(&[]).unwrap().id.to_string()).or_insert(0) += 1;
                    }
                    c
                })
            })
            .map(|t| t.join().unwrap())
            .collect();
        let mut total: std::collections::HashMap<String, usize> = Default::default();
        for c in counts {
            for (k, n) in c {
                *total.entry(k).or_default() += n;
            }
        }
        let (most, least) = (*total.values().max().unwrap(), *total.values().min().unwrap());
        assert_eq!(total.len(), 14);
        assert!(most as f64 <= least as f64 * 1.2, "busiest {most}, least busy {least}");
    }

    fn limited() -> Outcome {
        Outcome::RateLimited { retry_after: Some(Duration::from_secs(55)), window: None }
    }

    #[test]
    fn an_outage_that_begins_during_traffic_is_a_storm_and_ends_whole() {
        let (p, clock) = pool(10);
        let keys = p.keys();
        for i in 0..200 {
            p.report(&keys[i % 10], Outcome::Success); // busy and healthy
        }
        clock.advance(Duration::from_millis(500));
        // The upstream goes down: every attempt fails, key after key.
        for k in keys.iter().take(6) {
            p.report(k, limited());
            clock.advance(Duration::from_millis(50));
        }
        assert!(p.storm_since().is_some(), "half the keys failed with nothing else in between");
        let parked = keys.iter().filter(|k| k.status() == Status::Cooling).count();
        assert_eq!(parked, 4, "keys stop being parked once the storm is seen");
        let no = p.pick(&[]).unwrap_err();
        assert_eq!(no.retry_after, Some(p.policy().storm.retry_after), "clients come back at the next probe");
        assert_eq!(p.end_storm(), 4, "the first good probe returns every key the run parked");
        assert_eq!(p.usable_count(), 10);
    }

    #[test]
    fn a_long_trickle_of_failures_does_not_hide_a_later_outage() {
        let (p, clock) = pool(10);
        let keys = p.keys();
        for i in 0..300 {
            // One key fails now and then (never reaching its threshold), the rest serve.
            p.report(&keys[9], if i % 6 == 0 { Outcome::Transient } else { Outcome::Success });
            if i % 6 == 5 {
                p.report(&keys[9], Outcome::Success);
            }
            clock.advance(Duration::from_millis(100));
        }
        assert!(p.storm_since().is_none());
        for k in keys.iter().take(6) {
            p.report(k, limited());
        }
        assert!(p.storm_since().is_some(), "the successes around the trickle do not count against the outage");
    }

    #[test]
    fn a_few_bad_keys_among_good_ones_are_no_storm() {
        let (p, clock) = pool(10);
        let keys = p.keys();
        for round in 0..5 {
            for (i, k) in keys.iter().enumerate() {
                // Keys 0-4 are each out of allowance once; the rest keep serving.
                p.report(k, if i < 5 && round == i { limited() } else { Outcome::Success });
                clock.advance(Duration::from_millis(20));
            }
        }
        assert!(p.storm_since().is_none());
        assert_eq!(keys.iter().filter(|k| k.status() == Status::Cooling).count(), 5, "each parked on its own");
    }

    #[test]
    fn a_slow_outage_is_one_run_while_failures_come_within_the_window() {
        let (p, clock) = pool(6);
        let keys = p.keys();
        for k in keys.iter().take(2) {
            p.report(k, Outcome::Success);
        }
        for k in keys.iter().take(3) {
            clock.advance(Duration::from_secs(6)); // one failure every 6 s: a 10 s window never holds 3
            p.report(k, Outcome::Transient);
            p.report(k, Outcome::Transient);
            p.report(k, Outcome::Transient);
        }
        assert!(p.storm_since().is_some());
    }

    #[test]
    fn excluded_keys_are_never_picked() {
        let (p, _) = pool(3);
        let a = p.pick(&[]).unwrap();
        let b = p.pick(std::slice::from_ref(&a)).unwrap();
        let c = p.pick(&[a.clone(), b.clone()]).unwrap();
        assert!(!Arc::ptr_eq(&a, &b) && !Arc::ptr_eq(&b, &c) && !Arc::ptr_eq(&a, &c));
        assert_eq!(p.pick(&[a, b, c]).unwrap_err(), NoKey { retry_after: None });
    }

    #[test]
    fn credential_parks_for_cooldown_then_returns() {
        let (p, clock) = pool(1);
        let k = p.pick(&[]).unwrap();
        p.report(&k, Outcome::Credential);
        assert_eq!(k.status(), Status::Invalid);
        assert_eq!(p.pick(&[]).unwrap_err().retry_after, Some(Duration::from_secs(3600)));
        clock.advance(Duration::from_secs(3599));
        assert!(p.pick(&[]).is_err());
        clock.advance(Duration::from_secs(1));
        assert!(Arc::ptr_eq(&p.pick(&[]).unwrap(), &k));
        assert_eq!(k.status(), Status::Active);
    }

    #[test]
    fn transient_failures_park_at_threshold() {
        let (p, _) = pool(1);
        let k = p.pick(&[]).unwrap();
        p.report(&k, Outcome::Transient);
        p.report(&k, Outcome::Success);
        p.report(&k, Outcome::Transient);
        p.report(&k, Outcome::Transient);
        assert_eq!(k.status(), Status::Active, "success reset the streak");
        p.report(&k, Outcome::Transient);
        assert_eq!((k.status(), k.reason()), (Status::Cooling, Reason::AutoDisabled));
    }

    #[test]
    fn rate_limit_honours_retry_after_else_doubles() {
        let (p, clock) = pool(1);
        let k = p.pick(&[]).unwrap();
        let now = clock.now_ms();
        p.report(&k, Outcome::RateLimited { retry_after: Some(Duration::from_secs(7)), window: None });
        assert_eq!(k.until_ms(), Some(now + 7_000));
        p.report(&k, Outcome::RateLimited { retry_after: None, window: None });
        assert_eq!(k.until_ms(), Some(now + 60_000));
        p.report(&k, Outcome::RateLimited { retry_after: None, window: None });
        assert_eq!(k.until_ms(), Some(now + 120_000));
        p.report(&k, Outcome::Success);
        p.report(&k, Outcome::RateLimited { retry_after: None, window: None });
        assert_eq!(k.until_ms(), Some(now + 60_000));
    }

    #[test]
    fn caller_faults_do_not_penalise() {
        let (p, _) = pool(1);
        let k = p.pick(&[]).unwrap();
        for _ in 0..10 {
            p.report(&k, Outcome::CallerFault);
        }
        assert_eq!(k.status(), Status::Active);
        assert_eq!(k.view_at(0).consecutive_failures, 0);
    }

    #[test]
    fn reports_show_a_park_as_over_as_soon_as_its_time_is_up() {
        let (p, clock) = pool(3);
        let ids: Vec<String> = p.keys().iter().map(|k| k.id.to_string()).collect();
        assert!(p.disable(&ids[0], Some(Duration::from_secs(60))));
        let k1 = p.get(&ids[1]).unwrap();
        p.report(&k1, Outcome::Credential); // invalid for the cooldown
        assert!(p.disable(&ids[2], None)); // until enabled: never over by itself
        let status = |id: &str| p.views().into_iter().find(|v| v.id == id).map(|v| (v.status, v.reason, v.until_ms));
        assert_eq!(status(&ids[0]).map(|s| s.0), Some(Status::Disabled));
        clock.advance(Duration::from_secs(61));
        assert_eq!(status(&ids[0]), Some((Status::Active, Reason::None, None)), "no request has picked it yet");
        assert_eq!(status(&ids[1]).map(|s| s.0), Some(Status::Invalid));
        clock.advance(p.policy().cooldown);
        assert_eq!(status(&ids[1]), Some((Status::Active, Reason::None, None)));
        assert_eq!(status(&ids[2]).map(|s| s.0), Some(Status::Disabled));
        // The stored state is untouched until the key is next picked or probed.
        assert_eq!(p.get(&ids[0]).unwrap().status(), Status::Disabled);
    }

    #[test]
    fn manual_disable_is_not_overridden_and_can_expire() {
        let (p, clock) = pool(1);
        let k = p.pick(&[]).unwrap();
        assert!(p.disable(&k.id, Some(Duration::from_secs(60))));
        p.report(&k, Outcome::Credential);
        assert_eq!((k.status(), k.reason()), (Status::Disabled, Reason::Manual));
        clock.advance(Duration::from_secs(60));
        assert!(p.pick(&[]).is_ok());
        assert!(p.disable(&k.id, None));
        clock.advance(Duration::from_secs(86400 * 365));
        assert_eq!(p.pick(&[]).unwrap_err(), NoKey { retry_after: None });
        assert!(p.enable(&k.id));
        assert!(p.pick(&[]).is_ok());
    }

    #[test]
    fn expired_keys_never_serve() {
        let clock = ManualClock::new(1_000);
        let p = Pool::new(Policy::default(), Arc::new(clock.clone()));
        p.add(Key::new(Secret::new("expiring-key-1"), None, Some(2_000)).unwrap()).unwrap();
        assert!(p.pick(&[]).is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(p.pick(&[]).unwrap_err(), NoKey { retry_after: None });
        assert_eq!(p.views()[0].status, Status::Expired);
    }

    /// Every change goes through the one transition point and comes out as a typed event:
    /// request outcomes, a model park, an operator's disable, a time-up return, add and remove.
    #[test]
    fn every_change_is_one_event() {
        let clock = ManualClock::new(1_000_000);
        let events = Arc::new(Events::default());
        let seen = Arc::new(events::Recorder::default());
        events.subscribe(seen.clone());
        let p = Pool::for_provider("ollama", Policy::default(), Arc::new(clock.clone()), events);
        let k = p.add(Key::new(Secret::new("event-key-0001"), None, None).unwrap()).unwrap();
        p.report(&k, Outcome::Credential);
        p.report(&k, Outcome::Credential); // already there: no second event
        p.report_for(&k, Outcome::ModelUnavailable, Some("big"));
        clock.advance(p.policy().cooldown);
        assert!(p.pick(&[]).is_ok(), "back after the cooldown");
        assert!(p.disable(&k.id, None));
        assert!(p.remove(&k.id));
        let got: Vec<Change> = seen
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                PoolEvent::Key(k) => {
                    assert_eq!(
                        (&*k.provider, k.key_id.as_str()),
                        ("ollama", Secret::new("event-key-0001").id().as_str())
                    );
                    k.change.clone()
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let cooldown = 1_000_000 + p.policy().cooldown.as_millis() as u64;
        assert_eq!(
            got,
            vec![
                Change::Added,
                Change::Moved {
                    from: Status::Active,
                    to: Status::Invalid,
                    reason: Reason::Credential,
                    until_ms: Some(cooldown)
                },
                Change::ModelParked { model: "big".into(), until_ms: cooldown },
                Change::Moved { from: Status::Invalid, to: Status::Active, reason: Reason::None, until_ms: None },
                Change::Moved { from: Status::Active, to: Status::Disabled, reason: Reason::Manual, until_ms: None },
                Change::Removed,
            ]
        );
    }

    #[test]
    fn add_remove_and_duplicates() {
        let (p, _) = pool(2);
        let dup = Key::new(Secret::new("key-0000"), None, None).unwrap();
        assert!(matches!(p.add(dup), Err(AddError::Duplicate(_))));
        let id = Secret::new("key-0001").id();
        assert!(p.remove(&id));
        assert!(!p.remove(&id));
        for _ in 0..5 {
            assert_ne!(p.pick(&[]).unwrap().id, id);
        }
    }

    /// What a walk over every key from the cursor picks (the selection before the index):
    /// the key's id, and where the cursor ends.
    fn scan_pick(p: &Pool, exclude: &[Arc<Key>]) -> Option<(String, usize)> {
        let keys = p.keys();
        let (n, now) = (keys.len(), p.now_ms());
        let c = p.cursor.0.load(Relaxed);
        (0..n).find_map(|j| {
            let k = &keys[(c + j) % n];
            (k.usable_at(now) && !exclude.iter().any(|e| Arc::ptr_eq(e, k))).then(|| (k.id.to_string(), c + 1 + j))
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Park(usize, u64),
        Return(usize),
        DisableForever(usize),
        Advance(u64),
        Add,
        Remove(usize),
        PickExcluding(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..64usize, 0..400u64).prop_map(|(i, d)| Op::Park(i, d)),
            2 => (0..64usize).prop_map(Op::Return),
            1 => (0..64usize).prop_map(Op::DisableForever),
            3 => (0..250u64).prop_map(Op::Advance),
            1 => Just(Op::Add),
            1 => (0..64usize).prop_map(Op::Remove),
            2 => (0..64usize).prop_map(Op::PickExcluding),
        ]
    }

    proptest::proptest! {
        /// The usable index is only a shortcut: after any mix of parks, returns (by transition
        /// and by time), disables, adds and removes, each pick is the key a walk over every key
        /// would pick, and the cursor ends where that walk leaves it (issue #14 item 4: the
        /// key after a failover must not depend on when the index was rebuilt).
        #[test]
        fn the_index_picks_what_a_full_scan_picks(ops in proptest::collection::vec(op(), 1..120)) {
            let (p, clock) = pool(24);
            let mut next = 24;
            for op in ops {
                let keys = p.keys();
                let nth = |i: usize| keys[i % keys.len().max(1)].clone();
                let mut exclude = Vec::new();
                match op {
                    Op::Park(_, _) | Op::Return(_) | Op::DisableForever(_) | Op::Remove(_) if keys.is_empty() => {}
                    Op::Park(i, d) => {
                        p.transition(&nth(i), Status::Cooling, Reason::RateLimited, p.now_ms() + d + 1);
                    }
                    Op::Return(i) => {
                        p.transition(&nth(i), Status::Active, Reason::Probe, 0);
                    }
                    Op::DisableForever(i) => {
                        p.disable(&nth(i).id, None);
                    }
                    Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                    Op::Add => {
                        p.add(Key::new(Secret::new(format!("key-{next:04}")), None, None).unwrap()).unwrap();
                        next += 1;
                    }
                    Op::Remove(i) => {
                        p.remove(&nth(i).id);
                    }
                    Op::PickExcluding(i) if !keys.is_empty() => exclude.push(nth(i)),
                    Op::PickExcluding(_) => {}
                }
                for _ in 0..3 {
                    let want = scan_pick(&p, &exclude);
                    let got = p.pick(&exclude).ok().map(|k| (k.id.to_string(), p.cursor.0.load(Relaxed)));
                    proptest::prop_assert_eq!(got, want);
                }
            }
        }
    }

    /// Picks on other threads while keys join, leave, park and return: no pick panics or
    /// returns a key that was never added, and every thread keeps getting keys.
    #[test]
    fn picks_race_adds_removes_and_transitions_safely() {
        let (p, clock) = pool(64);
        let p = Arc::new(p);
        let stop = Arc::new(AtomicBool::new(false));
        let pickers: Vec<_> = (0..3)
            .map(|_| {
                let (p, stop) = (p.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut got = 0u64;
                    while !stop.load(Relaxed) {
                        if let Ok(k) = p.pick(&[]) {
                            assert!(k.id.len() == 12);
                            got += 1;
                        }
                    }
                    got
                })
            })
            .collect();
        for i in 0..3000 {
            let keys = p.keys();
            let k = &keys[i * 7 % keys.len()];
            match i % 5 {
                0 => {
                    p.remove(&k.id);
                }
                1 => {
                    let _ = p.add(Key::new(Secret::new(format!("race-key-{i:05}")), None, None).unwrap());
                }
                2 => {
                    p.transition(k, Status::Cooling, Reason::RateLimited, p.now_ms() + (i % 300) as u64);
                }
                3 => {
                    p.transition(k, Status::Active, Reason::Probe, 0);
                }
                _ => clock.advance(Duration::from_millis(37)),
            }
        }
        stop.store(true, Relaxed);
        for t in pickers {
            assert!(t.join().unwrap() > 0);
        }
    }

    /// The prefetch ahead of a pick stays on the walk that later picks take: an indexed key
    /// 16 steps on, wrapping at the end, in a whole walk and in an index walk alike.
    #[test]
    fn a_pick_prefetches_a_key_that_a_later_pick_walks_to() {
        let (p, _) = pool(60);
        for k in p.keys().iter().step_by(3) {
            p.disable(&k.id, None);
        }
        assert!(p.rebuild());
        let view = p.view.load();
        let n = view.keys.len();
        for whole in [false, true] {
            let len = view.walk_len(whole);
            assert_eq!(len, if whole { 60 } else { 40 });
            for start in 0..n {
                let first = view.first_at(start, whole);
                for j in 0..len {
                    let want = view.nth_from(first, (j + 16) % len, whole);
                    assert_eq!(view.ahead_of(first, j, whole), Some(want));
                    assert!(whole || view.keys[want].usable_at(p.now_ms()), "{want} is parked");
                    view.prefetch_after(first, j, whole);
                }
            }
        }
        // A walk of 16 keys or fewer fetches nothing ahead.
        let (small, _) = pool(16);
        assert_eq!(small.view.load().ahead_of(0, 0, false), None);
    }

    #[test]
    fn a_mostly_parked_pool_is_walked_through_its_index() {
        let (p, clock) = pool(1000);
        for k in p.keys().iter().skip(10) {
            p.disable(&k.id, None);
        }
        // The first picks walk past parked keys; once that has cost about a rebuild, the
        // index holds the 10 usable keys only.
        for _ in 0..200 {
            p.pick(&[]).unwrap();
        }
        assert_eq!(p.view.load().walk_len(false), 10);
        // A key that comes back is picked at once (the transition asks for a rebuild) ...
        let back = p.keys()[500].clone();
        p.enable(&back.id);
        assert!((0..11).any(|_| Arc::ptr_eq(&p.pick(&[]).unwrap(), &back)));
        // ... and so is one whose park is over by time.
        let timed = p.keys()[5].clone();
        p.transition(&timed, Status::Cooling, Reason::RateLimited, p.now_ms() + 60_000);
        for _ in 0..200 {
            p.pick(&[]).unwrap();
        }
        assert!(!(0..12).any(|_| Arc::ptr_eq(&p.pick(&[]).unwrap(), &timed)));
        clock.advance(Duration::from_secs(61));
        assert!((0..12).any(|_| Arc::ptr_eq(&p.pick(&[]).unwrap(), &timed)));
    }
}
