//! The part of the storage topology the rules need, in a form that is
//! serialised into trace files so a report on another machine sees the
//! stack the way the agent did.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::topology::{Dev, Topology};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRef {
    pub dev: Dev,
    pub fs_type: String,
    pub mount_point: String,
}

/// A file that backs a stacked device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingEdge {
    /// The filesystem holding the file.
    pub file_dev: Dev,
    pub path: String,
    /// The device it backs.
    pub backs: Dev,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicerRef {
    pub tgid: u32,
    pub comm: String,
    /// The executable's full name (comm is cut at 15 bytes).
    #[serde(default)]
    pub program: Option<String>,
    pub serves: Dev,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageIndex {
    pub mounts: Vec<MountRef>,
    pub backing: Vec<BackingEdge>,
    pub servicers: Vec<ServicerRef>,
    /// (upper, lower): the I/O of `upper` completes through `lower`, for
    /// every pair the topology's graph connects (dm/md slaves, partitions,
    /// backing files, servicers' data files), transitively. Traces written
    /// before it existed have only `backing`.
    #[serde(default)]
    pub below: Vec<(Dev, Dev)>,
}

impl StorageIndex {
    pub fn from_topology(t: &Topology) -> StorageIndex {
        StorageIndex {
            mounts: t
                .mounts
                .iter()
                .map(|m| MountRef {
                    dev: m.dev,
                    fs_type: m.fs_type.clone(),
                    mount_point: m.mount_point.display().to_string(),
                })
                .collect(),
            backing: t
                .backing_files()
                .into_iter()
                .map(|b| BackingEdge { file_dev: b.file_dev, path: b.path.display().to_string(), backs: b.backs })
                .collect(),
            servicers: t
                .servicer_processes()
                .into_iter()
                .map(|(tgid, serves)| ServicerRef {
                    tgid,
                    comm: t.servicer_by_tgid(tgid).map(|s| s.comm.clone()).unwrap_or_default(),
                    program: t.servicer_by_tgid(tgid).and_then(|s| s.program.clone()),
                    serves,
                })
                .collect(),
            below: t
                .elements()
                .into_iter()
                .flat_map(|upper| t.devices_below(upper).into_iter().skip(1).map(move |lower| (upper, lower)))
                .collect(),
        }
    }

    pub fn mount_on(&self, dev: Dev) -> Option<&MountRef> {
        self.mounts.iter().find(|m| m.dev == dev)
    }

    pub fn backing_of(&self, dev: Dev) -> Option<&BackingEdge> {
        self.backing.iter().find(|b| b.backs == dev)
    }

    pub fn servicer(&self, tgid: u32) -> Option<&ServicerRef> {
        self.servicers.iter().find(|s| s.tgid == tgid)
    }

    /// Every device whose filesystem depends on I/O to `dev`: `dev` itself,
    /// every device stacked on it in the topology's graph (a dm device on
    /// it, a loop device backed by a file on it), and so on up (an XFS on
    /// loop1 whose file lives on the XFS on loop0, ...).
    pub fn upper_devs(&self, dev: Dev) -> BTreeSet<Dev> {
        let mut set = BTreeSet::from([dev]);
        loop {
            let before = set.len();
            for b in &self.backing {
                if set.contains(&b.file_dev) {
                    set.insert(b.backs);
                }
            }
            for &(upper, lower) in &self.below {
                if set.contains(&lower) {
                    set.insert(upper);
                }
            }
            if set.len() == before {
                return set;
            }
        }
    }

    /// The filesystem at the bottom of the stack under `dev`.
    pub fn bottom_mount(&self, dev: Dev) -> Option<&MountRef> {
        let mut cur = dev;
        for _ in 0..16 {
            match self.backing_of(cur) {
                Some(b) => cur = b.file_dev,
                None => break,
            }
        }
        (cur != dev).then(|| self.mount_on(cur)).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(major: u32, minor: u32) -> Dev {
        Dev { major, minor }
    }

    /// XFS on loop1, whose file is on the XFS on loop0, whose file is a FUSE
    /// file (0:50) on ext4 (254:0).
    fn three_levels() -> StorageIndex {
        let m = |dev, fs: &str, mp: &str| MountRef { dev, fs_type: fs.into(), mount_point: mp.into() };
        StorageIndex {
            mounts: vec![
                m(d(254, 0), "ext4", "/"),
                m(d(0, 50), "fuse", "/t/fuse.img"),
                m(d(7, 0), "xfs", "/t/l0"),
                m(d(7, 1), "xfs", "/t/l1"),
            ],
            backing: vec![
                BackingEdge { file_dev: d(0, 50), path: "/t/fuse.img".into(), backs: d(7, 0) },
                BackingEdge { file_dev: d(7, 0), path: "/t/l0/img".into(), backs: d(7, 1) },
            ],
            servicers: vec![ServicerRef { tgid: 100, comm: "qemu-storage-d".into(), program: None, serves: d(7, 0) }],
            below: vec![],
        }
    }

    #[test]
    fn upper_devs_follow_the_stack_up() {
        let idx = three_levels();
        assert_eq!(idx.upper_devs(d(7, 0)), BTreeSet::from([d(7, 0), d(7, 1)]));
        assert_eq!(idx.upper_devs(d(7, 1)), BTreeSet::from([d(7, 1)]));
    }

    #[test]
    fn upper_devs_follow_device_edges_too() {
        // XFS on dm-0 (253:0), whose slave is nbd0 (43:0).
        let idx = StorageIndex { below: vec![(d(253, 0), d(43, 0))], ..Default::default() };
        assert_eq!(idx.upper_devs(d(43, 0)), BTreeSet::from([d(43, 0), d(253, 0)]));
        assert_eq!(idx.upper_devs(d(253, 0)), BTreeSet::from([d(253, 0)]));
    }

    #[test]
    fn bottom_is_found_through_every_level() {
        let idx = three_levels();
        assert_eq!(idx.bottom_mount(d(7, 1)).unwrap().fs_type, "fuse");
        assert!(idx.bottom_mount(d(254, 0)).is_none());
    }
}
