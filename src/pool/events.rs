//! Typed events of the pool's one transition point: every change of a key's state — by a
//! request's outcome, a probe, an operator, a reload — and the storm guard's verdicts, handed
//! to subscribers as they happen. Metrics subscribe (`crate::metrics::EventMetrics`); fleet
//! sync and webhooks are the next subscribers. Subscribers run on the thread that made the
//! change (a request's, on a failover), so they must be quick and must not block: queue
//! anything slow.

use super::key::{Reason, Status};
use arc_swap::ArcSwap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key joined the pool (start, admin add, import, reload).
    Added,
    /// The key left the pool (admin remove, reload).
    Removed,
    /// The key moved from one state to another (`until_ms`: when it returns, if scheduled).
    Moved { from: Status, to: Status, reason: Reason, until_ms: Option<u64> },
    /// The key was parked for one model only (it serves others).
    ModelParked { model: String, until_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// The provider whose pool the key is in.
    pub provider: Arc<str>,
    pub key_id: String,
    pub change: Change,
    /// When it happened (ms since epoch, the pool's clock).
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    Key(KeyEvent),
    /// The storm guard engaged (`active`) or the storm ended, with the keys it returned.
    Storm {
        provider: Arc<str>,
        active: bool,
        returned: usize,
        at_ms: u64,
    },
}

pub trait Subscriber: Send + Sync {
    fn on_event(&self, event: &PoolEvent);
}

/// Where pools send their events; one per process, shared by every provider's pool.
#[derive(Default)]
pub struct Events {
    subscribers: ArcSwap<Vec<Arc<dyn Subscriber>>>,
}

impl Events {
    pub fn subscribe(&self, s: Arc<dyn Subscriber>) {
        self.subscribers.rcu(|v| {
            let mut v = Vec::clone(v);
            v.push(s.clone());
            v
        });
    }

    pub fn emit(&self, e: PoolEvent) {
        for s in self.subscribers.load().iter() {
            s.on_event(&e);
        }
    }
}

/// Collects events (tests, and any caller that wants to see what a step changed).
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<PoolEvent>>);

impl Subscriber for Recorder {
    fn on_event(&self, e: &PoolEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e.clone());
    }
}
