//! A ublk device served by rublk's loop target (crates.io, built by
//! `cargo xtask setup` into target/vm/tools). Two releases are kept: 0.2.15
//! (libublk 0.4.7+, which calls prctl(PR_SET_IO_FLUSHER, 1)) and 0.2.14
//! (libublk 0.4.6, which calls it with 0 and so clears the flag).

use super::wait_until;
use crate::ledger::Item;
use crate::stack::{sparse_file, Bottom, StorageStack};
use anyhow::{bail, Result};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The rublk release whose libublk sets (or clears) PR_SET_IO_FLUSHER.
fn rublk(io_flusher: bool) -> Result<PathBuf> {
    super::tool(&format!("rublk-{}/bin/rublk", if io_flusher { "0.2.15" } else { "0.2.14" }))
}

/// ublk devices present now, by id.
fn devices() -> Vec<u32> {
    fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("ublkb")?.parse().ok())
        .collect()
}

pub(crate) fn start(stack: &mut StorageStack, mb: u64, io_flusher: bool) -> Result<Bottom> {
    if !std::path::Path::new("/dev/ublk-control").exists() {
        bail!("no /dev/ublk-control: this kernel has no ublk_drv module");
    }
    let bin = rublk(io_flusher)?;
    let lower = stack.data_file.clone();
    sparse_file(&lower, mb << 20)?;
    let before = devices();
    // In the foreground, the process we start is the server. Buffered I/O
    // into the backing file, as qemu-storage-daemon and tcmu-runner do
    // (rublk's default is O_DIRECT, which keeps its writes out of the page
    // cache and out of the memcg's reclaim).
    let mut cmd = Command::new(&bin);
    cmd.args(["add", "loop", "--foreground", "--buffered-io", "-f"]).arg(&lower);
    let server = stack.spawn_daemon("rublk", &mut cmd)?;
    let mut id = None;
    wait_until(
        "rublk made no ublk device",
        Duration::from_secs(60),
        || stack.check_alive("rublk", server),
        || {
            id = devices().into_iter().find(|d| !before.contains(d));
            id.is_some()
        },
    )?;
    let id = id.expect("found above");
    stack.ledger.add(Item::Ublk { id, rublk: bin.clone() })?;
    let dev = PathBuf::from(format!("/dev/ublkb{id}"));
    stack.daemon_pid = Some(server);
    stack.served_device = Some(dev.clone());
    Ok(Bottom::Device(dev))
}
