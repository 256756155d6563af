//! Ring-buffer records. Every record is `Event<T>`: a fixed `EventKind` tag,
//! the task context, then the kind's payload. Kind numbers are part of the
//! trace-file format: never renumber, never reuse a removed id.
//!
//! The agent reads and writes these bytes only through `bytemuck` (feature
//! `user`): the derives check that no struct has implicit padding, so every
//! byte of an event is a field and the cast is safe both ways.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    ReclaimBegin = 1,
    ReclaimEnd = 2,
    Shrinker = 3,
    WritebackWait = 4,
    ReclaimWrite = 5,
    OomVictim = 6,
    DirtyThrottle = 7,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::ReclaimBegin,
            2 => Self::ReclaimEnd,
            3 => Self::Shrinker,
            4 => Self::WritebackWait,
            5 => Self::ReclaimWrite,
            6 => Self::OomVictim,
            7 => Self::DirtyThrottle,
            _ => return None,
        })
    }
}

/// Which reclaim or allocation path a `Reclaim` payload describes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReclaimKind {
    Direct = 1,
    Memcg = 2,
    ShrinkNode = 3,
    AllocSlowpath = 4,
}

impl ReclaimKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Direct,
            2 => Self::Memcg,
            3 => Self::ShrinkNode,
            4 => Self::AllocSlowpath,
            _ => return None,
        })
    }
}

pub const TASK_COMM_LEN: usize = 16;

/// Who the event happened to, and what stacked I/O that task was doing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TaskCtx {
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// task_struct.flags (PF_*), read through the BTF offset.
    pub task_flags: u32,
    /// bpf_get_stackid() into the STACKS map; negative when none.
    pub stack_id: i32,
    pub comm: [u8; TASK_COMM_LEN],
    /// The stacked device (dev_t, kernel encoding) whose I/O this task is
    /// completing: from SERVICERS or from a write to a backing file. 0: none.
    pub serving_dev: u32,
    /// Filesystem write/writeback nesting depth of the task.
    pub fs_depth: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Zeroable))]
pub struct Event<T> {
    pub kind: u32,
    pub _pad: u32,
    pub ctx: TaskCtx,
    pub data: T,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ReclaimData {
    /// `ReclaimKind`.
    pub reclaim_kind: u32,
    /// Effective gfp mask (the tracepoints report it after current_gfp_context()).
    pub gfp: u32,
    pub order: i32,
    pub _pad: u32,
    /// End events only.
    pub duration_ns: u64,
    pub nr_reclaimed: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ShrinkerData {
    pub shrinker: u64,
    /// The shrinker's scan_objects callback, symbolized by the agent.
    pub scan_fn: u64,
    pub nr_to_scan: u64,
    pub gfp: u32,
    /// s_dev of the super_block behind a super-block shrinker (0: not one).
    pub sb_dev: u32,
    pub fs_type: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct WritebackWaitData {
    /// The bdi's name, e.g. "7:0".
    pub bdi: [u8; 32],
    pub ino: u64,
    pub index: u64,
    /// 1 when the task was inside reclaim while it waited.
    pub in_reclaim: u32,
    /// The folio's s_dev where the probe can read it (kprobe/fentry); the
    /// tracepoint gives only `bdi`.
    pub dev: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ReclaimWriteData {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// The OOM killer chose a task (oom:mark_victim). The event's own context is
/// the task whose allocation ran the OOM killer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct OomVictimData {
    pub pid: u32,
    pub _pad: u32,
}

/// A task paused in balance_dirty_pages() (writeback:balance_dirty_pages):
/// throttled because too much memory is dirty in its writeback domain (the
/// machine's, or its memory cgroup's under v2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct DirtyThrottleData {
    /// The bdi the task writes to, e.g. "254:0".
    pub bdi: [u8; 32],
    /// Dirty pages in the domain, and the limit (pages).
    pub dirty: u64,
    pub limit: u64,
    /// This pause, in ms: the tracepoint converts it from jiffies (`pause * 1000 / HZ`).
    pub pause: i64,
    /// Inode of the memory cgroup whose domain throttles (0: the global one).
    pub cgroup_ino: u64,
}

pub type ReclaimEvent = Event<ReclaimData>;
pub type ShrinkerEvent = Event<ShrinkerData>;
pub type WritebackWaitEvent = Event<WritebackWaitData>;
pub type ReclaimWriteEvent = Event<ReclaimWriteData>;
pub type OomVictimEvent = Event<OomVictimData>;
pub type DirtyThrottleEvent = Event<DirtyThrottleData>;

/// bytemuck cannot derive `Pod` for a generic struct, because it cannot check
/// the padding of every `T`; it is implemented for each event here, and the
/// size assertions below are that check: each size is the sum of the fields'.
macro_rules! event_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: repr(C), Copy and 'static; `kind`, `_pad` and `ctx`
            // fill the first 56 bytes, the payload is itself `Pod` (so has no
            // inner padding) and 8-aligned, and the asserted size leaves no
            // tail padding.
            unsafe impl bytemuck::Pod for $t {}
        )*
    };
}

event_pod!(ReclaimEvent, ShrinkerEvent, WritebackWaitEvent, ReclaimWriteEvent, OomVictimEvent, DirtyThrottleEvent);

impl<T> Event<T> {
    pub const fn new(kind: EventKind, ctx: TaskCtx, data: T) -> Event<T> {
        Event { kind: kind as u32, _pad: 0, ctx, data }
    }
}

const _: () = assert!(core::mem::size_of::<TaskCtx>() == 48);
const _: () = assert!(core::mem::size_of::<ReclaimEvent>() == 8 + 48 + 32);
const _: () = assert!(core::mem::size_of::<ShrinkerEvent>() == 8 + 48 + 48);
const _: () = assert!(core::mem::size_of::<WritebackWaitEvent>() == 8 + 48 + 56);
const _: () = assert!(core::mem::size_of::<ReclaimWriteEvent>() == 8 + 48 + 16);
const _: () = assert!(core::mem::size_of::<OomVictimEvent>() == 8 + 48 + 8);
const _: () = assert!(core::mem::size_of::<DirtyThrottleEvent>() == 8 + 48 + 64);
