//! Maps and the read-only CONFIG global.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
};
use probe_common::{
    config::Config,
    maps::{
        counter, BackingInfo, BackingKey, DevState, ServicerInfo, MAX_BACKING_FILES, MAX_DEVS, MAX_SERVICERS,
        MAX_STACKS, MAX_TASKS, RING_BYTES,
    },
};

use crate::context::TaskState;

/// Filled in by the agent before load (aya `set_global`); read-only after.
#[no_mangle]
static CONFIG: Config = Config {
    target_tgid: 0,
    trace_all: 0,
    super_cache_scan: 0,
    kernel: probe_common::config::KernelOffsets {
        task_flags: 0,
        shrinker_private_data: 0,
        sb_s_dev: 0,
        sb_s_type: 0,
        fstype_name: 0,
        folio_mapping: 0,
        mapping_host: 0,
        inode_i_sb: 0,
        inode_i_ino: 0,
        scan_control_gfp: 0,
        found: 0,
    },
    tp: probe_common::config::TracepointOffsets {
        reclaim_begin_order: 0,
        reclaim_begin_gfp: 0,
        reclaim_end_nr_reclaimed: 0,
        shrink_shr: 0,
        shrink_fn: 0,
        shrink_gfp: 0,
        shrink_nr: 0,
        fww_name: 0,
        fww_ino: 0,
        fww_index: 0,
        ext4_dev: 0,
        ext4_ino: 0,
        rq_dev: 0,
    },
};

/// The config as the agent set it. The volatile read stops the compiler from
/// folding the zero initialiser into the code.
#[inline(always)]
pub fn config() -> &'static Config {
    // SAFETY: CONFIG is a plain static; the read only defeats constant folding.
    unsafe { &*core::ptr::read_volatile(&&CONFIG) }
}

#[map]
pub static SERVICERS: HashMap<u32, ServicerInfo> = HashMap::with_max_entries(MAX_SERVICERS, 0);

#[map]
pub static BACKING_FILES: HashMap<BackingKey, BackingInfo> = HashMap::with_max_entries(MAX_BACKING_FILES, 0);

#[map]
pub static DEV_STATE: PerCpuHashMap<u32, DevState> = PerCpuHashMap::with_max_entries(MAX_DEVS, 0);

/// Per-thread state, LRU so that exited threads age out by themselves.
#[map]
pub static TASKS: LruHashMap<u32, TaskState> = LruHashMap::with_max_entries(MAX_TASKS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

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
