//! A client token's token budgets (SPEC §3.11): `tpm` (tokens per minute), `daily_tokens` and
//! `monthly_tokens` (UTC calendar). Checked before a request is forwarded, debited when its
//! usage is known; a stream that started is never cut. Each window is one atomic holding
//! (period number, tokens used), so checking and debiting take no lock.

use crate::pool::calendar::{self, DAY_MS};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    Tpm,
    Daily,
    Monthly,
}

impl BudgetKind {
    pub const ALL: [BudgetKind; 3] = [BudgetKind::Tpm, BudgetKind::Daily, BudgetKind::Monthly];

    /// Its name in the config, the admin API, error messages and the `budget` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::Tpm => "tpm",
            BudgetKind::Daily => "daily_tokens",
            BudgetKind::Monthly => "monthly_tokens",
        }
    }

    /// The period `now_ms` falls in: minute, UTC day or UTC calendar month number.
    pub fn period(self, now_ms: u64) -> u64 {
        match self {
            BudgetKind::Tpm => now_ms / 60_000,
            BudgetKind::Daily => now_ms / DAY_MS,
            BudgetKind::Monthly => u64::from(calendar::month_of_day(calendar::day_of(now_ms))),
        }
    }

    /// When a period ends (ms since the epoch): the next one starts.
    pub fn period_end_ms(self, period: u64) -> u64 {
        match self {
            BudgetKind::Tpm => (period + 1) * 60_000,
            BudgetKind::Daily => (period + 1) * DAY_MS,
            BudgetKind::Monthly => u64::from(calendar::first_day_of_month(period as u32 + 1)) * DAY_MS,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The limits of one token; None = no such budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub tpm: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
}

impl Limits {
    pub fn get(&self, kind: BudgetKind) -> Option<u64> {
        match kind {
            BudgetKind::Tpm => self.tpm,
            BudgetKind::Daily => self.daily_tokens,
            BudgetKind::Monthly => self.monthly_tokens,
        }
    }

    pub fn is_empty(&self) -> bool {
        BudgetKind::ALL.iter().all(|k| self.get(*k).is_none())
    }
}

/// Bits of a window's atomic that hold the tokens used; the period number is above them.
const USED_BITS: u32 = 38;
const USED_MAX: u64 = (1 << USED_BITS) - 1;

fn pack(period: u64, used: u64) -> u64 {
    (period << USED_BITS) | used.min(USED_MAX)
}

fn unpack(v: u64) -> (u64, u64) {
    (v >> USED_BITS, v & USED_MAX)
}

/// One budget's state as `GET /admin/tokens` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetView {
    pub kind: BudgetKind,
    pub limit: u64,
    pub used: u64,
    pub resets_at_ms: u64,
}

impl BudgetView {
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

#[derive(Debug, Default)]
pub struct Budgets {
    pub limits: Limits,
    windows: [AtomicU64; 3],
    /// Fleet mode: each window's share of the fleet-wide count (`crate::fleet::limits`).
    shares: [crate::fleet::limits::Share; 3],
}

impl Budgets {
    pub fn new(limits: Limits) -> Budgets {
        Budgets { limits, windows: Default::default(), shares: Default::default() }
    }

    /// What the window of `kind` counted here in `period`.
    pub fn local(&self, kind: BudgetKind, period: u64) -> u64 {
        let (p, used) = unpack(self.windows[kind.index()].load(Relaxed));
        if p == period {
            used
        } else {
            0
        }
    }

    pub fn share(&self, kind: BudgetKind) -> &crate::fleet::limits::Share {
        &self.shares[kind.index()]
    }

    /// What the budget of `kind` used in the period of `now_ms`: here, and in fleet mode on
    /// the other instances too.
    fn used(&self, kind: BudgetKind, now_ms: u64) -> u64 {
        let period = kind.period(now_ms);
        self.local(kind, period) + self.shares[kind.index()].others(period)
    }

    /// Whether a request may start now. Err names the first budget that is used up and how
    /// long until its period ends.
    pub fn check(&self, now_ms: u64) -> Result<(), (BudgetKind, Duration)> {
        if self.limits.is_empty() {
            return Ok(());
        }
        for kind in BudgetKind::ALL {
            let Some(limit) = self.limits.get(kind) else { continue };
            if self.used(kind, now_ms) >= limit {
                let end = kind.period_end_ms(kind.period(now_ms));
                return Err((kind, Duration::from_millis(end.saturating_sub(now_ms))));
            }
        }
        Ok(())
    }

    /// Adds a finished request's tokens to every budget's current period.
    pub fn debit(&self, now_ms: u64, tokens: u64) {
        if self.limits.is_empty() || tokens == 0 {
            return;
        }
        for kind in BudgetKind::ALL {
            if self.limits.get(kind).is_some() {
                self.add(kind, kind.period(now_ms), tokens);
            }
        }
    }

    /// Adds `tokens` to `period` of a budget (a later period replaces an earlier one; usage of
    /// an earlier period than the current one is dropped).
    fn add(&self, kind: BudgetKind, period: u64, tokens: u64) {
        let w = &self.windows[kind.index()];
        let mut cur = w.load(Relaxed);
        loop {
            let (p, used) = unpack(cur);
            let next = match p.cmp(&period) {
                std::cmp::Ordering::Equal => pack(p, used.saturating_add(tokens)),
                std::cmp::Ordering::Less => pack(period, tokens),
                std::cmp::Ordering::Greater => return,
            };
            match w.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// At start (or when the token is made): what the store says this client already used today
    /// and this month, so a restart does not reset a daily or monthly budget.
    pub fn seed(&self, now_ms: u64, today: u64, this_month: u64) {
        self.add(BudgetKind::Daily, BudgetKind::Daily.period(now_ms), today);
        self.add(BudgetKind::Monthly, BudgetKind::Monthly.period(now_ms), this_month);
    }

    /// Takes over what `old` used (a client rebuilt by a reload keeps its budgets' use).
    pub fn carry_from(&self, old: &Budgets) {
        for (w, o) in self.windows.iter().zip(&old.windows) {
            w.store(o.load(Relaxed), Relaxed);
        }
        for (s, o) in self.shares.iter().zip(&old.shares) {
            s.carry_from(o);
        }
    }

    pub fn views(&self, now_ms: u64) -> Vec<BudgetView> {
        BudgetKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let limit = self.limits.get(kind)?;
                Some(BudgetView {
                    kind,
                    limit,
                    used: self.used(kind, now_ms),
                    resets_at_ms: kind.period_end_ms(kind.period(now_ms)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_796_083_200_000; // 2026-12-01T00:00:00Z

    #[test]
    fn tpm_admits_again_in_the_next_minute() {
        let b = Budgets::new(Limits { tpm: Some(100), ..Default::default() });
        let t = T0 + 10_000;
        assert!(b.check(t).is_ok());
        b.debit(t, 60);
        assert!(b.check(t).is_ok(), "60 of 100");
        b.debit(t, 60);
        assert_eq!(b.check(t + 5_000), Err((BudgetKind::Tpm, Duration::from_millis(45_000))));
        assert!(b.check(T0 + 60_000).is_ok(), "a new minute");
        assert_eq!(b.views(T0 + 60_000)[0].used, 0);
    }

    #[test]
    fn daily_and_monthly_use_utc_calendar_periods() {
        let b = Budgets::new(Limits { daily_tokens: Some(1_000), monthly_tokens: Some(1_500), ..Default::default() });
        b.seed(T0, 900, 900);
        assert!(b.check(T0).is_ok());
        b.debit(T0 + 1, 200); // a stream that started under the budget still counts in full
        let (kind, wait) = b.check(T0 + 2).unwrap_err();
        assert_eq!((kind, wait), (BudgetKind::Daily, Duration::from_millis(DAY_MS - 2)));
        let next_day = T0 + DAY_MS;
        assert!(b.check(next_day).is_ok(), "the daily budget resets at UTC midnight");
        b.debit(next_day, 400);
        let (kind, wait) = b.check(next_day).unwrap_err();
        assert_eq!(kind, BudgetKind::Monthly);
        assert_eq!(next_day + wait.as_millis() as u64, T0 + 31 * DAY_MS, "December has 31 days");
        let views = b.views(next_day);
        assert_eq!(
            views.iter().map(|v| (v.kind, v.used, v.remaining())).collect::<Vec<_>>(),
            [(BudgetKind::Daily, 400, 600), (BudgetKind::Monthly, 1_500, 0)]
        );
    }

    #[test]
    fn no_limits_no_checks() {
        let b = Budgets::default();
        b.debit(T0, 1 << 50);
        assert!(b.check(T0).is_ok());
        assert!(b.views(T0).is_empty());
    }
}
