//! tcmu: a LIO backstore handled in userspace (tcmu-runner) shows up as a
//! uio device named "tcm-user/<hba>/<backstore>/<config>"; its handler holds
//! /dev/uioN. The SCSI disk it serves is found two ways:
//! - through the loopback fabric (tcm_loop): the target LUN whose configfs
//!   link points at the backstore sits at the SCSI address the target
//!   reports (`tpgt_N/address`, "H:C:T") and the LUN's number;
//! - by the backstore's unit serial, which the disk returns in VPD page
//!   0x80, for fabrics whose disk sysfs shows that page (not every kernel
//!   reads it for tcm_loop disks: Debian's 6.1 does not).

use super::model::Dev;
use super::model::{Servicer, ServicerKind};
use super::process::holder_servicers;
use super::seen::Seen;
use super::source::Source;

const CONFIGFS: &str = "/sys/kernel/config/target";

/// The disk (sdX) tcm_loop exports the backstore `user_<hba>/<backstore>` as.
fn loopback_disk(src: &Source, hba: &str, backstore: &str) -> Option<String> {
    let want = format!("core/user_{hba}/{backstore}");
    let root = format!("{CONFIGFS}/loopback");
    for wwn in src.read_dir(&root).unwrap_or_default().into_iter().filter(|w| w.starts_with("naa.")) {
        for tpgt in
            src.read_dir(&format!("{root}/{wwn}")).unwrap_or_default().into_iter().filter(|t| t.starts_with("tpgt_"))
        {
            let tdir = format!("{root}/{wwn}/{tpgt}");
            let Some(address) = src.read_line(&format!("{tdir}/address")) else { continue };
            for lun in src.read_dir(&format!("{tdir}/lun")).unwrap_or_default() {
                let Some(n) = lun.strip_prefix("lun_") else { continue };
                let points_at_us = src.read_dir(&format!("{tdir}/lun/{lun}")).unwrap_or_default().iter().any(|e| {
                    src.read_link(&format!("{tdir}/lun/{lun}/{e}")).is_ok_and(|t| t.to_string_lossy().ends_with(&want))
                });
                if points_at_us {
                    let block = format!("/sys/bus/scsi/devices/{address}:{n}/block");
                    if let Some(disk) = src.read_dir(&block).ok().and_then(|d| d.into_iter().next()) {
                        return Some(disk);
                    }
                }
            }
        }
    }
    None
}

pub(crate) fn discover(seen: Seen, warnings: &mut Vec<String>) -> Vec<Servicer> {
    let Seen { src, mounts, devices, holders, .. } = seen;
    let mut out = Vec::new();
    for uio in src.read_dir("/sys/class/uio").unwrap_or_default() {
        let Some(name) = src.read_line(&format!("/sys/class/uio/{uio}/name")) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("tcm-user/") else {
            continue;
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(hba), Some(backstore)) = (parts.next(), parts.next()) else {
            continue;
        };
        let by_loopback = loopback_disk(src, hba, backstore).and_then(|n| devices.iter().find(|d| d.name == n));
        let serial = src
            .read_line(&format!("{CONFIGFS}/core/user_{hba}/{backstore}/wwn/vpd_unit_serial"))
            .and_then(|l| l.rsplit(':').next().map(|s| s.trim().to_string()));
        let by_serial = || serial.as_ref().and_then(|s| devices.iter().find(|d| d.unit_serial.as_ref() == Some(s)));
        let (serves, serves_name) = match by_loopback.or_else(by_serial) {
            Some(d) => (d.dev, format!("{} via {name}", d.label())),
            None => (Dev::NONE, format!("{name} (no SCSI disk on this host is its LUN)")),
        };
        let node = format!("/dev/{uio}");
        let found = holder_servicers(src, mounts, holders, &node, ServicerKind::Tcmu, serves, serves_name);
        if found.is_empty() {
            warnings
                .push(format!("{name}: no process holds {node} open (tcmu handler gone, or not visible without root)"));
        }
        out.extend(found);
    }
    out
}
