//! Building and tearing down stacked storage: XFS on loop devices over a
//! plain file or a qemu-storage-daemon FUSE export, on the ext4 root fs.

use crate::cmd::{run, wait_timeout};
use crate::inspect::{abort_fuse_under, loop_backing_file, loop_detach, mounts_under, umount_lazy};
use crate::memcg::Memcg;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Every stack lives below this directory on the ext4 root fs.
pub const WORK_ROOT: &str = "/tmp/reclaimscope-testbed";
const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// mkfs writes the XFS log through the whole stack, which can be slow on FUSE.
const MKFS_TIMEOUT: Duration = Duration::from_secs(60);
/// Room left in a lower XFS when sizing the file of the level above it.
const NESTED_MARGIN_MB: u64 = 16;

/// What sits under the bottom loop device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servicer {
    /// A plain file on ext4, served by the kernel's loop worker (which runs
    /// with PF_MEMALLOC_NOIO and therefore cannot recurse into the stack).
    KernelLoop,
    /// A qemu-storage-daemon FUSE export of a file on ext4: a userspace
    /// servicer that allocates with __GFP_FS|__GFP_IO and can deadlock.
    QsdFuse,
}

/// What to build; see [`Stack::build`].
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub servicer: Servicer,
    /// Number of stacked loop levels: 1 = XFS on loopA on (file|FUSE file) on ext4(/, the root fs).
    /// 2 = XFS on loopB on a file in an XFS on loopA on (file|FUSE file) on ext4, and so on.
    pub levels: usize,
    /// Size of the bottom image in MiB; upper images fill the XFS below them.
    pub image_mb: u64,
    /// Memory cgroup (v1) limit; the daemon (qsd) is put in it when Some.
    pub memcg_limit_mb: Option<u64>,
}

impl Default for StackSpec {
    fn default() -> Self {
        StackSpec { servicer: Servicer::QsdFuse, levels: 1, image_mb: 512, memcg_limit_mb: None }
    }
}

/// One loop device with an XFS on it.
#[derive(Debug, Clone)]
pub struct Level {
    pub loop_dev: PathBuf,
    /// (major, minor) of the loop device, as the block tracepoints report it.
    pub loop_devt: (u32, u32),
    pub backing_file: PathBuf,
    /// XFS mounted on this loop.
    pub mountpoint: PathBuf,
}

/// A built storage stack. Dropping it tears it down (best effort, never panics).
#[derive(Debug)]
pub struct Stack {
    pub name: String,
    /// `/tmp/reclaimscope-testbed/<name>-<pid>` (on the ext4 root).
    pub workdir: PathBuf,
    /// `levels[0]` = bottom loop (over the file/FUSE file), last = top.
    pub levels: Vec<Level>,
    /// qemu-storage-daemon pid (QsdFuse).
    pub daemon_pid: Option<u32>,
    /// The FUSE export file (qsd mountpoint).
    pub fuse_mount: Option<PathBuf>,
    pub memcg: Option<Memcg>,
    daemon: Option<Child>,
    writers: Vec<Writer>,
    torn_down: bool,
}

impl Stack {
    /// Build the stack; on any failure, tears down what was built so far.
    pub fn build(name: &str, spec: &StackSpec) -> Result<Stack> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            bail!("stack name {name:?} must be non-empty ASCII letters, digits, '_' or '-'");
        }
        if spec.levels == 0 || spec.image_mb == 0 {
            bail!("a stack needs at least one level and a non-empty image");
        }
        let workdir = PathBuf::from(WORK_ROOT).join(format!("{name}-{}", std::process::id()));
        fs::create_dir_all(WORK_ROOT).with_context(|| format!("creating {WORK_ROOT}"))?;
        fs::create_dir(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
        let mut stack = Stack {
            name: name.to_string(),
            workdir,
            levels: Vec::new(),
            daemon_pid: None,
            fuse_mount: None,
            memcg: None,
            daemon: None,
            writers: Vec::new(),
            torn_down: false,
        };
        match stack.assemble(spec) {
            Ok(()) => Ok(stack),
            Err(e) => {
                let e = e.context(format!("building stack {name}"));
                match stack.teardown() {
                    Ok(()) => Err(e),
                    Err(t) => Err(e.context(format!("and its teardown failed too: {t:#}"))),
                }
            }
        }
    }

    fn assemble(&mut self, spec: &StackSpec) -> Result<()> {
        if let Some(mb) = spec.memcg_limit_mb {
            self.memcg = Some(Memcg::create(&self.name, mb)?);
        }
        let lower = self.workdir.join("lower.img");
        sparse_file(&lower, spec.image_mb << 20)?;
        let mut backing = match spec.servicer {
            Servicer::KernelLoop => lower,
            Servicer::QsdFuse => self.start_qsd(&lower)?,
        };
        for i in 0..spec.levels {
            if let Some(below) = self.levels.last() {
                let size = available_bytes(&below.mountpoint)?.saturating_sub(NESTED_MARGIN_MB << 20);
                backing = below.mountpoint.join(format!("level{i}.img"));
                sparse_file(&backing, size & !((1 << 20) - 1))?;
            }
            self.add_level(i, &backing)?;
        }
        Ok(())
    }

    /// Start qsd exporting `lower` through FUSE and wait for the mount.
    fn start_qsd(&mut self, lower: &Path) -> Result<PathBuf> {
        let fuse = self.workdir.join("fuse.img");
        File::create(&fuse).with_context(|| format!("creating {}", fuse.display()))?;
        let log_path = self.workdir.join("qsd.log");
        let log = File::create(&log_path).context("creating qsd.log")?;
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--blockdev")
            .arg(format!("driver=file,node-name=f0,filename={},aio=threads", lower.display()))
            .args(["--blockdev", "driver=raw,node-name=r0,file=f0", "--export"])
            .arg(format!("type=fuse,id=e0,node-name=r0,mountpoint={},writable=on", fuse.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(memcg) = &self.memcg {
            memcg.enter_on_spawn(&mut cmd)?;
        }
        let child = cmd.spawn().context("starting qemu-storage-daemon")?;
        self.daemon_pid = Some(child.id());
        self.fuse_mount = Some(fuse.clone());
        let daemon = self.daemon.insert(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !is_mountpoint(&fuse) {
            if let Some(status) = daemon.try_wait()? {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                bail!("qemu-storage-daemon exited ({status}): {}", log.trim());
            }
            if Instant::now() >= deadline {
                bail!("qemu-storage-daemon did not mount {} within 15 s", fuse.display());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(fuse)
    }

    /// losetup + mkfs.xfs + mount for level `i` over `backing`.
    fn add_level(&mut self, i: usize, backing: &Path) -> Result<()> {
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(backing), CMD_TIMEOUT)?;
        let loop_dev = PathBuf::from(out.trim());
        let rdev = fs::metadata(&loop_dev).with_context(|| format!("stat {}", loop_dev.display()))?.rdev();
        let mountpoint = self.workdir.join(format!("mnt{i}"));
        // Record the level first so that teardown detaches the loop even if mkfs fails.
        self.levels.push(Level {
            loop_dev: loop_dev.clone(),
            loop_devt: (libc::major(rdev), libc::minor(rdev)),
            backing_file: backing.to_path_buf(),
            mountpoint: mountpoint.clone(),
        });
        fs::create_dir(&mountpoint).with_context(|| format!("creating {}", mountpoint.display()))?;
        run(Command::new("mkfs.xfs").args(["-f", "-q"]).arg(&loop_dev), MKFS_TIMEOUT)?;
        run(Command::new("mount").args(["-t", "xfs"]).arg(&loop_dev).arg(&mountpoint), CMD_TIMEOUT)?;
        Ok(())
    }

    /// The upper XFS.
    pub fn top(&self) -> &Level {
        self.levels.last().expect("a built stack has at least one level")
    }

    /// Start `dd if=/dev/zero of=<top mountpoint>/<file> bs=1M count=<mb> conv=fsync`
    /// in the stack's memcg when there is one. Killed at teardown.
    pub fn spawn_writer(&mut self, file: &str, mb: u64) -> Result<u32> {
        self.spawn_writer_with(file, mb, &["conv=fsync"])
    }

    /// Like [`Stack::spawn_writer`] with other dd flags (e.g. `oflag=direct`).
    pub fn spawn_writer_with(&mut self, file: &str, mb: u64, dd_flags: &[&str]) -> Result<u32> {
        self.spawn_dd(file, mb, dd_flags, true)
    }

    /// Like [`Stack::spawn_writer`], but the writer stays outside the memcg:
    /// only the servicer is under pressure, and reclaim in it finds the
    /// lower file's page cache rather than the upper XFS's dirty folios, so
    /// the hazard shows without the deadlock forming.
    pub fn spawn_writer_outside_memcg(&mut self, file: &str, mb: u64) -> Result<u32> {
        self.spawn_dd(file, mb, &["conv=fsync"], false)
    }

    fn spawn_dd(&mut self, file: &str, mb: u64, dd_flags: &[&str], in_memcg: bool) -> Result<u32> {
        if file.is_empty() || file.contains('/') {
            bail!("writer file {file:?} must be a plain file name");
        }
        let log_path = self.workdir.join(format!("dd-{file}.log"));
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new("dd");
        cmd.arg("if=/dev/zero")
            .arg(format!("of={}", self.top().mountpoint.join(file).display()))
            .arg("bs=1M")
            .arg(format!("count={mb}"))
            .args(dd_flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(memcg) = self.memcg.as_ref().filter(|_| in_memcg) {
            memcg.enter_on_spawn(&mut cmd)?;
        }
        let child = cmd.spawn().context("starting dd")?;
        let pid = child.id();
        self.writers.push(Writer { child, log: log_path });
        Ok(pid)
    }

    /// Wait for a writer started by this stack to finish; Err when it fails
    /// or is still running after `timeout` (it then stays for teardown to kill).
    pub fn wait_writer(&mut self, pid: u32, timeout: Duration) -> Result<()> {
        let i = self.writers.iter().position(|w| w.child.id() == pid).ok_or_else(|| anyhow!("no writer {pid}"))?;
        let Some(status) = wait_timeout(&mut self.writers[i].child, timeout)? else {
            bail!("writer {pid} still running after {timeout:?}");
        };
        let writer = self.writers.remove(i);
        if !status.success() {
            let log = fs::read_to_string(&writer.log).unwrap_or_default();
            bail!("writer {pid} failed ({status}): {}", log.trim());
        }
        Ok(())
    }

    /// Abort every FUSE connection of this stack (mounting fusectl if
    /// needed). Breaks the reclaim deadlock: waiting requests fail with an error.
    pub fn abort_fuse(&self) -> Result<()> {
        abort_fuse_under(&self.workdir)
    }

    /// Explicit teardown returning errors; Drop does the same best-effort.
    pub fn teardown(mut self) -> Result<()> {
        let errs = self.teardown_inner();
        if errs.is_empty() {
            return Ok(());
        }
        let msgs: Vec<String> = errs.iter().map(|e| format!("{e:#}")).collect();
        bail!("teardown of stack {} incomplete: {}", self.name, msgs.join("; "))
    }

    /// Every step runs even when an earlier one failed; each external command
    /// has a timeout, so this cannot hang on a wedged stack.
    fn teardown_inner(&mut self) -> Vec<anyhow::Error> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        let mut errs = Vec::new();
        // SIGKILL first; a writer in D state only dies once FUSE is aborted.
        for w in &mut self.writers {
            let _ = w.child.kill();
        }
        push_err(&mut errs, abort_fuse_under(&self.workdir));
        for mut w in self.writers.drain(..) {
            if !matches!(wait_timeout(&mut w.child, CMD_TIMEOUT), Ok(Some(_))) {
                errs.push(anyhow!("writer {} did not exit after SIGKILL", w.child.id()));
            }
        }
        for level in self.levels.iter().rev() {
            if is_mountpoint(&level.mountpoint) {
                push_err(&mut errs, umount_lazy(&level.mountpoint));
            }
        }
        for level in self.levels.iter().rev() {
            if loop_bound(&level.loop_dev) {
                push_err(&mut errs, loop_detach(&level.loop_dev));
            }
        }
        if let Some(daemon) = self.daemon.take() {
            push_err(&mut errs, stop_daemon(daemon));
        }
        if let Some(fuse) = &self.fuse_mount {
            if is_mountpoint(fuse) {
                push_err(&mut errs, umount_lazy(fuse));
            }
        }
        // A loop still open when detached is only released on its last close.
        let deadline = Instant::now() + CMD_TIMEOUT;
        while self.levels.iter().any(|l| loop_bound(&l.loop_dev)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        for level in self.levels.iter().filter(|l| loop_bound(&l.loop_dev)) {
            errs.push(anyhow!("{} is still bound", level.loop_dev.display()));
        }
        if let Some(memcg) = self.memcg.take() {
            push_err(&mut errs, memcg.remove());
        }
        let left = mounts_under(&self.workdir);
        if !left.is_empty() {
            // Removing files through a live mount could block on a wedged FUSE.
            errs.push(anyhow!("mounts remain, keeping {}: {left:?}", self.workdir.display()));
        } else if self.workdir.exists() {
            push_err(&mut errs, fs::remove_dir_all(&self.workdir).context("removing workdir"));
        }
        errs
    }
}

/// A dd child and the file holding its stderr (for error messages).
#[derive(Debug)]
struct Writer {
    child: Child,
    log: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for e in self.teardown_inner() {
            eprintln!("testbed: teardown of stack {}: {e:#}", self.name);
        }
    }
}

fn push_err(errs: &mut Vec<anyhow::Error>, r: Result<()>) {
    if let Err(e) = r {
        errs.push(e);
    }
}

/// SIGTERM, then SIGKILL, reaping the daemon either way.
fn stop_daemon(mut daemon: Child) -> Result<()> {
    // SAFETY: plain kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    if wait_timeout(&mut daemon, Duration::from_secs(5))?.is_some() {
        return Ok(());
    }
    daemon.kill().context("SIGKILL qemu-storage-daemon")?;
    match wait_timeout(&mut daemon, Duration::from_secs(10))? {
        Some(_) => Ok(()),
        None => bail!("qemu-storage-daemon {} survives SIGKILL", daemon.id()),
    }
}

/// Mount check through mountinfo only (never stat a possibly wedged FUSE mount).
fn is_mountpoint(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m.mountpoint == path)
}

fn loop_bound(dev: &Path) -> bool {
    dev.file_name().and_then(|n| n.to_str()).and_then(loop_backing_file).is_some()
}

fn sparse_file(path: &Path, bytes: u64) -> Result<()> {
    File::create(path)
        .and_then(|f| f.set_len(bytes))
        .with_context(|| format!("creating {} ({} MiB)", path.display(), bytes >> 20))
}

/// Bytes an unprivileged writer could still allocate in the fs holding `dir`.
fn available_bytes(dir: &Path) -> Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs fills the zeroed struct we own from a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
