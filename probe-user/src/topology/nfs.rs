//! NFS mounts served from this host: a device whose data is a file on such
//! a mount (a loop device, a file named with --backing-file) completes its
//! I/O in the NFS server, knfsd's threads or a userspace server, which then
//! writes the exported filesystem. The mount's connection is what the
//! client's own record says: the server address (`addr=`) and port.

use super::connection::{self, Served};
use super::model::{Link, Mount, Servicer, Transport};
use super::seen::Seen;
use std::net::{IpAddr, SocketAddr};

/// NFS's port when the mount names none (`port=0` or no option).
const NFS_PORT: u16 = 2049;

/// The connection of an NFS mount, from its superblock options
/// ("rw,vers=4.2,...,proto=tcp,...,clientaddr=127.0.0.1,addr=127.0.0.1").
pub(crate) fn link(m: &Mount) -> Option<Link> {
    if m.fs_type != "nfs" && m.fs_type != "nfs4" {
        return None;
    }
    let opt = |k: &str| m.super_options.split(',').find_map(|o| o.strip_prefix(k)?.strip_prefix('='));
    let ip: IpAddr = opt("addr")?.parse().ok()?;
    let port = opt("port").and_then(|p| p.parse().ok()).filter(|&p| p != 0).unwrap_or(NFS_PORT);
    Some(Link { transport: Transport::Nfs, remote: SocketAddr::new(ip, port), local_port: None })
}

/// The servers of the devices whose backing files are on NFS mounts.
pub(crate) fn discover(seen: Seen, warnings: &mut Vec<String>) -> Vec<Servicer> {
    let mut out = Vec::new();
    for m in seen.mounts {
        let Some(link) = link(m) else { continue };
        for d in seen.devices.iter().filter(|d| d.backing_file.as_ref().is_some_and(|b| b.file_dev == m.dev)) {
            let served = Served { dev: d.dev, label: d.label(), mounts: seen.mounts };
            out.extend(connection::servicers(seen.src, seen.sockets, &served, std::slice::from_ref(&link), warnings));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::model::Dev;
    use std::path::PathBuf;

    fn mount(fs_type: &str, options: &str) -> Mount {
        Mount {
            mount_id: 90,
            parent_id: 1,
            mount_point: PathBuf::from("/mnt/nfs"),
            root: PathBuf::from("/"),
            fs_type: fs_type.into(),
            source: "127.0.0.1:/".into(),
            dev: Dev::new(0, 60),
            super_options: options.into(),
        }
    }

    #[test]
    fn the_server_comes_from_the_mount_options() {
        let v4 = mount(
            "nfs4",
            "rw,vers=4.2,rsize=1048576,proto=tcp,timeo=600,sec=sys,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1",
        );
        assert_eq!(link(&v4).map(|l| l.remote), Some("127.0.0.1:2049".parse().unwrap()));
        let v3 = mount("nfs", "rw,vers=3,proto=tcp,port=2050,addr=::1");
        assert_eq!(link(&v3).map(|l| l.remote), Some("[::1]:2050".parse().unwrap()));
        assert_eq!(link(&mount("ext4", "rw,addr=127.0.0.1")), None);
        assert_eq!(link(&mount("nfs4", "rw,vers=4.2")), None, "no address: nothing to follow");
    }
}
