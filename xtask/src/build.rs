//! Builds the eBPF object, then the agent with the object embedded.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::util::{cargo, exec, path_env, root};

/// A rustup nightly with rust-src can build `core` for BPF itself; without
/// it, Debian's rustc-web (which ships that `core`) does the job.
fn nightly_with_rust_src() -> bool {
    Command::new("rustup").args(["+nightly", "component", "list", "--installed"]).output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("rust-src"))
    })
}

pub fn ebpf_object() -> PathBuf {
    root().join("probe-ebpf/target/bpfel-unknown-none/release/reclaimscope")
}

pub fn build_ebpf() -> Result<()> {
    let dir = root().join("probe-ebpf");
    let mut cmd = if nightly_with_rust_src() {
        let mut c = Command::new("cargo");
        c.args([
            "+nightly",
            "build",
            "--locked",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]);
        c
    } else {
        let mut c = Command::new("/usr/bin/cargo");
        c.args(["build", "--locked", "--release", "--target", "bpfel-unknown-none"])
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1");
        c
    };
    // The workspace's own cargo settings must not leak into the BPF build.
    cmd.current_dir(dir)
        .env("PATH", path_env())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC_WRAPPER");
    exec(&mut cmd)
}

/// Returns the path of the `reclaimscope` binary.
pub fn run_build(release: bool) -> Result<PathBuf> {
    build_ebpf()?;
    let mut c = cargo();
    c.args(["build", "-p", "probe-user", "--bin", "reclaimscope"]).env("RECLAIMSCOPE_BPF_OBJ", ebpf_object());
    if release {
        c.arg("--release");
    }
    exec(&mut c)?;
    Ok(root().join("target").join(if release { "release" } else { "debug" }).join("reclaimscope"))
}

/// The release binary with the eBPF object embedded: RECLAIMSCOPE_BPF_OBJ
/// when it is set (an object built elsewhere), else [`run_build`].
pub fn release_binary() -> Result<PathBuf> {
    match std::env::var_os("RECLAIMSCOPE_BPF_OBJ") {
        Some(obj) => {
            exec(
                cargo()
                    .args(["build", "--release", "-p", "probe-user", "--bin", "reclaimscope"])
                    .env("RECLAIMSCOPE_BPF_OBJ", obj),
            )?;
            Ok(root().join("target/release/reclaimscope"))
        }
        None => run_build(true),
    }
}
