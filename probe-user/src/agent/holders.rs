//! Reads HOLDERS, the kernel's record of who holds XFS inode locks,
//! transactions and jbd2 handles in the filesystems above servicers, into
//! the `Holder`s a finding names. Re-read at most every `REREAD`: a burst of
//! reclaim events must not turn into a burst of map dumps.
//!
//! The holder programs are attached only under memory pressure
//! (agent/pressure.rs); when they are detached HOLDERS is emptied, since
//! nothing would release what it says is held.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use probe_common::maps::{held, HolderState};

use super::blocked;
use crate::{detect::finding::Holder, events::decode::cstr, topology::Dev};

const REREAD: Duration = Duration::from_millis(100);

/// Holders that let go longer ago than this are no longer named, and their
/// entries are deleted (a thread's entry is otherwise kept between its
/// lock holds).
const RECENT_NS: u64 = 2_000_000_000;

/// Kernel functions that say what a blocked holder waits on, innermost
/// first in its stack (a lock, a buffer's I/O, writeback, the journal).
const WAIT_MARKERS: &[&str] =
    &["xfs_", "ext4_", "jbd2", "folio_wait", "wait_on_page", "balance_dirty_pages", "iomap_", "fuse_", "blk_"];

pub struct Holders {
    map: HashMap<MapData, u32, HolderState>,
    snapshot: Arc<[(Dev, Holder)]>,
    read_at: Option<Instant>,
    /// When a finding last asked for the holders.
    wanted_at: Option<Instant>,
}

impl Holders {
    pub fn new(map: HashMap<MapData, u32, HolderState>) -> Holders {
        Holders { map, snapshot: Arc::from(Vec::new()), read_at: None, wanted_at: None }
    }

    /// Who holds (or just held) what, by filesystem device; `now_ns` is the
    /// kernel's monotonic clock.
    pub fn current(&mut self, now_ns: u64) -> Arc<[(Dev, Holder)]> {
        self.wanted_at = Some(Instant::now());
        self.reread(now_ns);
        Arc::clone(&self.snapshot)
    }

    /// Deletes the entries of holders that let go long ago (the tick's job:
    /// a busy filesystem's threads come and go).
    pub fn retire(&mut self, now_ns: u64) {
        self.reread(now_ns);
    }

    /// Whether a finding asked for the holders within `d`.
    pub fn wanted_within(&self, d: Duration) -> bool {
        self.wanted_at.is_some_and(|t| t.elapsed() < d)
    }

    /// Forgets everything (the holder programs were detached).
    pub fn clear(&mut self) {
        for tid in self.map.keys().filter_map(Result::ok).collect::<Vec<_>>() {
            let _ = self.map.remove(&tid);
        }
        self.snapshot = Arc::from(Vec::new());
        self.read_at = None;
    }

    fn reread(&mut self, now_ns: u64) {
        if self.read_at.is_none_or(|t| t.elapsed() >= REREAD) {
            self.read_at = Some(Instant::now());
            let mut all = Vec::new();
            let mut stale = Vec::new();
            for (tid, h) in self.map.iter().filter_map(Result::ok) {
                if h.released_ns != 0 && now_ns.saturating_sub(h.released_ns) > RECENT_NS {
                    stale.push(tid);
                } else {
                    all.push((Dev::from_kernel(h.s_dev), holder(tid, &h, now_ns)));
                }
            }
            for tid in stale {
                // The thread may have taken a lock again meanwhile: it then
                // gets a new entry at its next lock.
                let _ = self.map.remove(&tid);
            }
            // Holding now and blocked first, then holding, then the most
            // recent: the likeliest other half of a cycle.
            all.sort_by_key(|(_, h)| (h.blocked_in.is_none(), h.released_ms_ago.is_some(), h.released_ms_ago));
            self.snapshot = Arc::from(all);
        }
    }
}

const HELD_NAMES: &[(u32, &str)] = &[
    (held::ILOCK_EXCL, "ILOCK_EXCL"),
    (held::ILOCK_SHARED, "ILOCK_SHARED"),
    (held::IOLOCK, "IOLOCK"),
    (held::TRANS, "XFS_TRANS"),
    (held::HANDLE, "JBD2_HANDLE"),
];

fn holder(tid: u32, h: &HolderState, now_ns: u64) -> Holder {
    let held_until = if h.released_ns != 0 { h.released_ns } else { now_ns };
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
        held: HELD_NAMES.iter().filter(|(b, _)| h.kinds & b != 0).map(|(_, n)| (*n).to_owned()).collect(),
        held_ms: held_until.saturating_sub(h.since_ns) / 1_000_000,
        released_ms_ago: (h.released_ns != 0).then(|| now_ns.saturating_sub(h.released_ns) / 1_000_000),
        // Only a thread holding something now can block the cycle.
        blocked_in: if h.released_ns == 0 { blocked_in(tid) } else { None },
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
