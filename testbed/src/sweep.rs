//! Cleaning up after earlier runs that crashed or were killed before their
//! teardown ran: their mounts, loop devices, daemons and memcgs would
//! otherwise pile up. Only leftovers whose owning process is gone are touched.

use crate::inspect::{
    abort_fuse_under, loop_backing_file, loop_detach, loops_backed_under, mounts_under, pid_alive, umount_lazy,
};
use crate::memcg::{memcg_root, remove_cgroup, MEMCG_PREFIX};
use crate::stack::WORK_ROOT;
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// Remove leftovers of earlier crashed runs (mounts/loops/memcgs/daemons under
/// /tmp/reclaimscope-testbed and reclaimscope-* cgroups). Called by `lock()`.
pub fn sweep_stale() -> Result<()> {
    let mut errs = Vec::new();
    for dir in stale_entries(Path::new(WORK_ROOT), "") {
        errs.extend(sweep_workdir(&dir));
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

/// Directories `<prefix><name>-<pid>` in `root` whose pid no longer exists.
fn stale_entries(root: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(prefix).and_then(|n| n.rsplit_once('-')).and_then(|(_, p)| p.parse().ok());
            pid.is_some_and(|pid| !pid_alive(pid))
        })
        .map(|e| e.path())
        .collect()
}

/// Same order as `Stack::teardown`, discovering the pieces from the kernel.
fn sweep_workdir(dir: &Path) -> Vec<anyhow::Error> {
    let mut errs = Vec::new();
    eprintln!("testbed: sweeping stale {}", dir.display());
    // Collected before unmounting: afterwards nested backing paths are detached.
    let loops = loops_backed_under(dir);
    if let Err(e) = abort_fuse_under(dir) {
        errs.push(e);
    }
    if let Err(e) = kill_users(dir) {
        errs.push(e);
    }
    for m in mounts_under(dir).iter().rev() {
        if let Err(e) = umount_lazy(&m.mountpoint) {
            errs.push(e);
        }
    }
    for dev in &loops {
        if let Err(e) = loop_detach(dev) {
            errs.push(e);
        }
    }
    let still_bound =
        |dev: &&std::path::PathBuf| dev.file_name().and_then(|n| n.to_str()).and_then(loop_backing_file).is_some();
    let deadline = Instant::now() + Duration::from_secs(10);
    while loops.iter().any(|d| still_bound(&d)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    errs.extend(loops.iter().filter(still_bound).map(|d| anyhow!("{} is still bound", d.display())));
    if mounts_under(dir).is_empty() {
        if let Err(e) = fs::remove_dir_all(dir) {
            errs.push(anyhow!(e).context(format!("removing {}", dir.display())));
        }
    }
    errs
}

/// SIGKILL every process whose command line names a file in `dir` (the qsd
/// daemon and dd writers of a dead run) and wait until they are gone.
fn kill_users(dir: &Path) -> Result<()> {
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let mut victims = Vec::new();
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid != me && String::from_utf8_lossy(&cmdline).contains(&needle) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            victims.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while victims.iter().any(|&p| pid_alive(p)) {
        if Instant::now() >= deadline {
            bail!("processes using {} survive SIGKILL: {victims:?}", dir.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
