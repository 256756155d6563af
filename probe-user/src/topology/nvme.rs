//! NVMe namespaces reached over a fabric: the controllers a namespace is
//! reached through, and the transport and address each one records
//! (/sys/class/nvme/nvmeN/{transport,address}).

use super::model::{Link, Transport};
use super::source::Source;
use std::net::{IpAddr, SocketAddr};

/// The controllers of namespace block device `sysdir`: its `device` is the
/// controller itself (nvme0c0n1, or nvme0n1 without native multipath), or
/// the subsystem whose controllers are listed in it (nvme0n1 with it).
fn controllers(src: &Source, sysdir: &str) -> Vec<String> {
    let device = format!("{sysdir}/device");
    if src.read_line(&format!("{device}/transport")).is_some() {
        return vec![device];
    }
    src.read_dir(&device)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.strip_prefix("nvme").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        .map(|c| format!("{device}/{c}"))
        .collect()
}

/// The NVMe/TCP connections of a namespace (none for PCIe, RDMA, FC or loop).
pub(crate) fn links(src: &Source, sysdir: &str) -> Vec<Link> {
    controllers(src, sysdir)
        .into_iter()
        .filter(|c| src.read_line(&format!("{c}/transport")).as_deref() == Some("tcp"))
        .filter_map(|c| {
            let remote = parse_address(&src.read_line(&format!("{c}/address"))?)?;
            Some(Link { transport: Transport::NvmeTcp, remote, local_port: None })
        })
        .collect()
}

/// "traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1"
fn parse_address(text: &str) -> Option<SocketAddr> {
    let field = |k: &str| text.split(',').find_map(|f| f.strip_prefix(k)?.strip_prefix('='));
    let ip: IpAddr = field("traddr")?.parse().ok()?;
    Some(SocketAddr::new(ip, field("trsvcid")?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::fakeproc::FakeProc;

    #[test]
    fn addresses_as_nvme_fabrics_prints_them() {
        let a = parse_address("traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1");
        assert_eq!(a, Some("127.0.0.1:4420".parse().unwrap()));
        assert_eq!(parse_address("traddr=::1,trsvcid=4420"), Some("[::1]:4420".parse().unwrap()));
        assert_eq!(parse_address("traddr=nn-0x1000:pn-0x2000,host_traddr=nn-0x3000:pn-0x4000"), None);
    }

    #[test]
    fn a_multipath_namespace_is_reached_through_its_subsystems_controllers() {
        let f = FakeProc::new();
        // nvme0n1's device is nvme-subsys0, which lists controller nvme0.
        f.file("sys/block/nvme0n1/device/nvme0/transport", "tcp\n");
        f.file("sys/block/nvme0n1/device/nvme0/address", "traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1\n");
        f.file("sys/block/nvme0n1/device/subsysnqn", "rs\n");
        // A PCIe namespace has no TCP link.
        f.file("sys/block/nvme1n1/device/transport", "pcie\n");
        let src = f.source();
        let want = Link { transport: Transport::NvmeTcp, remote: "127.0.0.1:4420".parse().unwrap(), local_port: None };
        assert_eq!(links(&src, "/sys/block/nvme0n1"), [want]);
        assert!(links(&src, "/sys/block/nvme1n1").is_empty());
    }
}
