//! cgroup v1 memory cgroups: the small memory limit is what pushes a FUSE
//! daemon into reclaim that waits on its own writeback.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Root of the v1 memory hierarchy (v2 has no memory controller here).
pub const MEMCG_ROOT: &str = "/sys/fs/cgroup/memory";
/// Prefix of every cgroup we create, so `sweep_stale` can find leftovers.
pub const MEMCG_PREFIX: &str = "reclaimscope-";

/// A memory cgroup removed on drop (tasks are moved back to the root first).
#[derive(Debug)]
pub struct Memcg {
    pub path: PathBuf,
}

impl Memcg {
    /// Create `/sys/fs/cgroup/memory/reclaimscope-<name>-<pid>` with the given limit.
    pub fn create(name: &str, limit_mb: u64) -> Result<Memcg> {
        let path = PathBuf::from(MEMCG_ROOT).join(format!("{MEMCG_PREFIX}{name}-{}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating memcg {}", path.display()))?;
        let memcg = Memcg { path };
        let limit = memcg.path.join("memory.limit_in_bytes");
        fs::write(&limit, (limit_mb << 20).to_string()).with_context(|| format!("writing {}", limit.display()))?;
        Ok(memcg)
    }

    /// Move a process (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).with_context(|| format!("adding pid {pid} to {}", procs.display()))
    }

    /// Make `cmd`'s child join this cgroup between fork and exec, so that
    /// every page it ever touches is charged here (no window before `add`).
    pub fn enter_on_spawn(&self, cmd: &mut Command) -> Result<()> {
        let procs = CString::new(self.path.join("cgroup.procs").into_os_string().into_vec())
            .context("memcg path contains NUL")?;
        // SAFETY: after fork only async-signal-safe open/write/close run, on a
        // C string prepared in the parent.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // v1 cgroup.procs accepts "0" meaning "the writing process".
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if n == 1 {
                    Ok(())
                } else {
                    Err(err)
                }
            });
        }
        Ok(())
    }

    /// How often the limit was hit (memory.failcnt); 0 when unreadable.
    pub fn failcnt(&self) -> u64 {
        fs::read_to_string(self.path.join("memory.failcnt")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// Remove the cgroup, returning what went wrong. Drop does the same.
    pub fn remove(self) -> Result<()> {
        remove_cgroup(&self.path)
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroup(&self.path) {
            eprintln!("testbed: {e:#}");
        }
    }
}

/// Move the remaining tasks to the root cgroup and rmdir, retrying for up to
/// 10 s (a task that is exiting can keep the cgroup busy for a moment).
pub(crate) fn remove_cgroup(path: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !path.exists() {
            return Ok(());
        }
        let tasks = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        for pid in tasks.split_whitespace() {
            // Best effort: the task may have exited in between.
            let _ = fs::write(format!("{MEMCG_ROOT}/cgroup.procs"), pid);
        }
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!("cannot remove memcg {} (tasks: {}): {e}", path.display(), tasks.trim())
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}
