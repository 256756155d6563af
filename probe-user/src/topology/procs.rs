//! What /proc says about processes: which ones hold a device node open,
//! their threads and task flags, the files they keep open.
//!
//! Nothing here touches a file a process has open: readlink of
//! /proc/PID/fd/N and reading fdinfo only print kernel state, so they are
//! safe even when that file lives on a wedged FUSE mount. /proc/PID/cmdline
//! is avoided: it takes the target's mmap lock, which a task stuck in
//! reclaim may hold.

use super::model::{protection_of, ServicerThread};
use super::source::Source;
use crate::kernel::proc_task::{self, TaskStat};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Processes holding device nodes of interest open.
#[derive(Default, Debug)]
pub(crate) struct Holders {
    /// Node path ("/dev/fuse") → (pid, fd) pairs, in pid order.
    pub by_node: BTreeMap<String, Vec<(u32, u32)>>,
    /// Processes whose open files could not be read (not root).
    pub unreadable: usize,
}

impl Holders {
    pub fn of(&self, node: &str) -> &[(u32, u32)] {
        self.by_node.get(node).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Every pid in /proc.
pub(crate) fn pids(src: &Source) -> Vec<u32> {
    let mut pids: Vec<u32> = src.read_dir("/proc").unwrap_or_default().iter().filter_map(|n| n.parse().ok()).collect();
    pids.sort_unstable();
    pids
}

/// /proc/PID/fdinfo/FD as key → value ("mnt_id" → "27").
pub(crate) fn fdinfo(src: &Source, pid: u32, fd: u32) -> BTreeMap<String, String> {
    let text = src.read(&format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

/// A process's comm ("qemu-storage-da").
pub(crate) fn comm(src: &Source, pid: u32) -> Option<String> {
    src.read_line(&format!("/proc/{pid}/comm"))
}

/// The process a task id belongs to (`Tgid:` of /proc/TID/status): the
/// kernel records some pids per thread (/sys/block/nbdN/pid is the thread
/// that ran NBD_DO_IT).
pub(crate) fn tgid_of(src: &Source, tid: u32) -> Option<u32> {
    let status = src.read(&format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// A process's parent (field 4 of /proc/PID/stat).
pub(crate) fn parent(src: &Source, pid: u32) -> Option<u32> {
    stat(src, &format!("/proc/{pid}/stat")).map(|s| s.ppid)
}

/// When a process started (field 22 of /proc/PID/stat, clock ticks since
/// boot): with the pid, it names one process for good.
pub(crate) fn start_time(src: &Source, pid: u32) -> Option<u64> {
    stat(src, &format!("/proc/{pid}/stat")).map(|s| s.start_time)
}

/// A stat file read through `src`, parsed by the one /proc stat parser.
fn stat(src: &Source, path: &str) -> Option<TaskStat> {
    proc_task::parse_stat(&src.read_bytes(path).ok()?)
}

/// Every thread with its task flags (field 9 of /proc/PID/task/TID/stat).
pub(crate) fn threads(src: &Source, pid: u32) -> Vec<ServicerThread> {
    let mut threads = Vec::new();
    for tid in
        src.read_dir(&format!("/proc/{pid}/task")).unwrap_or_default().iter().filter_map(|t| t.parse::<u32>().ok())
    {
        let Some(task) = stat(src, &format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        threads.push(ServicerThread { tid, comm: task.comm, flags: task.flags, protection: protection_of(task.flags) });
    }
    threads.sort_by_key(|t| t.tid);
    threads
}

/// A thread's kernel call stack, innermost frame first
/// (/proc/PID/task/TID/stack: root only, and printed by the kernel without
/// touching the task's memory). `None` when it cannot be read.
pub(crate) fn call_stack(src: &Source, pid: u32, tid: u32) -> Option<Vec<String>> {
    src.read(&format!("/proc/{pid}/task/{tid}/stack")).ok().map(|t| proc_task::parse_stack(&t))
}

/// A regular file a process holds open.
#[derive(Debug, Clone)]
pub(crate) struct OpenFile {
    pub path: PathBuf,
    pub mnt_id: u32,
    pub ino: u64,
    /// Opened O_RDWR: where a servicer keeps the data it serves (log files
    /// are write-only, libraries and configs read-only).
    pub read_write: bool,
}

/// The regular files `pid` holds open (not devices, pipes, sockets or anon inodes).
pub(crate) fn open_files(src: &Source, pid: u32) -> Vec<OpenFile> {
    let mut files = Vec::new();
    for fd in src.read_dir(&format!("/proc/{pid}/fd")).unwrap_or_default().iter().filter_map(|f| f.parse::<u32>().ok())
    {
        let Ok(target) = src.read_link(&format!("/proc/{pid}/fd/{fd}")) else {
            continue;
        };
        if !target.is_absolute() || ["/dev/", "/proc/", "/sys/"].iter().any(|p| target.starts_with(p)) {
            continue; // pipe:[..], socket:[..], anon_inode:..., device nodes, pseudo files
        }
        let info = fdinfo(src, pid, fd);
        let (Some(mnt_id), Some(ino)) =
            (info.get("mnt_id").and_then(|m| m.parse().ok()), info.get("ino").and_then(|i| i.parse().ok()))
        else {
            continue;
        };
        let flags = info.get("flags").and_then(|f| u32::from_str_radix(f, 8).ok()).unwrap_or(0);
        files.push(OpenFile {
            path: target,
            mnt_id,
            ino,
            read_write: flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32,
        });
    }
    files
}
