//! The .deb on a fresh Debian 12 with no build tools: a `debootstrap
//! --variant=minbase bookworm` root, made once per machine and kept under
//! target/package/, under a throw-away overlay for each run. The kernel's
//! /proc, /sys, tracefs, bpffs and /dev are bind-mounted in; every mount is
//! undone whatever happens (a guard unmounts in reverse order, lazily if it
//! must). Also the container image built from that root with podman.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    package::run_with_deadline,
    util::{is_root, root},
};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const COMPLETE: &str = ".reclaimscope-complete";
const BASE_IMAGE: &str = "localhost/debian:bookworm-minbase";
const IMAGE: &str = "localhost/reclaimscope:latest";

/// The cached minimal root.
pub fn base() -> PathBuf {
    root().join("target/package/bookworm-minbase")
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

fn umount(p: &Path) -> bool {
    let ok = |args: &[&str]| {
        run_with_deadline(Command::new("umount").args(args).arg(p), Duration::from_secs(30))
            .is_ok_and(|o| o.status.success())
    };
    ok(&[]) || ok(&["-l"])
}

/// Unmounts everything below `dir`; fails if something stays.
fn unmount_all(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        if !umount(&m) {
            eprintln!("xtask: cannot unmount {}", m.display());
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        bail!("still mounted: {left:?}");
    }
    Ok(())
}

/// Undoes the mounts below its directory when dropped.
struct Mounts(PathBuf);

impl Mounts {
    fn mount(&self, args: &[&str], target: &Path) -> Result<()> {
        std::fs::create_dir_all(target)?;
        let out = run_with_deadline(Command::new("mount").args(args).arg(target), Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("mount {args:?} {}: {}", target.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if let Err(e) = unmount_all(&self.0) {
            eprintln!("xtask: {e:#}");
        }
    }
}

/// `debootstrap --variant=minbase bookworm`, once per machine.
pub fn ensure_base() -> Result<PathBuf> {
    let base = base();
    if base.join(COMPLETE).exists() {
        return Ok(base);
    }
    if !is_root() {
        bail!("debootstrap needs root");
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        bail!("debootstrap is missing (cargo xtask setup installs it)");
    }
    let partial = base.with_extension("partial");
    if partial.exists() {
        // A run that was killed may have left debootstrap's own mounts.
        unmount_all(&partial)?;
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(partial.parent().unwrap())?;
    eprintln!("xtask: debootstrap --variant=minbase {SUITE} (once per machine, cached in {})", base.display());
    let out = run_with_deadline(
        Command::new("debootstrap").args(["--variant=minbase", SUITE]).arg(&partial).arg(MIRROR),
        Duration::from_secs(30 * 60),
    );
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            unmount_all(&partial)?;
            return Err(e);
        }
    };
    unmount_all(&partial)?;
    if !out.status.success() {
        bail!("debootstrap failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    std::fs::write(partial.join(COMPLETE), "")?;
    if base.exists() {
        std::fs::remove_dir_all(&base)?;
    }
    std::fs::rename(&partial, &base)?;
    Ok(base)
}

/// Runs `args` inside the root with a clean environment.
fn chroot(dir: &Path, args: &[&str], timeout: Duration) -> Result<std::process::Output> {
    run_with_deadline(
        Command::new("chroot")
            .arg(dir)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("COLUMNS", "100"),
        timeout,
    )
}

fn show(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Installs the .deb into a fresh overlay of the minimal root and runs
/// `reclaimscope audit` and `reclaimscope watch --duration 5` there.
pub fn install_test(deb: &Path) -> Result<()> {
    let base = ensure_base()?;
    let run = root().join("target/package/install-test");
    // A previous run that was killed.
    unmount_all(&run)?;
    if run.exists() {
        std::fs::remove_dir_all(&run)?;
    }
    let (upper, work, merged) = (run.join("upper"), run.join("work"), run.join("root"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d)?;
    }
    let result = (|| -> Result<()> {
        let mounts = Mounts(run.clone());
        let opts = format!("lowerdir={},upperdir={},workdir={}", base.display(), upper.display(), work.display());
        mounts.mount(&["-t", "overlay", "overlay", "-o", &opts], &merged)?;
        for (src, dst) in [
            ("/proc", "proc"),
            ("/sys", "sys"),
            ("/sys/kernel/tracing", "sys/kernel/tracing"),
            ("/sys/fs/bpf", "sys/fs/bpf"),
            ("/dev", "dev"),
        ] {
            if Path::new(src).exists() {
                mounts.mount(&["--bind", src], &merged.join(dst))?;
            }
        }
        // No build tools: what the package must do without.
        let tools =
            chroot(&merged, &["sh", "-c", "command -v cc gcc cargo rustc make ld || true"], Duration::from_secs(30))?;
        let found = String::from_utf8_lossy(&tools.stdout).trim().to_owned();
        if !found.is_empty() {
            bail!("the minimal root has build tools: {found}");
        }
        let name = deb.file_name().context("the .deb's name")?;
        std::fs::copy(deb, merged.join("tmp").join(name))?;
        let pkg = format!("/tmp/{}", name.to_string_lossy());
        let o =
            chroot(&merged, &["apt-get", "install", "-y", "--no-install-recommends", &pkg], Duration::from_secs(300))?;
        if !o.status.success() {
            bail!("apt-get install {pkg} failed in the minimal root:\n{}", show(&o));
        }
        eprintln!("xtask: installed {pkg} into a minimal Debian 12 root");
        for f in [
            "usr/bin/reclaimscope",
            "usr/share/man/man1/reclaimscope-watch.1.gz",
            "usr/share/bash-completion/completions/reclaimscope",
            "usr/lib/systemd/system/reclaimscope.service",
        ] {
            if !merged.join(f).exists() {
                bail!("/{f} is not installed");
            }
        }
        let o = chroot(&merged, &["reclaimscope", "audit"], Duration::from_secs(120))?;
        // 0 clean, 3 an unprotected servicer, 4 incomplete: each is a verdict; 1 is an error.
        if !matches!(o.status.code(), Some(0 | 3 | 4)) {
            bail!("reclaimscope audit in the minimal root: {}\n{}", o.status, show(&o));
        }
        eprintln!("xtask: audit in the minimal root: {} ({} lines)", o.status, show(&o).lines().count());
        let o = chroot(&merged, &["reclaimscope", "watch", "--duration", "5"], Duration::from_secs(180))?;
        let said = show(&o);
        if !o.status.success() || !said.contains("Tracing memory reclaim") {
            bail!("reclaimscope watch --duration 5 in the minimal root: {}\n{said}", o.status);
        }
        eprintln!("xtask: watch --duration 5 in the minimal root: {}", o.status);
        Ok(())
    })();
    // The guard unmounted everything; remove the overlay's files only then.
    if mounts_under(&run).is_empty() {
        let _ = std::fs::remove_dir_all(&run);
    } else {
        eprintln!("xtask: left {} in place: still mounted", run.display());
    }
    result
}

/// Builds the image of deploy/container/Containerfile with podman and runs
/// `audit` and `watch --duration 5` in it. No registry is reachable from
/// this project's machines, so the base is the debootstrap root, imported
/// (docs/deployment.md says why, and how it is done elsewhere).
pub fn podman_test(deb: &Path) -> Result<()> {
    let base = ensure_base()?;
    // cgroupfs: crun cannot use the systemd manager on a hybrid hierarchy.
    let podman = |args: &[&str], timeout: u64| {
        run_with_deadline(
            Command::new("podman").arg("--cgroup-manager=cgroupfs").args(args),
            Duration::from_secs(timeout),
        )
    };
    let has = |image: &str| podman(&["image", "exists", image], 30).is_ok_and(|o| o.status.success());
    if !has(BASE_IMAGE) {
        let tar = root().join("target/package/bookworm-minbase.tar");
        let o = run_with_deadline(
            Command::new("tar").arg("-C").arg(&base).args(["--exclude", COMPLETE, "-cf"]).arg(&tar).arg("."),
            Duration::from_secs(300),
        )?;
        if !o.status.success() {
            bail!("tar of the minimal root: {}", show(&o));
        }
        let o = podman(&["import", tar.to_str().unwrap(), BASE_IMAGE], 300)?;
        let _ = std::fs::remove_file(&tar);
        if !o.status.success() {
            bail!("podman import: {}", show(&o));
        }
    }
    let ctx = root().join("target/package/image");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx)?;
    std::fs::copy(deb, ctx.join(deb.file_name().unwrap()))?;
    let file = root().join("deploy/container/Containerfile");
    let o = podman(
        &[
            "build",
            // RUN steps without the OCI runtime: crun refuses this
            // machine's hybrid cgroup hierarchy (docs/deployment.md).
            "--isolation=chroot",
            "--build-arg",
            &format!("BASE={BASE_IMAGE}"),
            "-f",
            file.to_str().unwrap(),
            "-t",
            IMAGE,
            ctx.to_str().unwrap(),
        ],
        600,
    )?;
    if !o.status.success() {
        bail!("podman build: {}", show(&o));
    }
    // The DaemonSet's settings: host PID namespace, its capabilities, no seccomp filter.
    let run = |args: &[&str], timeout| {
        let mut a = vec![
            "run",
            "--rm",
            "--network=none",
            "--ulimit=host",
            "--pid=host",
            "--cap-drop=all",
            "--cap-add=BPF,PERFMON,SYS_ADMIN,SYS_PTRACE,DAC_READ_SEARCH,SYSLOG,SYS_RESOURCE",
            "--security-opt=seccomp=unconfined",
            "-v=/sys/kernel/tracing:/sys/kernel/tracing:ro",
            "-e=COLUMNS=100",
            IMAGE,
        ];
        a.extend_from_slice(args);
        podman(&a, timeout)
    };
    let o = run(&["audit"], 120)?;
    if !matches!(o.status.code(), Some(0 | 3 | 4)) {
        bail!("audit in the image: {}\n{}", o.status, show(&o));
    }
    eprintln!("xtask: audit in the image: {}", o.status);
    let o = run(&["watch", "--duration", "5"], 180)?;
    if !o.status.success() || !show(&o).contains("Tracing memory reclaim") {
        bail!("watch --duration 5 in the image: {}\n{}", o.status, show(&o));
    }
    eprintln!("xtask: watch --duration 5 in the image: {}", o.status);
    Ok(())
}
