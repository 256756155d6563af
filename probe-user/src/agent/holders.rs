//! Reads HOLDERS, the kernel's record of who holds XFS inode locks,
//! transactions and jbd2 handles in the filesystems above servicers, into
//! the `Holder`s a finding names. Re-read at most every `REREAD`: a burst of
//! reclaim events must not turn into a burst of map dumps.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use probe_common::maps::HolderState;

use super::blocked;
use crate::{detect::finding::Holder, events::decode::cstr, topology::Dev};

const REREAD: Duration = Duration::from_millis(100);

/// Kernel functions that say what a blocked holder waits on, innermost
/// first in its stack (a lock, a buffer's I/O, writeback, the journal).
const WAIT_MARKERS: &[&str] =
    &["xfs_", "ext4_", "jbd2", "folio_wait", "wait_on_page", "balance_dirty_pages", "iomap_", "fuse_", "blk_"];

pub struct Holders {
    map: HashMap<MapData, u32, HolderState>,
    snapshot: Arc<[(Dev, Holder)]>,
    read_at: Option<Instant>,
}

impl Holders {
    pub fn new(map: HashMap<MapData, u32, HolderState>) -> Holders {
        Holders { map, snapshot: Arc::from(Vec::new()), read_at: None }
    }

    /// Who holds what now, by filesystem device; `now_ns` is the kernel's
    /// monotonic clock.
    pub fn current(&mut self, now_ns: u64) -> Arc<[(Dev, Holder)]> {
        if self.read_at.is_none_or(|t| t.elapsed() >= REREAD) {
            self.read_at = Some(Instant::now());
            let mut all: Vec<(Dev, Holder)> = self
                .map
                .iter()
                .filter_map(Result::ok)
                .map(|(tid, h)| (Dev::from_kernel(h.s_dev), holder(tid, &h, now_ns)))
                .collect();
            // Blocked holders first, then the longest held: the likeliest
            // other half of a cycle.
            all.sort_by_key(|(_, h)| (h.blocked_in.is_none(), std::cmp::Reverse(h.held_ms)));
            self.snapshot = Arc::from(all);
        }
        Arc::clone(&self.snapshot)
    }
}

fn holder(tid: u32, h: &HolderState, now_ns: u64) -> Holder {
    Holder {
        tid,
        tgid: h.tgid,
        comm: cstr(&h.comm),
        ilock_excl: h.ilock_excl,
        ilock_shared: h.ilock_shared,
        iolock: h.iolock,
        ino: h.ino,
        trans: h.trans,
        handles: h.handles,
        held_ms: now_ns.saturating_sub(h.since_ns) / 1_000_000,
        blocked_in: blocked_in(tid),
    }
}

/// The innermost storage function a task in D state is blocked in.
fn blocked_in(tid: u32) -> Option<String> {
    if blocked::state_of(tid)? != 'D' {
        return None;
    }
    let stack = blocked::kernel_stack(&format!("/proc/{tid}"));
    stack
        .iter()
        .find(|f| WAIT_MARKERS.iter().any(|m| f.starts_with(m)))
        .or(stack.first())
        .map(|f| f.split('+').next().unwrap_or(f).to_owned())
}
