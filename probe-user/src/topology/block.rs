//! Block devices and what sysfs says sits under them.
//!
//! The device list comes from /proc/partitions (it holds partitions too, and
//! leaves out unbound loop devices, which have no capacity); the rest from
//! /sys/block/NAME, as documented in Documentation/ABI/*/sysfs-block*.

use super::model::{BlockDevice, Dev, DeviceKind};
use super::source::Source;
use super::{iscsi, nvme};
use std::path::Path;

/// Every block device with a capacity.
pub(crate) fn scan(src: &Source) -> Vec<BlockDevice> {
    let listed = src.read("/proc/partitions").map(|t| parse_partitions(&t)).unwrap_or_default();
    let dev_of = |name: &str| listed.iter().find(|(_, n)| n == name).map(|(d, _)| *d);
    let mut devices = Vec::new();
    for (dev, name) in &listed {
        // /sys/class/block/NAME -> ../../devices/.../block/DISK[/PART]
        let class_link = src.read_link(&format!("/sys/class/block/{name}")).unwrap_or_default();
        let parent = class_link
            .parent()
            .and_then(|p| p.file_name())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p != "block")
            .and_then(|p| dev_of(&p).map(|d| (p, d)));
        let (kind, sysdir) = match &parent {
            Some((disk, _)) => (DeviceKind::Partition, format!("/sys/block/{disk}/{name}")),
            None => (DeviceKind::of_disk(name), format!("/sys/block/{name}")),
        };
        let names_to_devs = |sub: &str| -> Vec<Dev> {
            src.read_dir(&format!("{sysdir}/{sub}")).unwrap_or_default().iter().filter_map(|n| dev_of(n)).collect()
        };
        let mut d = BlockDevice {
            name: name.clone(),
            dev: *dev,
            kind,
            partition_of: parent.map(|(_, d)| d),
            slaves: names_to_devs("slaves"),
            holders: names_to_devs("holders"),
            backing_file: None,
            links: Vec::new(),
            nbd_pid: None,
            detail: None,
            unit_serial: None,
            loop_file: None,
        };
        driver_details(src, &sysdir, &class_link, &mut d);
        devices.push(d);
    }
    devices
}

/// The per-driver sysfs attributes.
fn driver_details(src: &Source, sysdir: &str, class_link: &Path, d: &mut BlockDevice) {
    match d.kind {
        DeviceKind::Loop => d.loop_file = src.read_line(&format!("{sysdir}/loop/backing_file")),
        DeviceKind::Nbd => {
            d.nbd_pid = src.read_line(&format!("{sysdir}/pid")).and_then(|p| p.parse().ok());
            d.detail = src.read_line(&format!("{sysdir}/backend")).map(|b| format!("backend {b}"));
        }
        DeviceKind::Dm => d.detail = src.read_line(&format!("{sysdir}/dm/name")).map(|n| format!("dm {n}")),
        DeviceKind::Nvme => d.links = nvme::links(src, sysdir),
        DeviceKind::Md => d.detail = src.read_line(&format!("{sysdir}/md/level")),
        DeviceKind::Scsi => {
            let attr = |a: &str| src.read_line(&format!("{sysdir}/device/{a}"));
            let mut detail: Vec<String> = [attr("vendor"), attr("model")].into_iter().flatten().collect();
            if let Some(target) = iscsi::target_name(src, class_link) {
                detail.push(format!("iSCSI target {target}"));
            }
            d.links = iscsi::links(src, class_link);
            d.detail = (!detail.is_empty()).then(|| detail.join(" "));
            d.unit_serial = src.read_bytes(&format!("{sysdir}/device/vpd_pg80")).ok().and_then(|p| vpd_unit_serial(&p));
        }
        _ => {}
    }
}

/// VPD page 0x80 (SPC-4 7.8.15): 4-byte header, then the ASCII serial.
fn vpd_unit_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([page[2], page[3]]) as usize;
    let serial = String::from_utf8_lossy(page.get(4..4 + len).unwrap_or(&page[4..]))
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_string();
    (!serial.is_empty()).then_some(serial)
}

/// `major minor #blocks name` lines after a header.
fn parse_partitions(text: &str) -> Vec<(Dev, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [major, minor, _, name] = f.as_slice() else {
                return None;
            };
            Some((Dev::new(major.parse().ok()?, minor.parse().ok()?), name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_names() {
        assert_eq!(DeviceKind::of_disk("loop12"), DeviceKind::Loop);
        assert_eq!(DeviceKind::of_disk("loop"), DeviceKind::Other);
        assert_eq!(DeviceKind::of_disk("nbd0"), DeviceKind::Nbd);
        assert_eq!(DeviceKind::of_disk("ublkb3"), DeviceKind::Ublk);
        assert_eq!(DeviceKind::of_disk("dm-0"), DeviceKind::Dm);
        assert_eq!(DeviceKind::of_disk("md127"), DeviceKind::Md);
        assert_eq!(DeviceKind::of_disk("sdab"), DeviceKind::Scsi);
        assert_eq!(DeviceKind::of_disk("vda"), DeviceKind::Other);
        assert_eq!(DeviceKind::of_disk("nvme0n1"), DeviceKind::Nvme);
        assert_eq!(DeviceKind::of_disk("nvme0c1n2"), DeviceKind::Nvme);
        assert_eq!(DeviceKind::of_disk("nvme0"), DeviceKind::Other);
        assert_eq!(DeviceKind::of_disk("nvme-fabrics"), DeviceKind::Other);
    }

    #[test]
    fn partitions_table() {
        let t = "major minor  #blocks  name\n\n 254        0   10485760 vda\n   7        0     524288 loop0\n";
        assert_eq!(parse_partitions(t), vec![(Dev::new(254, 0), "vda".into()), (Dev::new(7, 0), "loop0".into())]);
    }

    #[test]
    fn unit_serial_page() {
        let mut page = vec![0, 0x80, 0, 8];
        page.extend_from_slice(b"abc-123 ");
        assert_eq!(vpd_unit_serial(&page).as_deref(), Some("abc-123"));
        assert_eq!(vpd_unit_serial(&[0, 0x83, 0, 0]), None);
    }
}
