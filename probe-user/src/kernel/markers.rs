//! The kernel functions whose presence on a call stack means something to
//! the rules and the agent, in one place. Names are the kernel's; a
//! function a kernel lacks (renamed, inlined) only never matches there.
//! What each inode-lock holding function holds is detect/holds.rs's table.

/// The function name of a symbolized frame: "shrink_folio_list+0x3a/0x9f0"
/// (what `Kallsyms::symbolize` and /proc/PID/stack print) to
/// "shrink_folio_list", so that stacks differing only in offsets read alike.
pub fn function(frame: &str) -> &str {
    frame.split('+').next().unwrap_or(frame).trim()
}

/// Whether a frame of `stack` is in function `name`.
pub fn on_stack(stack: &[String], name: &str) -> bool {
    stack.iter().any(|f| function(f) == name)
}

/// Kernel functions that mean "waiting for writeback or for I/O" when they
/// sit in a blocked task's stack.
pub const WAIT_FUNCTIONS: &[&str] = &[
    "folio_wait_writeback",
    "folio_wait_bit",
    "shrink_folio_list",
    "io_schedule",
    "balance_dirty_pages",
    "wait_on_page_writeback",
    // 5.16+: reclaim that finds folios under writeback sleeps here until
    // writeback progresses (VMSCAN_THROTTLE_WRITEBACK), which under v2 is
    // how memcg reclaim waits on the upper filesystem's I/O.
    "reclaim_throttle",
];

/// Kernel functions that put a blocked task inside direct or memcg
/// reclaim: a servicer thread found blocked under one of them, with no
/// begin event seen (it entered before the agent started), is followed as
/// if the event had come.
pub const RECLAIM_FUNCTIONS: &[&str] = &["try_to_free_mem_cgroup_pages", "try_to_free_pages", "do_try_to_free_pages"];

/// The function under which a blocked task is dirty-throttled.
pub const THROTTLE_FUNCTION: &str = "balance_dirty_pages";

/// Prefixes of the kernel functions that place a blocked task in the
/// storage stack (filesystems, loop, FUSE, blk-mq, writeback, reclaim): the
/// tasks a blocked servicer's waiting chain names.
pub const STORAGE_FUNCTIONS: &[&str] = &[
    "xfs_",
    "iomap_",
    "ext4_",
    "jbd2",
    "folio_wait",
    "balance_dirty_pages",
    "fuse_",
    "loop_",
    "blk_mq_",
    "writeback",
    "shrink_",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_named_without_offsets() {
        assert_eq!(function("xfs_ilock+0x3a/0x90"), "xfs_ilock");
        assert_eq!(function("xfs_ilock"), "xfs_ilock");
        assert!(on_stack(&["balance_dirty_pages+0x1f2/0x5a0".into()], THROTTLE_FUNCTION));
    }
}
