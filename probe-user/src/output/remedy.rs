//! The remedy table: what a servicer must change so that reclaim in it
//! cannot recurse into the storage it serves, and what the known servicer
//! programs do about it, in words. Topology and the rules decide which fix
//! applies; this is the one place that says it. `Remedy` and `Note`
//! serialize as these words, so audit's JSON carries the text it prints.

use std::fmt;

use probe_common::flags::PF_KTHREAD;
use serde::{Serialize, Serializer};

use crate::{
    detect::finding::ServicerDesc,
    topology::{KernelTarget, KnownServicer, Note, Remedy},
};

/// What a finding's servicer must change (the rules see one thread, not
/// the whole process that audit judges).
pub fn for_finding(s: &ServicerDesc) -> String {
    let name = &s.name;
    if s.task_flags & PF_KTHREAD != 0 {
        format!(
            "{name} is a kernel thread: submit its I/O under memalloc_noio_save()/memalloc_noio_restore(), \
             as loop_process_work() does"
        )
    } else {
        format!(
            "call prctl(PR_SET_IO_FLUSHER, 1) in {name} (pid {}) in every thread that serves I/O: it sets \
             PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE so its allocations cannot recurse into filesystems or block I/O \
             (needs CAP_SYS_RESOURCE)",
            s.tgid
        )
    }
}

/// What a known program does about PR_SET_IO_FLUSHER, as its source shows.
fn does(k: KnownServicer) -> &'static str {
    match k {
        KnownServicer::TcmuRunner => {
            "tcmu-runner sets no reclaim scope: it never calls prctl() (Debian's 1.5.4 binary does not even import it)"
        }
        KnownServicer::Nbd => {
            "nbd-server and nbd-client set no reclaim scope: neither calls prctl() (Debian's 3.24 binaries do not import it)"
        }
        KnownServicer::Iscsid => "iscsid sets PR_SET_IO_FLUSHER since open-iscsi 2.1.5",
        KnownServicer::Ublk => {
            "libublk before 0.4.7 and ublksrv before 1.8 call prctl(PR_SET_IO_FLUSHER, 0), which clears the flag; \
             later ones call it with 1"
        }
        KnownServicer::Qemu => "QEMU sets no reclaim scope for its I/O threads",
        KnownServicer::FuseDaemon => {
            "libfuse has no option to set PR_SET_IO_FLUSHER (libfuse issue #700 is open), and this daemon does not set it"
        }
        KnownServicer::Tgt => "tgtd sets no reclaim scope: tgt never calls prctl(PR_SET_IO_FLUSHER)",
        KnownServicer::Nbdkit => "nbdkit sets no reclaim scope: it never calls prctl(PR_SET_IO_FLUSHER)",
        KnownServicer::RbdNbd => {
            "rbd-nbd sets no reclaim scope (its source calls no prctl()); it serves the device over a socket pair \
             and talks to the OSDs, which may run on this node too"
        }
        KnownServicer::Spdk => "SPDK sets no reclaim scope: its reactors never call prctl(PR_SET_IO_FLUSHER)",
        KnownServicer::MayastorIoEngine => "Mayastor's io-engine sets PR_SET_IO_FLUSHER since openebs/mayastor PR #1911",
        KnownServicer::JuiceFs => "JuiceFS sets PR_SET_IO_FLUSHER since 1.3.0",
    }
}

/// What an in-kernel server's code does about reclaim (Linux 5.10 to 6.12).
fn kernel_target_does(k: KernelTarget) -> &'static str {
    match k {
        KernelTarget::Lio => {
            "LIO receives each connection's writes in its iscsi_trx thread, and the fileio and iblock backstores \
             submit them there under no memalloc scope"
        }
        KernelTarget::Nvmet => {
            "nvmet-tcp runs each queue's I/O in work items of shared kworkers (nvmet_tcp_wq, nvmet-buffered-io-wq \
             for a buffered file namespace) under no memalloc scope; an idle kworker's flags cannot show it, so the \
             verdict comes from the code"
        }
        KernelTarget::Knfsd => {
            "nfsd sets PF_LOCAL_THROTTLE while it writes for a client on this host (dirty-page throttling, not a \
             reclaim scope); its allocations keep __GFP_FS|__GFP_IO"
        }
    }
}

/// The fix for a known program when it is unprotected.
fn known_fix(k: KnownServicer) -> &'static str {
    match k {
        KnownServicer::TcmuRunner => {
            "patch tcmu-runner to call prctl(PR_SET_IO_FLUSHER, 1) before it starts its handler threads, \
             and run it with CAP_SYS_RESOURCE"
        }
        KnownServicer::Nbd => {
            "run the NBD server on another host, or patch it to call prctl(PR_SET_IO_FLUSHER, 1) in the \
             process that serves each connection (a forked child)"
        }
        KnownServicer::Iscsid => "upgrade open-iscsi to 2.1.5 or later, and give iscsid CAP_SYS_RESOURCE",
        KnownServicer::Ublk => "upgrade the ublk server (libublk 0.4.7+, ublksrv 1.8+), and give it CAP_SYS_RESOURCE",
        KnownServicer::Qemu => {
            "call prctl(PR_SET_IO_FLUSHER, 1) in QEMU's I/O threads (none of its options does), or serve the \
             export from outside the memory pressure: its own memory cgroup with room, or another host"
        }
        KnownServicer::FuseDaemon => {
            "patch the daemon to call prctl(PR_SET_IO_FLUSHER, 1) in every thread that serves requests \
             (libfuse's worker threads inherit it when it is set before fuse_session_loop_mt)"
        }
        KnownServicer::Tgt | KnownServicer::Nbdkit | KnownServicer::RbdNbd | KnownServicer::Spdk => {
            "start it through `reclaimscope exec --io-flusher -- CMD...` (the flag is inherited by every thread and \
             survives execve; needs CAP_SYS_RESOURCE), or patch it to call prctl(PR_SET_IO_FLUSHER, 1) before it \
             starts its threads"
        }
        KnownServicer::MayastorIoEngine => {
            "upgrade the io-engine to a release with PR #1911, and give it CAP_SYS_RESOURCE"
        }
        KnownServicer::JuiceFs => "upgrade JuiceFS to 1.3.0 or later, and give it CAP_SYS_RESOURCE",
    }
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remedy::NoneNeeded => f.write_str("none needed"),
            Remedy::LoopDriverScopes => f.write_str(
                "none needed: loop_process_work() runs every work item inside memalloc_noio_save() (drivers/block/loop.c)",
            ),
            Remedy::KernelScope => f.write_str(
                "wrap the kernel code that completes this I/O in a memalloc_noio_save()/memalloc_noio_restore() scope",
            ),
            Remedy::Known(k) => f.write_str(known_fix(*k)),
            Remedy::IoFlusherDaemon => f.write_str(
                "call prctl(PR_SET_IO_FLUSHER, 1) in the daemon before it creates threads or serves I/O (needs \
                 CAP_SYS_RESOURCE; the flag is per thread and inherited by threads created afterwards)",
            ),
            Remedy::IoFlusherThreads(tids) => write!(
                f,
                "call prctl(PR_SET_IO_FLUSHER, 1) in threads {} too, or before they are created (the flag is per thread)",
                joined(tids)
            ),
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (known, protected, judged_by) = match self {
            Note::LoopWorkItems => {
                return f.write_str("PF_MEMALLOC_NOIO is set per work item, so idle kworkers do not show it")
            }
            Note::KernelTarget(k) => return f.write_str(kernel_target_does(*k)),
            Note::Process { known, protected, judged_by } => (known, *protected, judged_by),
        };
        if let Some(k) = known {
            f.write_str(does(*k))?;
            match (k.sets_io_flusher(), protected) {
                (true, false) => f.write_str(
                    "; this one is unprotected all the same: an older release, or it lacks CAP_SYS_RESOURCE so its \
                     prctl() fails",
                )?,
                (false, true) => {
                    f.write_str("; this one is protected all the same: patched, or started inside a scope")?
                }
                _ => {}
            }
        }
        if !judged_by.is_empty() {
            if known.is_some() {
                f.write_str("; ")?;
            }
            write!(
                f,
                "judged by threads {} (queue threads waiting on their io_uring, and their io-wq workers); \
                 the other threads complete no I/O",
                joined(judged_by)
            )?;
        }
        Ok(())
    }
}

fn joined(tids: &[u32]) -> String {
    tids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

impl Serialize for Remedy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Note {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(known: KnownServicer, protected: bool) -> String {
        Note::Process { known: Some(known), protected, judged_by: Vec::new() }.to_string()
    }

    #[test]
    fn a_mismatch_is_explained() {
        assert!(note(KnownServicer::Iscsid, false).contains("older release"));
        assert!(!note(KnownServicer::Iscsid, true).contains("older"));
        assert!(note(KnownServicer::TcmuRunner, true).contains("patched"));
    }

    #[test]
    fn the_fix_names_the_threads() {
        assert!(Remedy::IoFlusherDaemon.to_string().starts_with("call prctl(PR_SET_IO_FLUSHER, 1) in the daemon"));
        assert!(Remedy::IoFlusherThreads(vec![2, 5]).to_string().contains("in threads 2, 5 too"));
        assert!(Remedy::KernelScope.to_string().contains("memalloc_noio_save()"));
        let both = Note::Process { known: Some(KnownServicer::Ublk), protected: true, judged_by: vec![7] };
        assert!(both.to_string().contains("with 1; judged by threads 7 (queue"), "{both}");
    }
}
