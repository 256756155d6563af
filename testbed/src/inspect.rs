//! Read-only views of kernel state (mount table, loop devices, task states)
//! plus FUSE connection aborts. Everything here avoids touching paths inside
//! a possibly wedged FUSE mount: a stat() there could block forever, so FUSE
//! mounts are identified through /proc/self/mountinfo only.

use crate::cmd::run;
use anyhow::{Context, Result};
use procfs::process::MountInfo;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// One line of /proc/self/mountinfo, reduced to what teardown needs.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// Minor of the superblock's st_dev; names the fusectl connection for FUSE.
    pub dev_minor: u32,
    pub mountpoint: PathBuf,
    pub fstype: String,
}

/// Mounts at or below `dir`, in mount order (parents before children); none
/// when /proc/self/mountinfo cannot be read.
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    let mounts = procfs::process::Process::myself().and_then(|p| p.mountinfo()).map(|m| m.0).unwrap_or_default();
    mounts.iter().filter_map(entry).filter(|m| m.mountpoint.starts_with(dir)).collect()
}

fn entry(m: &MountInfo) -> Option<MountEntry> {
    Some(MountEntry {
        dev_minor: m.majmin.split_once(':')?.1.parse().ok()?,
        // procfs keeps the kernel's escapes in the mount point.
        mountpoint: PathBuf::from(unescape(m.mount_point.to_str()?)),
        fstype: m.fs_type.clone(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out + rest
}

/// Loop devices whose backing file lies at or below `dir`.
pub fn loops_backed_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut loops: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = loop_backing_file(&name)?;
            Path::new(&backing).starts_with(dir).then(|| PathBuf::from("/dev").join(&name))
        })
        .collect();
    loops.sort();
    loops
}

/// Backing file of a bound loop device (`loop3`), `None` when it is detached.
pub fn loop_backing_file(dev_name: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/sys/block/{dev_name}/loop/backing_file")).ok()?;
    Some(text.trim().trim_end_matches(" (deleted)").to_string())
}

/// True while /proc/PID exists (includes zombies).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// True while the process exists and has not exited: a zombie whose
/// parent died may never be reaped where init does not reap.
pub fn pid_running(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_some_and(|s| s != "Z")
}

/// Thread ids of `pid` currently in uninterruptible sleep (state `D`).
pub fn blocked_threads(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(t.path().join("stat")).ok()?;
            // comm may contain spaces or ')', so the state follows the last ')'.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            (state == "D").then_some(tid)
        })
        .collect()
}

/// Where a process's threads are blocked: each thread in D state with the
/// top of its kernel stack, for error messages about a process that will
/// not die.
pub fn where_blocked(pid: u32) -> String {
    let mut out = Vec::new();
    for tid in blocked_threads(pid) {
        let stack = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")).unwrap_or_default();
        let top: Vec<&str> = stack
            .lines()
            .take(3)
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|f| f.split('+').next().unwrap_or(f))
            .collect();
        out.push(format!("thread {tid} in D: {}", top.join(" <- ")));
    }
    if out.is_empty() {
        "no thread in D state".into()
    } else {
        out.join("; ")
    }
}

/// Abort every FUSE connection mounted at or below `dir`: pending and future
/// requests fail at once, which unblocks anything waiting on the daemon.
pub fn abort_fuse_under(dir: &Path) -> Result<()> {
    let fuse: Vec<MountEntry> = mounts_under(dir).into_iter().filter(|m| m.fstype.starts_with("fuse")).collect();
    if fuse.is_empty() {
        return Ok(());
    }
    ensure_fusectl()?;
    for m in fuse {
        // The connection directory is named after the full dev_t; FUSE
        // superblocks use anonymous devices (major 0), so that is the minor.
        let abort = format!("{FUSECTL}/{}/abort", m.dev_minor);
        if Path::new(&abort).exists() {
            fs::write(&abort, "1").with_context(|| format!("writing {abort}"))?;
        }
    }
    Ok(())
}

/// fusectl is not mounted by default on this platform.
fn ensure_fusectl() -> Result<()> {
    if mounts_under(Path::new(FUSECTL)).iter().any(|m| m.fstype == "fusectl") {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "fusectl", "none", FUSECTL]), Duration::from_secs(10)).map(drop)
}

/// `umount -l` that never canonicalizes (a stat inside a wedged FUSE mount hangs).
pub fn umount_lazy(mountpoint: &Path) -> Result<()> {
    run(Command::new("umount").args(["-l", "-c"]).arg(mountpoint), Duration::from_secs(20)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let line = "36 35 0:52 / /tmp/a\\040b rw,relatime shared:1 - fuse /dev/fuse rw";
        let m = entry(&MountInfo::from_line(line).unwrap()).unwrap();
        assert_eq!(m.dev_minor, 52);
        assert_eq!(m.mountpoint, PathBuf::from("/tmp/a b"));
        assert_eq!(m.fstype, "fuse");
    }
}
