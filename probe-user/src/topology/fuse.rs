//! FUSE daemons, matched to the mounts they serve.
//!
//! A FUSE mount's st_dev is an anonymous 0:N (or the block device, for
//! fuseblk) and its connection is that dev_t's kernel number, the N of
//! /sys/fs/fuse/connections/N. Daemons are the processes holding /dev/fuse
//! open. Recent kernels print `fuse_connection: N` in the fdinfo of a
//! /dev/fuse descriptor that is attached to a connection, which pins a
//! daemon to its mount. Without it, a lone holder of /dev/fuse is the daemon
//! of every mount; several holders leave the match ambiguous.

use super::model::Dev;
use super::model::Mount;
use super::model::{Confidence, Servicer, ServicerKind};
use super::procs::{self, Holders};
use super::source::Source;
use std::collections::{BTreeMap, BTreeSet};

pub(crate) const DEV_FUSE: &str = "/dev/fuse";

/// The FUSE connection number of a FUSE mount.
pub fn connection_of(m: &Mount) -> u32 {
    m.dev.to_kernel()
}

/// One servicer per (FUSE mount, daemon) pair.
pub(crate) fn discover(src: &Source, mounts: &[Mount], holders: &Holders, warnings: &mut Vec<String>) -> Vec<Servicer> {
    // pid → (fd, connection its fdinfo names), first /dev/fuse fd per connection.
    let mut pinned: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    let mut all_pids = BTreeSet::new();
    for &(pid, fd) in holders.of(DEV_FUSE) {
        all_pids.insert(pid);
        if let Some(conn) = procs::fdinfo(src, pid, fd).get("fuse_connection").and_then(|c| c.parse().ok()) {
            pinned.entry(pid).or_default().push((fd, conn));
        }
    }
    // Once the kernel names connections at all, a descriptor without one is
    // not attached to any mount and its holder serves nothing yet.
    let kernel_pins = !pinned.is_empty();

    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for m in mounts.iter().filter(|m| m.is_fuse()) {
        if !seen.insert(m.dev) {
            continue; // a bind mount of a filesystem already matched
        }
        let conn = connection_of(m);
        let name = format!("FUSE {} (connection {conn})", m.mount_point.display());
        let matches: Vec<(u32, Confidence)> = if kernel_pins {
            pinned
                .iter()
                .filter_map(|(pid, fds)| fds.iter().find(|(_, c)| *c == conn).map(|(fd, _)| (*pid, *fd)))
                .map(|(pid, fd)| {
                    (pid, Confidence::Certain { why: format!("its /dev/fuse fd {fd} is connection {conn} (fdinfo)") })
                })
                .collect()
        } else if all_pids.len() == 1 {
            all_pids
                .iter()
                .map(|&pid| (pid, Confidence::Certain { why: "the only process holding /dev/fuse".into() }))
                .collect()
        } else {
            all_pids.iter().map(|&pid| (pid, Confidence::Ambiguous { candidates: all_pids.len() })).collect()
        };
        if matches.is_empty() {
            warnings.push(format!("{name}: no process serves it (daemon exited, lives in another PID namespace, or is not visible without root)"));
        }
        out.extend(matches.into_iter().filter_map(|(pid, confidence)| {
            Servicer::process(src, mounts, ServicerKind::Fuse, pid, m.dev, name.clone(), confidence)
        }));
    }
    out
}

/// --servicer settles ambiguous FUSE matches: for each mount where a named
/// pid is among the candidates, the named candidates become Named and the
/// others are dropped.
pub(crate) fn settle_named(servicers: &mut Vec<Servicer>, named: &[u32]) {
    let is_named = |s: &Servicer| s.tgid.is_some_and(|t| named.contains(&t));
    let ambiguous = |s: &Servicer| s.kind == ServicerKind::Fuse && matches!(s.confidence, Confidence::Ambiguous { .. });
    let settled: BTreeSet<Dev> = servicers.iter().filter(|s| ambiguous(s) && is_named(s)).map(|s| s.serves).collect();
    servicers.retain(|s| !(ambiguous(s) && settled.contains(&s.serves) && !is_named(s)));
    for s in servicers.iter_mut().filter(|s| ambiguous(s) && is_named(s)) {
        s.confidence = Confidence::Named;
    }
}
