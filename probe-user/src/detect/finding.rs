//! What the agent reports: one finding per (rule, servicer thread, stack),
//! counted on repeat.

use serde::{Deserialize, Serialize};

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
    pub comm: String,
    pub tgid: u32,
    pub tid: u32,
    /// task_struct.flags as decoded PF_* names.
    pub flags: String,
    pub protection: String,
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
    pub stack: Vec<String>,
    /// Deadlock: the tasks waiting on the servicer, up the stack.
    pub chain: Vec<String>,
    pub remedy: String,
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u64,
}
