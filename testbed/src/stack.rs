//! Building and tearing down stacked storage: XFS over a device that a
//! servicer completes the I/O of (a loop device over a plain, FUSE or NFS
//! file, an nbd, SCSI-via-tcmu, iSCSI, NVMe/TCP or ublk device, optionally
//! under dm), with more XFS-on-loop levels on top, on the ext4 lower
//! filesystem.

use crate::cmd::{run, wait_timeout};
use crate::inspect::{abort_fuse_under, mounts_under};
use crate::ledger::{start_time, Item, Ledger};
use crate::memcg::Memcg;
use crate::servicers;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Every stack lives below this directory on the lower (ext4) filesystem.
pub const WORK_ROOT: &str = "/tmp/reclaimscope-testbed";
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// mkfs writes the XFS log through the whole stack, which can be slow on FUSE.
const MKFS_TIMEOUT: Duration = Duration::from_secs(120);
/// Room left in a lower XFS when sizing the file of the level above it.
const NESTED_MARGIN_MB: u64 = 16;

/// Who completes the I/O of the bottom device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servicer {
    /// A loop device over a plain file, served by the kernel's loop worker
    /// (which runs with PF_MEMALLOC_NOIO and cannot recurse).
    KernelLoop,
    /// A loop device over qemu-storage-daemon's FUSE export of a file.
    QsdFuse,
    /// A loop device over a file in a bindfs (FUSE) mirror of a directory.
    BindFs,
    /// The kernel nbd client, connected over TCP to nbd-server.
    NbdServer,
    /// The kernel nbd client, connected by qemu-nbd itself (`-c`).
    QemuNbd,
    /// A SCSI disk (tcm_loop) whose backstore is tcmu-runner's ZBC file
    /// handler, under dm-zoned: the stack of the 2019 report.
    TcmuZbc,
    /// A ublk device served by rublk's loop target; `io_flusher` picks a
    /// rublk whose libublk sets PR_SET_IO_FLUSHER (0.2.15) or clears it
    /// (0.2.14).
    Ublk { io_flusher: bool },
    /// A SCSI disk over iSCSI on 127.0.0.1, served by tgtd (a userspace
    /// target) from a file; open-iscsi is the initiator.
    IscsiTgt,
    /// A SCSI disk over iSCSI on 127.0.0.1, served by LIO's fileio
    /// backstore: kernel threads are the servicer.
    IscsiLio,
    /// An NVMe/TCP namespace on 127.0.0.1, served by the kernel's nvmet
    /// from a file: kernel threads are the servicer.
    Nvmet,
    /// A loop device over a file on an NFSv4 mount of this host's own
    /// knfsd export: the loop worker writes through the NFS client to nfsd
    /// threads, which write the file on ext4.
    NfsLoopback,
}

/// A device-mapper layer between the served device and the first XFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dm {
    Linear,
    Crypt,
}

/// What to build; see [`StorageStack::build`].
#[derive(Debug, Clone)]
pub struct StorageStackSpec {
    pub servicer: Servicer,
    /// XFS levels: 1 = XFS on the bottom device; 2 = XFS on a loop device
    /// over a file in that XFS, and so on.
    pub levels: usize,
    /// Size of the bottom image in MiB; upper images fill the XFS below them.
    pub image_mb: u64,
    /// Memory cgroup limit; the servicer is put in it when Some.
    pub memcg_limit_mb: Option<u64>,
    pub dm: Option<Dm>,
}

impl StorageStackSpec {
    /// The seed hazard the demo, soak and workload build: XFS over a 1 GiB
    /// qemu-storage-daemon FUSE export whose daemon is in a memory cgroup
    /// of `memcg_limit_mb`.
    pub fn qsd_in_memcg(memcg_limit_mb: u64) -> StorageStackSpec {
        StorageStackSpec { image_mb: 1024, memcg_limit_mb: Some(memcg_limit_mb), ..Default::default() }
    }
}

impl Default for StorageStackSpec {
    fn default() -> Self {
        StorageStackSpec { servicer: Servicer::QsdFuse, levels: 1, image_mb: 512, memcg_limit_mb: None, dm: None }
    }
}

/// One XFS and the block device it is on.
#[derive(Debug, Clone)]
pub struct Level {
    pub device: PathBuf,
    /// (major, minor) of the device, as the block tracepoints report it.
    pub devt: (u32, u32),
    /// The file a loop device is bound to (None for other devices).
    pub backing_file: Option<PathBuf>,
    pub mountpoint: PathBuf,
}

/// What a servicer module hands back: what the first XFS goes on.
pub(crate) enum Bottom {
    /// A file for a loop device (a FUSE file, or a plain one).
    File(PathBuf),
    /// A block device the servicer completes the I/O of.
    Device(PathBuf),
}

/// A built storage stack. Dropping it tears it down (best effort, never panics).
#[derive(Debug)]
pub struct StorageStack {
    pub name: String,
    /// `/tmp/reclaimscope-testbed/<name>-<pid>` (on the lower filesystem).
    pub workdir: PathBuf,
    /// `levels[0]` = the XFS on the bottom device, last = top.
    pub levels: Vec<Level>,
    /// The userspace servicer's pid (the process that does the I/O).
    pub daemon_pid: Option<u32>,
    /// The FUSE mount under the bottom loop device (QsdFuse, BindFs).
    pub fuse_mount: Option<PathBuf>,
    /// The device the servicer completes I/O for, when it is not a loop
    /// device (nbd, SCSI disk, NVMe namespace, ublk) or is the loop device
    /// over an NFS file, before any dm layer.
    pub served_device: Option<PathBuf>,
    /// The file the servicer stores the data in.
    pub data_file: PathBuf,
    pub memcg: Option<Memcg>,
    pub(crate) ledger: Ledger,
    /// Processes we started, reaped at teardown.
    pub(crate) children: Vec<Child>,
    writers: Vec<Writer>,
    torn_down: bool,
    /// A command the userspace servicer is started through, which execs it
    /// (e.g. `reclaimscope exec --io-flusher --`); empty: started directly.
    pub(crate) launcher: Vec<String>,
}

impl StorageStack {
    /// Build the stack; on any failure, tears down what was built so far.
    pub fn build(name: &str, spec: &StorageStackSpec) -> Result<StorageStack> {
        Self::build_with_launcher(name, spec, &[])
    }

    /// [`build`](Self::build), the servicer started through `launcher`, a
    /// command that execs the rest of its arguments (so the daemon keeps
    /// the launcher's pid). Only qemu-storage-daemon honours it so far.
    pub fn build_with_launcher(name: &str, spec: &StorageStackSpec, launcher: &[&str]) -> Result<StorageStack> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            bail!("stack name {name:?} must be non-empty ASCII letters, digits, '_' or '-'");
        }
        if spec.levels == 0 || spec.image_mb == 0 {
            bail!("a stack needs at least one level and a non-empty image");
        }
        let workdir = PathBuf::from(WORK_ROOT).join(format!("{name}-{}", std::process::id()));
        fs::create_dir_all(WORK_ROOT).with_context(|| format!("creating {WORK_ROOT}"))?;
        fs::create_dir(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
        let mut stack = StorageStack {
            name: name.to_string(),
            ledger: Ledger::create(&workdir),
            data_file: workdir.join("lower.img"),
            workdir,
            levels: Vec::new(),
            daemon_pid: None,
            fuse_mount: None,
            served_device: None,
            memcg: None,
            children: Vec::new(),
            writers: Vec::new(),
            torn_down: false,
            launcher: launcher.iter().map(|s| s.to_string()).collect(),
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

    fn assemble(&mut self, spec: &StorageStackSpec) -> Result<()> {
        if let Some(mb) = spec.memcg_limit_mb {
            self.memcg = Some(Memcg::create(&self.name, mb)?);
        }
        let mb = spec.image_mb;
        let bottom = match spec.servicer {
            Servicer::KernelLoop => {
                sparse_file(&self.data_file, mb << 20)?;
                Bottom::File(self.data_file.clone())
            }
            Servicer::QsdFuse => servicers::qsd::start(self, mb)?,
            Servicer::BindFs => servicers::bindfs::start(self, mb)?,
            Servicer::NbdServer => servicers::nbd::start_nbd_server(self, mb)?,
            Servicer::QemuNbd => servicers::nbd::start_qemu_nbd(self, mb)?,
            Servicer::TcmuZbc => servicers::tcmu::start(self, mb)?,
            Servicer::Ublk { io_flusher } => servicers::ublk::start(self, mb, io_flusher)?,
            Servicer::IscsiTgt => servicers::tgt::start(self, mb)?,
            Servicer::IscsiLio => servicers::lio::start(self, mb)?,
            Servicer::Nvmet => servicers::nvmet::start(self, mb)?,
            Servicer::NfsLoopback => servicers::nfs::start(self, mb)?,
        };
        let bottom = match (bottom, spec.dm) {
            (Bottom::Device(dev), Some(dm)) => Bottom::Device(servicers::dm::create(self, &dev, dm)?),
            (Bottom::File(f), Some(dm)) => {
                let dev = self.attach_loop(&f)?;
                Bottom::Device(servicers::dm::create(self, &dev, dm)?)
            }
            (b, None) => b,
        };
        for i in 0..spec.levels {
            if i == 0 {
                match &bottom {
                    Bottom::File(f) => self.add_loop_level(i, f)?,
                    Bottom::Device(d) => self.add_level(i, d, None)?,
                }
                continue;
            }
            let below = self.levels.last().expect("level 0 exists").mountpoint.clone();
            let size = available_bytes(&below)?.saturating_sub(NESTED_MARGIN_MB << 20);
            let backing = below.join(format!("level{i}.img"));
            sparse_file(&backing, size & !((1 << 20) - 1))?;
            self.add_loop_level(i, &backing)?;
        }
        Ok(())
    }

    /// Spawns a daemon of the stack (in its memcg when it has one), writing
    /// it in the ledger; its output goes to `<workdir>/<log>.log`.
    pub(crate) fn spawn_daemon(&mut self, what: &str, cmd: &mut Command) -> Result<u32> {
        if let Some(memcg) = &self.memcg {
            memcg.enter_on_spawn(cmd)?;
        }
        self.spawn_outside_memcg(what, cmd)
    }

    /// Like [`spawn_daemon`](Self::spawn_daemon), for a helper that only
    /// sets the servicer up (iscsid, rpc.mountd) and so stays out of the
    /// memcg.
    pub(crate) fn spawn_outside_memcg(&mut self, what: &str, cmd: &mut Command) -> Result<u32> {
        let log = File::create(self.workdir.join(format!("{what}.log"))).context("creating a daemon log")?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        self.children.push(child);
        self.record_process(pid, what)?;
        Ok(pid)
    }

    /// Writes a process we did not spawn ourselves (a daemon's fork) in the ledger.
    pub(crate) fn record_process(&mut self, pid: u32, what: &str) -> Result<()> {
        let start = start_time(pid).ok_or_else(|| anyhow!("{what} (pid {pid}) exited at once"))?;
        self.ledger.add(Item::Process { pid, start, what: what.to_owned() })
    }

    /// The daemon's log, for error messages.
    pub(crate) fn daemon_log(&self, what: &str) -> String {
        fs::read_to_string(self.workdir.join(format!("{what}.log"))).unwrap_or_default().trim().to_owned()
    }

    /// Fails when a daemon we spawned has exited, with its log.
    pub(crate) fn check_alive(&mut self, what: &str, pid: u32) -> Result<()> {
        if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
            if let Some(status) = c.try_wait()? {
                bail!("{what} exited ({status}): {}", self.daemon_log(what));
            }
        }
        Ok(())
    }

    pub(crate) fn attach_loop(&mut self, backing: &Path) -> Result<PathBuf> {
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(backing), CMD_TIMEOUT)?;
        let dev = PathBuf::from(out.trim());
        // Written down before anything can fail: teardown then detaches it.
        self.ledger.add(Item::Loop { dev: dev.clone(), backing: backing.to_path_buf() })?;
        Ok(dev)
    }

    fn add_loop_level(&mut self, i: usize, backing: &Path) -> Result<()> {
        let dev = self.attach_loop(backing)?;
        self.add_level(i, &dev, Some(backing.to_path_buf()))
    }

    /// mkfs.xfs + mount on `device` for level `i`.
    fn add_level(&mut self, i: usize, device: &Path, backing_file: Option<PathBuf>) -> Result<()> {
        let rdev = fs::metadata(device).with_context(|| format!("stat {}", device.display()))?.rdev();
        let mountpoint = self.workdir.join(format!("mnt{i}"));
        fs::create_dir(&mountpoint).with_context(|| format!("creating {}", mountpoint.display()))?;
        run(Command::new("mkfs.xfs").args(["-f", "-q"]).arg(device), MKFS_TIMEOUT)?;
        self.ledger.add(Item::Mount(mountpoint.clone()))?;
        run(Command::new("mount").args(["-t", "xfs"]).arg(device).arg(&mountpoint), CMD_TIMEOUT)?;
        self.levels.push(Level {
            device: device.to_path_buf(),
            devt: (libc::major(rdev), libc::minor(rdev)),
            backing_file,
            mountpoint,
        });
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

    /// Like [`StorageStack::spawn_writer`] with other dd flags (e.g. `oflag=direct`).
    pub fn spawn_writer_with(&mut self, file: &str, mb: u64, dd_flags: &[&str]) -> Result<u32> {
        self.spawn_dd(file, mb, dd_flags, true)
    }

    /// Like [`StorageStack::spawn_writer`], but the writer stays outside the memcg:
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
        self.record_process(pid, "dd writer")?;
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

    /// Writers die first (one in D state only once FUSE is aborted), then
    /// the ledger is undone newest first: mounts, loop and dm devices, the
    /// servicer's device, the servicer. Every step runs even when an
    /// earlier one failed; each has a timeout, so this cannot hang.
    fn teardown_inner(&mut self) -> Vec<anyhow::Error> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        let mut errs = Vec::new();
        for w in &mut self.writers {
            let _ = w.child.kill();
        }
        push_err(&mut errs, abort_fuse_under(&self.workdir));
        for mut w in self.writers.drain(..) {
            if !matches!(wait_timeout(&mut w.child, CMD_TIMEOUT), Ok(Some(_))) {
                errs.push(anyhow!("writer {} did not exit after SIGKILL", w.child.id()));
            }
        }
        errs.extend(self.ledger.undo_all());
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = wait_timeout(&mut c, Duration::from_secs(5));
        }
        if let Some(memcg) = self.memcg.take() {
            push_err(&mut errs, memcg.remove());
        }
        let left = mounts_under(&self.workdir);
        if !left.is_empty() || !errs.is_empty() {
            // Removing files through a live mount could block on a wedged
            // FUSE, and the ledger is what a later sweep needs.
            errs.push(anyhow!("keeping {} for the next sweep (mounts left: {left:?})", self.workdir.display()));
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

impl Drop for StorageStack {
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

pub(crate) fn sparse_file(path: &Path, bytes: u64) -> Result<()> {
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
