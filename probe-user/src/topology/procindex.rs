//! Which processes hold a servicer's device node open, kept between
//! discoveries so that a process is readlinked once, not at every one.
//!
//! Finding servicers means reading the target of every descriptor of every
//! process: on a host with thousands of processes, the whole cost of
//! discovery. Yet processes rarely open a device node after their first
//! moments, and a new storage stack comes with a new process, a mount or a
//! block device. So the index remembers, per process, the descriptors that
//! matter, and a [`Pass::Changes`] only reads the descriptors of processes
//! it has not seen: one readdir of /proc finds them. A [`Pass::Full`]
//! reads every process again; it is the safety net for a process that
//! opened a node after it was indexed.
//!
//! A process is its pid and its start time. The start time costs a read of
//! /proc/PID/stat, so it is read only when the inode of /proc/PID changed:
//! the kernel makes that inode when the process's entry is first looked up
//! and flushes it when the process exits, so a pid reused by another
//! process shows a new inode in the readdir, at no cost.

use super::fuse::DEV_FUSE;
use super::procs::{self, Holders};
use super::sockets::socket_inode;
use super::source::Source;
use std::collections::BTreeMap;
use std::io;

/// How much of /proc a discovery reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Every descriptor of every process.
    Full,
    /// The descriptors of processes the index has not seen.
    Changes,
}

/// The descriptors a servicer is found by: FUSE, ublk and uio (tcmu)
/// device nodes, and sockets while an nbd device is connected (its server
/// is the peer of its connection).
fn wanted(node: &str, sockets: bool) -> bool {
    node == DEV_FUSE
        || node.starts_with("/dev/ublkc")
        || node.starts_with("/dev/uio")
        || (sockets && socket_inode(node).is_some())
}

#[derive(Debug, PartialEq, Eq)]
enum Held {
    /// (fd, link target) of the descriptors [`wanted`] keeps.
    Fds(Vec<(u32, String)>),
    /// /proc/PID/fd could not be read (not root).
    Unreadable,
}

#[derive(Debug)]
struct Entry {
    /// The inode of /proc/PID when the process was last listed.
    ino: u64,
    start: u64,
    held: Held,
}

/// What one update read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Processes listed in /proc.
    pub processes: usize,
    /// Processes whose descriptors were read.
    pub fd_scans: usize,
}

/// The processes of /proc, each with the descriptors that matter.
#[derive(Debug, Default)]
pub(crate) struct ProcIndex {
    procs: BTreeMap<u32, Entry>,
    /// Whether the index keeps sockets (see [`wanted`]).
    sockets: bool,
}

impl ProcIndex {
    /// Brings the index up to date with /proc. A change of `sockets`
    /// makes the pass full: the entries were filtered for the other case.
    /// When a read fails for want of resources, the index stops there, so
    /// that it never keeps a process as holding less than it does (the
    /// discovery fails; see [`Source::failure`]).
    pub fn update(&mut self, src: &Source, pass: Pass, sockets: bool) -> Scanned {
        let full = pass == Pass::Full || sockets != self.sockets;
        let Ok(listing) = src.read_dir_ino("/proc") else {
            return Scanned::default();
        };
        let mut scanned = Scanned::default();
        let mut kept = BTreeMap::new();
        for (pid, ino) in listing.into_iter().filter_map(|(name, ino)| Some((name.parse::<u32>().ok()?, ino))) {
            scanned.processes += 1;
            let mut old = self.procs.remove(&pid).filter(|_| !full);
            if let Some(e) = old.take_if(|e| e.ino == ino) {
                kept.insert(pid, e);
                continue;
            }
            // A new inode: a new process, or the entry of a known one made
            // again (the kernel may drop it under memory pressure).
            let start = procs::start_time(src, pid);
            if let Some(mut e) = old.filter(|e| start == Some(e.start)) {
                e.ino = ino;
                kept.insert(pid, e);
                continue;
            }
            let held = held_by(src, pid, sockets);
            if src.failure().is_some() {
                break;
            }
            scanned.fd_scans += 1;
            if let Some(held) = held {
                // Without a start time (a snapshot keeps only what discovery
                // read) the inode alone tells this process from a later one.
                kept.insert(pid, Entry { ino, start: start.unwrap_or(0), held });
            }
        }
        self.procs = kept;
        self.sockets = sockets;
        scanned
    }

    /// Processes whose descriptors could not be read.
    pub fn unreadable(&self) -> usize {
        self.procs.values().filter(|e| e.held == Held::Unreadable).count()
    }

    /// The holders of every node the index keeps, in pid order.
    pub fn holders(&self) -> Holders {
        let mut h = Holders::default();
        for (&pid, e) in &self.procs {
            match &e.held {
                Held::Unreadable => h.unreadable += 1,
                Held::Fds(fds) => {
                    for (fd, node) in fds {
                        h.by_node.entry(node.clone()).or_default().push((pid, *fd));
                    }
                }
            }
        }
        h
    }
}

/// The descriptors of `pid` that [`wanted`] keeps; None when it exited.
fn held_by(src: &Source, pid: u32, sockets: bool) -> Option<Held> {
    let fds = match src.read_dir(&format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Some(Held::Unreadable),
        Err(_) => return None,
    };
    let mut held = Vec::new();
    for fd in fds.iter().filter_map(|f| f.parse::<u32>().ok()) {
        let Ok(target) = src.read_link(&format!("/proc/{pid}/fd/{fd}")) else {
            continue; // closed meanwhile
        };
        let target = target.to_string_lossy();
        if wanted(&target, sockets) {
            held.push((fd, target.into_owned()));
        }
    }
    held.sort_unstable();
    Some(Held::Fds(held))
}

#[cfg(test)]
mod tests {
    use super::super::fakeproc::FakeProc;
    use super::*;

    const FUSE: &str = "/dev/fuse";
    const NULL: &str = "/dev/null";

    /// (pid, fd) holding /dev/fuse.
    fn fuse_holders(index: &ProcIndex) -> Vec<(u32, u32)> {
        index.holders().of(FUSE).to_vec()
    }

    fn update(f: &FakeProc, index: &mut ProcIndex, pass: Pass) -> Scanned {
        index.update(&f.source(), pass, false)
    }

    #[test]
    fn reads_a_process_once_and_forgets_it_when_it_exits() {
        let f = FakeProc::new();
        f.spawn(10, 100, &[(0, NULL), (3, FUSE)]);
        f.spawn(11, 101, &[(0, NULL)]);
        let mut index = ProcIndex::default();
        assert_eq!(update(&f, &mut index, Pass::Full), Scanned { processes: 2, fd_scans: 2 });
        assert_eq!(fuse_holders(&index), [(10, 3)]);

        // Nothing changed: nothing is read again.
        assert_eq!(update(&f, &mut index, Pass::Changes), Scanned { processes: 2, fd_scans: 0 });

        // A process appears: only it is read.
        f.spawn(12, 102, &[(5, FUSE)]);
        assert_eq!(update(&f, &mut index, Pass::Changes), Scanned { processes: 3, fd_scans: 1 });
        assert_eq!(fuse_holders(&index), [(10, 3), (12, 5)]);

        // One exits: it is gone from the holders.
        f.exit(10);
        assert_eq!(update(&f, &mut index, Pass::Changes), Scanned { processes: 2, fd_scans: 0 });
        assert_eq!(fuse_holders(&index), [(12, 5)]);
    }

    #[test]
    fn a_reused_pid_is_a_new_process() {
        let f = FakeProc::new();
        f.spawn(20, 100, &[(3, FUSE)]);
        let mut index = ProcIndex::default();
        update(&f, &mut index, Pass::Full);
        assert_eq!(fuse_holders(&index), [(20, 3)]);

        f.reuse(20, 900, &[(0, NULL)]);
        assert_eq!(update(&f, &mut index, Pass::Changes), Scanned { processes: 1, fd_scans: 1 });
        assert!(fuse_holders(&index).is_empty());
    }

    #[test]
    fn a_new_proc_entry_of_the_same_process_is_not_read_again() {
        let f = FakeProc::new();
        f.spawn(30, 100, &[(0, NULL)]);
        let mut index = ProcIndex::default();
        update(&f, &mut index, Pass::Full);
        f.relist(30);
        assert_eq!(update(&f, &mut index, Pass::Changes), Scanned { processes: 1, fd_scans: 0 });
        // Its inode is remembered: the next pass does not even read its start time.
        let stat = f.root.path().join("proc/30/stat");
        std::fs::remove_file(&stat).unwrap();
        assert_eq!(update(&f, &mut index, Pass::Changes), Scanned { processes: 1, fd_scans: 0 });
        assert!(index.procs.contains_key(&30));
    }

    #[test]
    fn a_descriptor_opened_later_is_seen_by_the_full_pass() {
        let f = FakeProc::new();
        f.spawn(40, 100, &[(0, NULL)]);
        let mut index = ProcIndex::default();
        update(&f, &mut index, Pass::Full);
        f.open(40, 7, FUSE);
        update(&f, &mut index, Pass::Changes);
        assert!(fuse_holders(&index).is_empty(), "a known process is not read again");
        assert_eq!(update(&f, &mut index, Pass::Full), Scanned { processes: 1, fd_scans: 1 });
        assert_eq!(fuse_holders(&index), [(40, 7)]);
    }

    #[test]
    fn sockets_are_kept_only_while_asked_for() {
        let f = FakeProc::new();
        f.spawn(50, 100, &[(4, "socket:[777]"), (0, NULL)]);
        let mut index = ProcIndex::default();
        index.update(&f.source(), Pass::Full, false);
        assert!(index.holders().by_node.is_empty());
        // An nbd device came: every process is read again, for its sockets.
        assert_eq!(index.update(&f.source(), Pass::Changes, true), Scanned { processes: 1, fd_scans: 1 });
        assert_eq!(index.holders().of("socket:[777]"), [(50, 4)]);
    }
}
