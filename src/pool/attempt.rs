//! The per-request attempt policy (SPEC §3.2–3.3), used by the forwarding path
//! (proxy/forward.rs): which key serves the next attempt, and whether an outcome is worth
//! another attempt.

use super::{Key, NoKey, Outcome, Pool};
use std::sync::Arc;

/// Hard ceiling for `pool.max_attempts`.
pub const MAX_ATTEMPTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again; a different key is already reserved for the next attempt.
    Retry,
    /// Give the client what we have (the upstream answer or an error).
    Deliver,
}

#[derive(Debug)]
pub struct Attempts {
    max: usize,
    /// Keys that served an attempt of this request, in order. Never reused within the request.
    tried: Vec<Arc<Key>>,
    /// Key reserved for the next attempt by `settle`, so "retry" is only said when one exists.
    next: Option<Arc<Key>>,
    /// The decision for the current attempt, once made (hooks may report the same attempt twice).
    settled: Option<Decision>,
    pub last_outcome: Option<Outcome>,
    /// The model the request asks for: only keys that serve it are picked.
    model: Option<Arc<str>>,
    /// `max_concurrency_per_key` of the provider (0 = none): picked keys hold a slot until
    /// their attempt is over (the next attempt begins, or the request ends).
    cap: u32,
    /// Keys whose slot this request still holds.
    leases: Vec<Arc<Key>>,
}

impl Drop for Attempts {
    fn drop(&mut self) {
        for k in self.leases.drain(..) {
            k.release_lease();
        }
    }
}

impl Attempts {
    pub fn new(max: usize) -> Attempts {
        Attempts {
            max,
            tried: Vec::with_capacity(max),
            next: None,
            settled: None,
            last_outcome: None,
            model: None,
            cap: 0,
            leases: Vec::new(),
        }
    }

    /// Sets the model every attempt must serve (before the first `begin`).
    pub fn for_model(&mut self, model: Option<Arc<str>>) {
        self.model = model;
    }

    pub fn model(&self) -> Option<&Arc<str>> {
        self.model.as_ref()
    }

    /// The key for a new attempt: the one reserved by the last `Retry`, else a fresh pick
    /// (among keys under `cap` attempts in flight, when `cap` > 0).
    pub fn begin(&mut self, pool: &Pool, cap: u32) -> Result<Arc<Key>, NoKey> {
        self.cap = cap;
        // The previous attempt is over: its key's slot is free again.
        if let Some(prev) = self.tried.last() {
            if let Some(i) = self.leases.iter().position(|k| Arc::ptr_eq(k, prev)) {
                self.leases.swap_remove(i).release_lease();
            }
        }
        let key = match self.next.take() {
            Some(k) => k,
            None => {
                let k = pool.pick_for(&self.tried, self.model.as_deref(), cap)?;
                if cap > 0 {
                    self.leases.push(k.clone());
                }
                k
            }
        };
        self.tried.push(key.clone());
        self.settled = None;
        Ok(key)
    }

    pub fn current(&self) -> Option<&Arc<Key>> {
        self.tried.last()
    }

    pub fn count(&self) -> usize {
        self.tried.len()
    }

    pub fn tried(&self) -> &[Arc<Key>] {
        &self.tried
    }

    /// Records the current attempt's outcome on its key and decides what happens next.
    /// `may_retry` is false once any response byte has gone to the client. Idempotent per attempt.
    pub fn settle(&mut self, pool: &Pool, outcome: Outcome, may_retry: bool) -> Decision {
        if let Some(d) = self.settled {
            return d;
        }
        let Some(key) = self.tried.last() else { return Decision::Deliver };
        pool.report_for(key, outcome, self.model.as_deref());
        self.last_outcome = Some(outcome);
        let decision = if may_retry && outcome.retryable() && self.tried.len() < self.max {
            match pool.pick_for(&self.tried, self.model.as_deref(), self.cap) {
                Ok(next) => {
                    if self.cap > 0 {
                        self.leases.push(next.clone());
                    }
                    self.next = Some(next);
                    Decision::Retry
                }
                Err(_) => Decision::Deliver,
            }
        } else {
            Decision::Deliver
        };
        self.settled = Some(decision);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{ManualClock, Policy};
    use crate::secret::Secret;

    fn pool(n: usize) -> Pool {
        let p = Pool::new(Policy::default(), Arc::new(ManualClock::new(1)));
        for i in 0..n {
            p.add(Key::new(Secret::new(format!("attempt-key-{i}")), None, None).unwrap()).unwrap();
        }
        p
    }

    #[test]
    fn retries_on_distinct_keys_up_to_max() {
        let p = pool(5);
        let mut a = Attempts::new(3);
        let k1 = a.begin(&p, 0).unwrap();
        assert_eq!(a.settle(&p, Outcome::Credential, true), Decision::Retry);
        assert_eq!(a.settle(&p, Outcome::Transient, true), Decision::Retry, "settling twice is a no-op");
        let k2 = a.begin(&p, 0).unwrap();
        assert_eq!(a.settle(&p, Outcome::Transient, true), Decision::Retry);
        let k3 = a.begin(&p, 0).unwrap();
        assert_eq!(a.settle(&p, Outcome::Transient, true), Decision::Deliver, "max reached");
        assert!(!Arc::ptr_eq(&k1, &k2) && !Arc::ptr_eq(&k2, &k3) && !Arc::ptr_eq(&k1, &k3));
    }

    #[test]
    fn delivers_when_no_other_key_or_not_retryable() {
        let p = pool(1);
        let mut a = Attempts::new(3);
        a.begin(&p, 0).unwrap();
        assert_eq!(a.settle(&p, Outcome::Transient, true), Decision::Deliver);
        let p = pool(2);
        let mut a = Attempts::new(3);
        a.begin(&p, 0).unwrap();
        assert_eq!(a.settle(&p, Outcome::CallerFault, true), Decision::Deliver);
        let mut a = Attempts::new(3);
        a.begin(&p, 0).unwrap();
        assert_eq!(a.settle(&p, Outcome::Transient, false), Decision::Deliver);
    }
}
