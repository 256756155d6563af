//! Tools the VM scenarios need that bookworm's apt does not give, kept
//! under target/vm/tools where the testbed looks for them:
//! - dmzadm (Debian's dm-zoned-tools, in trixie): the trixie binary package,
//!   fetched through the private apt of `vm::kernels` and extracted (its
//!   libraries are bookworm's too);
//! - rublk from crates.io, twice: 0.2.15, whose libublk sets
//!   PR_SET_IO_FLUSHER, and 0.2.14, whose libublk clears it;
//! - virtiofsd (the Rust daemon) from crates.io, on first use only.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Result};

use crate::{
    util::{exec, path_env, root},
    vm::kernels::apt,
};

const RUBLKS: &[&str] = &["0.2.14", "0.2.15"];

pub fn dir() -> PathBuf {
    root().join("target/vm/tools")
}

fn dmzadm() -> Result<()> {
    let tree = dir().join("dm-zoned-tools");
    let bin = tree.join("usr/sbin/dmzadm");
    if bin.exists() {
        return Ok(());
    }
    eprintln!("setup: fetching dmzadm (Debian trixie's dm-zoned-tools)");
    let debs = dir().join("debs");
    std::fs::create_dir_all(&debs)?;
    exec(apt("trixie", "apt-get")?.args(["-q", "update"]))?;
    exec(apt("trixie", "apt-get")?.args(["-q", "download", "dm-zoned-tools"]).current_dir(&debs))?;
    for deb in std::fs::read_dir(&debs)?.flatten().map(|e| e.path()) {
        exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    }
    std::fs::remove_dir_all(&debs)?;
    // It must run with this machine's libraries.
    if !Command::new(&bin).arg("--help").output().is_ok_and(|o| o.status.success() || !o.stdout.is_empty()) {
        bail!("{} does not run here", bin.display());
    }
    Ok(())
}

fn rublk(version: &str) -> Result<()> {
    let prefix = dir().join(format!("rublk-{version}"));
    if prefix.join("bin/rublk").exists() {
        return Ok(());
    }
    eprintln!("setup: building rublk {version} from crates.io");
    // Without the default `vram` target, which needs OpenCL.
    cargo_install("rublk", version, &["--no-default-features"], &prefix)
}

/// `cargo install` of a pinned crate into its own prefix under dir().
fn cargo_install(krate: &str, version: &str, extra: &[&str], prefix: &std::path::Path) -> Result<()> {
    exec(
        Command::new("cargo")
            .args(["install", krate, "--locked", "--version", version])
            .args(extra)
            .arg("--root")
            .arg(prefix)
            .env("PATH", path_env()),
    )
}

/// Pinned, as rublk: newer releases may need a newer rustc.
const VIRTIOFSD_VERSION: &str = "1.14.0";

/// The directory holding virtiofsd, built on first use (about a minute):
/// virtme-ng shares the host's root over virtio-fs with it for a kernel
/// without 9p (Debian's cloud flavor), and it refuses bookworm's C daemon
/// (/usr/lib/qemu/virtiofsd), which cannot run unprivileged.
pub fn virtiofsd() -> Result<PathBuf> {
    let prefix = dir().join(format!("virtiofsd-{VIRTIOFSD_VERSION}"));
    if !prefix.join("bin/virtiofsd").exists() {
        eprintln!("xtask: building virtiofsd {VIRTIOFSD_VERSION} from crates.io");
        cargo_install("virtiofsd", VIRTIOFSD_VERSION, &[], &prefix)?;
    }
    Ok(prefix.join("bin"))
}

pub fn install() -> Result<()> {
    dmzadm()?;
    for v in RUBLKS {
        rublk(v)?;
    }
    Ok(())
}
