//! Requests in flight on a stacked device, from the block layer's own count:
//! /sys/dev/block/M:m/inflight, the reads and writes issued to the driver
//! and not yet completed (blk-mq counts its tags, bio-based dm its per-CPU
//! counters). A hazard uses it to say whether the filesystem above was
//! waiting on the servicer. Read when an event needs it, not kept in BPF:
//! that would put two programs on every block request of the machine.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::topology::Dev;

/// A burst of events about one device reads sysfs once per this.
const REREAD: Duration = Duration::from_millis(10);

#[derive(Default)]
pub struct Inflight {
    read: HashMap<Dev, (Instant, Option<i64>)>,
}

impl Inflight {
    /// None when the device is gone or its kernel has no such file.
    pub fn of(&mut self, dev: Dev) -> Option<i64> {
        if let Some((at, n)) = self.read.get(&dev) {
            if at.elapsed() < REREAD {
                return *n;
            }
        }
        let n = std::fs::read_to_string(format!("/sys/dev/block/{dev}/inflight")).ok().and_then(|s| parse(&s));
        if self.read.len() > 4096 {
            self.read.clear();
        }
        self.read.insert(dev, (Instant::now(), n));
        n
    }
}

/// "       0        4\n": reads, then writes.
fn parse(s: &str) -> Option<i64> {
    let mut it = s.split_whitespace().map(str::parse::<i64>);
    let (r, w) = (it.next()?.ok()?, it.next()?.ok()?);
    Some(r + w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plus_writes() {
        assert_eq!(parse("       0        4\n"), Some(4));
        assert_eq!(parse("3 2"), Some(5));
        assert_eq!(parse("x 2"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn a_real_disk_has_a_count_and_a_missing_one_has_none() {
        let mut i = Inflight::default();
        assert_eq!(i.of(Dev { major: 4095, minor: 4095 }), None);
        // Every block device has the file.
        let name = std::fs::read_dir("/sys/dev/block").unwrap().next().expect("a block device").unwrap();
        let dev = Dev::parse(&name.file_name().to_string_lossy()).unwrap();
        assert!(i.of(dev).is_some_and(|n| n >= 0), "{dev}");
    }
}
