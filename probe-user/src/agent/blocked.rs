//! Which servicer threads sit in D state, for how long, and who waits
//! behind them. Read from /proc: the scheduler has no cheaper answer.

use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

use crate::detect::holds::function;

/// Kernel functions that place a blocked task in the storage stack.
const STACK_MARKERS: &[&str] = &[
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

#[derive(Default)]
pub struct BlockedTracker {
    since: HashMap<u32, Instant>,
}

/// State (field 3) and task flags (field 9) of /proc/TID/stat.
fn stat_of(tid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    // comm may hold spaces and parentheses: the fields follow the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let flags = fields.nth(5)?.parse().ok()?;
    Some((state, flags))
}

pub fn state_of(tid: u32) -> Option<char> {
    stat_of(tid).map(|(s, _)| s)
}

fn comm_of(path: &str) -> String {
    fs::read_to_string(format!("{path}/comm")).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Kernel stack of a task, innermost first, as function names.
pub fn kernel_stack(path: &str) -> Vec<String> {
    fs::read_to_string(format!("{path}/stack"))
        .map(|s| s.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_owned).collect())
        .unwrap_or_default()
}

impl BlockedTracker {
    /// How long `tid` has been seen continuously in D state, and its task
    /// flags now (None: not in D).
    pub fn observe(&mut self, tid: u32) -> Option<(Duration, u32)> {
        match stat_of(tid) {
            Some(('D', flags)) => Some((self.since.entry(tid).or_insert_with(Instant::now).elapsed(), flags)),
            _ => {
                self.since.remove(&tid);
                None
            }
        }
    }

    pub fn forget_others(&mut self, live: &[u32]) {
        self.since.retain(|t, _| live.contains(t));
    }
}

/// A task in D state, with its kernel stack.
pub struct BlockedTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// task_struct.flags (field 9 of its stat).
    pub flags: u32,
    /// Innermost first, as /proc prints them ("xfs_ilock+0x3a/0x90").
    pub frames: Vec<String>,
}

/// Every task in D state on the host now. One walk of /proc serves both the
/// waiting chain and the lock holders of a check: the state is read for
/// every thread, the stack only for blocked ones.
pub fn blocked_tasks() -> Vec<BlockedTask> {
    let Ok(procs) = fs::read_dir("/proc") else { return Vec::new() };
    blocked_in(procs.flatten().filter_map(|p| p.file_name().to_str().and_then(|s| s.parse::<u32>().ok())))
}

/// The threads of the processes `pids` that are in D state now.
pub fn blocked_in(pids: impl IntoIterator<Item = u32>) -> Vec<BlockedTask> {
    let mut out = Vec::new();
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Some(('D', flags)) = stat_of(tid) else { continue };
            let path = format!("/proc/{pid}/task/{tid}");
            out.push(BlockedTask { pid, tid, comm: comm_of(&path), flags, frames: kernel_stack(&path) });
        }
    }
    out
}

/// The tasks in D state inside the storage stack, other than `except`: the
/// chain waiting on a blocked servicer ("dd[1234] folio_wait_writeback <- ...").
pub fn waiting_chain(blocked: &[BlockedTask], except: u32, limit: usize) -> Vec<String> {
    blocked
        .iter()
        .filter(|t| t.tid != except && t.frames.iter().any(|f| STACK_MARKERS.iter().any(|m| f.contains(m))))
        .take(limit)
        .map(|t| {
            let top: Vec<&str> = t.frames.iter().take(4).map(|f| function(f)).collect();
            format!("{}[{}] {}", t.comm, t.tid, top.join(" <- "))
        })
        .collect()
}
