//! Storage-stack topology: which filesystem sits on which device, what
//! backs each device, and which tasks complete its I/O (its *servicers*).
//!
//! The agent needs it to tell an upper filesystem from a lower one and to
//! know whose reclaim can deadlock the stack; `reclaimscope audit` prints it.
//! Discovery reads /proc and /sys only (plus one loop ioctl and stats of
//! files that are not on FUSE or network filesystems), so it works without
//! BPF, mostly without root, and never blocks on a wedged FUSE daemon.

mod block;
mod connection;
#[cfg(test)]
mod fakeproc;
mod fuse;
mod incremental;
mod iscsi;
mod kernel_target;
mod loopdev;
mod model;
mod mountinfo;
mod named;
mod nbd;
mod nfs;
mod nvme;
mod process;
mod procindex;
mod procs;
mod seen;
mod serving;
mod snapshot;
mod sockets;
mod source;
mod stack;
mod target_files;
mod tcmu;
mod transport;
mod ublk;

pub use fuse::connection_of;
pub use incremental::{Discoverer, Done};
pub use model::{
    protection_of, BackingFile, BlockDevice, Confidence, DataFile, Dev, DeviceKind, KernelTarget, KnownServicer, Link,
    Mount, Note, Protection, Remedy, Servicer, ServicerKind, ServicerThread, Topology, Transport,
};
pub use procindex::{Pass, Scanned};
pub use snapshot::capture;
pub use source::ANSWERS_FILE;
pub use stack::StackPath;

use anyhow::{bail, Context, Result};
use mountinfo::{mount_of_path, path_may_block};
use procindex::ProcIndex;
use sockets::Sockets;
use source::Source;
use std::path::{Path, PathBuf};

/// What discovery cannot see on its own, from the command line.
#[derive(Default, Clone, Debug)]
pub struct Extra {
    /// --servicer PID
    pub servicers: Vec<u32>,
    /// --backing-file PATH=DEV: PATH holds the data of block device DEV.
    pub backing_files: Vec<(PathBuf, Dev)>,
}

impl Topology {
    /// From this machine's /proc/self/mountinfo, /proc/partitions, /sys and /proc/*.
    pub fn discover(extra: &Extra) -> Result<Topology> {
        Self::discover_with(&Source::live(), extra)
    }

    /// From `root` standing in for `/` (a snapshot written by [`capture`]
    /// or a hand-made fixture); `/` itself means the live system.
    pub fn discover_from(root: &Path, extra: &Extra) -> Result<Topology> {
        Self::discover_with(&Source::at(root)?, extra)
    }

    pub(crate) fn discover_with(src: &Source, extra: &Extra) -> Result<Topology> {
        Self::discover_indexed(src, extra, &mut ProcIndex::default(), Pass::Full).map(|(topo, _)| topo)
    }

    /// One discovery that takes who holds which device node from `index`,
    /// after `pass` brought it up to date (see [`Discoverer`]).
    pub(crate) fn discover_indexed(
        src: &Source,
        extra: &Extra,
        index: &mut ProcIndex,
        pass: Pass,
    ) -> Result<(Topology, Scanned)> {
        let mountinfo = src.read("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let mounts = mountinfo::parse(&mountinfo);
        let mut devices = block::scan(src);
        let mut warnings = Vec::new();
        for d in &mut devices {
            d.backing_file = loop_backing_file(src, &mounts, d).or_else(|| target_backing_file(src, &mounts, d));
        }
        for (path, dev) in &extra.backing_files {
            name_backing_file(src, &mounts, &mut devices, path, *dev)?;
        }

        // Socket owners are indexed (every process's descriptors read for
        // them) only while a connection ends on this host: a node whose NFS
        // or iSCSI server is remote pays nothing for it. nbd always: its
        // client's record names no server to check.
        let links: Vec<Link> =
            devices.iter().flat_map(|d| d.links.iter().cloned()).chain(mounts.iter().filter_map(nfs::link)).collect();
        let nbd = devices.iter().any(|d| d.nbd_pid.is_some());
        let tables = if nbd || !links.is_empty() { Sockets::read(src) } else { Sockets::default() };
        let local = nbd || links.iter().any(|l| tables.accepted_here(l.remote));
        let scanned = index.update(src, pass, local);
        let holders = index.holders();
        let sockets = tables.with_owners(&holders);
        if holders.unreadable > 0 {
            warnings.push(unreadable_warning(holders.unreadable));
        }
        let mut servicers = transport::discover_block(
            seen::Seen { src, mounts: &mounts, devices: &devices, holders: &holders, sockets: &sockets },
            &mut warnings,
        );
        servicers.extend(fuse::discover(src, &mounts, &holders, &mut warnings));
        fuse::settle_named(&mut servicers, &extra.servicers);
        for &pid in &extra.servicers {
            named::add(src, &mounts, &devices, &mut servicers, pid)?;
        }
        if let Some(failure) = src.failure() {
            bail!("discovery could not read the whole system ({failure}); its view would be incomplete");
        }
        let mut topo = Topology { mounts, devices, servicers, warnings };
        topo.link_servicers();
        Ok((topo, scanned))
    }
}

/// The warning of a discovery that could not see the open files of
/// `processes` processes.
fn unreadable_warning(processes: usize) -> String {
    format!("could not read the open files of {processes} processes (not root): servicers among them are missing")
}

/// sysfs prints an unlinked backing file's path with this suffix.
const DELETED: &str = " (deleted)";

/// FUSE_ROOT_ID: the inode number of every FUSE filesystem's root.
const FUSE_ROOT_INO: u64 = 1;

/// A loop device's backing file, identified without ever asking a FUSE
/// daemon or network server: the loop ioctl (which stats the open file, so
/// only the file's own filesystem matters) or, without root, stat() of the
/// path (only when no directory on the way is on such a filesystem); the
/// mount table alone for files on FUSE.
fn loop_backing_file(src: &Source, mounts: &[Mount], d: &BlockDevice) -> Option<BackingFile> {
    let raw = d.loop_file.as_deref()?;
    let (path, deleted) = match raw.strip_suffix(DELETED) {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(raw), false),
    };
    let holder = mount_of_path(mounts, &path, None);
    let id = match holder {
        Some(m) if m.stat_may_block() => None,
        _ => src.loop_status(&d.name).or_else(|| {
            if deleted || path_may_block(mounts, &path) {
                None
            } else {
                src.stat(&path)
            }
        }),
    };
    let file_dev = id.map(|i| i.dev).or(holder.map(|m| m.dev))?;
    let ino = id.map(|i| i.ino).unwrap_or_else(|| unprobed_ino(holder, &path));
    Some(BackingFile { file_dev, ino, path, backs: d.dev, deleted, named: false })
}

/// The file a kernel target on this host keeps `d`'s data in
/// (target_files.rs), identified as a loop device's would be.
fn target_backing_file(src: &Source, mounts: &[Mount], d: &BlockDevice) -> Option<BackingFile> {
    let path = target_files::data_file(src, d)?;
    let holder = mount_of_path(mounts, &path, None);
    let (file_dev, ino) = match holder {
        Some(m) if path_may_block(mounts, &path) => (m.dev, unprobed_ino(holder, &path)),
        _ => src.stat(&path).map(|id| (id.dev, id.ino))?,
    };
    Some(BackingFile { file_dev, ino, path, backs: d.dev, deleted: false, named: false })
}

/// The inode of a file that must not be stat()ed: known only when the file
/// is the root of a FUSE mount (qemu-storage-daemon's export is), else 0.
fn unprobed_ino(holder: Option<&Mount>, path: &Path) -> u64 {
    match holder {
        Some(m) if m.is_fuse() && m.mount_point == path && m.root == Path::new("/") => FUSE_ROOT_INO,
        _ => 0,
    }
}

/// --backing-file PATH=DEV
fn name_backing_file(src: &Source, mounts: &[Mount], devices: &mut [BlockDevice], path: &Path, dev: Dev) -> Result<()> {
    if !path.is_absolute() {
        bail!("--backing-file {}: the path must be absolute", path.display());
    }
    let Some(d) = devices.iter_mut().find(|d| d.dev == dev) else {
        bail!("--backing-file {}={dev}: no block device {dev} on this host", path.display());
    };
    let holder = mount_of_path(mounts, path, None);
    let (file_dev, ino) = match holder {
        Some(m) if path_may_block(mounts, path) => (m.dev, unprobed_ino(holder, path)),
        _ => {
            let id = src.stat(path).with_context(|| format!("--backing-file {}: cannot stat it", path.display()))?;
            (id.dev, id.ino)
        }
    };
    d.backing_file =
        Some(BackingFile { file_dev, ino, path: path.to_path_buf(), backs: dev, deleted: false, named: true });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fakeproc::FakeProc;
    use super::*;

    const TCP_HEADER: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    /// Whether a discovery of `f` indexed the sockets of process 70.
    fn indexed_sockets(f: &FakeProc) -> bool {
        let mut index = ProcIndex::default();
        Topology::discover_indexed(&f.source(), &Extra::default(), &mut index, Pass::Full).unwrap();
        !index.holders().of("socket:[900]").is_empty()
    }

    #[test]
    fn sockets_are_indexed_only_for_a_connection_that_ends_here() {
        let f = FakeProc::new();
        f.spawn(70, 100, &[(3, "socket:[900]")]);
        // An NFS mount of a remote server: the client's connection, no accepted end.
        f.mounts("50 1 0:60 / /mnt/nfs rw - nfs4 10.0.0.9:/ rw,vers=4.2,clientaddr=10.0.0.5,addr=10.0.0.9\n");
        f.file(
            "proc/net/tcp",
            &format!(
                "{TCP_HEADER}   0: 0500000A:03F0 0900000A:0801 01 00000000:00000000 00:00000000 00000000 0 0 0 1 0\n"
            ),
        );
        assert!(!indexed_sockets(&f), "a remote server costs no descriptor walk");
        // The same from this host's own server: the accepted end is here.
        f.mounts("50 1 0:60 / /mnt/nfs rw - nfs4 127.0.0.1:/ rw,vers=4.2,clientaddr=127.0.0.1,addr=127.0.0.1\n");
        f.file(
            "proc/net/tcp",
            &format!(
                "{TCP_HEADER}   0: 0100007F:03F0 0100007F:0801 01 00000000:00000000 00:00000000 00000000 0 0 0 1 0\n\
                 1: 0100007F:0801 0100007F:03F0 01 00000000:00000000 00:00000000 00000000 0 0 0 1 0\n"
            ),
        );
        assert!(indexed_sockets(&f));
    }
}
