//! `cargo xtask demo`: the product doing what it exists for. Builds XFS on a
//! loop device on qemu-storage-daemon's FUSE export on ext4, inside a memory
//! cgroup, runs `reclaimscope record` over a writer, and tears it all down.
//! With `--deadlock` the cgroup is small enough for the real deadlock to form;
//! the demo lets the agent flag it, then breaks it by aborting the FUSE
//! connection. Then the postmortem a user would do: the trace's findings
//! as a flame graph of the reclaim stacks, and its timeline for Perfetto,
//! both under target/demo/.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use testbed::{StorageStack, StorageStackSpec};

use crate::{
    build::run_build,
    flamegraph,
    setup::run_setup,
    util::{interrupt, is_root, root},
};

/// Where the demo leaves its trace, flame graph and timeline.
fn out_dir() -> PathBuf {
    root().join("target").join("demo")
}

fn scenario(stack: &mut StorageStack, bin: &Path, trace: &Path, deadlock: bool) -> Result<()> {
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
    // `record` prints each finding as it is made, like `watch`, and keeps
    // the events for the postmortem.
    let record = Command::new(bin)
        .args(["record", "-o"])
        .arg(trace)
        .args(["--summary-every", "5"])
        .spawn()
        .context("cannot start reclaimscope record")?;
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
    interrupt(record, Duration::from_secs(10))?;
    result
}

/// The postmortem of the demo's trace: `report --folded` drawn as a flame
/// graph with inferno, and `report --perfetto` for the timeline. Says where.
fn postmortem(bin: &Path, trace: &Path, deadlock: bool) -> Result<()> {
    let dir = out_dir();
    let timeline = dir.join("demo-timeline.json");
    let svg = dir.join("demo-flamegraph.svg");
    let out = Command::new(bin)
        .args(["report", "--folded", "--perfetto"])
        .arg(&timeline)
        .arg(trace)
        .output()
        .context("cannot run reclaimscope report")?;
    if !out.status.success() {
        bail!("reclaimscope report --folded failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let folded = String::from_utf8(out.stdout).context("reclaimscope report --folded printed non-UTF-8")?;
    let title =
        if deadlock { "reclaimscope demo --deadlock: reclaim stacks" } else { "reclaimscope demo: reclaim stacks" };
    flamegraph::write_svg(&folded, title, &svg)?;
    println!("demo: trace: {}", trace.display());
    println!("demo: flame graph of the reclaim stacks: {}", svg.display());
    println!("demo: timeline for ui.perfetto.dev or chrome://tracing: {}", timeline.display());
    Ok(())
}

pub fn run(deadlock: bool) -> Result<()> {
    run_setup()?;
    let bin = run_build(true)?;
    if !is_root() {
        bail!("the demo builds loop devices, mounts and memory cgroups: run it as root");
    }
    let _lock = testbed::lock()?;
    let spec = StorageStackSpec::qsd_in_memcg(if deadlock { 96 } else { 256 });
    std::fs::create_dir_all(out_dir()).with_context(|| format!("cannot create {}", out_dir().display()))?;
    let trace = out_dir().join("demo.trace");
    let mut stack = StorageStack::build("demo", &spec)?;
    let result = scenario(&mut stack, &bin, &trace, deadlock);
    let torn = stack.teardown();
    println!("demo: storage stack torn down");
    result.and(torn)?;
    postmortem(&bin, &trace, deadlock)
}
