//! Real storage stacks for reclaimscope's integration tests, `cargo xtask
//! demo` and `cargo xtask bench`: XFS over a device whose I/O a servicer
//! completes (a loop device over a plain, FUSE or NFS file, nbd, tcmu,
//! iSCSI to tgtd or LIO, NVMe/TCP to nvmet, ublk, optionally under dm),
//! optionally with the servicer in a small memory cgroup, which is enough
//! to reproduce a reclaim-recursion deadlock.
//!
//! Everything built here is torn down again, even after a deadlock: FUSE
//! connections are aborted through fusectl, filesystems are unmounted
//! lazily, devices disconnected, sessions logged out, kernel targets
//! removed from configfs, and every external command runs with a
//! timeout. What a stack makes is written in its ledger first, so a killed
//! run's leftovers are undone by the next one. Users serialize through
//! [`lock`], which also sweeps leftovers of crashed runs.

mod cmd;
mod hog;
mod inspect;
mod ledger;
mod memcg;
mod servicers;
mod stack;
mod sweep;

pub use cmd::run;
pub use hog::Hog;
pub use inspect::{
    blocked_threads, loops_backed_under, mounts_under, pid_alive, pid_running, where_blocked, MountEntry,
};
pub use memcg::{Hierarchy, Memcg, Pressure};
pub use stack::{Dm, Level, Servicer, StorageStack, StorageStackSpec, WORK_ROOT};
pub use sweep::sweep_stale;

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// Lock file shared by every process that builds storage stacks.
pub const LOCK_PATH: &str = "/run/reclaimscope-testbed.lock";

/// Held while using storage stacks; the flock is released on drop.
#[derive(Debug)]
pub struct TestbedLock {
    _file: File,
}

/// Serializes every storage-stack user across processes: flock on
/// /run/reclaimscope-testbed.lock (blocking, with a message while waiting),
/// then sweeps leftovers of crashed runs. Not reentrant: taking it twice in
/// one process blocks forever.
pub fn lock() -> Result<TestbedLock> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .with_context(|| format!("opening {LOCK_PATH}"))?;
    if !flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
        eprintln!("testbed: waiting for {LOCK_PATH}: another test, demo or bench is using storage stacks");
        flock(&file, libc::LOCK_EX)?;
    }
    // A leftover is reported, not fatal: new stacks use fresh names and free loop devices.
    if let Err(e) = sweep_stale() {
        eprintln!("testbed: warning: {e:#}");
    }
    Ok(TestbedLock { _file: file })
}

/// flock(2), retrying on EINTR; `Ok(false)` when LOCK_NB found it taken.
fn flock(file: &File, op: i32) -> Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err).with_context(|| format!("flock {LOCK_PATH}")),
        }
    }
}

/// True when running as root (euid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For root-only tests: fails the test when not root. A test that returned
/// early instead would pass without testing anything, and a suite run
/// without root would look green.
pub fn require_root(test_name: &str) {
    assert!(is_root(), "{test_name} needs root: run the root-only tests as root (cargo xtask test)");
}
