//! Which servicer threads sit in D state, for how long, and who waits
//! behind them. Read from /proc: the scheduler has no cheaper answer.

use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

use crate::kernel::{
    markers::{function, STORAGE_FUNCTIONS},
    proc_task::{parse_stack, parse_stat},
};

#[derive(Default)]
pub struct BlockedTracker {
    since: HashMap<u32, Instant>,
}

/// State and task flags of a task, from /proc/TID/stat.
fn stat_of(tid: u32) -> Option<(char, u32)> {
    let s = parse_stat(&fs::read(format!("/proc/{tid}/stat")).ok()?)?;
    Some((s.state, s.flags))
}

pub fn state_of(tid: u32) -> Option<char> {
    stat_of(tid).map(|(s, _)| s)
}

fn comm_of(path: &str) -> String {
    fs::read_to_string(format!("{path}/comm")).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Kernel stack of a task, innermost first (empty: not readable, as when
/// the task has exited).
pub fn kernel_stack(path: &str) -> Vec<String> {
    fs::read_to_string(format!("{path}/stack")).map(|s| parse_stack(&s)).unwrap_or_default()
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
        .filter(|t| t.tid != except && t.frames.iter().any(|f| STORAGE_FUNCTIONS.iter().any(|m| f.contains(m))))
        .take(limit)
        .map(|t| {
            let top: Vec<&str> = t.frames.iter().take(4).map(|f| function(f)).collect();
            format!("{}[{}] {}", t.comm, t.tid, top.join(" <- "))
        })
        .collect()
}
