//! A mounted filesystem as the model holds it (topology/mountinfo.rs
//! parses it).

use super::dev::Dev;
use serde::Serialize;
use std::path::PathBuf;

/// One mounted filesystem (a line of mountinfo).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Unique mount id; /proc/PID/fdinfo's `mnt_id` refers to it.
    pub mount_id: u32,
    pub parent_id: u32,
    pub mount_point: PathBuf,
    /// The directory of the filesystem mounted here ("/" unless a bind mount).
    pub root: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// The filesystem's st_dev: the block device, or an anonymous 0:N
    /// (for FUSE, N is the connection number under /sys/fs/fuse/connections).
    pub dev: Dev,
    /// Per-superblock options, as the kernel prints them.
    pub super_options: String,
}

impl Mount {
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }

    /// Filesystems whose stat() may wait on another process or host: FUSE
    /// (a wedged daemon blocks it forever) and network filesystems.
    /// Discovery never stats files on these.
    pub fn stat_may_block(&self) -> bool {
        const REMOTE: &[&str] = &["nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs", "afs"];
        self.is_fuse() || REMOTE.contains(&self.fs_type.as_str())
    }

    /// "/mnt/x (xfs, 7:0)"
    pub fn label(&self) -> String {
        format!("{} ({}, {})", self.mount_point.display(), self.fs_type, self.dev)
    }
}
