//! A key's counters and park as saved by the store's periodic snapshot: the pool's own type,
//! which the store persists (the store depends on the pool, never the reverse).

/// A key's park (cooling or invalid with a return time), saved so that a restart does not send
/// traffic to keys known to be bad. Status and reason are the pool's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedPark {
    pub status: u8,
    pub reason: u8,
    pub until_ms: u64,
}

/// A snapshot of a key's counters (SPEC §2.4 `stats`) and of its park, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub last_used_ms: u64,
    pub last_success_ms: u64,
    pub last_failure_ms: u64,
    pub park: Option<SavedPark>,
}
