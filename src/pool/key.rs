//! One upstream key and its live state. The state is a handful of atomics so the request path
//! reads it without locks; the rare transitions (park, return, disable) take a per-key mutex so
//! two of them never interleave, and each is logged once.

use crate::secret::Secret;
use http::HeaderValue;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Active = 0,
    /// Parked for a while (rate-limited, auto-disabled); returns by itself at `until`.
    Cooling = 1,
    /// Switched off by an operator, until `until` or until enabled.
    Disabled = 2,
    /// Rejected by the upstream (401/403); returns at `until` to be tried again.
    Invalid = 3,
    /// Past its `expires_at`; never returns.
    Expired = 4,
}

impl Status {
    /// The status of its number (`as u8`); unknown numbers are `Active`.
    pub fn from_u8(v: u8) -> Status {
        match v {
            1 => Status::Cooling,
            2 => Status::Disabled,
            3 => Status::Invalid,
            4 => Status::Expired,
            _ => Status::Active,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Cooling => "cooling",
            Status::Disabled => "disabled",
            Status::Invalid => "invalid",
            Status::Expired => "expired",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key left rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    None = 0,
    /// The upstream answered 401/403 for it.
    Credential = 1,
    /// The upstream answered 429/402 or a usage-limit error for it.
    RateLimited = 2,
    /// `failure_threshold` transient failures in a row.
    AutoDisabled = 3,
    Manual = 4,
    /// A usage window is used up (429 body or usage probe); back at the window's reset.
    QuotaHourly = 6,
    QuotaSession = 7,
    QuotaWeekly = 8,
    QuotaMonthly = 9,
    /// A health probe found the key working again.
    Probe = 10,
    /// An upstream-wide storm ended; keys parked by it come back together.
    StormOver = 11,
}

impl Reason {
    /// The reason of its number (`as u8`); unknown numbers are `None`.
    pub fn from_u8(v: u8) -> Reason {
        match v {
            1 => Reason::Credential,
            2 => Reason::RateLimited,
            3 => Reason::AutoDisabled,
            4 => Reason::Manual,
            6 => Reason::QuotaHourly,
            7 => Reason::QuotaSession,
            8 => Reason::QuotaWeekly,
            9 => Reason::QuotaMonthly,
            10 => Reason::Probe,
            11 => Reason::StormOver,
            _ => Reason::None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::Credential => "credential",
            Reason::RateLimited => "rate-limited",
            Reason::AutoDisabled => "auto-disabled",
            Reason::Manual => "manual",
            Reason::QuotaHourly => "quota:hourly",
            Reason::QuotaSession => "quota:session",
            Reason::QuotaWeekly => "quota:weekly",
            Reason::QuotaMonthly => "quota:monthly",
            Reason::Probe => "probe",
            Reason::StormOver => "storm-over",
        }
    }

    pub fn quota(w: super::Window) -> Reason {
        match w {
            super::Window::Hourly => Reason::QuotaHourly,
            super::Window::Session => Reason::QuotaSession,
            super::Window::Weekly => Reason::QuotaWeekly,
            super::Window::Monthly => Reason::QuotaMonthly,
        }
    }

    /// Parked for its allowance (a probe saying "the key works" does not mean it has quota).
    pub fn is_allowance(self) -> bool {
        matches!(
            self,
            Reason::RateLimited
                | Reason::QuotaHourly
                | Reason::QuotaSession
                | Reason::QuotaWeekly
                | Reason::QuotaMonthly
        )
    }
}

pub struct Key {
    /// First 12 hex of SHA-256 of the secret: what logs, metrics and the admin API show.
    /// Kept inline (no allocation of its own: 100k keys, issue #14).
    pub id: KeyId,
    secret_at: u8,
    status: AtomicU8,
    reason: AtomicU8,
    /// Whether `meta.models` is non-empty (then only those models are served).
    has_models: std::sync::atomic::AtomicBool,
    pub created_at_ms: u64,
    /// The label, and the models this key serves and their family from a validated import
    /// (none = unknown). Replaced whole (rare); read by reports. No allocation for a key that
    /// has neither.
    meta: arc_swap::ArcSwapOption<Desc>,
    /// The header that carries the key upstream (its provider's auth form), shared by every
    /// key with the same form (one interned copy per header name), and its value (`Bearer
    /// <key>`, or the key alone), formatted once at its exact size. The secret is not kept a
    /// second time: it is this value from `secret_at` on. Kept as bytes, not a `HeaderValue`
    /// (16 bytes instead of 40, and no shared refcount that every request on the key bumps):
    /// `auth()` copies it into the request's header.
    auth_name: &'static http::HeaderName,
    auth_value: Box<[u8]>,
    /// When a parked key returns (ms since epoch); 0 = no scheduled return.
    until_ms: AtomicU64,
    pub(crate) stats: KeyStats,
    /// What only a key that failed, was parked, is capped, expires or has model parks needs;
    /// made on first need, so a key that only ever succeeds carries a null pointer instead
    /// (see `Cold`).
    cold: once_cell::race::OnceBox<Cold>,
    /// A slot for a sink's per-key handles (metrics keeps its resolved counters here), so the
    /// request path needs no lookup; the pool does not know what is in it.
    /// A thin pointer (8 bytes, not the 24 of a `OnceLock<Box<dyn Any>>`).
    sink: once_cell::race::OnceBox<Box<dyn std::any::Any + Send + Sync>>,
}

/// A key's rarely needed state, kept out of `Key` so that 100k keys cost less (issue #14):
/// every `Key` is on the pick path, these only on failure, parking, transitions, probing and
/// capped providers. Reading a key that has none gives the defaults below.
pub(crate) struct Cold {
    /// Serialises state transitions (rare) so check-then-set sequences are not torn.
    transition: Mutex<()>,
    /// When the key expires for good (ms since epoch); 0 = never. Set when the key is made.
    expires_at_ms: u64,
    /// Models this key may not use for a while (SPEC §3.2 "model unavailable"); replaced whole
    /// under `transition` (rare). `model_parks_n` lets the request path skip the load when empty.
    model_parks: arc_swap::ArcSwapOption<Vec<ModelPark>>,
    model_parks_n: AtomicU32,
    pub(crate) failures: AtomicU64,
    pub(crate) last_failure_ms: AtomicU64,
    /// Streams started with a 200 that then failed (cut off, or an error line inside).
    pub(crate) stream_errors: AtomicU64,
    pub(crate) consecutive_failures: AtomicU32,
    /// Doublings applied to the rate-limit backoff since the last success.
    pub(crate) backoff_level: AtomicU32,
    /// Failed probes in a row (drives the probe backoff).
    pub(crate) probe_failures: AtomicU32,
    /// Attempts in flight on this key (kept only when its provider caps them).
    pub(crate) in_flight: AtomicU32,
    /// When the health checker should probe this key next (ms); 0 = at the next tick.
    pub(crate) next_probe_ms: AtomicU64,
    /// When the key last left rotation (ms), to find the keys a storm parked.
    pub(crate) parked_at_ms: AtomicU64,
    /// The storm-guard run (its start, ms) in which this key last failed: counts each key once.
    pub(crate) storm_run: AtomicU64,
    /// When the key last moved (a transition, a return, a park pushed out), so the counter
    /// snapshot saves only keys that changed (`Key::changed_since`).
    pub(crate) moved_ms: AtomicU64,
}

impl Default for Cold {
    fn default() -> Cold {
        Cold {
            transition: Mutex::new(()),
            expires_at_ms: 0,
            model_parks: arc_swap::ArcSwapOption::empty(),
            model_parks_n: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            stream_errors: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            backoff_level: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
            parked_at_ms: AtomicU64::new(0),
            storm_run: AtomicU64::new(u64::MAX),
            moved_ms: AtomicU64::new(0),
        }
    }
}

/// A key's public id: the first 12 hex digits of its secret's SHA-256, kept inline as ASCII
/// so that it reads as a `&str` without an allocation per key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 12]);

impl KeyId {
    pub fn of(secret: &Secret) -> KeyId {
        let mut id = [0u8; 12];
        id.copy_from_slice(secret.id().as_bytes());
        KeyId(id)
    }

    pub fn as_str(&self) -> &str {
        // Built only from hex digits (`of`), so always ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for KeyId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for KeyId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for KeyId {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

/// One `&'static` copy of each auth header name keys use, so a key holds a pointer (8 bytes)
/// instead of its own `HeaderName` (32). The set is the configured providers' header names:
/// a handful for the life of the process, whatever the number of keys or reloads.
fn intern(name: &http::HeaderName) -> &'static http::HeaderName {
    static AUTHORIZATION: http::HeaderName = http::header::AUTHORIZATION;
    static OTHERS: Mutex<Vec<&'static http::HeaderName>> = Mutex::new(Vec::new());
    if *name == AUTHORIZATION {
        return &AUTHORIZATION;
    }
    let mut others = OTHERS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = others.iter().find(|n| **n == name) {
        return known;
    }
    let leaked: &'static http::HeaderName = Box::leak(Box::new(name.clone()));
    others.push(leaked);
    leaked
}

/// Per-key counters, bumped with relaxed atomics on the request path.
#[derive(Default)]
pub struct KeyStats {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    pub last_used_ms: AtomicU64,
    pub last_success_ms: AtomicU64,
}

/// One model a key is parked for, and when it may try that model again (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPark {
    pub model: String,
    pub until_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMeta {
    pub models: Vec<String>,
    pub category: Option<String>,
}

/// What describes a key and is read only by reports and routing's model check: its label
/// (fixed when the key is made) and its `KeyMeta` (replaced by imports).
#[derive(Default)]
struct Desc {
    label: Option<Box<str>>,
    meta: KeyMeta,
}

/// A consistent-enough copy of a key's state for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    pub id: String,
    pub masked: String,
    pub label: Option<String>,
    pub status: Status,
    pub reason: Reason,
    pub until_ms: Option<u64>,
    pub expires_at_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub last_used_ms: u64,
    pub last_success_ms: u64,
    pub last_failure_ms: u64,
    pub stream_errors: u64,
    pub created_at_ms: u64,
    pub models: Vec<String>,
    pub category: Option<String>,
    /// Models this key is parked for (still in the future at `now`).
    pub model_parks: Vec<ModelPark>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("id", &self.id).field("status", &self.status()).finish()
    }
}

/// How a provider wants its key sent: a header, and an optional scheme before the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthForm {
    pub header: http::HeaderName,
    pub scheme: Option<String>,
}

impl Default for AuthForm {
    /// `Authorization: Bearer <key>`.
    fn default() -> Self {
        AuthForm { header: http::header::AUTHORIZATION, scheme: Some("Bearer".into()) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key contains characters that cannot go in an HTTP header")]
    NotAHeaderValue,
}

impl Key {
    /// A key sent as `Authorization: Bearer <key>`.
    pub fn new(secret: Secret, label: Option<String>, expires_at_ms: Option<u64>) -> Result<Key, KeyError> {
        Key::with_auth(secret, label, expires_at_ms, &AuthForm::default())
    }

    /// A key sent the way `auth` says (its provider's form).
    pub fn with_auth(
        secret: Secret,
        label: Option<String>,
        expires_at_ms: Option<u64>,
        auth: &AuthForm,
    ) -> Result<Key, KeyError> {
        // Built once at its exact size: the key keeps these bytes, `auth()` copies them.
        let prefix = auth.scheme.as_deref().map_or(0, |s| s.len() + 1);
        let secret_at = u8::try_from(prefix).map_err(|_| KeyError::NotAHeaderValue)?;
        let mut value = Vec::with_capacity(prefix + secret.len());
        if let Some(s) = &auth.scheme {
            value.extend_from_slice(s.as_bytes());
            value.push(b' ');
        }
        value.extend_from_slice(secret.expose().as_bytes());
        // Visible ASCII and tab, as `HeaderValue::from_str` takes them (so `auth()` cannot fail).
        if !value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            return Err(KeyError::NotAHeaderValue);
        }
        let cold = once_cell::race::OnceBox::new();
        if let Some(ms) = expires_at_ms.filter(|&ms| ms != 0) {
            let _ = cold.set(Box::new(Cold { expires_at_ms: ms, ..Cold::default() }));
        }
        let meta = arc_swap::ArcSwapOption::empty();
        if let Some(label) = label {
            meta.store(Some(std::sync::Arc::new(Desc { label: Some(label.into()), meta: KeyMeta::default() })));
        }
        Ok(Key {
            auth_name: intern(&auth.header),
            id: KeyId::of(&secret),
            created_at_ms: 0,
            meta,
            auth_value: value.into_boxed_slice(),
            secret_at,
            status: AtomicU8::new(Status::Active as u8),
            reason: AtomicU8::new(Reason::None as u8),
            until_ms: AtomicU64::new(0),
            stats: KeyStats::default(),
            cold,
            has_models: std::sync::atomic::AtomicBool::new(false),
            sink: once_cell::race::OnceBox::new(),
        })
    }

    /// The sink's per-key value, made by `init` on first use (two first uses at once may both
    /// run `init`; one value is kept). One sink type per process (metrics): a different type
    /// asked for later gets None.
    pub fn sink<T: std::any::Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.sink.get_or_init(|| Box::new(Box::new(init()))).downcast_ref::<T>()
    }

    /// The key's rare state, made now if it has none.
    pub(crate) fn cold(&self) -> &Cold {
        self.cold.get_or_init(Box::default)
    }

    /// The key's rare state if it has any (without it, every field is at its default).
    pub(crate) fn cold_if_any(&self) -> Option<&Cold> {
        self.cold.get()
    }

    /// Held while a transition checks and sets the state.
    fn lock_transitions(&self) -> std::sync::MutexGuard<'_, ()> {
        self.cold().transition.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (failures, last failure ms, stream errors, consecutive failures); zeros for a key that
    /// never failed.
    fn failure_counts(&self) -> (u64, u64, u64, u32) {
        self.cold_if_any().map_or((0, 0, 0, 0), |c| {
            (
                c.failures.load(Relaxed),
                c.last_failure_ms.load(Relaxed),
                c.stream_errors.load(Relaxed),
                c.consecutive_failures.load(Relaxed),
            )
        })
    }

    /// The key as the admin API and the CLI show it (`sk-v…e123`).
    pub fn masked(&self) -> String {
        let secret = &self.auth_value[self.secret_at as usize..];
        crate::secret::mask(std::str::from_utf8(secret).unwrap_or(""))
    }

    /// The header (name, value) that carries this key upstream; the value is a fresh copy of
    /// the bytes built when the key was made (checked then), marked sensitive.
    pub fn auth(&self) -> (&'static http::HeaderName, HeaderValue) {
        let mut value = HeaderValue::from_bytes(&self.auth_value).unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        (self.auth_name, value)
    }

    pub fn label(&self) -> Option<String> {
        self.meta.load().as_ref().and_then(|d| d.label.as_deref().map(str::to_string))
    }

    /// When the key expires for good (ms since epoch); 0 = never.
    #[inline]
    fn expires_at_ms(&self) -> u64 {
        self.cold_if_any().map_or(0, |c| c.expires_at_ms)
    }

    /// How many model parks the key holds (0 without rare state).
    #[inline]
    fn model_parks_n(&self) -> u32 {
        self.cold_if_any().map_or(0, |c| c.model_parks_n.load(Relaxed))
    }

    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Acquire))
    }

    pub fn reason(&self) -> Reason {
        Reason::from_u8(self.reason.load(Relaxed))
    }

    pub fn until_ms(&self) -> Option<u64> {
        Some(self.until_ms.load(Acquire)).filter(|&u| u != 0)
    }

    /// Can this key serve a request at `now`? Lock-free: two atomic loads in the common case.
    /// A parked key whose `until` has passed counts as usable; `revive` records the return.
    #[inline]
    pub fn usable_at(&self, now: u64) -> bool {
        let expires = self.expires_at_ms();
        if expires != 0 && now >= expires {
            return false;
        }
        match self.status() {
            Status::Active => true,
            Status::Expired => false,
            Status::Cooling | Status::Invalid | Status::Disabled => {
                let until = self.until_ms.load(Acquire);
                until != 0 && now >= until
            }
        }
    }

    /// Whether this key may serve `model` at `now`: it is not parked for it, and its
    /// discovered model list (when one is known) names it. Lock-free; with no parks and no
    /// list it is two relaxed loads.
    #[inline]
    pub fn serves(&self, model: &str, now: u64) -> bool {
        if self.model_parks_n() != 0
            && self.with_parks(|parks| parks.iter().any(|p| p.until_ms > now && same_model(&p.model, model)))
        {
            return false;
        }
        !self.has_models.load(Relaxed)
            || self.meta.load().iter().flat_map(|d| d.meta.models.iter()).any(|m| same_model(m, model))
    }

    /// Takes one of `cap` in-flight slots (0 = no cap: always). A key at its cap is skipped,
    /// not waited for.
    #[inline]
    pub(crate) fn try_lease(&self, cap: u32) -> bool {
        if cap == 0 {
            return true;
        }
        self.cold().in_flight.fetch_update(AcqRel, Relaxed, |n| (n < cap).then_some(n + 1)).is_ok()
    }

    pub(crate) fn release_lease(&self) {
        if let Some(c) = self.cold_if_any() {
            let _ = c.in_flight.fetch_update(AcqRel, Relaxed, |n| n.checked_sub(1));
        }
    }

    /// When this key may serve `model` again, if it is parked for it.
    pub fn model_returns_at(&self, model: &str, now: u64) -> Option<u64> {
        if self.model_parks_n() == 0 {
            return None;
        }
        self.with_parks(|parks| {
            parks.iter().filter(|p| p.until_ms > now && same_model(&p.model, model)).map(|p| p.until_ms).max()
        })
    }

    /// Parks this key for `model` only, until `until` (it keeps serving other models).
    /// Returns whether this is a new park (not one already running for that model).
    pub(super) fn park_model(&self, model: &str, until: u64, now: u64) -> bool {
        let _guard = self.lock_transitions();
        let mut parks = self.model_parks_at(now);
        let fresh = match parks.iter_mut().find(|p| same_model(&p.model, model)) {
            Some(p) => {
                p.until_ms = p.until_ms.max(until);
                false
            }
            None => {
                parks.push(ModelPark { model: model.to_string(), until_ms: until });
                true
            }
        };
        let cold = self.cold();
        cold.model_parks_n.store(parks.len() as u32, Relaxed);
        cold.model_parks.store(Some(std::sync::Arc::new(parks)));
        if fresh {
            log::info!(
                "key {} parked for model {model:?} until={} (serves other models)",
                self.id,
                super::clock::rfc3339(until)
            );
        }
        fresh
    }

    /// The models this key is parked for at `now`.
    pub fn model_parks_at(&self, now: u64) -> Vec<ModelPark> {
        if self.model_parks_n() == 0 {
            return Vec::new();
        }
        self.with_parks(|parks| parks.iter().filter(|p| p.until_ms > now).cloned().collect())
    }

    /// Runs `f` over the model parks (none when the key never had one).
    fn with_parks<R>(&self, f: impl FnOnce(&[ModelPark]) -> R) -> R {
        match self.cold_if_any() {
            Some(c) if c.model_parks_n.load(Relaxed) != 0 => {
                f(c.model_parks.load().as_deref().map_or(&[], |v| v.as_slice()))
            }
            _ => f(&[]),
        }
    }

    /// Past its `expires_at`: never usable again.
    pub fn is_expired(&self, now: u64) -> bool {
        let expires = self.expires_at_ms();
        expires != 0 && now >= expires
    }

    /// When this key will be usable again, if it is parked with a known return time.
    pub fn returns_at(&self, now: u64) -> Option<u64> {
        let expires = self.expires_at_ms();
        if expires != 0 && now >= expires {
            return None;
        }
        match self.status() {
            Status::Active => Some(now),
            Status::Expired => None,
            _ => self.until_ms(),
        }
    }

    /// Moves the key to `to` for `reason` until `until` (0 = no scheduled return), at `now`.
    /// Logs the transition once; no-op if the key is already exactly there. Returns the state
    /// it moved from, if it moved. Only the pool calls this (`Pool::transition`), which turns
    /// the move into an event.
    pub(super) fn set_state(&self, to: Status, reason: Reason, until: u64, now: u64) -> Option<Status> {
        let _guard = self.lock_transitions();
        let from = self.status();
        if from == to && self.reason() == reason && self.until_ms.load(Relaxed) == until {
            return None;
        }
        // A manual disable is an operator's decision: only the operator (reason Manual) changes it.
        if from == Status::Disabled && self.reason() == Reason::Manual && reason != Reason::Manual {
            return None;
        }
        self.until_ms.store(until, Release);
        self.reason.store(reason as u8, Relaxed);
        self.status.store(to as u8, Release);
        let c = self.cold();
        c.moved_ms.store(now, Relaxed);
        if to == Status::Active {
            c.consecutive_failures.store(0, Relaxed);
            c.probe_failures.store(0, Relaxed);
        } else if from == Status::Active {
            c.parked_at_ms.store(now, Relaxed);
            c.next_probe_ms.store(0, Relaxed);
        }
        if until == 0 {
            log::info!("key {} {} -> {} reason={}", self.id, from, to, reason.as_str());
        } else {
            log::info!(
                "key {} {} -> {} reason={} until={}",
                self.id,
                from,
                to,
                reason.as_str(),
                super::clock::rfc3339(until)
            );
        }
        Some(from)
    }

    /// Pushes a parked key's return out to at least `until` (a failed probe); no log, no count.
    pub(crate) fn extend_park(&self, until: u64, now: u64) {
        let _guard = self.lock_transitions();
        if matches!(self.status(), Status::Cooling | Status::Invalid) && self.until_ms.fetch_max(until, AcqRel) < until
        {
            self.cold().moved_ms.store(now, Relaxed);
        }
    }

    /// Records that a parked key's time is up, the first time someone notices. The key keeps
    /// its failure history so that one more failure parks it again with a longer backoff.
    /// Returns the state it came back from, if this call recorded the return.
    pub(super) fn revive(&self, now: u64) -> Option<Status> {
        let status = self.status();
        if status == Status::Active || !self.usable_at(now) {
            return None;
        }
        let _guard = self.lock_transitions();
        if self.status() != status || !self.usable_at(now) {
            return None; // someone else got here first
        }
        self.until_ms.store(0, Release);
        self.reason.store(Reason::None as u8, Relaxed);
        self.status.store(Status::Active as u8, Release);
        let c = self.cold();
        c.consecutive_failures.store(0, Relaxed);
        c.moved_ms.store(now, Relaxed);
        log::info!("key {} {} -> active reason=time-up", self.id, status);
        Some(status)
    }

    /// The key as reports show it at `now`, derived from time as routing sees it: a key past
    /// its expiry is expired, and a park whose `until` has passed is over (active, no reason)
    /// even before a request or probe has picked the key and recorded its return.
    pub fn view_at(&self, now: u64) -> KeyView {
        let (status, reason, until_ms) = if self.is_expired(now) {
            (Status::Expired, self.reason(), self.until_ms())
        } else if self.status() != Status::Active && self.usable_at(now) {
            (Status::Active, Reason::None, None)
        } else {
            (self.status(), self.reason(), self.until_ms())
        };
        let (failures, last_failure_ms, stream_errors, consecutive_failures) = self.failure_counts();
        KeyView {
            id: self.id.to_string(),
            masked: self.masked(),
            label: self.label(),
            status,
            reason,
            until_ms,
            expires_at_ms: Some(self.expires_at_ms()).filter(|&e| e != 0),
            consecutive_failures,
            requests: self.stats.requests.load(Relaxed),
            successes: self.stats.successes.load(Relaxed),
            failures,
            last_used_ms: self.stats.last_used_ms.load(Relaxed),
            last_success_ms: self.stats.last_success_ms.load(Relaxed),
            last_failure_ms,
            stream_errors,
            created_at_ms: self.created_at_ms,
            models: self.meta.load().as_ref().map(|d| d.meta.models.clone()).unwrap_or_default(),
            category: self.meta.load().as_ref().and_then(|d| d.meta.category.clone()),
            model_parks: self.model_parks_at(now),
        }
    }

    pub fn with_created_at(mut self, ms: u64) -> Key {
        self.created_at_ms = ms;
        self
    }

    /// Replaces the key's models and family (its label stays).
    pub fn set_meta(&self, meta: KeyMeta) {
        let has = !meta.models.is_empty();
        let label = self.meta.load().as_ref().and_then(|d| d.label.clone());
        let empty = !has && meta.category.is_none() && label.is_none();
        self.meta.store((!empty).then(|| std::sync::Arc::new(Desc { label, meta })));
        self.has_models.store(has, Relaxed);
    }

    /// Whether what `counters` gives may differ from what it gave before `ms` (pool clock): a
    /// request, a failure or a move since then. Lets the snapshot skip the keys that are idle
    /// (100k keys written every 30 s otherwise, issue #14).
    pub fn changed_since(&self, ms: u64) -> bool {
        self.stats.last_used_ms.load(Relaxed) >= ms
            || self
                .cold_if_any()
                .is_some_and(|c| c.last_failure_ms.load(Relaxed) >= ms || c.moved_ms.load(Relaxed) >= ms)
    }

    /// The counters, for the store's periodic snapshot.
    pub fn counters(&self) -> super::Counters {
        let s = &self.stats;
        let (failures, last_failure_ms, _, consecutive_failures) = self.failure_counts();
        super::Counters {
            requests: s.requests.load(Relaxed),
            successes: s.successes.load(Relaxed),
            failures,
            consecutive_failures,
            last_used_ms: s.last_used_ms.load(Relaxed),
            last_success_ms: s.last_success_ms.load(Relaxed),
            last_failure_ms,
            park: match (self.status(), self.until_ms()) {
                (Status::Cooling | Status::Invalid, Some(until_ms)) => {
                    Some(super::SavedPark { status: self.status() as u8, reason: self.reason() as u8, until_ms })
                }
                _ => None,
            },
        }
    }

    /// Restores counters saved by an earlier run.
    pub fn restore_counters(&self, c: &super::Counters) {
        let s = &self.stats;
        s.requests.store(c.requests, Relaxed);
        s.successes.store(c.successes, Relaxed);
        s.last_used_ms.store(c.last_used_ms, Relaxed);
        s.last_success_ms.store(c.last_success_ms, Relaxed);
        // A key that never failed keeps no rare state for it.
        if c.failures != 0 || c.consecutive_failures != 0 || c.last_failure_ms != 0 || self.cold_if_any().is_some() {
            let cold = self.cold();
            cold.failures.store(c.failures, Relaxed);
            cold.consecutive_failures.store(c.consecutive_failures, Relaxed);
            cold.last_failure_ms.store(c.last_failure_ms, Relaxed);
        }
    }

    /// Restores a park saved by an earlier run, unless its time is already up (then the key
    /// simply starts active). Not logged as a new transition.
    pub fn restore_park(&self, park: &super::SavedPark, now: u64) {
        let status = Status::from_u8(park.status);
        if park.until_ms <= now || !matches!(status, Status::Cooling | Status::Invalid) {
            return;
        }
        self.until_ms.store(park.until_ms, Release);
        self.reason.store(Reason::from_u8(park.reason) as u8, Relaxed);
        self.cold().parked_at_ms.store(now, Relaxed);
        self.status.store(status as u8, Release);
    }

    /// Restores a manual disable saved by an earlier run (`0` = until enabled), without logging
    /// it as a new transition.
    pub fn restore_disabled(&self, until_ms: u64) {
        self.until_ms.store(until_ms, Release);
        self.reason.store(Reason::Manual as u8, Relaxed);
        self.status.store(Status::Disabled as u8, Release);
    }
}

/// Whether two model names are the same model: exact, or one is the other with Ollama's
/// implied `:latest` tag (`qwen3` and `qwen3:latest`).
pub fn same_model(a: &str, b: &str) -> bool {
    a == b || a.strip_suffix(":latest") == Some(b) || b.strip_suffix(":latest") == Some(a)
}
