//! A finding as every view shows it: its raw values beside their names,
//! in the shape docs/json.md describes.

use std::sync::Arc;

use serde::Serialize;

use super::words;
use crate::{
    detect::{
        finding::{Finding, LockHolder, Severity, StackSeen, ThreadSeen},
        index::MountRef,
    },
    names::{self, GfpNames},
    topology::protection_of,
};

#[derive(Debug, Clone, Serialize)]
pub struct ServicerView {
    pub name: String,
    pub comm: String,
    pub tgid: u32,
    pub tid: u32,
    /// task_struct.flags as PF_* names.
    pub flags: String,
    pub protection: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsView {
    pub fs_type: String,
    pub mount_point: String,
    pub dev: String,
}

impl FsView {
    fn of(m: &MountRef) -> FsView {
        FsView { fs_type: m.fs_type.clone(), mount_point: m.mount_point.clone(), dev: m.dev.to_string() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FindingView {
    pub rule: String,
    pub severity: Severity,
    pub title: String,
    pub servicer: ServicerView,
    pub upper_fs: Option<FsView>,
    pub device: String,
    pub backing_file: Option<String>,
    pub lower_fs: Option<FsView>,
    pub bottom_fs: Option<FsView>,
    pub gfp: String,
    pub gfp_raw: u32,
    pub upper_inflight: Option<i64>,
    pub detail: String,
    pub stack: Arc<[String]>,
    pub threads: Vec<ThreadSeen>,
    pub threads_folded: u64,
    pub stacks: Vec<StackSeen>,
    pub stacks_folded: u64,
    pub holders: Vec<LockHolder>,
    pub chain: Vec<String>,
    pub remedy: String,
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u64,
}

impl FindingView {
    /// `f` in words, its gfp masks named by `gfp` (the recording kernel's
    /// names, for a trace).
    pub fn new(f: &Finding, gfp: &GfpNames) -> FindingView {
        let s = &f.servicer;
        FindingView {
            rule: f.rule.clone(),
            severity: f.severity,
            title: words::title(&f.rule).to_owned(),
            servicer: ServicerView {
                name: s.name.clone(),
                comm: s.comm.clone(),
                tgid: s.tgid,
                tid: s.tid,
                flags: names::task_flags(s.task_flags),
                protection: format!("{:?}", protection_of(s.task_flags)),
            },
            upper_fs: f.upper_fs.as_ref().map(FsView::of),
            device: f.device.to_string(),
            backing_file: f.backing_file.clone(),
            lower_fs: f.lower_fs.as_ref().map(FsView::of),
            bottom_fs: f.bottom_fs.as_ref().map(FsView::of),
            gfp: gfp.decode(u64::from(f.gfp)),
            gfp_raw: f.gfp,
            upper_inflight: f.upper_inflight,
            detail: words::detail(f, gfp),
            stack: Arc::clone(&f.stack),
            threads: f.threads.clone(),
            threads_folded: f.threads_folded,
            stacks: f.stacks.clone(),
            stacks_folded: f.stacks_folded,
            holders: f.holders.clone(),
            chain: f.chain.clone(),
            remedy: words::remedy(s),
            first_ns: f.first_ns,
            last_ns: f.last_ns,
            count: f.count,
        }
    }

    /// Every finding of `all`, in words.
    pub fn all(all: &[Finding], gfp: &GfpNames) -> Vec<FindingView> {
        all.iter().map(|f| FindingView::new(f, gfp)).collect()
    }
}
