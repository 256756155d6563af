//! Servicers: the tasks that complete a stacked device's I/O, and whether
//! memory reclaim inside them can recurse into the filesystem above.
//!
//! A servicer that allocates memory with __GFP_FS|__GFP_IO can enter reclaim,
//! and reclaim may wait for writeback of a page of the very filesystem whose
//! I/O the servicer is supposed to complete: a deadlock. The kernel's scoped
//! allocation flags take those bits out of every allocation of a task
//! (current_gfp_context()), so a servicer is protected when each of its
//! threads carries one.

use super::block::{BlockDevice, DeviceKind};
use super::dev::Dev;
use super::known::KnownServicer;
use super::mountinfo::Mount;
use super::procs::{self, Holders};
use super::source::Source;
use probe_common::flags::{PF_KTHREAD, PF_LOCAL_THROTTLE, PF_MEMALLOC_NOFS, PF_MEMALLOC_NOIO};
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
    fn strength(self) -> u8 {
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

    /// The kernel loop worker of `d`, protected by the driver itself.
    fn kernel_loop(d: &BlockDevice) -> Servicer {
        Servicer {
            kind: ServicerKind::KernelLoop,
            tgid: None,
            comm: format!("kworker (workqueue {})", d.name),
            program: None,
            serves: d.dev,
            serves_name: d.label(),
            threads: Vec::new(),
            serving_tids: Vec::new(),
            protection: Protection::NoIo,
            kernel: true,
            confidence: Confidence::Certain {
                why: "the loop driver completes this device's I/O in its workqueue".into(),
            },
            data_files: Vec::new(),
            under_mounts: Vec::new(),
            supports: Vec::new(),
            remedy: Remedy::LoopDriverScopes,
            note: Some(Note::LoopWorkItems),
        }
    }

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
        let serving_tids = match kind {
            ServicerKind::Ublk => super::ublk::queue_threads(src, pid, &threads),
            _ => Vec::new(),
        };
        let serving: Vec<ServicerThread> =
            threads.iter().filter(|t| serving_tids.is_empty() || serving_tids.contains(&t.tid)).cloned().collect();
        let protection =
            serving.iter().map(|t| t.protection).min_by_key(|p| p.strength()).unwrap_or(Protection::Unprotected);
        let data_files = procs::open_files(src, pid)
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
            .collect();
        // The full program name (comm is cut at 15 bytes): readlink of
        // /proc/PID/exe prints kernel state, safe even on a wedged mount.
        let exe = src.read_link(&format!("/proc/{pid}/exe")).ok();
        let program = exe
            .as_ref()
            .and_then(|e| e.file_name())
            .map(|n| n.to_string_lossy().trim_end_matches(" (deleted)").to_owned());
        let known = program.as_deref().and_then(KnownServicer::of_exe);
        let remedy = match known {
            Some(k) if !protection.is_protected() && !kernel => Remedy::Known(k),
            _ => remedy(kernel, protection, &serving),
        };
        let note = (known.is_some() || !serving_tids.is_empty()).then(|| Note::Process {
            known,
            protected: protection.is_protected(),
            judged_by: serving_tids.clone(),
        });
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
            data_files,
            under_mounts: Vec::new(),
            supports: Vec::new(),
            remedy,
            note,
        })
    }
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

/// Kernel loop workers, nbd clients, ublk servers and tcmu handlers.
pub(crate) fn discover_block(
    src: &Source,
    mounts: &[Mount],
    devices: &[BlockDevice],
    holders: &Holders,
    warnings: &mut Vec<String>,
) -> Vec<Servicer> {
    let mut out = Vec::new();
    for d in devices {
        match d.kind {
            DeviceKind::Loop if d.backing_file.is_some() => out.push(Servicer::kernel_loop(d)),
            DeviceKind::Ublk => out.extend(super::ublk::servers(src, mounts, holders, d, warnings)),
            _ => {}
        }
    }
    out.extend(super::nbd::discover(src, mounts, devices, holders, warnings));
    out.extend(super::tcmu::discover(src, mounts, devices, holders, warnings));
    out
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
