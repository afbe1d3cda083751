//! What `Pool::pick` reads: the pool's keys plus an index of the ones worth looking at, so a
//! pool that is mostly parked costs no more per pick than its usable keys (SPEC §3.1, issue
//! #14 item 4).
//!
//! The index holds *positions* in the key list, ascending. `pick` takes its round-robin start
//! from the shared cursor modulo the number of keys — not of the index — and looks at the
//! indexed positions from there on, so it picks exactly the key a scan of the whole list would
//! pick, as long as the index holds every usable key. Keeping that promise:
//! - a key that was usable, or returns within `RETURN_SLACK_MS`, when the view was built is in
//!   it (parked ones among them are skipped, as a scan skips them);
//! - the view is due for a rebuild when the earliest excluded key's time is up
//!   (`next_return_ms`), and when a transition brings a key back or moves a park's end
//!   sooner (`Pool::transition` lowers `Pool::due_ms`);
//! - keys joining or leaving build a new view at once (the writer has the list in hand).
//!
//! Parks only make the index hold keys that are skipped; the pool rebuilds after them once the
//! skipping has cost about a rebuild (`Pool::note_stale`), for speed, never for correctness.

use super::Key;
use std::sync::Arc;

/// Keys due back within this much of a build are indexed already, so a stream of timed
/// returns costs at most one rebuild per this interval.
pub(super) const RETURN_SLACK_MS: u64 = 100;

/// How far ahead of a pick its prefetch reaches: far enough that back-to-back picks (a
/// micro-bench loop) find the key fetched, near enough that it is still cached when traffic is
/// sparse.
const PREFETCH_AHEAD: usize = 16;

/// Both cache lines of a key's allocation: its reference count and state (what `pick` reads
/// and the clone it returns writes).
#[inline(always)]
fn prefetch_key(key: &Arc<Key>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = Arc::as_ptr(key).cast::<i8>();
        // SAFETY: a prefetch is a hint; it reads nothing into the program and never faults,
        // whatever the address. The addresses are inside the key's live allocation anyway.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(at);
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = key;
}

pub(super) struct View {
    pub keys: Arc<Vec<Arc<Key>>>,
    /// Positions in `keys` that `pick` looks at, ascending. Empty with `all` set: every key.
    usable: Vec<u32>,
    /// For each position, where in `usable` the walk from it begins (the first indexed
    /// position at or after it): one load instead of a binary search. Empty with `all`.
    first: Vec<u32>,
    all: bool,
    /// When a key that is not indexed comes back by itself (u64::MAX: none will).
    pub next_return_ms: u64,
}

impl View {
    /// The view of `keys` at `now`.
    pub fn build(keys: Arc<Vec<Arc<Key>>>, now: u64) -> View {
        let horizon = now + RETURN_SLACK_MS;
        let mut usable = Vec::new();
        let mut next_return_ms = u64::MAX;
        let mut all = true;
        for (i, k) in keys.iter().enumerate() {
            let back = k.returns_at(now);
            match back {
                Some(at) if at <= horizon => {
                    if !all {
                        usable.push(i as u32);
                    }
                }
                _ => {
                    if all {
                        all = false;
                        usable.reserve(keys.len() / 8);
                        usable.extend(0..i as u32);
                    }
                    if let Some(at) = back {
                        next_return_ms = next_return_ms.min(at);
                    }
                }
            }
        }
        usable.shrink_to_fit();
        let mut first = Vec::new();
        if !all {
            first.reserve_exact(keys.len());
            let mut i = 0;
            for p in 0..keys.len() {
                while i < usable.len() && (usable[i] as usize) < p {
                    i += 1;
                }
                first.push(if i == usable.len() { 0 } else { i as u32 });
            }
        }
        View { keys, usable, first, all, next_return_ms }
    }

    /// How many positions `pick` may look at (`whole`: every key, whatever the index says).
    #[inline]
    pub fn walk_len(&self, whole: bool) -> usize {
        if self.all || whole {
            self.keys.len()
        } else {
            self.usable.len()
        }
    }

    /// Where the walk from position `start` begins: the index of the first indexed position
    /// at or after `start`, wrapping to the first.
    #[inline]
    pub fn first_at(&self, start: usize, whole: bool) -> usize {
        if self.all || whole {
            return start;
        }
        self.first[start] as usize
    }

    /// Asks the CPU to fetch the key `PREFETCH_AHEAD` steps past walk step `j` into cache, so
    /// the pick that reaches it (round-robin: a later one) finds it there. At 100k keys the
    /// keys (12.8 MB) are past the core's cache and a key a page past the last one misses the
    /// TLB too, with no hardware prefetch across the page (benches/README.md, "Selection,
    /// round 5"). A hint only: no fault, no store, nothing when the walk is shorter.
    #[inline]
    pub fn prefetch_after(&self, first: usize, j: usize, whole: bool) {
        if let Some(p) = self.ahead_of(first, j, whole) {
            prefetch_key(&self.keys[p]);
        }
    }

    /// The position `prefetch_after` fetches: `PREFETCH_AHEAD` steps further along the same
    /// walk, wrapping; none in a walk that short (its keys stay cached anyway).
    #[inline]
    pub fn ahead_of(&self, first: usize, j: usize, whole: bool) -> Option<usize> {
        let len = self.walk_len(whole);
        (len > PREFETCH_AHEAD).then(|| self.nth_from(first, (j + PREFETCH_AHEAD) % len, whole))
    }

    /// The position `j` steps into the walk that begins at `first` (`first_at`), for
    /// `j` < `walk_len`.
    #[inline]
    pub fn nth_from(&self, first: usize, j: usize, whole: bool) -> usize {
        let len = self.walk_len(whole);
        let i = if first + j >= len { first + j - len } else { first + j };
        if self.all || whole {
            i
        } else {
            self.usable[i] as usize
        }
    }
}
