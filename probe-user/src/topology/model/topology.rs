//! The discovered storage stacks as one value, and the questions every
//! consumer asks of it. Discovery (topology/mod.rs) builds it; the graph
//! walk over it is topology/stack.rs.

use super::{BackingFile, BlockDevice, Dev, Mount, Servicer};
use serde::Serialize;
use std::collections::BTreeSet;

#[derive(Serialize, Clone, Debug)]
pub struct Topology {
    pub mounts: Vec<Mount>,
    pub devices: Vec<BlockDevice>,
    pub servicers: Vec<Servicer>,
    /// What discovery could not see, and why.
    pub warnings: Vec<String>,
}

impl Topology {
    /// Nothing known yet: what the agent works with until its first discovery ends.
    pub fn empty() -> Topology {
        Topology { mounts: Vec::new(), devices: Vec::new(), servicers: Vec::new(), warnings: Vec::new() }
    }

    pub fn device(&self, dev: Dev) -> Option<&BlockDevice> {
        self.devices.iter().find(|d| d.dev == dev)
    }

    /// Every file that backs a stacked block device.
    pub fn backing_files(&self) -> Vec<BackingFile> {
        self.devices.iter().filter_map(|d| d.backing_file.clone()).collect()
    }

    /// The filesystem types holding backing files: the write-frame hooks
    /// attach only for those (attach/gates.rs).
    pub fn backing_file_fs_types(&self) -> BTreeSet<String> {
        self.backing_files()
            .iter()
            .filter_map(|b| self.mounts.iter().find(|m| m.dev == b.file_dev))
            .map(|m| m.fs_type.clone())
            .collect()
    }

    /// Userspace servicer processes and the element each completes I/O for
    /// (a block device, or a FUSE filesystem's 0:N; [`Dev::NONE`] for a
    /// named servicer whose device is unknown). One pair per (tgid, element).
    pub fn servicer_processes(&self) -> Vec<(u32, Dev)> {
        let mut out: Vec<(u32, Dev)> = self.servicers.iter().filter_map(|s| Some((s.tgid?, s.serves))).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn servicer_by_tgid(&self, tgid: u32) -> Option<&Servicer> {
        self.servicers.iter().find(|s| s.tgid == Some(tgid))
    }

    /// Unprotected servicers under a mounted filesystem (what audit's exit code reflects).
    pub fn unprotected(&self) -> Vec<&Servicer> {
        self.servicers.iter().filter(|s| !s.protection.is_protected() && !s.under_mounts.is_empty()).collect()
    }
}
