//! nbd devices and the userspace servers that complete their I/O.
//!
//! The kernel nbd client sends each request over a socket. The process
//! that configured the device (its pid is in /sys/block/nbdN/pid) is often
//! gone: nbd-client hands the socket to the kernel over netlink and exits.
//! What completes the I/O is whatever holds the other end of that socket
//! (nbd-server's per-connection child, nbdkit, qemu-nbd...), found the way
//! every connection-borne device's server is (connection.rs): from the
//! configuring process's own connection, or from a connection that no
//! process holds (the kernel does) and no other device claims. A qemu-nbd
//! that connected the device itself (`-c`) is the device's own pid.

use super::connection::{self, Served};
use super::model::{BlockDevice, DeviceKind, Link, Transport};
use super::model::{Confidence, Servicer, ServicerKind};
use super::nfs;
use super::procs;
use super::seen::Seen;
use super::sockets::Sock;
use super::source::Source;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// The link of the client end `c` of an nbd connection.
fn link_of(c: &Sock) -> Link {
    Link { transport: Transport::Nbd, remote: c.remote, local_port: Some(c.local.port()) }
}

/// Servicers of the connected nbd devices.
pub(crate) fn discover(seen: Seen, warnings: &mut Vec<String>) -> Vec<Servicer> {
    let nbds: Vec<&BlockDevice> =
        seen.devices.iter().filter(|d| d.kind == DeviceKind::Nbd && d.nbd_pid.is_some()).collect();
    let mut out = Vec::new();
    let mut orphans = Vec::new();
    for d in nbds {
        match of_device(seen, d, warnings) {
            Some(found) => out.extend(found),
            None => orphans.push(d),
        }
    }
    out.extend(orphan_servers(seen, &orphans, warnings));
    out
}

/// The servicers of `d` found through the process the kernel recorded for
/// it; `None` when that process is gone or has nothing of its own.
fn of_device(seen: Seen, d: &BlockDevice, warnings: &mut Vec<String>) -> Option<Vec<Servicer>> {
    let Seen { src, mounts, sockets, .. } = seen;
    let recorded = d.nbd_pid?;
    // The kernel records the thread that ran NBD_DO_IT.
    let pid = procs::tgid_of(src, recorded).unwrap_or(recorded);
    let own: Vec<Link> = sockets.held_by(pid).map(link_of).collect();
    if !own.is_empty() {
        // The configuring process still holds the socket (ioctl mode).
        let served = Served { dev: d.dev, label: d.label(), mounts };
        let found = connection::servicers(src, sockets, &served, &own, warnings);
        return (!found.is_empty()).then_some(found);
    }
    // No TCP socket of its own, but the data: it serves the device itself
    // (qemu-nbd -c), with the kin that share that data.
    let files = Some(data(src, pid)).filter(|f| !f.is_empty())?;
    let why = Confidence::Certain {
        why: format!("/sys/block/{}/pid {pid}, or its kin, holding the data and no socket to a server", d.name),
    };
    Some(
        family(src, pid, &files)
            .into_iter()
            .filter_map(|p| Servicer::process(src, mounts, ServicerKind::Nbd, p, d.dev, d.label(), why.clone()))
            .collect(),
    )
}

/// The data a process stores: the regular files it holds read-write.
fn data(src: &Source, pid: u32) -> BTreeSet<(u32, u64)> {
    procs::open_files(src, pid).into_iter().filter(|f| f.read_write).map(|f| (f.mnt_id, f.ino)).collect()
}

/// `pid` and its family holding the same data: qemu-nbd -c forks, and the
/// process the kernel names only runs the ioctl while the other serves the
/// export over a socket pair.
fn family(src: &Source, pid: u32, files: &BTreeSet<(u32, u64)>) -> Vec<u32> {
    let mut out = vec![pid];
    let kin = procs::parent(src, pid)
        .into_iter()
        .chain(procs::pids(src).into_iter().filter(|&p| procs::parent(src, p) == Some(pid)));
    out.extend(kin.filter(|&p| p > 1 && !data(src, p).is_disjoint(files)));
    out
}

/// The servers of devices whose configuring process is gone (nbd-client
/// hands its socket to the kernel over netlink and exits), or a client
/// with nothing of its own: the far ends of the kernel-held connections
/// that no other device's driver records as its own (iSCSI, NVMe/TCP and
/// NFS clients hold theirs in the kernel too).
fn orphan_servers(seen: Seen, orphans: &[&BlockDevice], warnings: &mut Vec<String>) -> Vec<Servicer> {
    if orphans.is_empty() {
        return Vec::new();
    }
    let claimed: BTreeSet<SocketAddr> = seen
        .devices
        .iter()
        .flat_map(|d| d.links.iter().map(|l| l.remote))
        .chain(seen.mounts.iter().filter_map(nfs::link).map(|l| l.remote))
        .collect();
    let links: Vec<Link> = seen.sockets.kernel_held().filter(|c| !claimed.contains(&c.remote)).map(link_of).collect();
    let mut out = Vec::new();
    for d in orphans {
        let served = Served { dev: d.dev, label: d.label(), mounts: seen.mounts };
        let mut found = connection::servicers(seen.src, seen.sockets, &served, &links, &mut Vec::new());
        if found.is_empty() {
            warnings.push(format!(
                "{}: no process serves its connection on this host (remote NBD server, or a unix socket): name it with --servicer",
                d.label()
            ));
        }
        // The kernel does not say which socket is whose, so with several
        // such devices the match is ambiguous.
        if orphans.len() > 1 {
            let candidates = found.len();
            found.iter_mut().for_each(|s| s.confidence = Confidence::Ambiguous { candidates });
        }
        out.extend(found);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::fakeproc::FakeProc;
    use crate::topology::model::Dev;
    use crate::topology::procs::Holders;
    use crate::topology::sockets::Sockets;

    /// The way: `nbd-server -C CONF -d` (no fork, listening on
    /// [::]) and `nbd-client localhost /dev/nbd0 -N e0` over netlink (its
    /// process gone, the IPv4 socket held by the kernel), as a 6.1 guest
    /// printed the tables.
    #[test]
    fn a_foreground_server_on_a_dual_stack_listener_serves_a_netlink_client() {
        let f = FakeProc::new();
        f.file(
            "proc/net/tcp",
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   3: 0100007F:939A 0100007F:2A39 01 00000000:00000000 00:00000000 00000000     0        0 23845 1 0 20 4 1 10 -1\n",
        );
        f.file("proc/net/tcp6", "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   1: 00000000000000000000000000000000:2A39 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21443 1 0 100 0 0 10 0\n\
   3: 0000000000000000FFFF00000100007F:2A39 0000000000000000FFFF00000100007F:939A 01 00000000:00000000 02:000AFAE0 00000000     0        0 21447 2 0 20 4 1 10 -1\n");
        f.spawn(574, 100, &[(6, "socket:[21443]"), (8, "socket:[21447]")]);
        let src = f.source();
        let mut holders = Holders::default();
        holders.by_node.insert("socket:[21443]".into(), vec![(574, 6)]);
        holders.by_node.insert("socket:[21447]".into(), vec![(574, 8)]);
        let sockets = Sockets::read(&src).with_owners(&holders);
        let nbd0 = BlockDevice {
            name: "nbd0".into(),
            dev: Dev::new(43, 0),
            kind: DeviceKind::Nbd,
            partition_of: None,
            slaves: Vec::new(),
            holders: Vec::new(),
            backing_file: None,
            links: Vec::new(),
            nbd_pid: Some(576),
            detail: None,
            unit_serial: None,
            loop_file: None,
        };
        let devices = [nbd0];
        let seen = Seen { src: &src, mounts: &[], devices: &devices, holders: &holders, sockets: &sockets };
        let mut warnings = Vec::new();
        let found = discover(seen, &mut warnings);
        assert_eq!(found.iter().map(|s| s.tgid).collect::<Vec<_>>(), [Some(574)], "{warnings:?}");
        assert_eq!(found[0].kind, ServicerKind::NbdServer);
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
