//! What the agent reports: one finding per (rule, servicer process, upper
//! filesystem), counted on repeat, with the threads and distinct kernel
//! stacks that made it. Findings hold raw values; `output/` renders them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::holds::Held;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Hazard,
    Recursion,
    Deadlock,
    /// The stack is already failing I/O (its servicer is gone).
    Failure,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Hazard => "hazard",
            Severity::Recursion => "recursion",
            Severity::Deadlock => "deadlock",
            Severity::Failure => "failure",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicerDesc {
    /// The program's full name (/proc/PID/exe), where the topology knows
    /// it; else the comm.
    #[serde(default)]
    pub name: String,
    pub comm: String,
    pub tgid: u32,
    /// The first thread seen (all of them: `Finding::threads`).
    pub tid: u32,
    /// task_struct.flags as decoded PF_* names.
    pub flags: String,
    pub protection: String,
}

/// One servicer thread that made the finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSeen {
    pub tid: u32,
    pub comm: String,
    /// task_struct.flags when last seen.
    pub flags_raw: u32,
    pub count: u64,
}

/// One distinct kernel stack (by function names) and how often it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSeen {
    pub frames: Arc<[String]>,
    pub count: u64,
    /// The hash of its function names, computed once: every sighting is
    /// matched against the kept stacks.
    #[serde(skip)]
    pub hash: u64,
}

/// A task blocked while it holds something in the upper filesystem: what
/// the servicer's reclaim would wait for inside that filesystem, the other
/// half of the cycle (agent/lock_holders.rs says how it is found).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    /// What it holds, from the functions on its kernel stack.
    pub held: Vec<Held>,
    /// The inode of the file its system call works on.
    pub ino: u64,
    /// The innermost function on its stack: where it is blocked.
    pub blocked_in: Option<String>,
    /// It was seen blocked, holding this, this many ms ago (0: in the
    /// latest look).
    #[serde(default)]
    pub seen_ms_ago: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsDesc {
    pub fs_type: String,
    pub mount_point: String,
    pub dev: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub title: String,
    pub servicer: ServicerDesc,
    pub upper_fs: Option<FsDesc>,
    /// The stacked device the servicer completes I/O for.
    pub device: String,
    pub backing_file: Option<String>,
    pub lower_fs: Option<FsDesc>,
    pub bottom_fs: Option<FsDesc>,
    pub gfp: String,
    pub gfp_raw: u32,
    /// Requests in flight on the device when seen (None: not known).
    pub upper_inflight: Option<i64>,
    pub detail: String,
    /// The first kernel stack seen (all distinct ones: `stacks`).
    pub stack: Arc<[String]>,
    /// Every servicer thread that made it, at most `MAX_THREADS`.
    #[serde(default)]
    pub threads: Vec<ThreadSeen>,
    /// Sightings by threads beyond `MAX_THREADS`.
    #[serde(default)]
    pub threads_folded: u64,
    /// Distinct kernel stacks, at most `MAX_STACKS`.
    #[serde(default)]
    pub stacks: Vec<StackSeen>,
    /// Sightings whose stack was new beyond `MAX_STACKS`.
    #[serde(default)]
    pub stacks_folded: u64,
    /// Who holds what in the upper filesystem while blocked, when last seen.
    #[serde(default)]
    pub holders: Vec<LockHolder>,
    /// Deadlock: the tasks waiting on the servicer, up the stack.
    pub chain: Vec<String>,
    pub remedy: String,
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u64,
}

/// Bounds on what one finding keeps: a daemon's thread churn (qemu and
/// libfuse start and stop workers) must not grow it without end.
pub const MAX_THREADS: usize = 32;
pub const MAX_STACKS: usize = 8;
