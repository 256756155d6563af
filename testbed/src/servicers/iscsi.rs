//! The open-iscsi initiator, logged in over 127.0.0.1 to a target a stack
//! serves (tgtd, or LIO in the kernel): the kernel's iscsi_tcp sends the
//! SCSI commands, iscsid only sets the session up, so it runs outside the
//! stack's memcg. /etc/iscsi holds iscsiadm's node records, and a guest's
//! root is read-only: a scratch copy is bound over it.

use super::{bind_scratch, wait_until};
use crate::cmd::run;
use crate::ledger::Item;
use crate::stack::{StorageStack, CMD_TIMEOUT};
use anyhow::{bail, Result};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ETC: &str = "/etc/iscsi";
/// The abstract socket iscsiadm talks to iscsid through.
const IPC_SOCKET: &str = "@ISCSIADM_ABSTRACT_NAMESPACE";
/// Seconds a session waits for a lost connection to come back before it
/// fails the I/O: 120 by default, which a teardown after a dead target
/// would wait out.
const REPLACEMENT_TIMEOUT_S: u32 = 5;

/// The iSCSI prefix of every target a stack makes.
pub(crate) const IQN_PREFIX: &str = "iqn.2003-01.org.reclaimscope";

/// Fails, saying so, when this kernel has no iSCSI initiator.
pub(crate) fn require_initiator() -> Result<()> {
    if !super::module_loaded("iscsi_tcp") {
        bail!("no iscsi_tcp: this kernel lacks the iSCSI initiator (iscsi_tcp)");
    }
    Ok(())
}

/// Logs in to `iqn` at 127.0.0.1:`port`; returns the SCSI disk of its LUN.
pub(crate) fn login(stack: &mut StorageStack, iqn: &str, port: u16) -> Result<PathBuf> {
    let etc = bind_scratch(stack, "etc-iscsi", Path::new(ETC), &["initiatorname.iscsi", "iscsid.conf"])?;
    if !etc.join("initiatorname.iscsi").exists() {
        fs::write(etc.join("initiatorname.iscsi"), format!("InitiatorName={IQN_PREFIX}:initiator\n"))?;
    }
    start_iscsid(stack)?;
    let portal = format!("127.0.0.1:{port}");
    stack.ledger.add(Item::IscsiNode { target: iqn.to_owned(), portal: portal.clone() })?;
    let node = ["-m", "node", "-T", iqn, "-p", &portal];
    iscsiadm(&[&node[..], &["-o", "new"]].concat())?;
    let timeout = REPLACEMENT_TIMEOUT_S.to_string();
    iscsiadm(&[&node[..], &["-o", "update", "-n", "node.session.timeo.replacement_timeout", "-v", &timeout]].concat())?;
    iscsiadm(&[&node[..], &["--login"]].concat())?;
    let mut disk = None;
    // sd probes the LUN after the login returns.
    wait_until(
        "the iSCSI disk did not appear",
        Duration::from_secs(30),
        || Ok(()),
        || {
            disk = disk_of(iqn);
            disk.is_some()
        },
    )?;
    Ok(disk.expect("found above"))
}

/// iscsid in the foreground (so the pid we start is the daemon), ready once
/// its IPC socket is bound. In a process group of its own: when it stops,
/// iscsid signals its whole group, which would otherwise be the test's.
fn start_iscsid(stack: &mut StorageStack) -> Result<()> {
    let pid = stack.spawn_outside_memcg("iscsid", Command::new("iscsid").arg("-f").process_group(0))?;
    wait_until(
        "iscsid did not open its IPC socket",
        Duration::from_secs(30),
        || stack.check_alive("iscsid", pid),
        || fs::read_to_string("/proc/net/unix").is_ok_and(|u| u.lines().any(|l| l.ends_with(IPC_SOCKET))),
    )
}

fn iscsiadm(args: &[&str]) -> Result<String> {
    run(Command::new("iscsiadm").args(args), CMD_TIMEOUT)
}

/// The session logged in to `iqn` (`/sys/class/iscsi_session/sessionN`).
fn session_of(iqn: &str) -> Option<PathBuf> {
    fs::read_dir("/sys/class/iscsi_session")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|s| fs::read_to_string(s.join("targetname")).is_ok_and(|t| t.trim() == iqn))
}

/// The block device of the session's first disk LUN: sysfs nests it as
/// `sessionN/device/target<H>:0:0/<H>:0:0:<LUN>/block/<sdX>` (tgtd's LUN 0
/// is its controller, without a block device).
fn disk_of(iqn: &str) -> Option<PathBuf> {
    let session = session_of(iqn)?.join("device");
    let targets =
        fs::read_dir(session).ok()?.flatten().filter(|t| t.file_name().to_string_lossy().starts_with("target"));
    let mut luns: Vec<PathBuf> =
        targets.flat_map(|t| fs::read_dir(t.path()).into_iter().flatten().flatten()).map(|l| l.path()).collect();
    luns.sort();
    luns.iter().find_map(|l| {
        let disk = fs::read_dir(l.join("block")).ok()?.flatten().next()?;
        Some(PathBuf::from("/dev").join(disk.file_name()))
    })
}

/// Logs out (which fails whatever I/O still waits on the session) and
/// deletes the node record.
pub(crate) fn remove_node(iqn: &str, portal: &str) -> Result<()> {
    let node = ["-m", "node", "-T", iqn, "-p", portal];
    if session_of(iqn).is_some() {
        iscsiadm(&[&node[..], &["--logout"]].concat())?;
    }
    if Path::new(ETC).join("nodes").join(iqn).exists() {
        iscsiadm(&[&node[..], &["-o", "delete"]].concat())?;
    }
    Ok(())
}
