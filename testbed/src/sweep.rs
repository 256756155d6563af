//! Cleaning up after earlier runs that crashed or were killed before their
//! teardown ran: their mounts, devices, daemons and memcgs would otherwise
//! pile up. Only leftovers whose owning process is gone are touched, and
//! only through what their ledger says they made.

use crate::inspect::{abort_fuse_under, loop_backing_file, mounts_under, pid_alive};
use crate::ledger::{Item, Ledger};
use crate::memcg::{memcg_root, remove_cgroup, MEMCG_PREFIX};
use crate::stack::WORK_ROOT;
use anyhow::{bail, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Remove leftovers of earlier crashed runs: stacks under
/// /tmp/reclaimscope-testbed whose owner is dead, loop devices still bound
/// to files of dead owners (whose directory may be gone), reclaimscope-*
/// cgroups. Called by `lock()`.
pub fn sweep_stale() -> Result<()> {
    let mut errs = Vec::new();
    for dir in stale_entries(Path::new(WORK_ROOT), "") {
        errs.extend(sweep_workdir(&dir));
    }
    for (dev, backing) in orphan_loops() {
        let mut l = Ledger::create(Path::new("/nonexistent"));
        l.push_unrecorded(Item::Loop { dev, backing });
        errs.extend(l.undo_all());
    }
    // After the workdirs: their daemons were in these cgroups.
    for dir in memcg_root().map(|r| stale_entries(r, MEMCG_PREFIX)).unwrap_or_default() {
        if let Err(e) = remove_cgroup(&dir) {
            errs.push(e);
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    let msgs: Vec<String> = errs.iter().map(|e| format!("{e:#}")).collect();
    bail!("stale testbed leftovers remain: {}", msgs.join("; "))
}

/// The owner pid in `<prefix><name>-<pid>`.
fn owner(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix).and_then(|n| n.rsplit_once('-')).and_then(|(_, p)| p.parse().ok())
}

/// Directories `<prefix><name>-<pid>` in `root` whose pid no longer exists.
fn stale_entries(root: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| owner(&e.file_name().to_string_lossy(), prefix).is_some_and(|pid| !pid_alive(pid)))
        .map(|e| e.path())
        .collect()
}

/// Loop devices bound to a file under WORK_ROOT of a dead owner.
fn orphan_loops() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = fs::read_dir("/sys/block") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = PathBuf::from(loop_backing_file(&name)?);
            let rel = backing.strip_prefix(WORK_ROOT).ok()?;
            let dir = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
            owner(&dir, "").is_some_and(|pid| !pid_alive(pid)).then(|| (PathBuf::from("/dev").join(name), backing))
        })
        .collect()
}

/// FUSE aborted first (it frees whatever waits on a dead daemon), then the
/// ledger undone newest first, as `StorageStack::teardown` does.
fn sweep_workdir(dir: &Path) -> Vec<anyhow::Error> {
    eprintln!("testbed: sweeping stale {}", dir.display());
    let mut errs = Vec::new();
    if let Err(e) = abort_fuse_under(dir) {
        errs.push(e);
    }
    errs.extend(Ledger::read(dir).undo_all());
    if errs.is_empty() && mounts_under(dir).is_empty() {
        if let Err(e) = fs::remove_dir_all(dir) {
            errs.push(anyhow::anyhow!(e).context(format!("removing {}", dir.display())));
        }
    }
    errs
}
