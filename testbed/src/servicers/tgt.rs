//! tgtd, the userspace SCSI target framework (Debian's `tgt`), serving a
//! LUN over iSCSI on 127.0.0.1 from a file on ext4, with open-iscsi logged
//! in to it: tgtd completes every SCSI command in userspace with pwrite()
//! into its file, so it is a userspace servicer that can deadlock in reclaim.

use super::{free_port, iscsi, unique_name, wait_until};
use crate::cmd::run;
use crate::ledger::Item;
use crate::stack::{sparse_file, Bottom, StorageStack, CMD_TIMEOUT};
use anyhow::{Context, Result};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The one target a stack's tgtd has.
const TID: u32 = 1;

/// tgtd's management socket for a control port.
fn socket(control_port: u16) -> PathBuf {
    PathBuf::from(format!("/var/run/tgtd/socket.{control_port}"))
}

/// A control port (tgtd takes 0 to 32767) no tgtd has its socket for;
/// not 0, a host's own tgtd's.
fn free_control_port() -> Result<u16> {
    (1..=32767).find(|p| !socket(*p).exists()).context("every tgtd control port is taken")
}

/// tgtadm on the tgtd of `control_port`.
fn tgtadm(control_port: u16, args: &[&str]) -> Result<String> {
    run(Command::new("tgtadm").args(["-C", &control_port.to_string(), "--lld", "iscsi"]).args(args), CMD_TIMEOUT)
}

pub(crate) fn start(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    iscsi::require_initiator()?;
    let file = stack.data_file.clone();
    sparse_file(&file, mb << 20)?;
    let port = free_port()?;
    let control = free_control_port()?;
    // -f: stays in the foreground, so the pid we start is the servicer.
    let mut cmd = Command::new("tgtd");
    cmd.args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}"), "-C", &control.to_string()]);
    let pid = stack.spawn_daemon("tgtd", &mut cmd)?;
    stack.daemon_pid = Some(pid);
    wait_until(
        "tgtd did not open its management socket",
        Duration::from_secs(30),
        || stack.check_alive("tgtd", pid),
        || UnixStream::connect(socket(control)).is_ok(),
    )?;
    let iqn = unique_name(iscsi::IQN_PREFIX, stack);
    let tid = TID.to_string();
    stack.ledger.add(Item::TgtTarget { control_port: control, tid: TID })?;
    tgtadm(control, &["--op", "new", "--mode", "target", "--tid", &tid, "-T", &iqn])?;
    let backing = file.to_string_lossy();
    tgtadm(control, &["--op", "new", "--mode", "logicalunit", "--tid", &tid, "--lun", "1", "-b", &backing])?;
    tgtadm(control, &["--op", "bind", "--mode", "target", "--tid", &tid, "-I", "127.0.0.1"])?;
    let disk = iscsi::login(stack, &iqn, port)?;
    stack.served_device = Some(disk.clone());
    Ok(Bottom::Device(disk))
}

/// Deletes the target, then asks tgtd to exit (it ignores SIGTERM while it
/// serves anything). Nothing to do once tgtd is gone.
pub(crate) fn remove_target(control_port: u16, tid: u32) -> Result<()> {
    if UnixStream::connect(socket(control_port)).is_err() {
        return Ok(());
    }
    tgtadm(control_port, &["--op", "delete", "--force", "--mode", "target", "--tid", &tid.to_string()])?;
    tgtadm(control_port, &["--op", "delete", "--mode", "system"]).map(drop)
}
