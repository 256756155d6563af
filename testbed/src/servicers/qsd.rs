//! qemu-storage-daemon exporting the lower file through FUSE: a userspace
//! servicer that allocates with __GFP_FS|__GFP_IO and can deadlock.

use super::wait_until;
use crate::inspect::mounts_under;
use crate::ledger::Item;
use crate::stack::{sparse_file, Bottom, StorageStack};
use anyhow::{Context, Result};
use std::fs::File;
use std::process::Command;
use std::time::Duration;

pub(crate) fn start(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    let lower = stack.data_file.clone();
    sparse_file(&lower, mb << 20)?;
    let fuse = stack.workdir.join("fuse.img");
    File::create(&fuse).with_context(|| format!("creating {}", fuse.display()))?;
    // Through the launcher, if any: it execs qemu-storage-daemon in place.
    let mut cmd = match stack.launcher.split_first() {
        Some((l, rest)) => {
            let mut c = Command::new(l);
            c.args(rest).arg("qemu-storage-daemon");
            c
        }
        None => Command::new("qemu-storage-daemon"),
    };
    cmd.arg("--blockdev")
        .arg(format!("driver=file,node-name=f0,filename={},aio=threads", lower.display()))
        .args(["--blockdev", "driver=raw,node-name=r0,file=f0", "--export"])
        .arg(format!("type=fuse,id=e0,node-name=r0,mountpoint={},writable=on", fuse.display()));
    let pid = stack.spawn_daemon("qemu-storage-daemon", &mut cmd)?;
    stack.daemon_pid = Some(pid);
    stack.fuse_mount = Some(fuse.clone());
    stack.ledger.add(Item::Mount(fuse.clone()))?;
    wait_until(
        "qemu-storage-daemon did not mount its export",
        Duration::from_secs(30),
        || stack.check_alive("qemu-storage-daemon", pid),
        || mounts_under(&fuse).iter().any(|m| m.mountpoint == fuse),
    )?;
    Ok(Bottom::File(fuse))
}
