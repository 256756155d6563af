//! Findings of trace format 1, which held words beside raw values: the
//! gfp mask and task flags named, the detail in prose, the title and the
//! remedy. Read back, each becomes a [`Finding`] with the raw values
//! recovered from those words and its prose kept as `Detail::Recorded`.

use std::sync::Arc;

use serde::Deserialize;

use crate::{
    detect::{
        finding::{Detail, Finding, LockHolder, ServicerDesc, Severity, StackSeen, ThreadSeen},
        index::MountRef,
    },
    names::task::task_flags_named,
    topology::Dev,
};

#[derive(Deserialize)]
struct FsV1 {
    fs_type: String,
    mount_point: String,
    dev: String,
}

#[derive(Deserialize)]
struct ServicerV1 {
    #[serde(default)]
    name: String,
    comm: String,
    tgid: u32,
    tid: u32,
    /// PF_* names.
    flags: String,
}

/// A format 1 finding record (what it holds besides is only words).
#[derive(Deserialize)]
pub(super) struct FindingV1 {
    rule: String,
    severity: Severity,
    servicer: ServicerV1,
    upper_fs: Option<FsV1>,
    device: String,
    backing_file: Option<String>,
    lower_fs: Option<FsV1>,
    bottom_fs: Option<FsV1>,
    gfp_raw: u32,
    upper_inflight: Option<i64>,
    detail: String,
    stack: Arc<[String]>,
    #[serde(default)]
    threads: Vec<ThreadSeen>,
    #[serde(default)]
    threads_folded: u64,
    #[serde(default)]
    stacks: Vec<StackSeen>,
    #[serde(default)]
    stacks_folded: u64,
    #[serde(default)]
    holders: Vec<LockHolder>,
    chain: Vec<String>,
    first_ns: u64,
    last_ns: u64,
    count: u64,
}

fn dev(s: &str) -> Result<Dev, String> {
    Dev::parse(s).ok_or_else(|| format!("a format 1 finding names the device `{s}`"))
}

fn mount(fs: Option<FsV1>) -> Result<Option<MountRef>, String> {
    fs.map(|f| Ok(MountRef { dev: dev(&f.dev)?, fs_type: f.fs_type, mount_point: f.mount_point })).transpose()
}

impl FindingV1 {
    pub(super) fn into_finding(self) -> Result<Finding, String> {
        let s = self.servicer;
        let task_flags = task_flags_named(&s.flags)
            .ok_or_else(|| format!("a format 1 finding names the task flags `{}`", s.flags))?;
        Ok(Finding {
            rule: self.rule,
            severity: self.severity,
            servicer: ServicerDesc { name: s.name, comm: s.comm, tgid: s.tgid, tid: s.tid, task_flags },
            upper_fs: mount(self.upper_fs)?,
            device: dev(&self.device)?,
            backing_file: self.backing_file,
            lower_fs: mount(self.lower_fs)?,
            bottom_fs: mount(self.bottom_fs)?,
            gfp: self.gfp_raw,
            upper_inflight: self.upper_inflight,
            detail: Detail::Recorded(self.detail),
            stack: self.stack,
            threads: self.threads,
            threads_folded: self.threads_folded,
            stacks: self.stacks,
            stacks_folded: self.stacks_folded,
            lock_holders: self.holders,
            chain: self.chain,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            count: self.count,
            kernel_note: None,
        })
    }
}
