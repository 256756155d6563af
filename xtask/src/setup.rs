//! Installs what a fresh machine lacks. Idempotent: checks first, says what
//! it installs, installs only that.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};

use crate::util::{exec, path_env};

/// Debian's rustc-web carries a prebuilt `core` for bpfel-unknown-none (no
/// rust-src needed); llvm-22 is what bpf-linker links against. The rest are
/// what the tests, the demo and the bench drive.
const APT: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "xfsprogs",
    "fuse3",
    "qemu-utils",
    "fio",
    "bpftool",
    // The yardstick `cargo xtask bench` measures the agent against.
    "bpftrace",
    // `cargo xtask vm`: Debian's kernels boot under qemu through virtme-ng.
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "python3-venv",
    // promtool, for the alert rules' tests (deploy/prometheus).
    "prometheus",
    // `cargo xtask package --install-test` (a minimal Debian 12 root) and --podman.
    "debootstrap",
    "podman",
    // The servicers of the VM scenarios (the guests run this root fs).
    "nbd-server",
    "nbd-client",
    "bindfs",
    "tcmu-runner",
    "targetcli-fb",
    "dbus",
    "dmsetup",
    // iSCSI (tgtd, open-iscsi), NVMe/TCP (nvme-cli) and knfsd stacks.
    "tgt",
    "open-iscsi",
    "nvme-cli",
    "nfs-kernel-server",
    // bindgen (libublk-rs-sys, built for rublk) needs libclang.
    "libclang-dev",
    // virtiofsd, built when a guest kernel has no 9p (tools::virtiofsd).
    "libseccomp-dev",
    "libcap-ng-dev",
];

/// Pinned: newer releases may need a newer rustc than the machine has.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn has_bpf_linker() -> bool {
    Command::new("bpf-linker").arg("--version").env("PATH", path_env()).output().is_ok_and(|o| o.status.success())
}

pub fn run_setup() -> Result<()> {
    let missing: Vec<&str> = APT.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        if !crate::util::is_root() {
            bail!("missing packages {}: run `cargo xtask setup` as root", missing.join(" "));
        }
        eprintln!("setup: installing {}", missing.join(" "));
        exec(Command::new("apt-get").args(["update", "-q"]))?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    } else {
        eprintln!("setup: apt packages present");
    }
    if !has_bpf_linker() {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (llvm-22)");
        let path = format!("/usr/lib/llvm-22/bin:{}", path_env());
        exec(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("PATH", path),
        )?;
    } else {
        eprintln!("setup: bpf-linker present");
    }
    if !Path::new("/usr/bin/rustc").exists() {
        bail!("/usr/bin/rustc (Debian rustc-web) is missing after install");
    }
    crate::tools::install()?;
    // cargo-deb and kubernetes-validate, for `cargo xtask package`.
    crate::package::setup()
}
