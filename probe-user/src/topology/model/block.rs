//! Block devices as the model holds them: their kind, what backs them and
//! what sysfs says sits under them (topology/block.rs reads them).

use super::dev::Dev;
use super::link::Link;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Loop,
    Nbd,
    /// ublk block device (ublkbN), served through /dev/ublkcN.
    Ublk,
    Dm,
    Md,
    /// sdX: a local disk, or a LIO/tcmu or iSCSI LUN.
    Scsi,
    /// nvmeXnY: a local NVMe namespace, or one reached over a fabric
    /// (NVMe/TCP).
    Nvme,
    Partition,
    Other,
}

impl DeviceKind {
    /// What a disk's name says it is ("loop0", "nbd1", "ublkb0", "dm-2"...).
    pub(crate) fn of_disk(name: &str) -> DeviceKind {
        let numbered = |prefix: &str| {
            name.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if numbered("loop") {
            DeviceKind::Loop
        } else if numbered("nbd") {
            DeviceKind::Nbd
        } else if numbered("ublkb") {
            DeviceKind::Ublk
        } else if numbered("dm-") {
            DeviceKind::Dm
        } else if nvme_namespace(name) {
            DeviceKind::Nvme
        } else if name.starts_with("md") {
            DeviceKind::Md
        } else if name.strip_prefix("sd").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase())) {
            DeviceKind::Scsi
        } else {
            DeviceKind::Other
        }
    }
}

/// "nvme0n1", and the per-path "nvme0c1n1" that native multipath hides.
fn nvme_namespace(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("nvme").and_then(|r| r.split_once('n')).is_some_and(|(ctrl, ns)| {
        digits(ns) && (digits(ctrl) || ctrl.split_once('c').is_some_and(|(a, b)| digits(a) && digits(b)))
    })
}

/// A file whose contents are a block device's contents.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct BackingFile {
    /// st_dev of the filesystem holding the file.
    pub file_dev: Dev,
    /// Its inode; 0 when it could not be learnt without touching a FUSE or
    /// network filesystem (which could block on a wedged server).
    pub ino: u64,
    pub path: PathBuf,
    /// The device it backs.
    pub backs: Dev,
    /// The path was unlinked after the device was set up (sysfs says "(deleted)").
    pub deleted: bool,
    /// Named with --backing-file rather than discovered.
    pub named: bool,
}

#[derive(Serialize, Clone, Debug)]
pub struct BlockDevice {
    pub name: String,
    pub dev: Dev,
    pub kind: DeviceKind,
    /// The whole disk, for a partition.
    pub partition_of: Option<Dev>,
    /// Devices this one is built from (dm/md "slaves").
    pub slaves: Vec<Dev>,
    /// Devices built on top of this one.
    pub holders: Vec<Dev>,
    pub backing_file: Option<BackingFile>,
    /// nbd: the task that connected the device (/sys/block/nbdN/pid).
    pub nbd_pid: Option<u32>,
    /// The connections its I/O travels over (iSCSI, NVMe/TCP), as the
    /// driver records them.
    pub links: Vec<Link>,
    /// What the driver says about it: dm name, nbd backend, SCSI vendor and model, iSCSI target.
    pub detail: Option<String>,
    /// SCSI unit serial number (VPD page 0x80), matched against tcmu backstores.
    #[serde(skip)]
    pub unit_serial: Option<String>,
    /// Backing file path from /sys/block/loopN/loop/backing_file, resolved later against the mounts.
    #[serde(skip)]
    pub(crate) loop_file: Option<String>,
}

impl BlockDevice {
    /// "loop0 (7:0)"
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.dev)
    }
}
