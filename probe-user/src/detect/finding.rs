//! What the agent reports: one finding per (rule, servicer process, upper
//! filesystem), counted on repeat, with the threads and distinct kernel
//! stacks that made it. Findings hold raw values; `output/` renders them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{behaviour::KernelNote, holds::Held, index::MountRef};
use crate::topology::{protection_of, Dev, Protection};

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
    pub name: String,
    pub comm: String,
    pub tgid: u32,
    /// The first thread seen (all of them: `Finding::threads`).
    pub tid: u32,
    /// Its task_struct.flags at the first sighting.
    pub task_flags: u32,
}

impl ServicerDesc {
    /// The reclaim scope its flags gave it. Derived, not stored: the flags
    /// are the raw value, and a trace's finding records keep their shape.
    pub fn protection(&self) -> Protection {
        protection_of(self.task_flags)
    }
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

/// What the rule saw at the first sighting, as the kernel reported it;
/// `output/` says it in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// RS001: entered reclaim of this kind (`ReclaimKind`'s number) and
    /// order, with the finding's gfp mask.
    Reclaim { kind: u32, order: i32 },
    /// RS002: paused in balance_dirty_pages() writing to `bdi`, with
    /// `dirty` pages of a limit of `limit` in its domain: the machine's
    /// (`cgroup_ino` 0 or 1) or a memory cgroup's.
    DirtyThrottle { bdi: String, dirty: u64, limit: u64, cgroup_ino: u64 },
    /// RS101: super_cache_scan() of the `fs_type` super block on `sb`.
    Shrinker { fs_type: String, sb: Dev },
    /// RS102: folio_wait_writeback() on `dev` from inside reclaim.
    WritebackWait { dev: Dev, ino: u64, index: u64 },
    /// RS103: pageout() of a folio of inode `ino` on `dev`.
    Pageout { dev: Dev, ino: u64 },
    /// RS201: in D state inside reclaim for `blocked_ns`, having waited
    /// on writeback of `waited_on` when that was seen.
    BlockedInReclaim { waited_on: Option<Dev>, blocked_ns: u64 },
    /// RS201: in D state in balance_dirty_pages() for `blocked_ns`.
    BlockedThrottled { blocked_ns: u64 },
    /// RS301: the OOM killer chose the servicer of `serves`.
    OomKilled { serves: Dev },
    /// A finding read from a trace of format 1, whose findings held words:
    /// those it recorded.
    Recorded(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Its rule's id (`rules::ALL`).
    pub rule: String,
    pub severity: Severity,
    pub servicer: ServicerDesc,
    pub upper_fs: Option<MountRef>,
    /// The stacked device the servicer completes I/O for.
    pub device: Dev,
    pub backing_file: Option<String>,
    pub lower_fs: Option<MountRef>,
    pub bottom_fs: Option<MountRef>,
    /// The allocation's gfp mask (0: not known).
    pub gfp: u32,
    /// Requests in flight on the device when seen (None: not known).
    pub upper_inflight: Option<i64>,
    pub detail: Detail,
    /// The first kernel stack seen (all distinct ones: `stacks`).
    pub stack: Arc<[String]>,
    /// Every servicer thread that made it, at most `MAX_THREADS`.
    pub threads: Vec<ThreadSeen>,
    /// Sightings by threads beyond `MAX_THREADS`.
    pub threads_folded: u64,
    /// Distinct kernel stacks, at most `MAX_STACKS`.
    pub stacks: Vec<StackSeen>,
    /// Sightings whose stack was new beyond `MAX_STACKS`.
    pub stacks_folded: u64,
    /// Who holds what in the upper filesystem while blocked, when last seen.
    pub lock_holders: Vec<LockHolder>,
    /// Deadlock: the tasks waiting on the servicer, up the stack.
    pub chain: Vec<String>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u64,
    /// How the running kernel changes what it foretells (absent in traces
    /// recorded before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_note: Option<KernelNote>,
}

/// Bounds on what one finding keeps: a daemon's thread churn (qemu and
/// libfuse start and stop workers) must not grow it without end.
pub const MAX_THREADS: usize = 32;
pub const MAX_STACKS: usize = 8;

#[cfg(test)]
impl Finding {
    /// A finding of `rule` by qemu-storage-daemon (4242, thread 4243) on
    /// 7:0, seen once at time 0, for tests to adjust.
    pub(crate) fn sample(rule: &str, severity: Severity) -> Finding {
        Finding {
            rule: rule.into(),
            severity,
            servicer: ServicerDesc {
                name: "/usr/bin/qemu-storage-daemon".into(),
                comm: "qemu-storage-da".into(),
                tgid: 4242,
                tid: 4243,
                task_flags: 0,
            },
            upper_fs: None,
            device: Dev::new(7, 0),
            backing_file: None,
            lower_fs: None,
            bottom_fs: None,
            gfp: 0,
            upper_inflight: None,
            detail: Detail::Recorded(String::new()),
            stack: Arc::default(),
            threads: vec![],
            threads_folded: 0,
            stacks: vec![],
            stacks_folded: 0,
            lock_holders: vec![],
            chain: vec![],
            first_ns: 0,
            last_ns: 0,
            count: 1,
            kernel_note: None,
        }
    }
}
