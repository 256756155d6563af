//! Block-device servicers by transport: each transport's discovery
//! takes the block devices and the processes holding device nodes, and
//! returns the servicers it finds (FUSE, which serves a filesystem and not
//! a block device, is fuse.rs's). A new transport is one more line here.

use super::connection::{self, Served};
use super::model::{BlockDevice, DeviceKind};
use super::model::{Confidence, Note, Protection, Remedy, Servicer, ServicerKind};
use super::seen::Seen;
use super::{nbd, nfs, tcmu, ublk};

/// Kernel loop workers, ublk servers, tcmu handlers, and the servers at
/// the other end of every device's connection (iSCSI, NVMe/TCP, nbd, NFS).
pub(crate) fn discover_block(seen: Seen, warnings: &mut Vec<String>) -> Vec<Servicer> {
    let mut out = Vec::new();
    for d in seen.devices {
        match d.kind {
            DeviceKind::Loop if d.backing_file.is_some() => out.push(kernel_loop(d)),
            DeviceKind::Ublk => out.extend(ublk::servers(seen, d, warnings)),
            _ => {}
        }
        if !d.links.is_empty() {
            let served = Served { dev: d.dev, label: d.label(), mounts: seen.mounts };
            out.extend(connection::servicers(seen.src, seen.sockets, &served, &d.links, warnings));
        }
    }
    out.extend(nbd::discover(seen, warnings));
    out.extend(nfs::discover(seen, warnings));
    out.extend(tcmu::discover(seen, warnings));
    out
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
        confidence: Confidence::Certain { why: "the loop driver completes this device's I/O in its workqueue".into() },
        data_files: Vec::new(),
        under_mounts: Vec::new(),
        supports: Vec::new(),
        remedy: Remedy::LoopDriverScopes,
        note: Some(Note::LoopWorkItems),
    }
}
