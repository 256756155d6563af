//! The kernel's NVMe target (nvmet) serving a file-backed namespace over
//! NVMe/TCP on 127.0.0.1, configured through configfs, with the kernel's
//! nvme_tcp host connected to it by nvme-cli. Kernel threads (nvmet's
//! workqueues) complete the I/O: there is no daemon pid.

use super::{free_port, module_loaded, unique_name, wait_until};
use crate::cmd::run;
use crate::ledger::Item;
use crate::stack::{sparse_file, Bottom, StorageStack, CMD_TIMEOUT};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NVMET: &str = "/sys/kernel/config/nvmet";
/// The NVMe prefix of every subsystem a stack makes.
pub(crate) const NQN_PREFIX: &str = "nqn.2014-08.org.reclaimscope";

fn set(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

fn subsystem(nqn: &str) -> PathBuf {
    Path::new(NVMET).join("subsystems").join(nqn)
}

fn port(id: u32) -> PathBuf {
    Path::new(NVMET).join("ports").join(id.to_string())
}

pub(crate) fn start(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    if !Path::new(NVMET).is_dir() || !["nvmet_tcp", "nvme_tcp"].iter().all(|m| module_loaded(m)) {
        bail!("no nvmet in configfs with NVMe/TCP: this kernel lacks nvmet, nvmet_tcp, nvme_tcp");
    }
    let file = stack.data_file.clone();
    sparse_file(&file, mb << 20)?;
    let nqn = unique_name(NQN_PREFIX, stack);
    let subsys = subsystem(&nqn);
    stack.ledger.add(Item::NvmetSubsystem(nqn.clone()))?;
    fs::create_dir(&subsys).with_context(|| format!("creating {}", subsys.display()))?;
    set(&subsys.join("attr_allow_any_host"), "1")?;
    let ns = subsys.join("namespaces/1");
    fs::create_dir(&ns).context("creating the namespace")?;
    set(&ns.join("device_path"), &file.to_string_lossy())?;
    // Buffered: the writes go through the page cache, as a userspace
    // servicer's pwrite() does (O_DIRECT otherwise).
    set(&ns.join("buffered_io"), "1")?;
    set(&ns.join("enable"), "1")?;

    let id = (1..u16::MAX as u32).find(|id| !port(*id).exists()).context("no free nvmet port id")?;
    let tcp_port = free_port()?;
    stack.ledger.add(Item::NvmetPort { id, nqn: nqn.clone() })?;
    fs::create_dir(port(id)).context("creating the nvmet port")?;
    for (attr, value) in [
        ("addr_trtype", "tcp"),
        ("addr_adrfam", "ipv4"),
        ("addr_traddr", "127.0.0.1"),
        ("addr_trsvcid", &tcp_port.to_string()),
    ] {
        set(&port(id).join(attr), value)?;
    }
    symlink(&subsys, port(id).join("subsystems").join(&nqn)).context("linking the port to the subsystem")?;

    stack.ledger.add(Item::NvmeConnection(nqn.clone()))?;
    run(
        Command::new("nvme").args(["connect", "-t", "tcp", "-a", "127.0.0.1", "-s", &tcp_port.to_string(), "-n", &nqn]),
        CMD_TIMEOUT,
    )?;
    let mut disk = None;
    wait_until(
        "the NVMe namespace did not appear",
        Duration::from_secs(30),
        || Ok(()),
        || {
            disk = disk_of(&nqn);
            disk.is_some()
        },
    )?;
    let disk = disk.expect("found above");
    stack.served_device = Some(disk.clone());
    Ok(Bottom::Device(disk))
}

/// Whether a controller of this host is connected to the subsystem.
fn connected(nqn: &str) -> bool {
    fs::read_dir("/sys/class/nvme")
        .into_iter()
        .flatten()
        .flatten()
        .any(|c| fs::read_to_string(c.path().join("subsysnqn")).is_ok_and(|n| n.trim() == nqn))
}

/// The namespace's block device (`/dev/nvme<S>n<N>`): its `device` in
/// sysfs (the controller, or the subsystem under native multipath) carries
/// the subsystem's NQN. Hidden per-path devices (`nvme<S>c<C>n<N>`) are
/// skipped.
fn disk_of(nqn: &str) -> Option<PathBuf> {
    fs::read_dir("/sys/block").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("nvme")
            && !name.contains('c')
            && fs::read_to_string(e.path().join("device/subsysnqn")).is_ok_and(|n| n.trim() == nqn);
        ours.then(|| PathBuf::from("/dev").join(name))
    })
}

/// `nvme disconnect`: what fails the host's pending I/O, too.
pub(crate) fn disconnect(nqn: &str) -> Result<()> {
    if connected(nqn) {
        run(Command::new("nvme").args(["disconnect", "-n", nqn]), CMD_TIMEOUT)?;
    }
    Ok(())
}

/// Unlinks the subsystem from the port, then removes the port.
pub(crate) fn remove_port(id: u32, nqn: &str) -> Result<()> {
    let link = port(id).join("subsystems").join(nqn);
    if link.is_symlink() {
        fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    if port(id).exists() {
        fs::remove_dir(port(id)).with_context(|| format!("removing {}", port(id).display()))?;
    }
    Ok(())
}

/// Disables and removes the namespaces, then the subsystem.
pub(crate) fn remove_subsystem(nqn: &str) -> Result<()> {
    let subsys = subsystem(nqn);
    for ns in fs::read_dir(subsys.join("namespaces")).into_iter().flatten().flatten() {
        let _ = fs::write(ns.path().join("enable"), "0");
        fs::remove_dir(ns.path()).with_context(|| format!("removing {}", ns.path().display()))?;
    }
    if subsys.exists() {
        fs::remove_dir(&subsys).with_context(|| format!("removing {}", subsys.display()))?;
    }
    Ok(())
}
