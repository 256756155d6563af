//! The stack as a graph: which element sits on which.
//!
//! An *element* is something that completes I/O for a filesystem: a block
//! device or a FUSE connection, both named by a [`Dev`]. An element is
//! *stacked* when its I/O goes somewhere discovery can follow: to slave or
//! parent devices, to a backing file, or to a servicer (whose read-write
//! files are where it stores the data). Following those edges from a
//! mounted element down to a plain disk gives the storage stack.

use super::model::Dev;
use super::model::Mount;
use super::model::Servicer;
use super::mountinfo::mount_of_path;
use super::{connection_of, Topology};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Deeper than any real stack; stops a cycle a bind-mount trick could build.
const MAX_DEPTH: usize = 32;

/// What sits on and under one element, recursively down.
#[derive(Serialize, Clone, Debug)]
pub struct StackPath {
    /// The filesystem on this element: at the top of a path its mount
    /// (following dm/md holders and partitions up), below that the
    /// filesystem holding the file that led here, None for slave devices.
    pub upper: Option<Mount>,
    /// "loop0 (7:0)", "FUSE connection 39 (0:39)".
    pub device: String,
    pub dev: Dev,
    /// Driver details (dm name, nbd backend...).
    pub detail: Option<String>,
    /// Tasks completing this element's I/O.
    pub servicers: Vec<Servicer>,
    /// The file holding this element's data: a loop/--backing-file file, or
    /// else the first data file of its servicers.
    pub backing_file: Option<PathBuf>,
    pub backing_ino: Option<u64>,
    /// The filesystem holding `backing_file`.
    pub lower: Option<Mount>,
    /// The elements under this one.
    pub below: Vec<StackPath>,
    /// Where the first chain ends: the lowest filesystem reached.
    pub bottom: Option<Mount>,
}

/// One step down from an element.
enum Edge<'a> {
    Device(Dev),
    File { path: &'a Path, fs: Dev, ino: u64 },
}

impl Topology {
    /// The mount of the filesystem whose st_dev is `dev` (its "/" mount
    /// first: bind mounts of subdirectories show the same dev).
    pub fn mount_for_dev(&self, dev: Dev) -> Option<&Mount> {
        let mut on = self.mounts.iter().filter(|m| m.dev == dev);
        on.clone().find(|m| m.root == Path::new("/")).or_else(|| on.next())
    }

    /// Devices whose I/O the given device's upper fs depends on: `dev` and
    /// every element below it (block devices and FUSE connections).
    pub fn devices_below(&self, dev: Dev) -> Vec<Dev> {
        let mut out = vec![dev];
        let mut todo = vec![(dev, 0)];
        while let Some((d, depth)) = todo.pop() {
            for next in self.children(d) {
                if depth < MAX_DEPTH && !out.contains(&next) {
                    out.push(next);
                    todo.push((next, depth + 1));
                }
            }
        }
        out
    }

    /// Stacked devices (loop/nbd/ublk/dm/... with something under them):
    /// the block devices among the stacked elements.
    pub fn stacked_devices(&self) -> Vec<Dev> {
        self.devices.iter().map(|d| d.dev).filter(|&d| self.is_stacked(d)).collect()
    }

    /// What sits on and under a stacked element; None for an element that
    /// is not stacked (a plain disk) or unknown.
    pub fn path_of(&self, dev: Dev) -> Option<StackPath> {
        if !self.is_stacked(dev) {
            return None;
        }
        Some(self.path_inner(dev, self.upper_mount(dev, 0).cloned(), &mut Vec::new()))
    }

    /// Every stack, from its topmost elements: the stacked elements that no
    /// other stacked element sits on.
    pub fn stacks(&self) -> Vec<StackPath> {
        let elements = self.elements();
        let covered: BTreeSet<Dev> = elements.iter().flat_map(|&e| self.devices_below(e).into_iter().skip(1)).collect();
        elements.into_iter().filter(|e| !covered.contains(e)).filter_map(|e| self.path_of(e)).collect()
    }

    /// Stacked block devices and every FUSE connection (a FUSE filesystem
    /// always has a userspace servicer, found or not).
    pub(crate) fn elements(&self) -> Vec<Dev> {
        let mut out = self.stacked_devices();
        for m in self.mounts.iter().filter(|m| m.is_fuse()) {
            if !out.contains(&m.dev) {
                out.push(m.dev);
            }
        }
        out
    }

    pub(crate) fn is_stacked(&self, dev: Dev) -> bool {
        self.is_stacked_at(dev, 0)
    }

    fn is_stacked_at(&self, dev: Dev, depth: usize) -> bool {
        if self.mounts.iter().any(|m| m.dev == dev && m.is_fuse()) {
            return true;
        }
        let Some(d) = self.device(dev) else {
            return false;
        };
        !d.slaves.is_empty()
            || d.backing_file.is_some()
            || self.servicers_of(dev).next().is_some()
            || (depth < MAX_DEPTH && d.partition_of.is_some_and(|p| self.is_stacked_at(p, depth + 1)))
    }

    pub(crate) fn servicers_of(&self, dev: Dev) -> impl Iterator<Item = &Servicer> {
        self.servicers.iter().filter(move |s| s.serves == dev)
    }

    fn edges(&self, dev: Dev) -> Vec<Edge<'_>> {
        let mut out = Vec::new();
        if let Some(d) = self.device(dev) {
            out.extend(d.partition_of.map(Edge::Device));
            out.extend(d.slaves.iter().copied().map(Edge::Device));
            out.extend(d.backing_file.as_ref().map(|b| Edge::File { path: &b.path, fs: b.file_dev, ino: b.ino }));
        }
        for s in self.servicers_of(dev) {
            out.extend(s.data_files.iter().map(|f| Edge::File { path: &f.path, fs: f.dev, ino: f.ino }));
        }
        out
    }

    /// The stacked elements directly under `dev`.
    fn children(&self, dev: Dev) -> Vec<Dev> {
        let mut out = Vec::new();
        for e in self.edges(dev) {
            let next = match e {
                Edge::Device(d) => d,
                Edge::File { fs, .. } => fs,
            };
            if next != dev && self.is_stacked(next) && !out.contains(&next) {
                out.push(next);
            }
        }
        out
    }

    /// The filesystem on `dev`, or on a device built on it (dm/md holder, partition).
    fn upper_mount(&self, dev: Dev, depth: usize) -> Option<&Mount> {
        if let Some(m) = self.mount_for_dev(dev) {
            return Some(m);
        }
        if depth >= MAX_DEPTH {
            return None;
        }
        let holders = self.device(dev).map(|d| d.holders.clone()).unwrap_or_default();
        let partitions = self.devices.iter().filter(|d| d.partition_of == Some(dev)).map(|d| d.dev);
        holders.into_iter().chain(partitions).find_map(|h| self.upper_mount(h, depth + 1))
    }

    fn element_name(&self, dev: Dev) -> String {
        match self.device(dev) {
            Some(d) => d.label(),
            None => format!(
                "FUSE connection {} ({dev})",
                self.mount_for_dev(dev).map(connection_of).unwrap_or(dev.to_kernel())
            ),
        }
    }

    fn file_mount(&self, path: &Path, fs: Dev) -> Option<&Mount> {
        mount_of_path(&self.mounts, path, Some(fs))
    }

    /// `ancestors` holds the elements above, so that a cycle ends instead of
    /// recursing; a diamond (two devices on one lower fs) shows in both branches.
    fn path_inner(&self, dev: Dev, upper: Option<Mount>, ancestors: &mut Vec<Dev>) -> StackPath {
        ancestors.push(dev);
        let edges = self.edges(dev);
        let first_file = edges.iter().find_map(|e| match e {
            Edge::File { path, fs, ino } => Some((path.to_path_buf(), *ino, self.file_mount(path, *fs).cloned())),
            Edge::Device(_) => None,
        });
        let mut below = Vec::new();
        if ancestors.len() < MAX_DEPTH {
            for e in &edges {
                let (next, next_upper) = match e {
                    Edge::Device(d) => (*d, None),
                    Edge::File { path, fs, .. } => (*fs, self.file_mount(path, *fs).cloned()),
                };
                if self.is_stacked(next)
                    && !ancestors.contains(&next)
                    && !below.iter().any(|b: &StackPath| b.dev == next)
                {
                    below.push(self.path_inner(next, next_upper, ancestors));
                }
            }
        }
        ancestors.pop();
        let (backing_file, backing_ino, lower) = match first_file {
            Some((p, ino, m)) => (Some(p), Some(ino), m),
            None => (None, None, None),
        };
        let bottom = below.first().and_then(|b| b.bottom.clone()).or_else(|| lower.clone());
        StackPath {
            upper,
            device: self.element_name(dev),
            dev,
            detail: self.device(dev).and_then(|d| d.detail.clone()),
            servicers: self.servicers_of(dev).cloned().collect(),
            backing_file,
            backing_ino,
            lower,
            below,
            bottom,
        }
    }

    /// FUSE filesystems under a mounted block-device filesystem whose daemon
    /// was not found (not root, another PID namespace, daemon gone): nobody
    /// can vouch for their protection.
    pub fn unseen_servicers(&self) -> Vec<Dev> {
        let mut out = Vec::new();
        for top in self.stacked_devices().into_iter().filter(|&d| self.mount_for_dev(d).is_some()) {
            for e in self.devices_below(top) {
                let fuse = self.mounts.iter().any(|m| m.dev == e && m.is_fuse());
                if fuse && self.servicers_of(e).next().is_none() && !out.contains(&e) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// Fills each servicer's `under_mounts` and `supports`: the stacked block
    /// devices (and the filesystems mounted on them) whose I/O completes
    /// through it. A FUSE mount alone does not count: the kernel does not
    /// let reclaim wait on FUSE writeback (temporary pages before 6.16,
    /// AS_WRITEBACK_MAY_DEADLOCK_ON_RECLAIM since); a block device stacked
    /// on a FUSE file has no such guard.
    pub(crate) fn link_servicers(&mut self) {
        let stacked = self.stacked_devices();
        let mut links: Vec<(Dev, Dev, Option<PathBuf>)> = Vec::new(); // (element served, supported device, its mount point)
        for &top in &stacked {
            let mount = self.mount_for_dev(top).map(|m| m.mount_point.clone());
            for e in self.devices_below(top) {
                links.push((e, top, mount.clone()));
            }
        }
        let all_mounted: Vec<PathBuf> =
            stacked.iter().filter_map(|&d| self.mount_for_dev(d)).map(|m| m.mount_point.clone()).collect();
        for s in &mut self.servicers {
            if s.serves == Dev::NONE && s.tgid.is_some() && matches!(s.confidence, super::Confidence::Named) {
                s.supports = stacked.clone();
                s.under_mounts = all_mounted.clone();
                continue;
            }
            for (e, top, mount) in &links {
                if *e != s.serves {
                    continue;
                }
                if !s.supports.contains(top) {
                    s.supports.push(*top);
                }
                if let Some(m) = mount {
                    if !s.under_mounts.contains(m) {
                        s.under_mounts.push(m.clone());
                    }
                }
            }
        }
    }
}
