//! What a stack created, written down as it is created: one line per item
//! in `<workdir>/ledger`, synced before the next step. Teardown undoes the
//! items in reverse order; a later run's sweep reads the ledger of a stack
//! whose owner died and undoes it the same way, so nothing a killed test
//! made (an nbd connection, a SCSI target, a dm device) is left for good.

use crate::cmd::run;
use crate::inspect::{loop_backing_file, mounts_under, pid_running, umount_lazy};
use anyhow::{bail, Context, Result};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

const FILE: &str = "ledger";
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const DM_REMOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// A process blocked in an uninterruptible wait dies on SIGKILL only once
/// that wait ends (a FUSE abort or a device failure ends it); under
/// emulation that takes a while.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// One thing to undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A process the stack started; `start` is its start time (field 22 of
    /// /proc/PID/stat), so a reused pid is never killed.
    Process {
        pid: u32,
        start: u64,
        what: String,
    },
    Mount(PathBuf),
    /// A loop device and the file it was bound to.
    Loop {
        dev: PathBuf,
        backing: PathBuf,
    },
    /// A kernel nbd client connection.
    Nbd(PathBuf),
    /// A dm device, by name.
    Dm(String),
    /// A LIO user backstore (`user_<hba>/<name>`) and its loopback target.
    Tcmu {
        backstore: String,
        loopback_wwn: Option<String>,
    },
    /// A ublk device id, and the rublk that made it.
    Ublk {
        id: u32,
        rublk: PathBuf,
    },
    /// An open-iscsi node record (and its session, once logged in).
    IscsiNode {
        target: String,
        portal: String,
    },
    /// A tgtd target, by the daemon's control port and the target id.
    TgtTarget {
        control_port: u16,
        tid: u32,
    },
    /// A LIO backstore, `<hba>/<name>` below target/core (its HBA is ours too).
    LioBackstore(String),
    /// A LIO iSCSI target (its TPG, LUN and network portal), by IQN.
    LioTarget(String),
    /// An nvmet subsystem and its namespaces, by NQN.
    NvmetSubsystem(String),
    /// An nvmet port and its link to the subsystem.
    NvmetPort {
        id: u32,
        nqn: String,
    },
    /// An NVMe/TCP host connection to a subsystem, by NQN.
    NvmeConnection(String),
    /// knfsd threads we started.
    Nfsd,
    /// A directory exported to 127.0.0.1.
    NfsExport(PathBuf),
}

impl Item {
    fn encode(&self) -> String {
        match self {
            Item::Process { pid, start, what } => format!("process {pid} {start} {what}"),
            Item::Mount(p) => format!("mount {}", p.display()),
            Item::Loop { dev, backing } => format!("loop {} {}", dev.display(), backing.display()),
            Item::Nbd(d) => format!("nbd {}", d.display()),
            Item::Dm(n) => format!("dm {n}"),
            Item::Tcmu { backstore, loopback_wwn } => {
                format!("tcmu {backstore} {}", loopback_wwn.as_deref().unwrap_or("-"))
            }
            Item::Ublk { id, rublk } => format!("ublk {id} {}", rublk.display()),
            Item::IscsiNode { target, portal } => format!("iscsi-node {target} {portal}"),
            Item::TgtTarget { control_port, tid } => format!("tgt-target {control_port} {tid}"),
            Item::LioBackstore(b) => format!("lio-backstore {b}"),
            Item::LioTarget(iqn) => format!("lio-target {iqn}"),
            Item::NvmetSubsystem(nqn) => format!("nvmet-subsystem {nqn}"),
            Item::NvmetPort { id, nqn } => format!("nvmet-port {id} {nqn}"),
            Item::NvmeConnection(nqn) => format!("nvme-connection {nqn}"),
            // Every line has a field after its kind.
            Item::Nfsd => "nfsd -".to_owned(),
            Item::NfsExport(dir) => format!("nfs-export {}", dir.display()),
        }
    }

    fn decode(line: &str) -> Option<Item> {
        let (kind, rest) = line.split_once(' ')?;
        let mut f = rest.splitn(3, ' ');
        Some(match kind {
            "process" => Item::Process {
                pid: f.next()?.parse().ok()?,
                start: f.next()?.parse().ok()?,
                what: f.next().unwrap_or_default().to_owned(),
            },
            "mount" => Item::Mount(rest.into()),
            "loop" => {
                let (dev, backing) = rest.split_once(' ')?;
                Item::Loop { dev: dev.into(), backing: backing.into() }
            }
            "nbd" => Item::Nbd(rest.into()),
            "dm" => Item::Dm(rest.to_owned()),
            "tcmu" => {
                let (b, w) = rest.split_once(' ')?;
                Item::Tcmu { backstore: b.to_owned(), loopback_wwn: (w != "-").then(|| w.to_owned()) }
            }
            "ublk" => {
                let (id, rublk) = rest.split_once(' ')?;
                Item::Ublk { id: id.parse().ok()?, rublk: rublk.into() }
            }
            "iscsi-node" => {
                let (target, portal) = rest.split_once(' ')?;
                Item::IscsiNode { target: target.to_owned(), portal: portal.to_owned() }
            }
            "tgt-target" => {
                let (port, tid) = rest.split_once(' ')?;
                Item::TgtTarget { control_port: port.parse().ok()?, tid: tid.parse().ok()? }
            }
            "lio-backstore" => Item::LioBackstore(rest.to_owned()),
            "lio-target" => Item::LioTarget(rest.to_owned()),
            "nvmet-subsystem" => Item::NvmetSubsystem(rest.to_owned()),
            "nvmet-port" => {
                let (id, nqn) = rest.split_once(' ')?;
                Item::NvmetPort { id: id.parse().ok()?, nqn: nqn.to_owned() }
            }
            "nvme-connection" => Item::NvmeConnection(rest.to_owned()),
            "nfsd" => Item::Nfsd,
            "nfs-export" => Item::NfsExport(rest.into()),
            _ => return None,
        })
    }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// The items of one stack, in creation order.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    items: Vec<Item>,
}

impl Ledger {
    pub fn create(workdir: &Path) -> Ledger {
        Ledger { path: workdir.join(FILE), items: Vec::new() }
    }

    /// The ledger a dead owner left (items that cannot be read are skipped:
    /// a crash may have cut the last line).
    pub fn read(workdir: &Path) -> Ledger {
        let path = workdir.join(FILE);
        let items = fs::read_to_string(&path).unwrap_or_default().lines().filter_map(Item::decode).collect();
        Ledger { path, items }
    }

    /// Writes the item down (and syncs it) before the caller relies on it.
    pub fn add(&mut self, item: Item) -> Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(f, "{}", item.encode()).and_then(|()| f.sync_data()).context("writing the ledger")?;
        self.items.push(item);
        Ok(())
    }

    /// An item found rather than recorded (a leftover the sweep undoes).
    pub fn push_unrecorded(&mut self, item: Item) {
        self.items.push(item);
    }

    /// Undoes every item, newest first. Every step runs even when an
    /// earlier one failed; each external command has a timeout.
    pub fn undo_all(&mut self) -> Vec<anyhow::Error> {
        let mut errs = Vec::new();
        while let Some(item) = self.items.pop() {
            let flushes = matches!(item, Item::Mount(_) | Item::Dm(_));
            // A dm removal flushes (dm-zoned writes its metadata): when a
            // servicer below is already dead (killed to break a deadlock),
            // nothing will ever complete that I/O, and a removal waiting on
            // it sits in D state until every command's timeout and the SCSI
            // layer's retries run out. Fail the I/O first.
            if flushes && self.items.iter().any(is_dead_process) {
                self.fail_pending_below(&mut errs);
            }
            let mut r = undo(&item);
            // An unmount or dm removal that cannot finish waits on I/O the
            // servicer will never complete (it is deadlocked): fail that I/O
            // at the device below, and retry.
            if r.is_err() && flushes {
                self.fail_pending_below(&mut errs);
                r = undo(&item);
            }
            if let Err(e) = r {
                errs.push(e.context(format!("undoing `{}`", item.encode())));
            }
        }
        errs
    }

    /// Fails the pending I/O of every item not yet undone.
    fn fail_pending_below(&self, errs: &mut Vec<anyhow::Error>) {
        for below in &self.items {
            if let Err(e) = fail_pending_io(below) {
                errs.push(e.context(format!("failing the I/O of `{}`", below.encode())));
            }
        }
    }
}

/// A process the stack started that is no longer running.
fn is_dead_process(item: &Item) -> bool {
    matches!(item, Item::Process { pid, start, .. } if !(start_time(*pid) == Some(*start) && pid_running(*pid)))
}

/// Makes the I/O waiting on a servicer fail now: a tcmu backstore's ring is
/// reset with a hard error for every command in it, an nbd device is
/// disconnected, an iSCSI session logged out, an NVMe/TCP controller
/// disconnected. Other items have nothing pending of their own.
fn fail_pending_io(item: &Item) -> Result<()> {
    match item {
        Item::IscsiNode { .. } | Item::NvmeConnection(_) => undo(item),
        Item::Tcmu { backstore, loopback_wwn: None } => crate::servicers::tcmu::fail_pending(backstore),
        Item::Nbd(dev) => {
            let name = dev.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if Path::new(&format!("/sys/block/{name}/pid")).exists() {
                run(Command::new("nbd-client").arg("-d").arg(dev), CMD_TIMEOUT)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn undo(item: &Item) -> Result<()> {
    match item {
        Item::Process { pid, start, what } => kill(*pid, *start, what),
        Item::Mount(p) => {
            if mounts_under(p).iter().any(|m| &m.mountpoint == p) {
                umount_lazy(p)?;
            }
            Ok(())
        }
        Item::Loop { dev, backing } => {
            let name = dev.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // Only while it is still bound to our file: a freed loop device
            // may since serve someone else.
            if loop_backing_file(name).is_some_and(|b| Path::new(&b) == backing) {
                run(Command::new("losetup").arg("-d").arg(dev), CMD_TIMEOUT)?;
                // A device still open is only released on its last close.
                let deadline = Instant::now() + CMD_TIMEOUT;
                while loop_backing_file(name).is_some_and(|b| Path::new(&b) == backing) {
                    if Instant::now() >= deadline {
                        bail!("{} is still bound to {}", dev.display(), backing.display());
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
            Ok(())
        }
        Item::Nbd(dev) => {
            let name = dev.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if Path::new(&format!("/sys/block/{name}/pid")).exists() {
                run(Command::new("nbd-client").arg("-d").arg(dev), CMD_TIMEOUT)?;
            }
            Ok(())
        }
        Item::Dm(name) => {
            // Asked of the kernel: without udev the /dev/mapper node may be missing.
            if run(Command::new("dmsetup").args(["info", name]), CMD_TIMEOUT).is_ok() {
                // Removal flushes (dm-zoned writes its metadata), and once the
                // servicer is gone each of those writes fails only when its
                // command times out: allow for a few.
                run(Command::new("dmsetup").args(["remove", "--force", "--retry", name]), DM_REMOVE_TIMEOUT)?;
            }
            // Without udev the node stays; mknodes drops a node whose device is gone.
            run(Command::new("dmsetup").args(["mknodes", name]), CMD_TIMEOUT).map(drop)
        }
        Item::Tcmu { backstore, loopback_wwn } => crate::servicers::tcmu::remove(backstore, loopback_wwn.as_deref()),
        Item::Ublk { id, rublk } => {
            if Path::new(&format!("/dev/ublkc{id}")).exists() {
                run(Command::new(rublk).args(["del", "-n", &id.to_string()]), CMD_TIMEOUT)?;
            }
            Ok(())
        }
        Item::IscsiNode { target, portal } => crate::servicers::iscsi::remove_node(target, portal),
        Item::TgtTarget { control_port, tid } => crate::servicers::tgt::remove_target(*control_port, *tid),
        Item::LioBackstore(b) => crate::servicers::lio::remove_backstore(b),
        Item::LioTarget(iqn) => crate::servicers::lio::remove_target(iqn),
        Item::NvmetSubsystem(nqn) => crate::servicers::nvmet::remove_subsystem(nqn),
        Item::NvmetPort { id, nqn } => crate::servicers::nvmet::remove_port(*id, nqn),
        Item::NvmeConnection(nqn) => crate::servicers::nvmet::disconnect(nqn),
        Item::Nfsd => crate::servicers::nfs::stop_nfsd(),
        Item::NfsExport(dir) => crate::servicers::nfs::unexport(dir),
    }
}

/// SIGTERM, then SIGKILL, until it is gone (or a zombie: its parent may be
/// dead, and an init that does not reap leaves it), when it is still the
/// process we started.
fn kill(pid: u32, start: u64, what: &str) -> Result<()> {
    let ours = || start_time(pid) == Some(start) && pid_running(pid);
    for (sig, patience) in [(libc::SIGTERM, Duration::from_secs(5)), (libc::SIGKILL, KILL_WAIT)] {
        if !ours() {
            return Ok(());
        }
        // SAFETY: plain kill(2) on a pid whose start time is the one we recorded.
        unsafe { libc::kill(pid as i32, sig) };
        let deadline = Instant::now() + patience;
        while ours() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
    if ours() {
        bail!("{what} (pid {pid}) survives SIGKILL: {}", crate::inspect::where_blocked(pid));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_through_their_lines() {
        let items = [
            Item::Process { pid: 42, start: 1234, what: "qemu-storage-daemon x".into() },
            Item::Mount("/tmp/a b/mnt0".into()),
            Item::Loop { dev: "/dev/loop3".into(), backing: "/tmp/w/lower img".into() },
            Item::Nbd("/dev/nbd0".into()),
            Item::Dm("dmz-sda".into()),
            Item::Tcmu { backstore: "user_1/zbc0".into(), loopback_wwn: Some("naa.5001".into()) },
            Item::Tcmu { backstore: "user_1/zbc0".into(), loopback_wwn: None },
            Item::Ublk { id: 0, rublk: "/x/bin/rublk".into() },
            Item::IscsiNode { target: "iqn.2003-01.org.reclaimscope:a-1".into(), portal: "127.0.0.1:40000".into() },
            Item::TgtTarget { control_port: 40000, tid: 1 },
            Item::LioBackstore("fileio_3/rs-a-1".into()),
            Item::LioTarget("iqn.2003-01.org.reclaimscope:a-1".into()),
            Item::NvmetSubsystem("nqn.2014-08.org.reclaimscope:a-1".into()),
            Item::NvmetPort { id: 7, nqn: "nqn.2014-08.org.reclaimscope:a-1".into() },
            Item::NvmeConnection("nqn.2014-08.org.reclaimscope:a-1".into()),
            Item::Nfsd,
            Item::NfsExport("/tmp/w/export dir".into()),
        ];
        for i in items {
            assert_eq!(Item::decode(&i.encode()), Some(i.clone()), "{}", i.encode());
        }
        assert_eq!(Item::decode("garbage"), None);
    }
}
