//! `xtask workload`: the load `probes --measure` runs on each kernel of the
//! matrix, so that every hook's implementations are called often: writes
//! through XFS on loop on qemu-storage-daemon's FUSE export with the daemon
//! in a 256 MiB memory cgroup (servicer reclaim, shrinkers, dirty
//! throttling, block I/O), and a writer of plain ext4 in a 64 MiB cgroup
//! (reclaim by a task that serves nothing: the filters' fast path).

use std::{process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use testbed::{Memcg, StorageStack, StorageStackSpec};

pub fn run(mb: u64) -> Result<()> {
    let _lock = testbed::lock()?;
    let spec = StorageStackSpec::qsd_in_memcg(256);
    let mut stack = StorageStack::build("workload", &spec)?;
    let writer = stack.spawn_writer_outside_memcg("data", mb);
    let served = writer.and_then(|pid| stack.wait_writer(pid, Duration::from_secs(900)));
    let torn = stack.teardown();
    served.context("writing through the stacked XFS")?;
    torn?;

    let memcg = Memcg::create("workload", 64)?;
    let dir = std::path::Path::new("/var/tmp").join(format!("reclaimscope-workload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut dd = Command::new("dd");
    dd.args([
        "if=/dev/zero",
        &format!("of={}", dir.join("f").display()),
        "bs=1M",
        &format!("count={mb}"),
        "conv=fsync",
    ]);
    memcg.enter_on_spawn(&mut dd)?;
    let ok = dd.status().context("cannot run dd")?.success();
    let _ = std::fs::remove_dir_all(&dir);
    memcg.remove()?;
    if !ok {
        bail!("dd in the 64 MiB memcg failed");
    }
    Ok(())
}
