//! `cargo xtask bench`: fio 4 KiB buffered random writes through XFS on a
//! loop device on qemu-storage-daemon's FUSE export, alternating runs with
//! and without `reclaimscope watch`, reporting the throughput ratio.

use std::{
    process::{Child, Command},
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use testbed::{Servicer, StorageStack, StorageStackSpec};

use crate::{
    build::run_build,
    setup::run_setup,
    util::{interrupt, is_root},
};

fn fio(dir: &std::path::Path, seconds: u32) -> Result<f64> {
    let out = testbed::run(
        Command::new("fio").args([
            "--name=rs-bench",
            &format!("--directory={}", dir.display()),
            "--rw=randwrite",
            "--bs=4k",
            "--size=256M",
            "--ioengine=psync",
            "--time_based",
            &format!("--runtime={seconds}"),
            "--end_fsync=1",
            "--output-format=json",
        ]),
        Duration::from_secs(seconds as u64 + 120),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("fio printed no JSON")?;
    v["jobs"][0]["write"]["iops"].as_f64().context("no write iops in fio's JSON")
}

fn start_watch(bin: &std::path::Path) -> Result<Child> {
    let child = Command::new(bin)
        .args(["watch", "--json", "--summary-every", "3600"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start reclaimscope watch")?;
    sleep(Duration::from_secs(3));
    Ok(child)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn measure(stack: &StorageStack, bin: &std::path::Path, runs: u32, seconds: u32) -> Result<(Vec<f64>, Vec<f64>)> {
    let dir = &stack.top().mountpoint;
    let (mut base, mut traced) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate the order so drift (page cache, XFS log) hits both sides.
        for traced_first in [i % 2 == 1, i % 2 == 0] {
            if traced_first {
                let w = start_watch(bin)?;
                let r = fio(dir, seconds);
                interrupt(w, Duration::from_secs(15))?;
                traced.push(r?);
            } else {
                base.push(fio(dir, seconds)?);
            }
        }
        println!(
            "bench: run {}: baseline {:.0} IOPS, traced {:.0} IOPS",
            i + 1,
            base[base.len() - 1],
            traced[traced.len() - 1]
        );
    }
    Ok((base, traced))
}

pub fn run(runs: u32, seconds: u32) -> Result<()> {
    run_setup()?;
    let bin = run_build(true)?;
    if !is_root() {
        bail!("the bench builds loop devices and mounts: run it as root");
    }
    let _lock = testbed::lock()?;
    let spec =
        StorageStackSpec { servicer: Servicer::QsdFuse, levels: 1, image_mb: 1024, memcg_limit_mb: None, dm: None };
    let stack = StorageStack::build("bench", &spec)?;
    let result = measure(&stack, &bin, runs.max(1), seconds.max(1));
    stack.teardown()?;
    let (base, traced) = result?;
    let (b, t) = (median(base), median(traced));
    println!("bench: fio randwrite 4k buffered, {runs} x {seconds} s each side");
    println!("bench: median baseline {b:.0} IOPS, median with watch {t:.0} IOPS, ratio {:.3}", t / b);
    Ok(())
}
