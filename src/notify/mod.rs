//! Notifications (SPEC §3.10): the pool's key events and pool events, as `Notice`s, to
//! `GET /admin/events` (Server-Sent Events, `sse`) and to webhooks (`webhooks`).
//!
//! The path: the pool's one transition point emits a `PoolEvent`; `Intake` (a pool-event
//! subscriber, on the thread that made the change) only puts it on a bounded queue, never
//! waiting. `NotifyService` (a background service) turns queued events into notices, adds
//! `pool.empty` / `pool.recovered` when a provider's last usable key goes or the first comes
//! back, and broadcasts them on the `Hub`; SSE streams and the webhook service each read the hub
//! at their own pace. Nothing here ever holds a request back.
//!
//! Not here: metrics of key events (`crate::metrics::EventMetrics`, its own subscriber).

pub mod sse;
pub mod webhooks;

use crate::pool::clock::rfc3339;
use crate::pool::events::{Change, PoolEvent, Subscriber};
use crate::pool::Status;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Every notice type, as webhooks' `events` filter names them.
pub const EVENT_TYPES: &[&str] = &[
    "key.added",
    "key.removed",
    "key.parked",
    "key.invalid",
    "key.disabled",
    "key.expired",
    "key.returned",
    "key.model_parked",
    "pool.storm",
    "pool.storm_ended",
    "pool.empty",
    "pool.recovered",
];

/// Pool events waiting for `NotifyService`; past this, new ones are dropped and counted.
const INTAKE: usize = 8192;
/// Notices a slow reader of the hub may fall behind before it skips (and is told how many).
const HUB: usize = 4096;

/// One notification, as SSE `data:` and in webhook payloads. Names key ids, never secrets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// Increases by one per notice of this process (the SSE `id:`).
    #[serde(skip)]
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339.
    pub at: String,
    pub provider: String,
    pub key_id: Option<String>,
    pub from: Option<&'static str>,
    pub to: Option<&'static str>,
    pub reason: Option<&'static str>,
    /// When the key returns, if that is scheduled (RFC 3339).
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `pool.storm_ended`: keys the end of the storm returned. `pool.*`: keys usable now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
    /// Fleet mode: another instance made this change and this one applied it. SSE shows it
    /// (`"remote": true`); webhooks leave it to the instance that made it, so a receiver hears
    /// each change once, not once per instance.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

impl Notice {
    fn new(kind: &'static str, provider: &str, at_ms: u64) -> Notice {
        Notice {
            seq: 0,
            kind,
            at: rfc3339(at_ms),
            provider: provider.to_string(),
            key_id: None,
            from: None,
            to: None,
            reason: None,
            until: None,
            model: None,
            keys: None,
            remote: false,
        }
    }

    /// The notice of a pool event.
    pub fn of(e: &PoolEvent) -> Notice {
        match e {
            PoolEvent::Key(k) => {
                let kind = match &k.change {
                    Change::Added => "key.added",
                    Change::Removed => "key.removed",
                    Change::ModelParked { .. } => "key.model_parked",
                    Change::Moved { to, .. } => match to {
                        Status::Active => "key.returned",
                        Status::Cooling => "key.parked",
                        Status::Invalid => "key.invalid",
                        Status::Disabled => "key.disabled",
                        Status::Expired => "key.expired",
                    },
                };
                let mut n = Notice::new(kind, &k.provider, k.at_ms);
                n.key_id = Some(k.key_id.clone());
                match &k.change {
                    Change::Moved { from, to, reason, until_ms } => {
                        n.from = Some(from.as_str());
                        n.to = Some(to.as_str());
                        n.reason = Some(reason.as_str()).filter(|r| !r.is_empty());
                        n.until = until_ms.map(rfc3339);
                    }
                    Change::ModelParked { model, until_ms } => {
                        n.model = Some(model.clone());
                        n.until = Some(rfc3339(*until_ms));
                    }
                    Change::Added | Change::Removed => {}
                }
                n
            }
            PoolEvent::Storm { provider, active: true, at_ms, .. } => Notice::new("pool.storm", provider, *at_ms),
            PoolEvent::Storm { provider, active: false, returned, at_ms } => {
                let mut n = Notice::new("pool.storm_ended", provider, *at_ms);
                n.keys = Some(*returned);
                n
            }
        }
    }

    fn provider_of(e: &PoolEvent) -> &str {
        match e {
            PoolEvent::Key(k) => &k.provider,
            PoolEvent::Storm { provider, .. } => provider,
        }
    }
}

/// Where notices are broadcast; SSE streams and the webhook service subscribe.
pub type Hub = broadcast::Sender<Arc<Notice>>;

/// Events dropped because the intake queue was full (a notifier far behind).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The pool-event subscriber: queues the event, never waits. Until `IntakeQueue::arm` it
/// ignores events: the keys put into the pools at start were there before, they are not news
/// (and 100k of them would overflow the queue and count as dropped, issue #14).
pub struct Intake {
    tx: mpsc::Sender<(PoolEvent, bool)>,
    armed: Arc<AtomicBool>,
}

impl Subscriber for Intake {
    fn on_event(&self, e: &PoolEvent) {
        if !self.armed.load(Relaxed) {
            return;
        }
        if self.tx.try_send((e.clone(), crate::fleet::applying())).is_err() {
            DROPPED.fetch_add(1, Relaxed);
            crate::metrics::events_dropped(1);
        }
    }
}

/// The intake subscriber and the queue `NotifyService` reads (built before the runtime
/// exists; `arm` it once the start's keys are in).
pub fn channel() -> (Intake, IntakeQueue) {
    let (tx, rx) = mpsc::channel(INTAKE);
    let armed = Arc::new(AtomicBool::new(false));
    (Intake { tx, armed: armed.clone() }, IntakeQueue { rx: Mutex::new(Some(rx)), armed })
}

pub struct IntakeQueue {
    rx: Mutex<Option<mpsc::Receiver<(PoolEvent, bool)>>>,
    armed: Arc<AtomicBool>,
}

impl IntakeQueue {
    /// From now on every pool event becomes a notice: called once the keys present at start
    /// are in the pools, before any service (admin, health checks, fleet) can change one.
    pub fn arm(&self) {
        self.armed.store(true, Relaxed);
    }
}

pub struct NotifyService {
    queue: IntakeQueue,
    runtime: Arc<ArcSwap<Runtime>>,
    hub: Hub,
    seq: AtomicU64,
}

impl NotifyService {
    pub fn new(queue: IntakeQueue, runtime: Arc<ArcSwap<Runtime>>) -> NotifyService {
        let (hub, _) = broadcast::channel(HUB);
        NotifyService { queue, runtime, hub, seq: AtomicU64::new(0) }
    }

    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    fn publish(&self, mut n: Notice) {
        n.seq = self.seq.fetch_add(1, Relaxed) + 1;
        let _ = self.hub.send(Arc::new(n)); // no subscriber: nobody to tell
    }

    /// Providers with no usable key now (their `pool.empty` was sent).
    /// `touched`: the providers to look at, each with whether only remote changes touched it
    /// (then a `pool.*` notice it causes is remote too).
    fn check_empty(&self, empty: &mut HashMap<String, bool>, touched: &[(String, bool)]) {
        let rt = self.runtime.load();
        let now = rt.providers.first().map(|p| p.pool.now_ms()).unwrap_or(0);
        for (p, remote) in rt.providers.iter().filter_map(|p| Some((p, touched.iter().find(|t| t.0 == p.name)?.1))) {
            let usable = p.pool.usable_count();
            let was = empty.get(&p.name).copied().unwrap_or(false);
            let kind = match (was, usable == 0) {
                (false, true) => "pool.empty",
                (true, false) => "pool.recovered",
                _ => continue,
            };
            empty.insert(p.name.clone(), usable == 0);
            let mut n = Notice::new(kind, &p.name, now);
            n.keys = Some(usable);
            n.remote = remote;
            self.publish(n);
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for NotifyService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(mut rx) = self.queue.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        // A provider counts as empty only once it had keys: an empty pool at start is a config
        // matter, reported in the log, not an event.
        let mut empty: HashMap<String, bool> = HashMap::new();
        let mut batch = Vec::new();
        loop {
            let got = tokio::select! {
                _ = shutdown.changed() => return,
                n = rx.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        return; // every sender is gone: the process is stopping
                    }
                    n
                }
                // Keys come back by the clock too (a cooldown ends with no event until a pick):
                // an empty provider is looked at again every second.
                _ = tokio::time::sleep(Duration::from_secs(1)) => 0,
            };
            let mut touched: Vec<(String, bool)> = Vec::new();
            for (e, remote) in batch.drain(..) {
                let p = Notice::provider_of(&e);
                match touched.iter_mut().find(|t| t.0 == p) {
                    Some(t) => t.1 &= remote,
                    None => touched.push((p.to_string(), remote)),
                }
                let mut n = Notice::of(&e);
                n.remote = remote;
                self.publish(n);
            }
            if got == 0 {
                touched = empty.iter().filter(|(_, e)| **e).map(|(p, _)| (p.clone(), false)).collect();
            }
            self.check_empty(&mut empty, &touched);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::events::KeyEvent;
    use crate::pool::Reason;

    #[test]
    fn notices_name_ids_and_states() {
        let e = PoolEvent::Key(KeyEvent {
            provider: "ollama".into(),
            key_id: "abcdef012345".into(),
            change: Change::Moved {
                from: Status::Active,
                to: Status::Invalid,
                reason: Reason::Credential,
                until_ms: None,
            },
            at_ms: 1_796_083_200_000,
        });
        let n = Notice::of(&e);
        assert_eq!((n.kind, n.from, n.to), ("key.invalid", Some("active"), Some("invalid")));
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["type"], "key.invalid");
        assert_eq!(v["at"], "2026-12-01T00:00:00Z");
        assert_eq!(v["key_id"], "abcdef012345");
        assert!(v.get("model").is_none() && v.get("until").is_some());
        for kind in ["key.invalid", "pool.storm", "pool.empty", "key.returned"] {
            assert!(EVENT_TYPES.contains(&kind));
        }
    }
}
