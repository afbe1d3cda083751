//! Fleet mode (SPEC §3.9, issue #11): instances on one Redis share their keys' live state and
//! their clients' limits. The durable records are the Redis store's (`crate::store`).
//!
//! - Every key change one instance makes — at the pool's one transition point: parks, invalid,
//!   auto-disable, per-model parks, returns, manual disable/enable, add/remove — is published on
//!   `<prefix>:events` and kept in the live state (`live`), and every other instance applies it
//!   to its own pool.
//! - `Outbox` (a pool-event subscriber) queues this instance's own key events, never waiting; a
//!   writer thread publishes them, and keeps them while Redis is away (up to `OUTBOX`). Events
//!   raised while a remote one is being applied are not published again (a thread-local guard),
//!   so nothing echoes.
//! - A reader thread subscribes, then reconciles in full (`live::reconcile`: the store's keys
//!   and tokens, every key's last state), at start and after every reconnect, and applies what
//!   others publish: a new key is read from the store (Redis has it before the publisher's admin
//!   answer), a removed one leaves the pool, a state change goes through `Pool::transition` /
//!   `park_model` like a local one. Client tokens made or revoked are announced the same way.
//! - `limits` shares the clients' rpm and budget counts.
//! - Every thread reconnects with a backoff; while Redis is down each instance serves on from
//!   its own state. The request path never waits on Redis.

pub mod limits;
pub mod live;

use crate::pool::events::{Change, KeyEvent, PoolEvent, Subscriber};
use crate::pool::{Reason, Status};
use crate::proxy::auth::Clients;
use crate::runtime::Runtime;
use crate::store::Store;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Own events waiting for the writer; past this, new ones are dropped (and counted).
const OUTBOX: usize = 8192;

thread_local! {
    /// Set while this thread applies a remote event: the pool's own emit must not echo it.
    static APPLYING: Cell<bool> = const { Cell::new(false) };
}

/// One key change on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The instance that made it (`fleet.instance`).
    pub from: String,
    /// A random number per process: what an instance recognises its own messages by (two
    /// instances given the same name by mistake still hear each other).
    #[serde(default)]
    pub origin: u64,
    pub provider: String,
    pub key_id: String,
    pub change: WireChange,
    /// When it happened (ms since the epoch, the maker's clock): a change older than the state
    /// Redis holds for that key is not applied.
    #[serde(default)]
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireChange {
    Added,
    Removed,
    Moved {
        to: u8,
        reason: u8,
        until_ms: u64,
    },
    ModelParked {
        model: String,
        until_ms: u64,
    },
    /// A client token was made (its id; the rest is read from the store).
    TokenAdded {
        id: String,
    },
    /// A client token was revoked (its SHA-256, hex: what the client table is keyed by).
    TokenRemoved {
        hash: String,
    },
    /// The store changed behind the instances' backs (the offline CLI): each reconciles in full.
    Resync,
    /// An instance is alive and hears the channel (every `fleet.heartbeat`; nothing to apply).
    Heartbeat,
}

impl Message {
    fn of(instance: &str, origin: u64, e: &KeyEvent) -> Message {
        let change = match &e.change {
            Change::Added => WireChange::Added,
            Change::Removed => WireChange::Removed,
            Change::Moved { to, reason, until_ms, .. } => {
                WireChange::Moved { to: *to as u8, reason: *reason as u8, until_ms: until_ms.unwrap_or(0) }
            }
            Change::ModelParked { model, until_ms } => {
                WireChange::ModelParked { model: model.clone(), until_ms: *until_ms }
            }
        };
        Message {
            from: instance.to_string(),
            origin,
            provider: e.provider.to_string(),
            key_id: e.key_id.clone(),
            change,
            at_ms: e.at_ms,
        }
    }

    fn kind(&self) -> &'static str {
        match self.change {
            WireChange::Added => "added",
            WireChange::Removed => "removed",
            WireChange::Moved { .. } => "moved",
            WireChange::ModelParked { .. } => "model_parked",
            WireChange::TokenAdded { .. } => "token_added",
            WireChange::TokenRemoved { .. } => "token_removed",
            WireChange::Resync => "resync",
            WireChange::Heartbeat => "heartbeat",
        }
    }
}

/// The pool-event subscriber that queues this instance's own key events; the admin operations
/// hold a clone to announce token changes.
#[derive(Clone)]
pub struct Outbox {
    instance: String,
    origin: u64,
    tx: mpsc::SyncSender<Message>,
    /// Messages queued and not yet written (a reconcile waits for them: they are newer).
    pending: Arc<AtomicUsize>,
    /// Set once the fleet threads run: the keys put into the pools at start are not news to
    /// the others (they are in the store), so they are not announced.
    armed: Arc<AtomicBool>,
}

impl Outbox {
    /// Queues `m` for the writer; a full queue drops it (and counts it).
    fn push(&self, m: Message) {
        let kind = m.kind();
        self.pending.fetch_add(1, Relaxed);
        if self.tx.try_send(m).is_err() {
            self.pending.fetch_sub(1, Relaxed);
            crate::metrics::fleet_event("dropped", kind);
        }
    }

    /// Queues a change this instance makes now, outside the pool's events.
    fn send_about(&self, provider: &str, key_id: &str, change: WireChange) {
        self.push(Message {
            from: self.instance.clone(),
            origin: self.origin,
            provider: provider.to_string(),
            key_id: key_id.to_string(),
            change,
            at_ms: crate::pool::Clock::now_ms(&crate::pool::SystemClock),
        });
    }

    fn send(&self, change: WireChange) {
        self.send_about("", "", change);
    }

    pub fn token_added(&self, id: &str) {
        self.send(WireChange::TokenAdded { id: id.to_string() });
    }

    /// Announces a key this instance added to its store and pool, when no pool event did.
    pub fn key_added(&self, provider: &str, id: &str) {
        self.send_about(provider, id, WireChange::Added);
    }

    /// Has every other instance reconcile (the store changed in a way no key event tells).
    pub fn resync(&self) {
        self.send(WireChange::Resync);
    }

    pub fn token_removed(&self, hash: &[u8; 32]) {
        self.send(WireChange::TokenRemoved { hash: hex::encode(hash) });
    }
}

impl Subscriber for Outbox {
    fn on_event(&self, e: &PoolEvent) {
        let PoolEvent::Key(k) = e else { return };
        if APPLYING.with(Cell::get) || !self.armed.load(Relaxed) {
            return;
        }
        self.push(Message::of(&self.instance, self.origin, k));
    }
}

/// A new `Message::origin`: random, never 0 (the value of a message without one).
fn new_origin() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    u64::from_le_bytes(b) | 1
}

/// Whether this thread is applying another instance's change now (its events are not this
/// instance's own: not published again, and no webhook is sent for them here).
pub fn applying() -> bool {
    APPLYING.with(Cell::get)
}

/// Wires fleet sync: returns the subscriber to hand the pools' `Events`, and starts the writer,
/// the reader and the limits sync once `start` gets the runtime.
pub struct Fleet {
    prefix: String,
    client: redis::Client,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Message>>>,
    pending: Arc<AtomicUsize>,
    armed: Arc<AtomicBool>,
    /// What this instance's messages carry as `origin`.
    origin: u64,
    heartbeat: Duration,
}

impl Fleet {
    pub fn new(url: &str, prefix: &str, instance: &str, heartbeat: Duration) -> Result<(Fleet, Outbox), String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::sync_channel(OUTBOX);
        let (pending, armed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let origin = new_origin();
        let fleet = Fleet {
            prefix: prefix.to_string(),
            client,
            rx: std::sync::Mutex::new(Some(rx)),
            pending: pending.clone(),
            armed: armed.clone(),
            origin,
            heartbeat,
        };
        Ok((fleet, Outbox { instance: instance.to_string(), origin, tx, pending, armed }))
    }

    /// Starts the writer, reader and limits threads (they live as long as the process).
    pub fn start(
        &self,
        runtime: Arc<ArcSwap<Runtime>>,
        clients: Arc<Clients>,
        store: Arc<dyn Store>,
        clock: Arc<dyn crate::pool::Clock>,
    ) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        self.armed.store(true, Relaxed);
        let (client, prefix, pending) = (self.client.clone(), self.prefix.clone(), self.pending.clone());
        let beat = Message {
            from: String::new(),
            origin: self.origin,
            provider: String::new(),
            key_id: String::new(),
            change: WireChange::Heartbeat,
            at_ms: 0,
        };
        let every = self.heartbeat;
        std::thread::Builder::new()
            .name("fleet-out".into())
            .spawn(move || write_loop(&client, &prefix, rx, &pending, (&beat, every)))
            .expect("a thread");
        limits::start(self.client.clone(), self.prefix.clone(), clients.clone(), store.clone(), clock.clone());
        let reader = Reader {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            origin: self.origin,
            pending: self.pending.clone(),
            silence: self.heartbeat * 3,
            local: Local { runtime, clients, store, clock },
        };
        std::thread::Builder::new().name("fleet-in".into()).spawn(move || reader.run()).expect("a thread");
    }
}

/// Sleeps `d`, then doubles it up to 2 s: a Redis that comes back is found within 2 s (a
/// refused connection costs nothing), and each thread logs once per outage, not per try.
fn backoff(d: &mut Duration) {
    std::thread::sleep(*d);
    *d = (*d * 2).min(Duration::from_secs(2));
}

fn channel(prefix: &str) -> String {
    format!("{prefix}:events")
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(c)
}

/// Writes this instance's changes, in order. While Redis is away they wait in the queue (the
/// newest 8,192), and go out once it is back; one that Redis holds a newer state for by then
/// is dropped there. When there is nothing to write for `every`, writes the heartbeat `beat`
/// (best effort: a lost one is not retried).
fn write_loop(
    client: &redis::Client,
    prefix: &str,
    rx: mpsc::Receiver<Message>,
    pending: &AtomicUsize,
    (beat, every): (&Message, Duration),
) {
    let (channel, scripts) = (channel(prefix), live::Scripts::default());
    let beat_text = serde_json::to_string(beat).unwrap_or_default();
    let mut conn: Option<redis::Connection> = None;
    let mut wait = Duration::from_millis(200);
    loop {
        let m = match rx.recv_timeout(every) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if conn.is_none() {
                    conn = connect(client).ok();
                }
                if let Some(c) = conn.as_mut() {
                    if redis::cmd("PUBLISH").arg(&channel).arg(&beat_text).query::<i64>(c).is_err() {
                        conn = None;
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut refused = 0;
        loop {
            if conn.is_none() {
                match connect(client) {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        backoff(&mut wait);
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            match live::publish(c, &scripts, prefix, &channel, &m) {
                Ok(kept) => {
                    crate::metrics::fleet_event(if kept { "out" } else { "stale" }, m.kind());
                    wait = Duration::from_millis(200);
                    break;
                }
                Err(e)
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() =>
                {
                    conn = None;
                    backoff(&mut wait);
                }
                // An answer, but an error (a Redis still loading its data, a replica that is
                // read-only after a failover, a script error): a few more tries on a new
                // connection, then the change stays local.
                Err(e) if refused < 5 => {
                    refused += 1;
                    log::debug!("fleet: publishing a {} change: {e}; trying again", m.kind());
                    conn = None;
                    backoff(&mut wait);
                }
                Err(e) => {
                    log::warn!("fleet: publishing a {} change: {e}; it stays on this instance", m.kind());
                    crate::metrics::fleet_event("dropped", m.kind());
                    break;
                }
            }
        }
        pending.fetch_sub(1, Relaxed);
    }
}

/// What a remote change is applied to.
pub struct Local {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub clients: Arc<Clients>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn crate::pool::Clock>,
}

struct Reader {
    client: redis::Client,
    prefix: String,
    origin: u64,
    pending: Arc<AtomicUsize>,
    /// Nothing heard on the channel for this long (not even this instance's own heartbeat):
    /// the subscription is dead, though its connection may look open.
    silence: Duration,
    local: Local,
}

impl Reader {
    fn run(&self) {
        let channel = channel(&self.prefix);
        let mut wait = Duration::from_millis(200);
        let mut lost = false;
        loop {
            let (Ok(mut conn), Ok(mut side)) = (connect(&self.client), connect(&self.client)) else {
                backoff(&mut wait);
                continue;
            };
            let _ = conn.set_read_timeout(Some(self.silence));
            let mut pubsub = conn.as_pubsub();
            if pubsub.subscribe(&channel).is_err() {
                backoff(&mut wait);
                continue;
            }
            // Subscribed first, so nothing published from here on is missed; then the whole
            // state, once this instance's own queued changes (newer) are written.
            let drained = std::time::Instant::now();
            while self.pending.load(Relaxed) > 0 && drained.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(5));
            }
            match live::reconcile(&mut side, &self.prefix, &self.local) {
                Ok(r) if r.is_empty() => {}
                Ok(r) => log::info!(
                    "fleet: reconciled: keys +{} -{}, {} key states, {} model parks, tokens +{} -{}",
                    r.keys_added,
                    r.keys_removed,
                    r.states,
                    r.model_parks,
                    r.tokens_added,
                    r.tokens_removed
                ),
                Err(e) => {
                    log::warn!("fleet: reconciling with Redis: {e}");
                    backoff(&mut wait);
                    continue;
                }
            }
            crate::metrics::fleet_event("in", "reconcile");
            if std::mem::take(&mut lost) {
                log::info!("fleet: key events are shared again");
            }
            wait = Duration::from_millis(200);
            loop {
                let msg = match pubsub.get_message() {
                    Ok(msg) => msg,
                    Err(e) => {
                        if e.is_timeout() && !lost {
                            log::warn!(
                                "fleet: nothing heard from Redis in {:?}, not even this instance's heartbeat",
                                self.silence
                            );
                        }
                        break;
                    }
                };
                let Ok(text) = msg.get_payload::<String>() else { continue };
                let Ok(m) = serde_json::from_str::<Message>(&text) else { continue };
                if m.origin == self.origin || m.change == WireChange::Heartbeat {
                    continue;
                }
                crate::metrics::fleet_event("in", m.kind());
                if m.change == WireChange::Resync {
                    if let Err(e) = live::reconcile(&mut side, &self.prefix, &self.local) {
                        log::warn!("fleet: reconciling after a change by {}: {e}", m.from);
                    }
                    continue;
                }
                APPLYING.with(|a| a.set(true));
                apply(&m, &self.local);
                APPLYING.with(|a| a.set(false));
            }
            if !lost {
                log::warn!("fleet: lost the event subscription to Redis; serving on from this instance's state");
            }
            lost = true;
            backoff(&mut wait);
        }
    }
}

/// Applies another instance's change to this instance's pools or client table.
pub fn apply(m: &Message, local: &Local) {
    let (store, now_ms) = (&*local.store, local.clock.now_ms());
    match &m.change {
        WireChange::TokenAdded { id } => {
            match store.tokens().map(|ts| ts.into_iter().find(|t| &t.id == id)) {
                // Its budgets' use is the fleet's counters (`limits`), not seeded here.
                Ok(Some(t)) => local.clients.insert(t.hash, crate::admin::ops::to_client(&t)),
                Ok(None) => {}
                Err(e) => log::warn!("fleet: token {id} was made elsewhere but cannot be read: {e}"),
            }
            return;
        }
        WireChange::TokenRemoved { hash } => {
            if let Some(h) = hex::decode(hash).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                local.clients.remove(&h);
            }
            return;
        }
        _ => {}
    }
    let rt = local.runtime.load();
    let Some(p) = rt.provider(&m.provider) else { return };
    match &m.change {
        WireChange::Added => {
            if p.pool.get(&m.key_id).is_some() {
                return;
            }
            match store.key(&m.key_id) {
                Ok(Some(k)) => {
                    if let Some(key) = crate::admin::ops::to_pool_key(&k, &p.auth, now_ms) {
                        let _ = p.pool.add(key);
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("fleet: key {} was added elsewhere but cannot be read: {e}", m.key_id),
            }
        }
        WireChange::Removed => {
            p.pool.remove(&m.key_id);
        }
        WireChange::Moved { to, reason, until_ms } => {
            if let Some(key) = p.pool.get(&m.key_id) {
                p.pool.transition(&key, Status::from_u8(*to), Reason::from_u8(*reason), *until_ms);
            }
        }
        WireChange::ModelParked { model, until_ms } => {
            if let Some(key) = p.pool.get(&m.key_id) {
                p.pool.park_model(&key, model, *until_ms);
            }
        }
        WireChange::TokenAdded { .. }
        | WireChange::TokenRemoved { .. }
        | WireChange::Resync
        | WireChange::Heartbeat => {}
    }
}

/// Tells the running instances on a Redis store what the offline CLI (instance `cli`) changed
/// there: a key's manual disable or enable as a state change, anything else as `Resync`.
pub fn announce(url: &str, prefix: &str, changes: &[(String, String, WireChange)]) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut c = connect(&client).map_err(|e| e.to_string())?;
    let (channel, scripts) = (channel(prefix), live::Scripts::default());
    let (at_ms, origin) = (crate::pool::Clock::now_ms(&crate::pool::SystemClock), new_origin());
    for (provider, key_id, change) in changes {
        let m = Message {
            from: "cli".into(),
            origin,
            provider: provider.clone(),
            key_id: key_id.clone(),
            change: change.clone(),
            at_ms,
        };
        live::publish(&mut c, &scripts, prefix, &channel, &m).map_err(|e| e.to_string())?;
    }
    Ok(())
}
