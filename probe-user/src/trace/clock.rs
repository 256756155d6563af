//! Kernel timestamps to wall-clock time. Events carry `bpf_ktime_get_ns()`,
//! CLOCK_MONOTONIC, which lines up with nothing outside this boot; a
//! timeline meant to sit beside other traces needs Unix time.

/// CLOCK_REALTIME minus CLOCK_MONOTONIC now, in ns: add it to an event's
/// `ts_ns` to get Unix time. Read between two monotonic reads, whose mean
/// stands for the moment of the realtime read. None if a clock cannot be
/// read (it always can on Linux).
pub fn monotonic_to_unix_ns() -> Option<i64> {
    let mono_before = clock_ns(libc::CLOCK_MONOTONIC)?;
    let real = clock_ns(libc::CLOCK_REALTIME)?;
    let mono_after = clock_ns(libc::CLOCK_MONOTONIC)?;
    let mono = mono_before + (mono_after - mono_before) / 2;
    i64::try_from(real - mono).ok()
}

fn clock_ns(clock: libc::clockid_t) -> Option<i128> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec it is given.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// The offset of a trace written before its header carried one: each event
/// record holds the wall-clock time the agent read it, which is after the
/// kernel stamped it, so the smallest difference is the closest bound (late
/// by the quickest ring-buffer read, microseconds on an idle agent).
#[derive(Debug, Default, Clone, Copy)]
pub struct OffsetEstimate {
    least: Option<i64>,
}

impl OffsetEstimate {
    /// One event: its kernel stamp and the Unix time it was read.
    pub fn add(&mut self, ts_ns: u64, unix_ns: u64) {
        let diff = i64::try_from(i128::from(unix_ns) - i128::from(ts_ns)).ok();
        self.least = match (self.least, diff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    pub fn offset(&self) -> Option<i64> {
        self.least
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_offset_is_unix_time_minus_uptime() {
        let off = monotonic_to_unix_ns().unwrap();
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        let mono = clock_ns(libc::CLOCK_MONOTONIC).unwrap() as i64;
        assert!((unix - mono - off).abs() < 1_000_000_000, "offset {off}, unix {unix}, monotonic {mono}");
    }

    #[test]
    fn the_estimate_takes_the_quickest_read() {
        let mut e = OffsetEstimate::default();
        assert_eq!(e.offset(), None);
        e.add(1_000, 5_000);
        e.add(2_000, 5_500);
        e.add(3_000, 9_000);
        assert_eq!(e.offset(), Some(3_500));
    }
}
