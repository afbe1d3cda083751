//! Ollama Cloud's usage windows and when each resets (all UTC): hourly windows at the next
//! hour, session windows at multiples of 5 h since the Unix epoch, weekly windows on Monday
//! 00:00, monthly windows on the 1st 00:00. "Resets" always means the next boundary strictly
//! after `now`.

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Hourly,
    Session,
    Weekly,
    Monthly,
}

impl Window {
    pub const ALL: [Window; 4] = [Window::Hourly, Window::Session, Window::Weekly, Window::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hourly => "hourly",
            Window::Session => "session",
            Window::Weekly => "weekly",
            Window::Monthly => "monthly",
        }
    }

    /// The first reset strictly after `now_ms`.
    pub fn next_reset(self, now_ms: u64) -> u64 {
        match self {
            Window::Hourly => (now_ms / HOUR + 1) * HOUR,
            Window::Session => (now_ms / (5 * HOUR) + 1) * 5 * HOUR,
            Window::Weekly => {
                let day = now_ms / DAY;
                // 1970-01-01 was a Thursday: Monday-based weekday = (day + 3) % 7.
                (day + 7 - (day + 3) % 7) * DAY
            }
            Window::Monthly => {
                let month = super::calendar::month_of_day((now_ms / DAY) as u32);
                u64::from(super::calendar::first_day_of_month(month + 1)) * DAY
            }
        }
    }

    /// Which window an upstream error text names ("… weekly usage limit …"), if any.
    pub fn named_in(text: &str) -> Option<Window> {
        let t = text.to_ascii_lowercase();
        if !(t.contains("limit") || t.contains("quota")) {
            return None;
        }
        [
            ("hourly", Window::Hourly),
            ("session", Window::Session),
            ("weekly", Window::Weekly),
            ("monthly", Window::Monthly),
        ]
        .into_iter()
        .find(|(word, _)| t.contains(word))
        .map(|(_, w)| w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        humantime::parse_rfc3339(rfc3339).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    }

    #[test]
    fn session_windows_are_five_hour_multiples_since_epoch() {
        // 2026-11-26T00:00Z is day 20,783; 20,783 * 24 = 498,792 h, a multiple of 5 minus 2 h.
        assert_eq!(Window::Session.next_reset(ms("2026-11-26T00:00:00Z")), ms("2026-11-26T03:00:00Z"));
        assert_eq!(Window::Session.next_reset(ms("2026-11-26T02:59:59Z")), ms("2026-11-26T03:00:00Z"));
        assert_eq!(
            Window::Session.next_reset(ms("2026-11-26T03:00:00Z")),
            ms("2026-11-26T08:00:00Z"),
            "boundary: next one"
        );
        assert_eq!(Window::Session.next_reset(0), 5 * HOUR);
    }

    #[test]
    fn weekly_windows_reset_monday_midnight() {
        // 2026-11-26 is a Thursday.
        assert_eq!(Window::Weekly.next_reset(ms("2026-11-26T13:45:00Z")), ms("2026-11-30T00:00:00Z"));
        assert_eq!(Window::Weekly.next_reset(ms("2026-11-29T23:59:59Z")), ms("2026-11-30T00:00:00Z"));
        assert_eq!(Window::Weekly.next_reset(ms("2026-11-30T00:00:00Z")), ms("2026-12-07T00:00:00Z"));
        assert_eq!(Window::Weekly.next_reset(0), ms("1970-01-05T00:00:00Z"), "epoch was a Thursday");
    }

    #[test]
    fn monthly_windows_reset_on_the_first() {
        assert_eq!(Window::Monthly.next_reset(ms("2026-11-26T13:45:00Z")), ms("2026-12-01T00:00:00Z"));
        assert_eq!(Window::Monthly.next_reset(ms("2026-12-31T23:59:59Z")), ms("2027-01-01T00:00:00Z"));
        assert_eq!(Window::Monthly.next_reset(ms("2028-02-01T00:00:00Z")), ms("2028-03-01T00:00:00Z"));
        assert_eq!(Window::Monthly.next_reset(ms("2028-02-29T12:00:00Z")), ms("2028-03-01T00:00:00Z"), "leap day");
    }

    #[test]
    fn hourly_and_names() {
        assert_eq!(Window::Hourly.next_reset(ms("2026-11-26T13:00:00Z")), ms("2026-11-26T14:00:00Z"));
        assert_eq!(Window::named_in("You've reached your weekly usage limit"), Some(Window::Weekly));
        assert_eq!(Window::named_in("session usage limit reached"), Some(Window::Session));
        assert_eq!(Window::named_in("hourly quota exceeded"), Some(Window::Hourly));
        assert_eq!(Window::named_in("weekly newsletter"), None);
    }
}
