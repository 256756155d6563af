//! The file an in-kernel target stores a device's data in, as its own
//! configuration says: LIO's fileio backstore behind an iSCSI LUN, nvmet's
//! file-backed namespace behind an NVMe/TCP namespace. Discovery records it
//! as the device's backing file, so the kernel follows the work items that
//! write it (fs_write and writeback_entry frames) whichever kworker runs
//! them: that is how a target's hand-off to shared kernel threads is
//! attributed to the device whose requests it carries.

use super::iscsi;
use super::model::{BlockDevice, DeviceKind, Transport};
use super::source::Source;
use std::path::PathBuf;

/// The data file of `d` when a kernel target on this host serves it from
/// a regular file (a block-device backstore is no file: `None`).
pub(crate) fn data_file(src: &Source, d: &BlockDevice) -> Option<PathBuf> {
    let transport = d.links.first()?.transport;
    let path = match (d.kind, transport) {
        (DeviceKind::Scsi, Transport::Iscsi) => lio_file(src, &d.name)?,
        (DeviceKind::Nvme, Transport::NvmeTcp) => nvmet_file(src, &d.name)?,
        _ => return None,
    };
    let path = PathBuf::from(path);
    // A block-device backstore or namespace is served by its own driver.
    (path.is_absolute() && !path.starts_with("/dev/")).then_some(path)
}

/// LIO: the session's target and portal group, the LUN's number from the
/// SCSI address (H:C:T:L), the backstore the LUN links to, and the file
/// its `info` names ("... File: /srv/lun0.img  Size: ...").
fn lio_file(src: &Source, disk: &str) -> Option<String> {
    let class_link = src.read_link(&format!("/sys/class/block/{disk}")).ok()?;
    let session = iscsi::session(&class_link)?;
    let sess = |a: &str| src.read_line(&format!("/sys/class/iscsi_session/{session}/{a}"));
    let (iqn, tpgt) = (sess("targetname")?, sess("tpgt")?);
    let address = src.read_link(&format!("/sys/block/{disk}/device")).ok()?;
    let lun = address.file_name()?.to_string_lossy().rsplit(':').next()?.to_owned();
    let lun_dir = format!("/sys/kernel/config/target/iscsi/{iqn}/tpgt_{tpgt}/lun/lun_{lun}");
    let backstore =
        src.read_dir(&lun_dir).ok()?.into_iter().find_map(|e| src.read_link(&format!("{lun_dir}/{e}")).ok())?;
    let store = backstore.iter().skip_while(|c| *c != "core").collect::<PathBuf>();
    let info = src.read(&format!("/sys/kernel/config/target/{}/info", store.display())).ok()?;
    info.split_whitespace().skip_while(|w| *w != "File:").nth(1).map(str::to_owned)
}

/// nvmet: the namespace's subsystem (`subsysnqn`) and id (`nsid`), and
/// that namespace's `device_path`.
fn nvmet_file(src: &Source, disk: &str) -> Option<String> {
    let attr = |a: &str| src.read_line(&format!("/sys/block/{disk}/{a}"));
    let nqn = attr("device/subsysnqn")?;
    let nsid = attr("nsid")?;
    src.read_line(&format!("/sys/kernel/config/nvmet/subsystems/{nqn}/namespaces/{nsid}/device_path"))
}
