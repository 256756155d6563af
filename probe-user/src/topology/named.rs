//! Servicers named with --servicer PID: processes discovery cannot see as
//! servicers on its own (an NBD server behind a socket, a custom daemon).

use super::model::BlockDevice;
use super::model::Dev;
use super::model::Mount;
use super::model::{Confidence, Servicer, ServicerKind};
use super::procs;
use super::source::Source;
use anyhow::{bail, Result};
use std::path::Path;

/// Adds the servicer `pid` unless discovery found it already (ambiguous
/// FUSE matches are settled by [`super::fuse::settle_named`]). What it serves is inferred from
/// its open files: a stacked device's node, or a device's backing file (as
/// named with --backing-file for an NBD server's image). Failing both it
/// serves [`Dev::NONE`], and the audit treats it as serving every mounted
/// stacked device: the user said it completes I/O, so a health check errs
/// on the side of reporting it.
pub(crate) fn add(
    src: &Source,
    mounts: &[Mount],
    devices: &[BlockDevice],
    servicers: &mut Vec<Servicer>,
    pid: u32,
) -> Result<()> {
    if servicers.iter().any(|s| s.tgid == Some(pid)) {
        return Ok(());
    }
    if procs::threads(src, pid).is_empty() {
        bail!("--servicer {pid}: no such process");
    }
    let serves = serves_of(src, mounts, devices, pid);
    let serves_name = match devices.iter().find(|d| d.dev == serves) {
        Some(d) => d.label(),
        None => "unknown (no open device node or backing file)".to_string(),
    };
    if let Some(s) = Servicer::process(src, mounts, ServicerKind::Named, pid, serves, serves_name, Confidence::Named) {
        servicers.push(s);
    }
    Ok(())
}

fn serves_of(src: &Source, mounts: &[Mount], devices: &[BlockDevice], pid: u32) -> Dev {
    let stacked = |d: &&BlockDevice| d.backing_file.is_some() || !d.slaves.is_empty() || d.nbd_pid.is_some();
    for fd in src.read_dir(&format!("/proc/{pid}/fd")).unwrap_or_default() {
        let Ok(target) = src.read_link(&format!("/proc/{pid}/fd/{fd}")) else {
            continue;
        };
        let Ok(node) = target.strip_prefix("/dev") else {
            continue;
        };
        if let Some(d) = devices.iter().filter(stacked).find(|d| node == Path::new(&d.name)) {
            return d.dev;
        }
    }
    for f in procs::open_files(src, pid) {
        let Some(fs_dev) = mounts.iter().find(|m| m.mount_id == f.mnt_id).map(|m| m.dev) else {
            continue;
        };
        let backs = devices.iter().find_map(|d| {
            d.backing_file.as_ref().filter(|b| b.file_dev == fs_dev && b.ino == f.ino && b.ino != 0).map(|b| b.backs)
        });
        if let Some(dev) = backs {
            return dev;
        }
    }
    Dev::NONE
}
