//! bindfs, a FUSE daemon from Debian's packages, mirroring a directory of
//! the lower filesystem: the loop device's file lives in the mirror, so
//! bindfs completes its I/O with pwrite() into ext4, as qemu-storage-daemon
//! does, but through libfuse.

use super::wait_until;
use crate::inspect::mounts_under;
use crate::ledger::Item;
use crate::stack::{sparse_file, Bottom, StorageStack};
use anyhow::{Context, Result};
use std::fs;
use std::process::Command;
use std::time::Duration;

pub(crate) fn start(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    let src = stack.workdir.join("bindsrc");
    let mnt = stack.workdir.join("bindmnt");
    fs::create_dir(&src).and_then(|()| fs::create_dir(&mnt)).context("creating bindfs directories")?;
    stack.data_file = src.join("lower.img");
    sparse_file(&stack.data_file, mb << 20)?;
    // -f: stay in the foreground, so the pid we start is the servicer.
    let mut cmd = Command::new("bindfs");
    cmd.arg("-f").arg(&src).arg(&mnt);
    let pid = stack.spawn_daemon("bindfs", &mut cmd)?;
    stack.daemon_pid = Some(pid);
    stack.fuse_mount = Some(mnt.clone());
    stack.ledger.add(Item::Mount(mnt.clone()))?;
    wait_until(
        "bindfs did not mount its mirror",
        Duration::from_secs(30),
        || stack.check_alive("bindfs", pid),
        || mounts_under(&mnt).iter().any(|m| m.mountpoint == mnt),
    )?;
    Ok(Bottom::File(mnt.join("lower.img")))
}
