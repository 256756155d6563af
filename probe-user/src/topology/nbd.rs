//! nbd devices and the userspace servers that complete their I/O.
//!
//! The kernel nbd client sends each request over a TCP socket. The process
//! that configured the device (its pid is in /sys/block/nbdN/pid) is often
//! gone: nbd-client hands the socket to the kernel over netlink and exits.
//! What completes the I/O is the process at the other end of that socket:
//! nbd-server's per-connection child, say. So the server is found as the
//! holder of the peer of a connection that no process holds (the kernel
//! does), or that the configuring process holds; and a qemu-nbd that
//! connected the device itself (`-c`) is the device's own pid.

use super::model::Mount;
use super::model::{BlockDevice, DeviceKind};
use super::model::{Confidence, Servicer, ServicerKind};
use super::procs;
use super::seen::Seen;
use super::source::Source;
use std::collections::{BTreeMap, BTreeSet};

/// One established TCP connection from /proc/net/tcp{,6}.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conn {
    local: String,
    remote: String,
    inode: u64,
}

/// Established connections (state 01), with their addresses as printed.
fn connections(src: &Source) -> Vec<Conn> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in src.read(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "01" {
                if let Ok(inode) = f[9].parse() {
                    out.push(Conn { local: f[1].to_owned(), remote: f[2].to_owned(), inode });
                }
            }
        }
    }
    out
}

/// The socket inode of an fd link target ("socket:[1234]").
pub(crate) fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The processes at the other end of `conns`.
fn peers_of(conns: &[&Conn], all: &[Conn], owner: &BTreeMap<u64, u32>) -> BTreeSet<u32> {
    conns
        .iter()
        .filter_map(|c| all.iter().find(|p| p.local == c.remote && p.remote == c.local))
        .filter_map(|p| owner.get(&p.inode).copied())
        .collect()
}

/// Servicers of the connected nbd devices.
pub(crate) fn discover(seen: Seen, warnings: &mut Vec<String>) -> Vec<Servicer> {
    let Seen { src, mounts, devices, holders } = seen;
    let nbds: Vec<&BlockDevice> = devices.iter().filter(|d| d.kind == DeviceKind::Nbd && d.nbd_pid.is_some()).collect();
    if nbds.is_empty() {
        return Vec::new();
    }
    let owner: BTreeMap<u64, u32> =
        holders.by_node.iter().filter_map(|(node, fds)| Some((socket_inode(node)?, fds.first()?.0))).collect();
    let all = connections(src);
    let mut out = Vec::new();
    let mut orphans = Vec::new();
    for d in nbds {
        match of_device(src, mounts, d, &all, &owner) {
            Some(found) => out.extend(found),
            None => orphans.push(d),
        }
    }
    out.extend(orphan_servers(src, mounts, &orphans, &all, &owner, warnings));
    out
}

/// The servicers of `d` found through the process the kernel recorded for
/// it; `None` when that process is gone or has nothing of its own.
fn of_device(
    src: &Source,
    mounts: &[Mount],
    d: &BlockDevice,
    all: &[Conn],
    owner: &BTreeMap<u64, u32>,
) -> Option<Vec<Servicer>> {
    let recorded = d.nbd_pid?;
    // The kernel records the thread that ran NBD_DO_IT.
    let pid = procs::tgid_of(src, recorded).unwrap_or(recorded);
    let own: Vec<&Conn> = all.iter().filter(|c| owner.get(&c.inode) == Some(&pid)).collect();
    let servers = peers_of(&own, all, owner);
    if !servers.is_empty() {
        // The configuring process still holds the socket (ioctl mode).
        let why = Confidence::Certain { why: format!("the peer of {}'s socket (pid {pid})", d.name) };
        let kind = ServicerKind::NbdServer;
        return Some(
            servers
                .into_iter()
                .filter_map(|s| Servicer::process(src, mounts, kind, s, d.dev, d.label(), why.clone()))
                .collect(),
        );
    }
    // No TCP socket of its own, but the data: it serves the device itself
    // (qemu-nbd -c), with the kin that share that data.
    let files = Some(data(src, pid)).filter(|f| own.is_empty() && !f.is_empty())?;
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
/// with nothing of its own.
fn orphan_servers(
    src: &Source,
    mounts: &[Mount],
    orphans: &[&BlockDevice],
    all: &[Conn],
    owner: &BTreeMap<u64, u32>,
    warnings: &mut Vec<String>,
) -> Vec<Servicer> {
    if orphans.is_empty() {
        return Vec::new();
    }
    // The kernel holds the sockets of devices configured over netlink; it
    // does not say which socket is whose, so with several such devices the
    // match is ambiguous.
    let kernel_held: Vec<&Conn> = all.iter().filter(|c| !owner.contains_key(&c.inode)).collect();
    let servers = peers_of(&kernel_held, all, owner);
    if servers.is_empty() {
        for d in orphans {
            warnings.push(format!(
                "{}: no process serves its connection on this host (remote NBD server, or a unix socket): name it with --servicer",
                d.label()
            ));
        }
        return Vec::new();
    }
    let mut out = Vec::new();
    for d in orphans {
        let why = if orphans.len() == 1 {
            Confidence::Certain {
                why: format!("the peer of the only kernel-held TCP connection of an nbd device ({})", d.name),
            }
        } else {
            Confidence::Ambiguous { candidates: servers.len() }
        };
        for &s in &servers {
            out.extend(Servicer::process(src, mounts, ServicerKind::NbdServer, s, d.dev, d.label(), why.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/nbd0"), None);
    }

    #[test]
    fn peers_are_the_reversed_connection() {
        let c = |l: &str, r: &str, inode| Conn { local: l.into(), remote: r.into(), inode };
        let all = vec![c("0100007F:C350", "0100007F:2A29", 10), c("0100007F:2A29", "0100007F:C350", 11)];
        let owner = BTreeMap::from([(11, 900)]);
        assert_eq!(peers_of(&[&all[0]], &all, &owner), BTreeSet::from([900]));
        assert!(peers_of(&[&all[1]], &all, &owner).is_empty(), "its peer 10 has no owner");
    }
}
