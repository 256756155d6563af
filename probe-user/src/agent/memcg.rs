//! The memory cgroup of a process, as `watch --all` shows it beside each
//! event: read from /proc here, so that output/ reads nothing.

use crate::kernel::proc_task::parse_memcg;

/// The memory cgroup of `pid` (None: gone, or in none).
pub fn memcg_of(pid: u32) -> Option<String> {
    parse_memcg(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}
