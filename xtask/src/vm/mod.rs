//! `cargo xtask vm --kernel K -- CMD...`: runs CMD as root, in the repo
//! root, inside a VM booted with one of Debian's kernels on this machine's
//! own root filesystem (virtme-ng), and returns CMD's exit status.
//!
//! The guest sees the host's root read-only, so the binaries built here run
//! there unchanged; a fresh ext4 disk per VM holds every storage stack
//! (`guest.sh`), and the output comes back through a shared directory.

pub mod kernels;

use std::{
    fs::{self, File},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::util::{exec, path_env, root};

/// virtme-ng from PyPI, pinned: its command line is what this module speaks.
const VIRTME_NG: &str = "virtme-ng==1.42";

#[derive(Debug, Clone)]
pub struct VmOptions {
    pub kernel: String,
    pub memory: String,
    pub cpus: u32,
    /// Kill the guest after this long.
    pub timeout: Duration,
}

fn venv() -> PathBuf {
    root().join("target/vm/venv")
}

/// The `vng` command, installed into a venv under target/ if missing.
fn vng() -> Result<PathBuf> {
    let bin = venv().join("bin/vng");
    if !bin.exists() {
        eprintln!("xtask: installing {VIRTME_NG} into {}", venv().display());
        exec(Command::new("python3").arg("-m").arg("venv").arg(venv()))?;
        exec(Command::new(venv().join("bin/pip")).args(["install", "-q", VIRTME_NG]))?;
    }
    Ok(bin)
}

/// A fresh ext4 image labelled `rs-testbed`, attached as the guest's disk.
fn make_disk(path: &Path) -> Result<()> {
    File::create(path).and_then(|f| f.set_len(8 << 30)).with_context(|| format!("creating {}", path.display()))?;
    exec(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "rs-testbed"]).arg(path))
}

/// Whether KVM really runs a guest here. `/dev/kvm` exists on these
/// machines, but a nested guest hangs before its kernel prints anything, so
/// the answer comes from a tiny boot with a short deadline, cached per machine.
fn kvm_works(kernel: &kernels::Kernel) -> Result<bool> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let verdict = Path::new("/run/reclaimscope-kvm");
    if let Ok(v) = fs::read_to_string(verdict) {
        return Ok(v.trim() == "yes");
    }
    let out = tempdir("kvm-probe")?;
    let mut child = launch(kernel, &out, "256M", 1, true, &["true".to_owned()])?;
    let ok = wait_child(&mut child, Duration::from_secs(20))?.is_some() && out.join("status").exists();
    if !ok {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = fs::remove_dir_all(&out);
    eprintln!(
        "xtask: KVM {}",
        if ok { "works: using it" } else { "guest did not boot within 20 s: using software emulation" }
    );
    fs::write(verdict, if ok { "yes" } else { "no" })?;
    Ok(ok)
}

fn tempdir(what: &str) -> Result<PathBuf> {
    let dir = root().join("target/vm/run").join(format!("{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn launch(kernel: &kernels::Kernel, out: &Path, memory: &str, cpus: u32, kvm: bool, cmd: &[String]) -> Result<Child> {
    // The command goes in a file: the kernel command line that carries
    // virtme-ng's --exec holds 2048 bytes on x86, and a longer one panics
    // the guest at boot (fortify: buffer overflow in strlen).
    let script = cmd.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    fs::write(out.join("cmd"), format!("{script}\n"))?;
    let guest = root().join("xtask/vm/guest.sh");
    let line = [guest.display().to_string(), kernel.modules.display().to_string(), kernel.release.clone()];
    let exec_line =
        line.iter().chain([&out.display().to_string()]).map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    let mut c = Command::new(vng()?);
    c.arg("--run").arg(&kernel.vmlinuz);
    if !kvm {
        c.arg("--disable-kvm");
    }
    // An entropy source: without one an emulated guest can block in
    // getrandom() at boot for minutes (seen: a guest idle before its init).
    c.arg("--qemu-opts=-device virtio-rng-pci");
    // 9p where the kernel has it (what every scenario was measured on);
    // virtio-fs otherwise, which virtme-ng picks when virtiofsd is on PATH.
    let mut path = format!("{}:{}", venv().join("bin").display(), path_env());
    if kernel.has_9p {
        c.arg("--force-9p");
    } else {
        path = format!("{}:{path}", crate::tools::virtiofsd()?.display());
    }
    c.args(["--cpus", &cpus.to_string(), "--memory", memory]).arg("--rwdir").arg(out).arg("--cwd").arg(root());
    let disk = out.join("disk.img");
    if disk.exists() {
        c.arg("--disk").arg(&disk);
    }
    // Kernel messages on the console, kept for a guest that fails early.
    c.arg("--verbose").arg("--exec").arg(exec_line);
    // The console is kept for when the guest fails before running the command.
    let console = File::create(out.join("console"))?;
    // vng runs its sibling virtme-run through PATH.
    c.current_dir(root()).env("PATH", path).stdin(Stdio::null()).stdout(console.try_clone()?).stderr(console);
    c.spawn().context("cannot start virtme-ng")
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if t.elapsed() >= timeout {
            return Ok(None);
        }
        sleep(Duration::from_millis(200));
    }
}

/// Copies what the guest appended to `path` since `pos` to stdout.
fn follow(path: &Path, pos: &mut u64) {
    let Ok(mut f) = File::open(path) else { return };
    if f.seek(SeekFrom::Start(*pos)).is_err() {
        return;
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
        *pos += buf.len() as u64;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&buf);
        let _ = out.flush();
    }
}

/// A guest that has not started the command by then did not boot (seen
/// about once in ten emulated boots: idle before its init, no output).
const BOOT_DEADLINE: Duration = Duration::from_secs(150);

/// What a guest left behind.
pub struct Finished {
    /// The command's exit status (the guest's own, not qemu's).
    pub code: i32,
    /// The shared directory: `output`, and whatever the command wrote to
    /// `$RECLAIMSCOPE_VM_OUT`.
    pub out: PathBuf,
}

/// Boots the kernel, runs `cmd` in the repo root, streams its output, and
/// returns its exit status. A boot that hangs is retried once.
pub fn run(opts: &VmOptions, cmd: &[String]) -> Result<Finished> {
    if cmd.is_empty() {
        bail!("no command: cargo xtask vm --kernel K -- CMD...");
    }
    let kernel = kernels::fetch(&opts.kernel)?;
    let kvm = kvm_works(&kernel)?;
    for attempt in 1..=2 {
        match boot(opts, &kernel, kvm, cmd)? {
            Some(code) => return Ok(code),
            None if attempt == 1 => {
                eprintln!("xtask: the {} guest did not boot within {BOOT_DEADLINE:?}; booting again", kernel.name)
            }
            None => {}
        }
    }
    bail!("the {} guest did not boot twice in a row", kernel.name)
}

/// One boot; None when the guest never started the command.
fn boot(opts: &VmOptions, kernel: &kernels::Kernel, kvm: bool, cmd: &[String]) -> Result<Option<Finished>> {
    let out = tempdir(&format!("vm-{}", kernel.name))?;
    make_disk(&out.join("disk.img"))?;
    eprintln!("xtask: booting {} ({}), {} vCPUs, {}", kernel.name, kernel.release, opts.cpus, opts.memory);
    let started = Instant::now();
    let mut child = launch(kernel, &out, &opts.memory, opts.cpus, kvm, cmd)?;
    let output = out.join("output");
    let mut pos = 0;
    let finished = loop {
        follow(&output, &mut pos);
        if child.try_wait()?.is_some() {
            break true;
        }
        let booted = pos > 0;
        if started.elapsed() >= opts.timeout || (!booted && started.elapsed() >= BOOT_DEADLINE) {
            let _ = child.kill();
            let _ = child.wait();
            if !booted {
                let _ = fs::remove_file(out.join("disk.img"));
                return Ok(None);
            }
            break false;
        }
        sleep(Duration::from_millis(500));
    };
    follow(&output, &mut pos);
    let status = fs::read_to_string(out.join("status")).ok().and_then(|s| s.trim().parse::<i32>().ok());
    let _ = fs::remove_file(out.join("disk.img"));
    eprintln!("xtask: {} guest ran {:.0} s", kernel.name, started.elapsed().as_secs_f64());
    match (finished, status) {
        (_, Some(code)) => Ok(Some(Finished { code, out })),
        (false, None) => bail!("the {} guest did not finish within {:?} and was killed", kernel.name, opts.timeout),
        (true, None) => {
            let console = fs::read_to_string(out.join("console")).unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            bail!(
                "the {} guest exited without running the command; its console ended with:\n{}",
                kernel.name,
                tail.join("\n")
            )
        }
    }
}
