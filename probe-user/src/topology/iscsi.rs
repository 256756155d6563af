//! iSCSI LUNs: the session a disk belongs to, and the connections the
//! initiator records for it (Documentation/ABI/testing/sysfs-class-iscsi).

use super::model::{Link, Transport};
use super::source::Source;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// An iSCSI LUN's sysfs path runs through its session:
/// .../host3/session1/target3:0:0/3:0:0:0/block/sdc.
pub(crate) fn session(class_link: &Path) -> Option<String> {
    class_link
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .find(|c| c.strip_prefix("session").is_some_and(|n| n.parse::<u32>().is_ok()))
}

/// The target's name, for the device's detail.
pub(crate) fn target_name(src: &Source, class_link: &Path) -> Option<String> {
    src.read_line(&format!("/sys/class/iscsi_session/{}/targetname", session(class_link)?))
}

/// The session's connections ("connection1:0" for session 1): the
/// target's address and port, and the initiator's port (`local_port`,
/// which iscsi_tcp exports).
pub(crate) fn links(src: &Source, class_link: &Path) -> Vec<Link> {
    let Some(n) = session(class_link).and_then(|s| s.strip_prefix("session").map(str::to_owned)) else {
        return Vec::new();
    };
    let root = "/sys/class/iscsi_connection";
    let prefix = format!("connection{n}:");
    src.read_dir(root)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.starts_with(&prefix))
        .filter_map(|c| {
            let attr = |a: &str| src.read_line(&format!("{root}/{c}/{a}"));
            let ip: IpAddr = attr("address")?.parse().ok()?;
            let remote = SocketAddr::new(ip, attr("port")?.parse().ok()?);
            Some(Link {
                transport: Transport::Iscsi,
                remote,
                local_port: attr("local_port").and_then(|p| p.parse().ok()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::fakeproc::FakeProc;

    #[test]
    fn a_luns_connections_come_from_its_session() {
        let f = FakeProc::new();
        for (a, v) in [("address", "127.0.0.1"), ("port", "3260"), ("local_port", "50852")] {
            f.file(&format!("sys/class/iscsi_connection/connection1:0/{a}"), &format!("{v}\n"));
        }
        f.file("sys/class/iscsi_connection/connection12:0/address", "10.1.1.1\n");
        f.file("sys/class/iscsi_session/session1/targetname", "iqn.2026-12.rs:tgt\n");
        let src = f.source();
        let lun = Path::new("../../devices/platform/host6/session1/target6:0:0/6:0:0:1/block/sda");
        assert_eq!(
            links(&src, lun),
            [Link { transport: Transport::Iscsi, remote: "127.0.0.1:3260".parse().unwrap(), local_port: Some(50852) }]
        );
        assert_eq!(target_name(&src, lun).as_deref(), Some("iqn.2026-12.rs:tgt"));
        assert!(links(
            &src,
            Path::new("../../devices/pci0000:00/0000:00:05.0/virtio2/host0/target0:0:0/0:0:0:0/block/sdb")
        )
        .is_empty());
    }
}
