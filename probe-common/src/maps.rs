//! Keys and values of the maps the agent and the programs share, and the map
//! names the agent looks them up by.

use crate::user_pod;

pub const SERVICERS: &str = "SERVICERS";
pub const BACKING_FILES: &str = "BACKING_FILES";
pub const COUNTERS: &str = "COUNTERS";
pub const STACKS: &str = "STACKS";
pub const EVENTS: &str = "EVENTS";
pub const TP_OFFSETS: &str = "TP_OFFSETS";
pub const TASKS: &str = "TASKS";

pub const MAX_SERVICERS: u32 = 4096;
pub const MAX_BACKING_FILES: u32 = 1024;
pub const MAX_TASKS: u32 = 16384;
pub const MAX_STACKS: u32 = 4096;
/// The ring buffer's data area. The kernel maps all of it into the agent
/// at once (RSS): 512 KiB hold about 4,000 events, drained within
/// milliseconds, and a full ring is counted, never silent.
pub const RING_BYTES: u32 = 1 << 19;
/// Depth of the per-task filesystem frame stack.
pub const FS_STACK_DEPTH: usize = 4;

/// SERVICERS value, keyed by the servicer's tgid (u32): all its threads count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServicerInfo {
    /// The stacked device whose I/O it completes (dev_t, kernel encoding).
    pub serving_dev: u32,
    pub _pad: u32,
}

/// BACKING_FILES key: the inode of a file that backs a stacked device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackingKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackingInfo {
    /// The device the file backs.
    pub upper_dev: u32,
    pub _pad: u32,
}

/// TASKS value, keyed by tid: per-thread state kept while the thread is
/// inside reclaim (deleted when it is in nothing else), and for a thread
/// that wrote a backing file until it exits (probe-ebpf's fs_write.rs says
/// why), so the map holds only threads doing something followed. Only the
/// programs write it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    pub reclaim_begin_ns: u64,
    pub slowpath_begin_ns: u64,
    /// When the last slowpath event was sent: slowpath entries repeat in a
    /// retry loop, and one event per thread per interval is enough.
    pub slowpath_emitted_ns: u64,
    pub reclaim_gfp: u32,
    pub reclaim_order: i32,
    pub reclaim_kind: u32,
    pub in_reclaim: u32,
    pub slowpath_gfp: u32,
    pub slowpath_order: i32,
    /// Open filesystem write/writeback frames.
    pub depth: u32,
    /// For each open frame, the stacked device whose backing file it writes (0: none).
    pub frames: [u32; FS_STACK_DEPTH],
    pub _pad: u32,
}

impl TaskState {
    /// The innermost frame that writes a backing file.
    #[inline(always)]
    pub fn frame_dev(&self) -> u32 {
        let mut dev = 0;
        let mut i = 0;
        while i < FS_STACK_DEPTH {
            if (i as u32) < self.depth && self.frames[i] != 0 {
                dev = self.frames[i];
            }
            i += 1;
        }
        dev
    }

    /// Nothing left to follow: the entry can go.
    #[inline(always)]
    pub fn idle(&self) -> bool {
        self.depth == 0 && self.in_reclaim == 0 && self.slowpath_begin_ns == 0
    }
}

/// Indices into the per-CPU COUNTERS array.
pub mod counter {
    pub const EVENTS_SENT: u32 = 0;
    /// Ring buffer full: the event was lost, and counted here.
    pub const EVENTS_DROPPED: u32 = 1;
    pub const RECLAIM_DIRECT: u32 = 2;
    pub const RECLAIM_MEMCG: u32 = 3;
    /// TASKS (LRU) had no room for a new task state.
    pub const TASK_STATE_FULL: u32 = 4;
    pub const SHRINKER_CALLS: u32 = 5;
    /// Writeback waits inside reclaim (PF_MEMALLOC), every task. Each wait
    /// bumps one counter, this or the next: the total is their sum.
    pub const WAITS_IN_RECLAIM: u32 = 6;
    /// Writeback waits outside reclaim (an fsync's own wait), every task:
    /// counted, never sent, since no rule needs them.
    pub const WAITS_OUTSIDE_RECLAIM: u32 = 7;
    /// bpf_get_stackid() failed (no free stack element, or a stack it could
    /// not walk): the event went out without its stack. A hash collision is
    /// not a failure: the newer stack replaces the older in its bucket.
    pub const STACKS_LOST: u32 = 8;
    /// A thread's recorded reclaim start had no end (a missed return probe
    /// or a dropped tracepoint): the next start replaced it.
    pub const STALE_RECLAIM: u32 = 9;
    /// Allocator slowpath entries, every task.
    pub const SLOWPATH_ENTRIES: u32 = 10;
    /// Tasks the OOM killer chose, every task.
    pub const OOM_KILLS: u32 = 11;
    /// Pauses in balance_dirty_pages(), every task.
    pub const DIRTY_THROTTLES: u32 = 12;
    // 13 was HOLDERS_FULL (kernel-side lock holders, replaced by reading
    // blocked tasks' stacks): never reused.
    pub const COUNT: u32 = 14;
}

user_pod!(ServicerInfo, BackingKey, BackingInfo, TaskState);

const _: () = assert!(core::mem::size_of::<BackingKey>() == 16);
const _: () = assert!(core::mem::size_of::<TaskState>() == 72);
