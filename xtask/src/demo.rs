//! `cargo xtask demo`: the product doing what it exists for. Builds XFS on a
//! loop device on qemu-storage-daemon's FUSE export on ext4, inside a memory
//! cgroup, runs `reclaimscope watch` over a writer, and tears it all down.
//! With `--deadlock` the cgroup is small enough for the real deadlock to form;
//! the demo lets the agent flag it, then breaks it by aborting the FUSE
//! connection.

use std::{process::Command, thread::sleep, time::Duration};

use anyhow::{bail, Context, Result};
use testbed::{StorageStack, StorageStackSpec};

use crate::{
    build::run_build,
    setup::run_setup,
    util::{interrupt, is_root},
};

fn scenario(stack: &mut StorageStack, bin: &std::path::Path, deadlock: bool) -> Result<()> {
    let top = stack.top();
    println!(
        "demo: XFS at {} on {} ({}:{}) <- {} <- qemu-storage-daemon (pid {}) <- ext4; memory cgroup {} MiB",
        top.mountpoint.display(),
        top.device.display(),
        top.devt.0,
        top.devt.1,
        stack.fuse_mount.as_ref().map(|f| f.display().to_string()).unwrap_or_default(),
        stack.daemon_pid.unwrap_or(0),
        if deadlock { 96 } else { 256 },
    );
    let watch =
        Command::new(bin).args(["watch", "--summary-every", "5"]).spawn().context("cannot start reclaimscope watch")?;
    sleep(Duration::from_secs(3));
    // The hazard run keeps the writer outside the cgroup: only the daemon is
    // under pressure, so it reclaims (the hazard) without the deadlock.
    let writer =
        if deadlock { stack.spawn_writer("data", 512)? } else { stack.spawn_writer_outside_memcg("data", 512)? };
    println!("demo: writer dd (pid {writer}) writes 512 MiB into the XFS");
    let result = if deadlock {
        sleep(Duration::from_secs(25));
        let stuck = stack.daemon_pid.map(testbed::blocked_threads).unwrap_or_default();
        println!(
            "demo: {} qemu-storage-daemon thread(s) in D state; breaking the deadlock by aborting the FUSE connection",
            stuck.len()
        );
        stack.abort_fuse()
    } else {
        stack.wait_writer(writer, Duration::from_secs(180))
    };
    sleep(Duration::from_secs(2));
    interrupt(watch, Duration::from_secs(10))?;
    result
}

pub fn run(deadlock: bool) -> Result<()> {
    run_setup()?;
    let bin = run_build(true)?;
    if !is_root() {
        bail!("the demo builds loop devices, mounts and memory cgroups: run it as root");
    }
    let _lock = testbed::lock()?;
    let spec = StorageStackSpec::qsd_in_memcg(if deadlock { 96 } else { 256 });
    let mut stack = StorageStack::build("demo", &spec)?;
    let result = scenario(&mut stack, &bin, deadlock);
    let torn = stack.teardown();
    println!("demo: storage stack torn down");
    result.and(torn)
}
