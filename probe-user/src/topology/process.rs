//! The servicer-process walk: from a process that serves a device, its
//! threads and their scope flags, its program and the data it keeps open,
//! and the verdict on it. Every transport's discovery ends here once it
//! has found the pid.

use super::model::Dev;
use super::model::Mount;
use super::model::{
    Confidence, DataFile, KnownServicer, Note, Protection, Remedy, Servicer, ServicerKind, ServicerThread,
};
use super::procs::{self, Holders};
use super::serving;
use super::source::Source;
use probe_common::flags::PF_KTHREAD;

impl Servicer {
    /// A process servicer; `None` when the process is gone.
    pub(crate) fn process(
        src: &Source,
        mounts: &[Mount],
        kind: ServicerKind,
        pid: u32,
        serves: Dev,
        serves_name: String,
        confidence: Confidence,
    ) -> Option<Servicer> {
        let threads = procs::threads(src, pid);
        let main = threads.iter().find(|t| t.tid == pid).or(threads.first())?;
        let kernel = main.flags & PF_KTHREAD != 0;
        let comm = procs::comm(src, pid).unwrap_or_else(|| main.comm.clone());
        let serving_tids = serving::threads(src, kind, pid, &threads);
        let program = program(src, pid);
        let known = program.as_deref().and_then(KnownServicer::of_exe);
        let (protection, remedy, note) = verdict(kernel, known, &threads, &serving_tids);
        Some(Servicer {
            kind,
            tgid: Some(pid),
            comm,
            program,
            serves,
            serves_name,
            threads,
            serving_tids,
            protection,
            kernel,
            confidence,
            data_files: data_files(src, mounts, pid),
            under_mounts: Vec::new(),
            supports: Vec::new(),
            remedy,
            note,
        })
    }
}

/// The full program name (comm is cut at 15 bytes): readlink of
/// /proc/PID/exe prints kernel state, safe even on a wedged mount.
fn program(src: &Source, pid: u32) -> Option<String> {
    let exe = src.read_link(&format!("/proc/{pid}/exe")).ok()?;
    exe.file_name().map(|n| n.to_string_lossy().trim_end_matches(" (deleted)").to_owned())
}

/// The regular files `pid` keeps open read-write, on the mounts they are on.
fn data_files(src: &Source, mounts: &[Mount], pid: u32) -> Vec<DataFile> {
    procs::open_files(src, pid)
        .into_iter()
        .filter(|f| f.read_write)
        .filter_map(|f| {
            let m = mounts.iter().find(|m| m.mount_id == f.mnt_id)?;
            Some(DataFile {
                dev: m.dev,
                mount_point: m.mount_point.clone(),
                fs_type: m.fs_type.clone(),
                path: f.path,
                ino: f.ino,
            })
        })
        .collect()
}

/// What the serving threads (all of `threads` when `serving_tids` is
/// empty) all have, what to change, and what explains it.
fn verdict(
    kernel: bool,
    known: Option<KnownServicer>,
    threads: &[ServicerThread],
    serving_tids: &[u32],
) -> (Protection, Remedy, Option<Note>) {
    let serving: Vec<ServicerThread> =
        threads.iter().filter(|t| serving_tids.is_empty() || serving_tids.contains(&t.tid)).cloned().collect();
    let protection =
        serving.iter().map(|t| t.protection).min_by_key(|p| p.strength()).unwrap_or(Protection::Unprotected);
    let remedy = match known {
        Some(k) if !protection.is_protected() && !kernel => Remedy::Known(k),
        _ => remedy(kernel, protection, &serving),
    };
    let note = (known.is_some() || !serving_tids.is_empty()).then(|| Note::Process {
        known,
        protected: protection.is_protected(),
        judged_by: serving_tids.to_vec(),
    });
    (protection, remedy, note)
}

/// What to change so that reclaim in this servicer cannot recurse.
fn remedy(kernel: bool, protection: Protection, threads: &[ServicerThread]) -> Remedy {
    if protection.is_protected() {
        return Remedy::NoneNeeded;
    }
    if kernel {
        return Remedy::KernelScope;
    }
    let bare: Vec<u32> = threads.iter().filter(|t| !t.protection.is_protected()).map(|t| t.tid).collect();
    if bare.len() == threads.len() {
        Remedy::IoFlusherDaemon
    } else {
        Remedy::IoFlusherThreads(bare)
    }
}

/// One servicer per process holding `node` open.
pub(crate) fn holder_servicers(
    src: &Source,
    mounts: &[Mount],
    holders: &Holders,
    node: &str,
    kind: ServicerKind,
    serves: Dev,
    serves_name: String,
) -> Vec<Servicer> {
    let mut pids: Vec<u32> = holders.of(node).iter().map(|(pid, _)| *pid).collect();
    pids.dedup();
    let why = |n: usize| {
        let also = if n > 1 { format!(" (one of {n} holders)") } else { String::new() };
        Confidence::Certain { why: format!("holds {node} open{also}") }
    };
    pids.iter()
        .filter_map(|&pid| Servicer::process(src, mounts, kind, pid, serves, serves_name.clone(), why(pids.len())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::model::protection_of;
    use probe_common::flags::{PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO};

    fn thread(tid: u32, flags: u32) -> ServicerThread {
        ServicerThread { tid, comm: "t".into(), flags, protection: protection_of(flags) }
    }

    #[test]
    fn remedy_names_the_fix() {
        let all_bare = [thread(1, 0), thread(2, 0)];
        assert_eq!(remedy(false, Protection::Unprotected, &all_bare), Remedy::IoFlusherDaemon);
        let some = [thread(1, PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE), thread(2, 0)];
        assert_eq!(remedy(false, Protection::Unprotected, &some), Remedy::IoFlusherThreads(vec![2]));
        assert_eq!(remedy(true, Protection::Unprotected, &all_bare), Remedy::KernelScope);
        assert_eq!(remedy(false, Protection::IoFlusher, &some[..1]), Remedy::NoneNeeded);
    }
}
