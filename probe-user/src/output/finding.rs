//! A finding in words: each rule's title, what the rule saw (the remedy is
//! output/remedy.rs's), and the finding as every view shows it (its raw values beside their
//! names, in the shape docs/json.md describes). The engine keeps raw
//! values; this is the one place that says them.

use std::{sync::Arc, time::Duration};

use probe_common::events::ReclaimKind;
use serde::Serialize;

use crate::{
    detect::{
        behaviour::KernelNote,
        finding::{Detail, Finding, LockHolder, Severity, StackSeen, ThreadSeen},
        index::MountRef,
    },
    events::decode::reclaim_kind_name,
    names::{self, GfpNames},
    output::remedy,
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
    /// The lock holders, as docs/json.md names them.
    #[serde(rename = "holders")]
    pub lock_holders: Vec<LockHolder>,
    pub chain: Vec<String>,
    pub remedy: String,
    /// How the running kernel changes what the finding foretells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_note: Option<String>,
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
            title: title(&f.rule).to_owned(),
            servicer: ServicerView {
                name: s.name.clone(),
                comm: s.comm.clone(),
                tgid: s.tgid,
                tid: s.tid,
                flags: names::task_flags(s.task_flags),
                protection: format!("{:?}", s.protection()),
            },
            upper_fs: f.upper_fs.as_ref().map(FsView::of),
            device: f.device.to_string(),
            backing_file: f.backing_file.clone(),
            lower_fs: f.lower_fs.as_ref().map(FsView::of),
            bottom_fs: f.bottom_fs.as_ref().map(FsView::of),
            gfp: gfp.decode(u64::from(f.gfp)),
            gfp_raw: f.gfp,
            upper_inflight: f.upper_inflight,
            detail: detail(f, gfp),
            stack: Arc::clone(&f.stack),
            threads: f.threads.clone(),
            threads_folded: f.threads_folded,
            stacks: f.stacks.clone(),
            stacks_folded: f.stacks_folded,
            lock_holders: f.lock_holders.clone(),
            chain: f.chain.clone(),
            remedy: remedy::for_finding(s),
            kernel_note: f.kernel_note.map(|n| kernel_note(n).to_owned()),
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

/// A kernel note in words.
fn kernel_note(n: KernelNote) -> &'static str {
    match n {
        KernelNote::FuseWritebackNotAwaited => {
            "this kernel has AS_WRITEBACK_MAY_DEADLOCK_ON_RECLAIM (Linux 6.16): its legacy-memcg reclaim no longer \
             waits on the writeback of the FUSE mount's own pages when the mount uses writeback_cache. That closes \
             the wait on the FUSE file under the device, not the wait on the filesystem stacked above it, whose \
             writeback still needs this daemon; shrinkers (RS101) and dirty throttling (RS002) are untouched too"
        }
    }
}

/// Each rule's one-line title, by id (docs/rules.md says more).
const TITLES: &[(&str, &str)] = &[
    ("RS001", "servicer of a stacked device reclaims with __GFP_FS while the filesystem above is busy"),
    ("RS002", "servicer of a stacked device is dirty-throttled without PF_LOCAL_THROTTLE"),
    ("RS101", "reclaim in a servicer calls the shrinker of the filesystem it serves"),
    ("RS102", "reclaim in a servicer waits on writeback of the device it serves"),
    ("RS103", "reclaim in a servicer writes a folio of the filesystem it serves"),
    ("RS201", "servicer blocked, in reclaim or dirty throttling, on the I/O it is meant to complete"),
    ("RS301", "servicer of a stacked device killed by the OOM killer: the filesystems above it now fail I/O"),
];

/// The title of rule `id` (a trace from a newer agent may name one this
/// build does not know: then the id itself).
pub fn title(id: &str) -> &str {
    TITLES.iter().find(|(r, _)| *r == id).map_or(id, |(_, t)| t)
}

/// What the rule saw at the first sighting, with gfp masks named by `gfp`.
pub fn detail(f: &Finding, gfp: &GfpNames) -> String {
    let secs = |ns: &u64| Duration::from_nanos(*ns).as_secs_f64();
    match &f.detail {
        Detail::Reclaim { kind, order } => {
            let what = ReclaimKind::from_u32(*kind).map_or("reclaim", |_| reclaim_kind_name(*kind));
            format!("{what} reclaim of order {order} with {}", gfp.decode(u64::from(f.gfp)))
        }
        Detail::DirtyThrottle { bdi, dirty, limit, cgroup_ino } => {
            let domain = match cgroup_ino {
                0 | 1 => "the machine's".to_owned(),
                ino => format!("its memory cgroup's (ino {ino})"),
            };
            let upper = f.upper_fs.as_ref().map(|m| format!("the {} on {}", m.fs_type, m.dev));
            format!(
                "balance_dirty_pages() paused it writing to bdi {bdi}: {dirty} of {domain} dirty pages, limit \
                 {limit}; among them may be {} it must write back itself",
                upper.as_deref().unwrap_or("the filesystem above")
            )
        }
        Detail::Shrinker { fs_type, sb } => format!("super_cache_scan of the {fs_type} super block on {sb}"),
        Detail::WritebackWait { dev, ino, index } => {
            format!("folio_wait_writeback on {dev} (ino {ino}, index {index}) from inside reclaim")
        }
        Detail::Pageout { dev, ino } => format!("pageout() of ino {ino} on {dev}"),
        Detail::BlockedInReclaim { waited_on, blocked_ns } => {
            let on = waited_on.map(|d| format!(" on writeback of {d}")).unwrap_or_default();
            format!("blocked in D state inside reclaim{on} for {:.1} s", secs(blocked_ns))
        }
        Detail::BlockedThrottled { blocked_ns } => format!(
            "blocked in D state in balance_dirty_pages() for {:.1} s: the dirty pages it waits on include those \
             of the filesystem above, which only it can write back",
            secs(blocked_ns)
        ),
        Detail::OomKilled { serves } => format!(
            "the OOM killer chose {} (pid {}), which completes the I/O of {serves}",
            f.servicer.comm, f.servicer.tgid
        ),
        Detail::Recorded(words) => words.clone(),
    }
}
