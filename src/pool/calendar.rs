//! UTC calendar arithmetic for usage windows, usage days and budget periods: days since the
//! epoch, months since year 0, and `YYYY-MM-DD`. Proleptic Gregorian, no time zones (SPEC §3.11: UTC days
//! and calendar months).

pub const DAY_MS: u64 = 86_400_000;

/// Days since 1970-01-01 of a millisecond timestamp.
pub fn day_of(ms: u64) -> u32 {
    (ms / DAY_MS) as u32
}

/// (year, month 1-12, day 1-31) of a day number (Howard Hinnant's `civil_from_days`).
pub fn civil(day: u32) -> (i64, u32, u32) {
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number of a civil date (`days_from_civil`); None before 1970.
pub fn day_from_civil(y: i64, m: u32, d: u32) -> Option<u32> {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u32::try_from(era * 146_097 + doe - 719_468).ok()
}

/// `YYYY-MM-DD` of a day number.
pub fn date(day: u32) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of a `YYYY-MM-DD` date; None if it is not a real date on or after 1970-01-01.
pub fn parse_date(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let days_in = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d == 0 || d > days_in {
        return None;
    }
    day_from_civil(i64::from(y), m, d)
}

/// Months since year 0 (`year * 12 + month - 1`) of a day number.
pub fn month_of_day(day: u32) -> u32 {
    let (y, m, _) = civil(day);
    (y * 12 + i64::from(m) - 1) as u32
}

/// The first day of a month number.
pub fn first_day_of_month(month: u32) -> u32 {
    let (y, m) = (i64::from(month / 12), month % 12 + 1);
    day_from_civil(y, m, 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(parse_date("2026-12-01"), Some(20_788));
        assert_eq!(date(20_788), "2026-12-01");
        assert_eq!(civil(20_783), (2026, 11, 26));
        for day in (0..40_000).step_by(17) {
            assert_eq!(parse_date(&date(day)), Some(day));
            assert!(first_day_of_month(month_of_day(day)) <= day);
            assert!(day - first_day_of_month(month_of_day(day)) < 31);
        }
        assert_eq!(parse_date("2024-02-29"), Some(day_from_civil(2024, 2, 29).unwrap()));
        for bad in ["2023-02-29", "2026-13-01", "2026-00-10", "2026-1-01", "yesterday", "1969-12-31", "2026-12-32"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn months() {
        let dec = month_of_day(parse_date("2026-12-31").unwrap());
        assert_eq!(first_day_of_month(dec), parse_date("2026-12-01").unwrap());
        assert_eq!(first_day_of_month(dec + 1), parse_date("2027-01-01").unwrap());
        assert_eq!(
            first_day_of_month(month_of_day(parse_date("2024-02-29").unwrap()) + 1),
            parse_date("2024-03-01").unwrap()
        );
    }
}
