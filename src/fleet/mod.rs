//! Fleet mode, first part (SPEC §3.9, issue #11 item 2): every key change one instance makes —
//! at the pool's one transition point: parks, invalid, auto-disable, per-model parks, returns,
//! manual disable/enable, add/remove — is published on `<prefix>:events` in the shared Redis,
//! and every other instance applies it to its own pool.
//!
//! - `Outbox` (a pool-event subscriber) queues this instance's own key events, never waiting; a
//!   writer thread PUBLISHes them. Events raised while a remote one is being applied are not
//!   published again (a thread-local guard), so nothing echoes.
//! - A reader thread SUBSCRIBEs and applies what others published: a new key is read from the
//!   store (Redis has it before the publisher's admin answer), a removed one leaves the pool, a
//!   state change goes through `Pool::transition` / `park_model` like a local one.
//! - Both threads reconnect with a backoff; while Redis is down each instance serves on from
//!   its own state. The request path never waits on Redis.
//!
//! Client tokens made or revoked on one instance are announced the same way, and the others
//! load or drop them.
//!
//! Not yet: the full reconcile of state at start or after a reconnect, and fleet-wide client
//! limits.

use crate::pool::events::{Change, KeyEvent, PoolEvent, Subscriber};
use crate::pool::{Reason, Status};
use crate::proxy::auth::Clients;
use crate::runtime::Runtime;
use crate::store::Store;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
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
    pub provider: String,
    pub key_id: String,
    pub change: WireChange,
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
}

impl Message {
    fn of(instance: &str, e: &KeyEvent) -> Message {
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
        Message { from: instance.to_string(), provider: e.provider.to_string(), key_id: e.key_id.clone(), change }
    }

    fn kind(&self) -> &'static str {
        match self.change {
            WireChange::Added => "added",
            WireChange::Removed => "removed",
            WireChange::Moved { .. } => "moved",
            WireChange::ModelParked { .. } => "model_parked",
            WireChange::TokenAdded { .. } => "token_added",
            WireChange::TokenRemoved { .. } => "token_removed",
        }
    }
}

/// The pool-event subscriber that queues this instance's own key events; the admin operations
/// hold a clone to announce token changes.
#[derive(Clone)]
pub struct Outbox {
    instance: String,
    tx: mpsc::SyncSender<Message>,
}

impl Outbox {
    /// Queues `m` for the writer; a full queue drops it (and counts it).
    fn push(&self, m: Message) {
        let kind = m.kind();
        if self.tx.try_send(m).is_err() {
            crate::metrics::fleet_event("dropped", kind);
        }
    }

    fn send(&self, change: WireChange) {
        self.push(Message { from: self.instance.clone(), provider: String::new(), key_id: String::new(), change });
    }

    pub fn token_added(&self, id: &str) {
        self.send(WireChange::TokenAdded { id: id.to_string() });
    }

    pub fn token_removed(&self, hash: &[u8; 32]) {
        self.send(WireChange::TokenRemoved { hash: hex::encode(hash) });
    }
}

impl Subscriber for Outbox {
    fn on_event(&self, e: &PoolEvent) {
        let PoolEvent::Key(k) = e else { return };
        if APPLYING.with(Cell::get) {
            return;
        }
        self.push(Message::of(&self.instance, k));
    }
}

/// Wires fleet sync: returns the subscriber to hand the pools' `Events`, and starts the writer
/// and the reader once `start` gets the runtime.
pub struct Fleet {
    instance: String,
    channel: String,
    client: redis::Client,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Message>>>,
}

impl Fleet {
    pub fn new(url: &str, prefix: &str, instance: &str) -> Result<(Fleet, Outbox), String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::sync_channel(OUTBOX);
        let fleet = Fleet {
            instance: instance.to_string(),
            channel: format!("{prefix}:events"),
            client,
            rx: std::sync::Mutex::new(Some(rx)),
        };
        Ok((fleet, Outbox { instance: instance.to_string(), tx }))
    }

    /// Starts the writer and reader threads (they live as long as the process).
    pub fn start(
        &self,
        runtime: Arc<ArcSwap<Runtime>>,
        clients: Arc<Clients>,
        store: Arc<dyn Store>,
        clock: Arc<dyn crate::pool::Clock>,
    ) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let (client, channel) = (self.client.clone(), self.channel.clone());
        std::thread::Builder::new()
            .name("fleet-out".into())
            .spawn(move || write_loop(&client, &channel, rx))
            .expect("a thread");
        let (client, channel, me) = (self.client.clone(), self.channel.clone(), self.instance.clone());
        std::thread::Builder::new()
            .name("fleet-in".into())
            .spawn(move || read_loop(&client, &channel, &me, &Local { runtime, clients, store, clock }))
            .expect("a thread");
    }
}

fn backoff(d: &mut Duration) {
    std::thread::sleep(*d);
    *d = (*d * 2).min(Duration::from_secs(10));
}

fn write_loop(client: &redis::Client, channel: &str, rx: mpsc::Receiver<Message>) {
    let mut conn: Option<redis::Connection> = None;
    let mut wait = Duration::from_millis(200);
    while let Ok(m) = rx.recv() {
        let text = serde_json::to_string(&m).unwrap_or_default();
        loop {
            if conn.is_none() {
                match client.get_connection_with_timeout(Duration::from_secs(5)) {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        // Redis is away: this change stays local (the others keep theirs).
                        crate::metrics::fleet_event("dropped", m.kind());
                        backoff(&mut wait);
                        break;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            match redis::cmd("PUBLISH").arg(channel).arg(&text).query::<i64>(c) {
                Ok(_) => {
                    crate::metrics::fleet_event("out", m.kind());
                    wait = Duration::from_millis(200);
                    break;
                }
                Err(_) => conn = None, // try once more on a new connection
            }
        }
    }
}

/// What a remote change is applied to.
pub struct Local {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub clients: Arc<Clients>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn crate::pool::Clock>,
}

fn read_loop(client: &redis::Client, channel: &str, me: &str, local: &Local) {
    let mut wait = Duration::from_millis(200);
    loop {
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
            backoff(&mut wait);
            continue;
        };
        let mut pubsub = conn.as_pubsub();
        if pubsub.subscribe(channel).is_err() {
            backoff(&mut wait);
            continue;
        }
        wait = Duration::from_millis(200);
        while let Ok(msg) = pubsub.get_message() {
            let Ok(text) = msg.get_payload::<String>() else { continue };
            let Ok(m) = serde_json::from_str::<Message>(&text) else { continue };
            if m.from == me {
                continue;
            }
            crate::metrics::fleet_event("in", m.kind());
            APPLYING.with(|a| a.set(true));
            apply(&m, local);
            APPLYING.with(|a| a.set(false));
        }
        log::warn!("fleet: lost the event subscription to Redis; reconnecting");
        backoff(&mut wait);
    }
}

/// Applies another instance's change to this instance's pools or client table.
pub fn apply(m: &Message, local: &Local) {
    let (store, now_ms) = (&*local.store, local.clock.now_ms());
    match &m.change {
        WireChange::TokenAdded { id } => {
            match store.tokens().map(|ts| ts.into_iter().find(|t| &t.id == id)) {
                Ok(Some(t)) => {
                    let client = crate::admin::ops::to_client(&t);
                    if let Err(e) = crate::usage::seed_client(&client, store, now_ms) {
                        log::warn!("fleet: token {id}: reading its usage: {e}");
                    }
                    local.clients.insert(t.hash, client);
                }
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
        WireChange::TokenAdded { .. } | WireChange::TokenRemoved { .. } => {}
    }
}
