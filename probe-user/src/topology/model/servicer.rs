//! Servicers: the tasks that complete a stacked device's I/O, and whether
//! memory reclaim inside them can recurse into the filesystem above.
//!
//! A servicer that allocates memory with __GFP_FS|__GFP_IO can enter reclaim,
//! and reclaim may wait for writeback of a page of the very filesystem whose
//! I/O the servicer is supposed to complete: a deadlock. The kernel's scoped
//! allocation flags take those bits out of every allocation of a task
//! (current_gfp_context()), so a servicer is protected when each of its
//! threads carries one.

use super::dev::Dev;
use super::known::KnownServicer;
use super::link::KernelTarget;
use probe_common::flags::{PF_LOCAL_THROTTLE, PF_MEMALLOC_NOFS, PF_MEMALLOC_NOIO};
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// How a task's allocations are scoped against reclaim recursion.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    /// PF_MEMALLOC_NOIO: no I/O and no filesystem callbacks in reclaim.
    NoIo,
    /// PF_MEMALLOC_NOFS: reclaim neither enters nor waits on filesystems.
    NoFs,
    /// PR_SET_IO_FLUSHER: PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE.
    IoFlusher,
    Unprotected,
}

impl Protection {
    pub fn is_protected(self) -> bool {
        self != Protection::Unprotected
    }

    /// Weakest first, to reduce a set of threads to the protection they all have.
    pub(crate) fn strength(self) -> u8 {
        match self {
            Protection::Unprotected => 0,
            Protection::NoFs => 1,
            Protection::NoIo => 2,
            Protection::IoFlusher => 3,
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protection::NoIo => "protected (PF_MEMALLOC_NOIO)",
            Protection::NoFs => "protected (PF_MEMALLOC_NOFS)",
            Protection::IoFlusher => "protected (PR_SET_IO_FLUSHER: NOIO|LOCAL_THROTTLE)",
            Protection::Unprotected => "UNPROTECTED",
        })
    }
}

/// Decodes the scope bits of a task's flags. PF_MEMALLOC is deliberately
/// ignored: the kernel sets it *while* a task runs direct reclaim, so a
/// servicer stuck in reclaim shows it, and counting it would call a
/// deadlocked daemon protected.
pub fn protection_of(task_flags: u32) -> Protection {
    let noio = task_flags & PF_MEMALLOC_NOIO != 0;
    if noio && task_flags & PF_LOCAL_THROTTLE != 0 {
        Protection::IoFlusher
    } else if noio {
        Protection::NoIo
    } else if task_flags & PF_MEMALLOC_NOFS != 0 {
        Protection::NoFs
    } else {
        Protection::Unprotected
    }
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ServicerKind {
    /// The loop driver's kernel workers.
    KernelLoop,
    /// A FUSE daemon.
    Fuse,
    /// The task that connected an nbd device and serves it itself (qemu-nbd -c).
    Nbd,
    /// The process at the other end of an nbd device's socket (nbd-server).
    NbdServer,
    /// A ublk server (holds /dev/ublkcN).
    Ublk,
    /// A tcmu handler such as tcmu-runner (holds /dev/uioN of a tcm-user device).
    Tcmu,
    /// What serves an iSCSI session's connection on this host: a userspace
    /// target (tgtd) or LIO's kernel threads.
    IscsiTarget,
    /// What serves an NVMe/TCP controller's connection on this host: a
    /// userspace target (SPDK) or the kernel's nvmet.
    NvmeTarget,
    /// What serves an NFS mount from this host: knfsd's threads or a
    /// userspace server (nfs-ganesha).
    NfsServer,
    /// Named with --servicer.
    Named,
}

impl fmt::Display for ServicerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServicerKind::KernelLoop => "kernel loop worker",
            ServicerKind::Fuse => "FUSE daemon",
            ServicerKind::Nbd => "nbd client",
            ServicerKind::NbdServer => "NBD server",
            ServicerKind::Ublk => "ublk server",
            ServicerKind::Tcmu => "tcmu handler",
            ServicerKind::IscsiTarget => "iSCSI target",
            ServicerKind::NvmeTarget => "NVMe/TCP target",
            ServicerKind::NfsServer => "NFS server",
            ServicerKind::Named => "named servicer",
        })
    }
}

/// How sure discovery is that this task serves that device.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "level", rename_all = "snake_case")]
pub enum Confidence {
    /// The kernel says so (sysfs pid, fdinfo's fuse_connection, the only
    /// holder of the device node).
    Certain { why: String },
    /// Named with --servicer.
    Named,
    /// One of several processes holding /dev/fuse; the kernel does not say which.
    Ambiguous { candidates: usize },
}

impl fmt::Display for Confidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Confidence::Certain { why } => write!(f, "certain: {why}"),
            Confidence::Named => f.write_str("named with --servicer"),
            Confidence::Ambiguous { candidates } => write!(f, "ambiguous: {candidates} candidates"),
        }
    }
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ServicerThread {
    pub tid: u32,
    pub comm: String,
    /// Field 9 of /proc/PID/task/TID/stat.
    pub flags: u32,
    pub protection: Protection,
}

/// A file a servicer keeps open read-write: where it stores what it serves.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    pub path: PathBuf,
    /// st_dev of the filesystem holding it.
    pub dev: Dev,
    pub ino: u64,
    /// Mount point and type of that filesystem.
    pub mount_point: PathBuf,
    pub fs_type: String,
}

#[derive(Serialize, Clone, Debug)]
pub struct Servicer {
    pub kind: ServicerKind,
    /// None for kernel workers that belong to no process.
    pub tgid: Option<u32>,
    pub comm: String,
    /// The executable's file name, in full (None for kernel workers).
    pub program: Option<String>,
    /// The device (or FUSE filesystem) whose I/O it completes; [`Dev::NONE`] when unknown.
    pub serves: Dev,
    /// "loop0 (7:0)", "FUSE /x/fuse.img (connection 39)".
    pub serves_name: String,
    /// Every thread (empty for kernel workers, see `protection`).
    pub threads: Vec<ServicerThread>,
    /// The threads that complete the device's I/O, when only some do (a
    /// ublk server's queue threads); empty when every thread counts.
    pub serving_tids: Vec<u32>,
    /// What all serving threads have: unprotected when any one is. For
    /// kernel loop workers, what the driver guarantees per work item (an
    /// idle kworker's flags say nothing).
    pub protection: Protection,
    /// The servicer is a kernel thread (PF_KTHREAD).
    pub kernel: bool,
    pub confidence: Confidence,
    pub data_files: Vec<DataFile>,
    /// Mount points of block-device filesystems whose I/O completes through it.
    pub under_mounts: Vec<PathBuf>,
    /// Stacked block devices whose I/O completes through it.
    pub supports: Vec<Dev>,
    pub remedy: Remedy,
    pub note: Option<Note>,
}

/// Which change stops reclaim in a servicer from recursing into what it
/// serves. Serialized and printed in words by output/remedy.rs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Every serving thread is protected.
    NoneNeeded,
    /// A kernel loop worker: the driver scopes each work item itself.
    LoopDriverScopes,
    /// An unprotected kernel thread: scope the kernel code that completes the I/O.
    KernelScope,
    /// An unprotected program whose own fix is known.
    Known(KnownServicer),
    /// No serving thread is protected: PR_SET_IO_FLUSHER before any starts.
    IoFlusherDaemon,
    /// These serving threads lack the flag that others have.
    IoFlusherThreads(Vec<u32>),
}

/// What explains a servicer's verdict beyond its threads' flags.
/// Serialized and printed in words by output/remedy.rs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// Loop workers carry PF_MEMALLOC_NOIO only while they run a work item.
    LoopWorkItems,
    /// An in-kernel server: what its code does about reclaim.
    KernelTarget(KernelTarget),
    /// A recognised program (its verdict is `protected`), and the threads
    /// the verdict was judged by when only some serve I/O.
    Process { known: Option<KnownServicer>, protected: bool, judged_by: Vec<u32> },
}

impl Servicer {
    /// "qemu-storage-da (pid 42)" or "kworker (workqueue loop0)".
    pub fn label(&self) -> String {
        match self.tgid {
            Some(pid) => format!("{} (pid {pid})", self.comm),
            None => self.comm.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_scope_flags() {
        assert_eq!(protection_of(0x0040_0100), Protection::Unprotected);
        assert_eq!(protection_of(PF_MEMALLOC_NOIO), Protection::NoIo);
        assert_eq!(protection_of(PF_MEMALLOC_NOFS), Protection::NoFs);
        assert_eq!(protection_of(PF_MEMALLOC_NOIO | PF_MEMALLOC_NOFS), Protection::NoIo);
        assert_eq!(protection_of(PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE | 0x40), Protection::IoFlusher);
        // LOCAL_THROTTLE alone (nfsd) does not scope allocations.
        assert_eq!(protection_of(PF_LOCAL_THROTTLE), Protection::Unprotected);
        // In direct reclaim right now: not a protection.
        assert_eq!(protection_of(probe_common::flags::PF_MEMALLOC), Protection::Unprotected);
    }
}
