//! Warnings about losses that can repeat thousands of times a second (a full
//! ring buffer, a full filter map), logged at most once a period with what
//! happened since the previous line, so that an overflow cannot flood the
//! journal while every loss is still counted.

use std::time::{Duration, Instant};

/// How often a loss warning may repeat.
pub const LOSS_LOG_EVERY: Duration = Duration::from_secs(60);

/// Follows a running total (a kernel counter, or the agent's own) and says
/// when to log its growth: at once the first time it grows, then at most
/// once per period, with the growth since the previous line.
#[derive(Debug)]
pub struct GrowthLog {
    period: Duration,
    /// The total the previous line reported (or the one at start).
    logged: u64,
    last: Option<Instant>,
}

/// What to log: `new` more since the previous line, `since` that line
/// (None: the first line).
#[derive(Debug, PartialEq, Eq)]
pub struct Growth {
    pub new: u64,
    pub total: u64,
    pub since: Option<Duration>,
}

impl GrowthLog {
    pub fn new(period: Duration) -> GrowthLog {
        GrowthLog { period, logged: 0, last: None }
    }

    /// The growth to log now, if any: the total grew since the previous
    /// line, and that line is at least a period old. With `force`, any
    /// growth (the last word at exit).
    pub fn check(&mut self, total: u64, now: Instant, force: bool) -> Option<Growth> {
        if total <= self.logged {
            // A total that went back (BPF objects loaded anew) starts afresh.
            self.logged = total;
            return None;
        }
        if !force && self.last.is_some_and(|t| now.saturating_duration_since(t) < self.period) {
            return None;
        }
        let g = Growth { new: total - self.logged, total, since: self.last.map(|t| now.saturating_duration_since(t)) };
        self.logged = total;
        self.last = Some(now);
        Some(g)
    }
}

impl Growth {
    /// "N EVENTS (TOTAL in all) in the last S s" / "N EVENTS" the first time.
    pub fn describe(&self, what: &str) -> String {
        match self.since {
            Some(d) => format!("{} {what} in the last {:.0} s ({} in all)", self.new, d.as_secs_f64(), self.total),
            None => format!("{} {what}", self.new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An overflow that drops events every second for five minutes makes
    /// one line at its start and one a minute after, each with the count
    /// since the one before; nothing is lost from the counts.
    #[test]
    fn an_overflow_logs_once_a_minute_with_the_count_since() {
        let t0 = Instant::now();
        let mut log = GrowthLog::new(LOSS_LOG_EVERY);
        assert_eq!(log.check(0, t0, false), None);
        let mut lines = Vec::new();
        for s in 1..=300u64 {
            if let Some(g) = log.check(s * 1000, t0 + Duration::from_secs(s), false) {
                lines.push(g);
            }
        }
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[0], Growth { new: 1000, total: 1000, since: None });
        assert_eq!(lines[1], Growth { new: 60_000, total: 61_000, since: Some(Duration::from_secs(60)) });
        assert_eq!(lines.iter().map(|g| g.new).sum::<u64>(), 241_000);
        // Quiet after it: no line; then the last word at exit says the rest.
        assert_eq!(log.check(300_000, t0 + Duration::from_secs(400), false).map(|g| g.new), Some(59_000));
        assert_eq!(log.check(300_000, t0 + Duration::from_secs(500), true), None);
        assert_eq!(log.check(300_005, t0 + Duration::from_secs(401), true).map(|g| g.new), Some(5));
        assert_eq!(lines[1].describe("events dropped"), "60000 events dropped in the last 60 s (61000 in all)");
    }

    #[test]
    fn a_counter_that_restarts_is_followed_from_its_new_value() {
        let t0 = Instant::now();
        let mut log = GrowthLog::new(LOSS_LOG_EVERY);
        assert!(log.check(50, t0, false).is_some());
        assert_eq!(log.check(3, t0 + Duration::from_secs(120), false), None);
        assert_eq!(log.check(10, t0 + Duration::from_secs(121), false).map(|g| g.new), Some(7));
    }
}
