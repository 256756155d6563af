//! A task's /proc files that discovery and the agent both read, parsed
//! here once: its stat line and its kernel stack. Reading them is the
//! caller's (through topology's `Source`, or /proc directly).

use procfs::FromRead;

/// What the tool uses of /proc/TID/stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStat {
    pub comm: String,
    /// `R`, `S`, `D`...
    pub state: char,
    pub ppid: u32,
    /// task_struct.flags (field 9).
    pub flags: u32,
    /// Clock ticks after boot the task started (field 22): with the pid,
    /// it names one process for good.
    pub start_time: u64,
}

/// Parses a /proc/TID/stat line (a comm may hold spaces and parentheses).
pub fn parse_stat(raw: &[u8]) -> Option<TaskStat> {
    let s = procfs::process::Stat::from_read(raw).ok()?;
    Some(TaskStat {
        comm: s.comm,
        state: s.state,
        ppid: u32::try_from(s.ppid).ok()?,
        flags: s.flags,
        start_time: s.starttime,
    })
}

/// Parses a /proc/TID/stack (root only; the kernel prints it without
/// touching the task's memory): its frames innermost first, as
/// "folio_wait_bit+0x120/0x2a0".
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_owned).collect()
}

/// The memory cgroup a /proc/PID/cgroup names: the v1 `memory` line's
/// path, or the v2 unified line's.
pub fn parse_memcg(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "memory")))
        .or_else(|| text.lines().find(|l| l.starts_with("0::")))?;
    line.splitn(3, ':').nth(2).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cgroup_of_v1_and_v2() {
        assert_eq!(parse_memcg("5:memory:/qsd\n0::/other\n"), Some("/qsd".into()));
        assert_eq!(parse_memcg("0::/system.slice/qsd.service\n"), Some("/system.slice/qsd.service".into()));
        assert_eq!(parse_memcg("3:cpu:/x\n"), None);
    }

    #[test]
    fn a_stat_line_whose_comm_holds_parentheses() {
        let line = b"4242 (qemu (io) 1) D 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 8 0 100 0 0 \
                     18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.comm.as_str(), s.state, s.ppid, s.flags), ("qemu (io) 1", 'D', 1, 4194560));
    }

    #[test]
    fn stack_frames_innermost_first() {
        let text = "[<0>] folio_wait_bit+0x120/0x2a0\n[<0>] folio_wait_writeback+0x2a/0x80\n";
        assert_eq!(parse_stack(text), ["folio_wait_bit+0x120/0x2a0", "folio_wait_writeback+0x2a/0x80"]);
    }
}
