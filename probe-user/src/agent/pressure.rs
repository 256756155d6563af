//! When the on-demand hooks (attach/table.rs: frames of writes into backing
//! files, lock holders above servicers) are attached: while the machine is
//! under memory pressure. They give a finding its context, and every finding
//! starts with a task in direct or memcg reclaim, the allocator's slowpath or
//! a dirty-throttling pause; programs that stay attached count all four for
//! every task. On a healthy server the on-demand hooks would be most of the
//! tool's cost, on every buffered write, for state nobody reads.
//!
//! They attach at the first event of a servicer in trouble, or within one
//! poll of any other task's first reclaim, and detach after `--context-linger`
//! without any, unless a finding still reads the holders (a servicer blocked
//! in D state reclaims no more). The price, stated in docs/rules.md: a frame
//! opened or a lock taken before they attach is not seen
//! (`--context-always` pays for seeing those).

use std::time::{Duration, Instant};

/// How often the counters are read.
pub const POLL: Duration = Duration::from_millis(100);

/// How long after the last sign of pressure the hooks stay, by default.
pub const LINGER: Duration = Duration::from_secs(60);

pub struct Pressure {
    /// The counters' sum at the last poll (they start at 0 with the maps).
    total: u64,
    last_seen: Option<Instant>,
    linger: Duration,
    always: bool,
}

impl Pressure {
    pub fn new(linger: Duration, always: bool) -> Pressure {
        Pressure { total: 0, last_seen: None, linger, always }
    }

    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// A servicer's event: pressure, whatever the counters say yet.
    pub fn saw(&mut self, now: Instant) {
        self.last_seen = Some(now);
    }

    /// `total`: the pressure counters' sum now; `needed`: a finding read the
    /// context within the linger time. Whether the hooks should be attached.
    pub fn want(&mut self, total: u64, needed: bool, now: Instant) -> bool {
        if total != self.total {
            self.total = total;
            self.last_seen = Some(now);
        }
        self.always || needed || self.last_seen.is_some_and(|t| now.duration_since(t) < self.linger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_from_the_first_reclaim_until_a_quiet_period() {
        let t0 = Instant::now();
        let mut p = Pressure::new(LINGER, false);
        assert!(!p.want(0, false, t0), "no reclaim yet");
        assert!(p.want(3, false, t0 + POLL), "reclaim since start");
        assert!(p.want(3, false, t0 + LINGER), "within the quiet period");
        assert!(!p.want(3, false, t0 + POLL + LINGER), "quiet for LINGER");
        assert!(p.want(3, true, t0 + 2 * LINGER), "a finding still reads the holders");
        assert!(p.want(4, false, t0 + 3 * LINGER), "pressure again");
        p.saw(t0 + 5 * LINGER);
        assert!(p.want(4, false, t0 + 5 * LINGER), "a servicer's event");
        assert!(Pressure::new(LINGER, true).want(0, false, t0), "--context-always");
    }
}
