//! Memory cgroups, v2 (`memory.max`, distro kernels) or v1
//! (`memory.limit_in_bytes`, the project's own VM): the small memory limit
//! is what pushes a servicer into reclaim that waits on its own writeback.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Prefix of every cgroup we create, so `sweep_stale` can find leftovers.
pub const MEMCG_PREFIX: &str = "reclaimscope-";

const V2_ROOT: &str = "/sys/fs/cgroup";
const V1_ROOT: &str = "/sys/fs/cgroup/memory";

/// Which memory controller this machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy with the memory controller.
    V2,
    /// The legacy memory hierarchy.
    V1,
}

impl Hierarchy {
    /// v2 when the unified hierarchy offers the memory controller, else v1
    /// when its hierarchy is mounted.
    pub fn detect() -> Result<Hierarchy> {
        let controllers = fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "memory") {
            Ok(Hierarchy::V2)
        } else if Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
            Ok(Hierarchy::V1)
        } else {
            bail!("no memory cgroup controller: neither {V2_ROOT} (v2) nor {V1_ROOT} (v1) offers one")
        }
    }

    pub fn root(self) -> &'static Path {
        Path::new(match self {
            Hierarchy::V2 => V2_ROOT,
            Hierarchy::V1 => V1_ROOT,
        })
    }
}

/// A memory cgroup removed on drop (tasks are moved back to the root first).
#[derive(Debug)]
pub struct Memcg {
    pub path: PathBuf,
    pub hierarchy: Hierarchy,
}

impl Memcg {
    /// Create `<root>/reclaimscope-<name>-<pid>` with the given limit.
    pub fn create(name: &str, limit_mb: u64) -> Result<Memcg> {
        let hierarchy = Hierarchy::detect()?;
        let root = hierarchy.root();
        if hierarchy == Hierarchy::V2 {
            let control = root.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                fs::write(&control, "+memory").with_context(|| format!("enabling memory in {}", control.display()))?;
            }
        }
        let path = root.join(format!("{MEMCG_PREFIX}{name}-{}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating memcg {}", path.display()))?;
        let memcg = Memcg { path, hierarchy };
        let limit = memcg.path.join(match hierarchy {
            Hierarchy::V2 => "memory.max",
            Hierarchy::V1 => "memory.limit_in_bytes",
        });
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
                // cgroup.procs (v1 and v2) takes "0" as "the writing process".
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

    /// Removes the limit: what an operator does to break a deadlock that
    /// the limit made (reclaim and dirty throttling in it then end).
    pub fn lift(&self) -> Result<()> {
        let (file, value) = match self.hierarchy {
            Hierarchy::V2 => ("memory.max", "max"),
            Hierarchy::V1 => ("memory.limit_in_bytes", "-1"),
        };
        let limit = self.path.join(file);
        fs::write(&limit, value).with_context(|| format!("writing {}", limit.display()))
    }

    /// What the kernel says the limit did, for tests to prove that pressure
    /// really happened.
    pub fn pressure(&self) -> Pressure {
        let read = |f: &str| fs::read_to_string(self.path.join(f)).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
        };
        match self.hierarchy {
            Hierarchy::V2 => {
                let events = read("memory.events");
                let stat = read("memory.stat");
                Pressure {
                    limit_hits: field(&events, "max"),
                    oom_kills: field(&events, "oom_kill"),
                    pages_scanned: Some(field(&stat, "pgscan")),
                }
            }
            Hierarchy::V1 => Pressure {
                limit_hits: read("memory.failcnt").trim().parse().unwrap_or(0),
                oom_kills: field(&read("memory.oom_control"), "oom_kill"),
                pages_scanned: None,
            },
        }
    }

    /// Remove the cgroup, returning what went wrong. Drop does the same.
    pub fn remove(self) -> Result<()> {
        remove_cgroup(&self.path)
    }
}

/// memory.events / memory.stat (v2), memory.failcnt (v1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// Times usage hit the limit (v2 `max` events, v1 failcnt).
    pub limit_hits: u64,
    pub oom_kills: u64,
    /// Pages scanned by reclaim in this cgroup (v2 only).
    pub pages_scanned: Option<u64>,
}

impl Drop for Memcg {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroup(&self.path) {
            eprintln!("testbed: {e:#}");
        }
    }
}

/// Move the remaining tasks to the parent cgroup and rmdir, retrying for up
/// to 10 s (a task that is exiting can keep the cgroup busy for a moment).
pub(crate) fn remove_cgroup(path: &Path) -> Result<()> {
    let parent = path.parent().context("cgroup path has no parent")?.join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !path.exists() {
            return Ok(());
        }
        let tasks = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        for pid in tasks.split_whitespace() {
            // Best effort: the task may have exited in between.
            let _ = fs::write(&parent, pid);
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

/// Where `sweep_stale` looks for leftover cgroups.
pub(crate) fn memcg_root() -> Option<&'static Path> {
    Hierarchy::detect().ok().map(Hierarchy::root)
}
