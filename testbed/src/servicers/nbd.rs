//! The kernel nbd client over a userspace server: nbd-server (which forks a
//! child per connection, and that child does the I/O) reached over TCP on
//! localhost, or qemu-nbd connecting the device itself (`-c`).

use super::wait_until;
use crate::cmd::run;
use crate::ledger::Item;
use crate::stack::{sparse_file, Bottom, StorageStack, CMD_TIMEOUT};
use anyhow::{bail, Context, Result};
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// An nbd device no one uses (no client pid, no size).
fn free_device() -> Result<PathBuf> {
    let mut names: Vec<String> = fs::read_dir("/sys/block")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nbd"))
        .collect();
    names.sort_by_key(|n| n[3..].parse::<u32>().unwrap_or(u32::MAX));
    for n in names {
        let size = fs::read_to_string(format!("/sys/block/{n}/size")).unwrap_or_default();
        if !Path::new(&format!("/sys/block/{n}/pid")).exists() && size.trim() == "0" {
            return Ok(PathBuf::from("/dev").join(n));
        }
    }
    bail!("no free nbd device: this kernel has no nbd module, or every device is in use")
}

fn connected(dev: &Path) -> bool {
    let name = dev.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let size = fs::read_to_string(format!("/sys/block/{name}/size")).unwrap_or_default();
    size.trim().parse::<u64>().is_ok_and(|s| s > 0)
}

/// Children of `pid` (from /proc/*/stat's ppid).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

pub(crate) fn start_nbd_server(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    let lower = stack.data_file.clone();
    sparse_file(&lower, mb << 20)?;
    let port = super::free_port()?;
    let config = stack.workdir.join("nbd-server.conf");
    fs::write(
        &config,
        format!("[generic]\nlistenaddr = 127.0.0.1\nport = {port}\n[rs]\nexportname = {}\n", lower.display()),
    )?;
    let pidfile = stack.workdir.join("nbd-server.pid");
    // nbd-server daemonizes: the process we start exits once the daemon runs.
    let mut cmd = Command::new("nbd-server");
    cmd.arg("-C").arg(&config).arg("-p").arg(&pidfile);
    let launcher = stack.spawn_daemon("nbd-server", &mut cmd)?;
    wait_until(
        "nbd-server did not listen",
        Duration::from_secs(30),
        || Ok(()),
        || TcpStream::connect(("127.0.0.1", port)).is_ok() && pidfile.exists(),
    )?;
    let daemon: u32 = fs::read_to_string(&pidfile)?.trim().parse().context("nbd-server's pid file")?;
    if daemon != launcher {
        stack.record_process(daemon, "nbd-server")?;
    }
    let dev = free_device()?;
    stack.ledger.add(Item::Nbd(dev.clone()))?;
    run(
        Command::new("nbd-client").args(["127.0.0.1", &port.to_string()]).arg(&dev).args([
            "-name",
            "rs",
            "-block-size",
            "4096",
            "-timeout",
            "30",
        ]),
        CMD_TIMEOUT,
    )?;
    wait_until("nbd-client did not connect", Duration::from_secs(30), || Ok(()), || connected(&dev))?;
    // The forked child serving this connection is the servicer.
    let child = children_of(daemon).into_iter().next().context("nbd-server forked no child for the connection")?;
    stack.record_process(child, "nbd-server connection")?;
    stack.daemon_pid = Some(child);
    stack.served_device = Some(dev.clone());
    Ok(Bottom::Device(dev))
}

pub(crate) fn start_qemu_nbd(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    let lower = stack.data_file.clone();
    sparse_file(&lower, mb << 20)?;
    let dev = free_device()?;
    // Without --fork it stays in the foreground, serving the device it connected.
    let mut cmd = Command::new("qemu-nbd");
    cmd.arg("-c").arg(&dev).args(["-f", "raw", "--cache=writeback", "--aio=threads"]).arg(&lower);
    let pid = stack.spawn_daemon("qemu-nbd", &mut cmd)?;
    stack.ledger.add(Item::Nbd(dev.clone()))?;
    wait_until(
        "qemu-nbd did not connect its device",
        Duration::from_secs(30),
        || stack.check_alive("qemu-nbd", pid),
        || connected(&dev),
    )?;
    // qemu-nbd forks the process that serves the device; the kernel names
    // the thread of it that runs NBD_DO_IT.
    let name = dev.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let tid: u32 = fs::read_to_string(format!("/sys/block/{name}/pid"))?.trim().parse().context("nbd pid")?;
    let status = fs::read_to_string(format!("/proc/{tid}/status")).context("the nbd thread's status")?;
    let server: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Tgid in the nbd thread's status")?;
    if server != pid {
        stack.record_process(server, "qemu-nbd server")?;
    }
    stack.daemon_pid = Some(server);
    stack.served_device = Some(dev.clone());
    Ok(Bottom::Device(dev))
}
