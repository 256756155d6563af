//! The servicer programs discovery recognises, by executable name. The
//! verdict always comes from the threads' real flags; knowing the program
//! only sharpens the remedy, and explains a verdict that contradicts what
//! the program is known to do. What each one does and how to fix it, in
//! words, is output/remedy.rs's table.

/// A program whose handling of reclaim recursion is known from its own
/// source and binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownServicer {
    TcmuRunner,
    /// nbd-server and nbd-client.
    Nbd,
    Iscsid,
    /// libublk and ublksrv servers.
    Ublk,
    /// qemu-storage-daemon, qemu-nbd, qemu-system.
    Qemu,
    /// FUSE daemons built on libfuse.
    FuseDaemon,
    /// tgt's userspace iSCSI target (tgtd).
    Tgt,
    /// nbdkit, an NBD server.
    Nbdkit,
    /// Ceph's rbd-nbd, which serves an RBD image over a socket pair.
    RbdNbd,
    /// SPDK's targets (NVMe-oF, iSCSI, vhost).
    Spdk,
    /// Mayastor's io-engine (OpenEBS), SPDK-based.
    MayastorIoEngine,
    /// The JuiceFS client (a FUSE daemon).
    JuiceFs,
}

/// Executable names (/proc/PID/exe's file name) of each program.
const EXES: &[(KnownServicer, &[&str])] = &[
    (KnownServicer::TcmuRunner, &["tcmu-runner"]),
    (KnownServicer::Nbd, &["nbd-server", "nbd-client"]),
    (KnownServicer::Iscsid, &["iscsid"]),
    (KnownServicer::Ublk, &["rublk", "ublk"]),
    (KnownServicer::Qemu, &["qemu-storage-daemon", "qemu-nbd", "qemu-system-x86_64"]),
    (KnownServicer::FuseDaemon, &["bindfs", "sshfs", "fuse-overlayfs", "fuse2fs", "s3fs"]),
    (KnownServicer::Tgt, &["tgtd"]),
    (KnownServicer::Nbdkit, &["nbdkit"]),
    (KnownServicer::RbdNbd, &["rbd-nbd"]),
    (KnownServicer::Spdk, &["spdk_tgt", "nvmf_tgt", "iscsi_tgt"]),
    (KnownServicer::MayastorIoEngine, &["io-engine"]),
    (KnownServicer::JuiceFs, &["juicefs"]),
];

impl KnownServicer {
    /// The program an executable's file name is.
    pub fn of_exe(exe: &str) -> Option<KnownServicer> {
        EXES.iter().find(|(_, names)| names.contains(&exe)).map(|(k, _)| *k)
    }

    /// A correct, current build sets PR_SET_IO_FLUSHER itself (iscsid
    /// since open-iscsi 2.1.5, libublk 0.4.7+, ublksrv 1.8+, JuiceFS
    /// 1.3.0+, Mayastor's io-engine since its PR #1911).
    pub fn sets_io_flusher(self) -> bool {
        matches!(
            self,
            KnownServicer::Iscsid | KnownServicer::Ublk | KnownServicer::JuiceFs | KnownServicer::MayastorIoEngine
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognised_by_executable_name() {
        assert_eq!(KnownServicer::of_exe("qemu-nbd"), Some(KnownServicer::Qemu));
        assert!(KnownServicer::of_exe("iscsid").is_some_and(KnownServicer::sets_io_flusher));
        assert_eq!(KnownServicer::of_exe("no-such-daemon"), None);
    }
}
