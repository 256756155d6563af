//! Maps and the read-only CONFIG global.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
};
use probe_common::{
    config::{Config, TracepointOffsets},
    maps::{
        counter, BackingInfo, BackingKey, ServicerInfo, TaskState, MAX_BACKING_FILES, MAX_SERVICERS, MAX_STACKS,
        MAX_TASKS, RING_BYTES,
    },
};

/// Filled in by the agent before load (aya `set_global`); read-only after.
#[no_mangle]
static CONFIG: Config = Config::zeroed();

/// The config as the agent set it. The volatile read stops the compiler from
/// folding the zero initialiser into the code.
#[inline(always)]
pub fn config() -> &'static Config {
    // SAFETY: CONFIG is a plain static; the read only defeats constant folding.
    unsafe { &*core::ptr::read_volatile(&&CONFIG) }
}

/// Tracepoint field offsets, one entry, written by the agent at start and
/// again when a module brings new tracepoints.
#[map]
pub static TP_OFFSETS: Array<TracepointOffsets> = Array::with_max_entries(1, 0);

/// The tracepoint offsets the agent wrote (None only before it wrote them).
#[inline(always)]
pub fn tp_offsets() -> Option<&'static TracepointOffsets> {
    TP_OFFSETS.get(0)
}

#[map]
pub static SERVICERS: HashMap<u32, ServicerInfo> = HashMap::with_max_entries(MAX_SERVICERS, 0);

#[map]
pub static BACKING_FILES: HashMap<BackingKey, BackingInfo> = HashMap::with_max_entries(MAX_BACKING_FILES, 0);

/// Per-thread state of threads inside a write frame or reclaim. A plain
/// hash, not an LRU: an entry is deleted when its thread stops being
/// followed or exits, and a full map is counted instead of silently evicting
/// the state of a thread that is in reclaim.
#[map]
pub static TASKS: HashMap<u32, TaskState> = HashMap::with_max_entries(MAX_TASKS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Kernel stacks of servicer threads, by the id their events carry. Taken
/// with BPF_F_REUSE_STACKID, so a bucket holds its latest stack and the map
/// never fills up for good (context.rs, STACK_FLAGS, says why).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(MAX_STACKS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}
