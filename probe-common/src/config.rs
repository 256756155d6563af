//! The read-only global the agent fills in before load.
//!
//! Rust emits no CO-RE relocations, so every kernel struct offset and every
//! tracepoint field offset comes from the running kernel (BTF and tracefs
//! `format` files) through this struct. A zero offset in `KernelOffsets` means
//! "field not found on this kernel": the program that needs it skips the read.

use crate::user_pod;

/// Offsets into kernel structs, read from /sys/kernel/btf/vmlinux.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_flags: u32,
    pub shrinker_private_data: u32,
    pub sb_s_dev: u32,
    pub sb_s_type: u32,
    pub fstype_name: u32,
    pub folio_mapping: u32,
    pub mapping_host: u32,
    pub inode_i_sb: u32,
    pub inode_i_ino: u32,
    /// struct scan_control is private to mm/vmscan.c but is in vmlinux BTF.
    pub scan_control_gfp: u32,
    /// super_block.s_shrink where it is an embedded `struct shrinker`
    /// (before 6.7): the super_block is then `shrinker - sb_s_shrink`.
    pub sb_s_shrink: u32,
    /// Bit i set when field i above was found (fields are listed in order).
    pub found: u32,
}

/// Bits of `KernelOffsets::found`, one per field.
pub mod found {
    pub const TASK_FLAGS: u32 = 1 << 0;
    pub const SHRINKER_PRIVATE_DATA: u32 = 1 << 1;
    pub const SB_S_DEV: u32 = 1 << 2;
    pub const SB_S_TYPE: u32 = 1 << 3;
    pub const FSTYPE_NAME: u32 = 1 << 4;
    pub const FOLIO_MAPPING: u32 = 1 << 5;
    pub const MAPPING_HOST: u32 = 1 << 6;
    pub const INODE_I_SB: u32 = 1 << 7;
    pub const INODE_I_INO: u32 = 1 << 8;
    pub const SCAN_CONTROL_GFP: u32 = 1 << 9;
    pub const SB_S_SHRINK_EMBEDDED: u32 = 1 << 10;
    /// The kernel has bpf_get_current_task_btf() (5.11+; its `enum
    /// bpf_func_id` in BTF names it). The verifier refuses a call to a helper
    /// it does not know but never visits a branch the frozen CONFIG rules
    /// out, so the BTF programs read the flags with a helper on 5.10.
    pub const CURRENT_TASK_BTF: u32 = 1 << 11;
    /// What naming the filesystem behind a super-block shrinker needs, besides
    /// one way from the shrinker to its super_block (private_data, or the
    /// embedded s_shrink).
    pub const SB_NAME: u32 = SB_S_DEV | SB_S_TYPE | FSTYPE_NAME;
    /// Everything needed to map a folio to its (dev, ino).
    pub const FOLIO_INODE: u32 = FOLIO_MAPPING | MAPPING_HOST | INODE_I_SB | INODE_I_INO | SB_S_DEV;
}

/// Byte offsets of the fields each classic tracepoint program reads, from the
/// tracefs `format` files. All offsets are from the start of the record.
///
/// They live in the TP_OFFSETS map, not in the read-only CONFIG: a
/// tracepoint of a module (ext4) appears only when the module
/// loads, possibly months after the agent started, and its offsets are
/// written then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// vmscan:mm_vmscan_{direct,memcg}_reclaim_begin
    pub reclaim_begin_order: u32,
    pub reclaim_begin_gfp: u32,
    /// vmscan:mm_vmscan_{direct,memcg}_reclaim_end
    pub reclaim_end_nr_reclaimed: u32,
    /// vmscan:mm_shrink_slab_start
    pub shrink_shr: u32,
    pub shrink_fn: u32,
    pub shrink_gfp: u32,
    pub shrink_nr: u32,
    /// writeback:folio_wait_writeback
    pub fww_name: u32,
    pub fww_ino: u32,
    pub fww_index: u32,
    /// ext4:ext4_{da_,}write_{begin,end} and ext4_writepages{,_result}
    pub ext4_dev: u32,
    pub ext4_ino: u32,
    /// oom:mark_victim
    pub oom_pid: u32,
    /// writeback:balance_dirty_pages
    pub bdp_bdi: u32,
    pub bdp_dirty: u32,
    pub bdp_limit: u32,
    pub bdp_pause: u32,
    pub bdp_cgroup_ino: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Only this process's events are emitted (0: any).
    pub target_tgid: u32,
    /// Emit reclaim events for every task, not only for stacked-I/O tasks.
    pub trace_all: u32,
    /// Address of super_cache_scan(), from /proc/kallsyms (0: unknown), so the
    /// shrinker probe knows `private_data` is a super_block.
    pub super_cache_scan: u64,
    pub kernel: KernelOffsets,
}

impl Config {
    /// The value the object is built with; the agent overrides it before load.
    pub const fn zeroed() -> Config {
        // SAFETY: every field is an integer, for which all-zero is valid.
        unsafe { core::mem::zeroed() }
    }
}

user_pod!(Config, TracepointOffsets);

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 48);
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 72);
const _: () = assert!(core::mem::size_of::<Config>() == 16 + 48);
