//! The stack of the 2019 report: tcmu-runner's ZBC file handler storing a
//! host-aware zoned disk in a file on ext4, exported as a SCSI disk through
//! LIO's loopback fabric (tcm_loop), with dm-zoned on it so that XFS can
//! use it. tcmu-runner completes every SCSI command in userspace with
//! pwrite() into its file.

use super::wait_until;
use crate::cmd::run;
use crate::ledger::Item;
use crate::stack::{Bottom, StorageStack, CMD_TIMEOUT};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CONFIGFS: &str = "/sys/kernel/config/target/core";
/// Zones of 32 MiB, 8 of them conventional (where dm-zoned keeps its metadata).
const ZBC_MODEL: &str = "model-HA/zsize-32/conv-8";
/// Commands tcmu-runner does not answer fail after this many seconds, so a
/// deadlocked handler cannot hold the disk for ever.
const CMD_TIME_OUT_S: u32 = 10;

/// targetcli with a private home (it insists on writing its preferences).
fn targetcli(stack: &StorageStack, args: &str) -> Result<String> {
    let home = stack.workdir.join("targetcli");
    fs::create_dir_all(&home)?;
    run(Command::new("targetcli").arg(args).env("TARGETCLI_HOME", &home), CMD_TIMEOUT)
}

/// tcmu-runner registers its handlers on the system bus; a guest has none
/// running, so one is started for the stack (and stopped with it).
fn ensure_system_bus(stack: &mut StorageStack) -> Result<()> {
    let socket = Path::new("/run/dbus/system_bus_socket");
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Ok(());
    }
    // A bus an earlier stack started and stopped leaves its socket and pid files.
    let _ = fs::remove_file(socket);
    let _ = fs::remove_file("/run/dbus/pid");
    fs::create_dir_all("/run/dbus")?;
    let out = run(Command::new("dbus-daemon").args(["--system", "--fork", "--print-pid"]), CMD_TIMEOUT)?;
    let pid: u32 = out.trim().parse().context("dbus-daemon printed no pid")?;
    stack.record_process(pid, "dbus-daemon --system")
}

/// The user backstore's directory in configfs (`user_<N>/<name>`).
fn backstore_dir(name: &str) -> Option<PathBuf> {
    fs::read_dir(CONFIGFS).ok()?.flatten().map(|e| e.path().join(name)).find(|p| {
        p.is_dir() && p.parent().and_then(|h| h.file_name()).is_some_and(|h| h.to_string_lossy().starts_with("user_"))
    })
}

pub(crate) fn start(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    if !Path::new(CONFIGFS).is_dir() || !Path::new("/sys/module/tcm_loop").exists() {
        bail!("no LIO target core with tcm_loop in configfs: this kernel lacks the tcmu modules (target_core_user, tcm_loop)");
    }
    ensure_system_bus(stack)?;
    // Its own log in a directory of its own (our daemon log is tcmu-runner.log).
    let logdir = stack.workdir.join("tcmu-log");
    fs::create_dir_all(&logdir)?;
    let mut cmd = Command::new("tcmu-runner");
    cmd.arg("-l").arg(&logdir);
    let pid = stack.spawn_daemon("tcmu-runner", &mut cmd)?;
    stack.daemon_pid = Some(pid);
    // targetcli's create fails until the ZBC handler is registered.
    let log = logdir.join("tcmu-runner.log");
    wait_until(
        "tcmu-runner did not register its zbc handler",
        Duration::from_secs(60),
        || stack.check_alive("tcmu-runner", pid),
        || fs::read_to_string(&log).is_ok_and(|l| l.contains("Handler zbc is registered")),
    )?;

    let name = format!("rs{}", std::process::id());
    let file = stack.data_file.clone();
    stack.ledger.add(Item::Tcmu { backstore: name.clone(), loopback_wwn: None })?;
    targetcli(
        stack,
        &format!("/backstores/user:zbc create name={name} size={mb}M cfgstring={ZBC_MODEL}@{}", file.display()),
    )?;
    let dir = backstore_dir(&name).context("the backstore is not in configfs")?;
    fs::write(dir.join("attrib/cmd_time_out"), CMD_TIME_OUT_S.to_string()).context("setting cmd_time_out")?;
    let created = targetcli(stack, "/loopback create")?;
    let wwn = created
        .split_whitespace()
        .find(|w| w.starts_with("naa."))
        .map(|w| w.trim_end_matches('.').to_owned())
        .with_context(|| format!("no loopback WWN in {created:?}"))?;
    stack.ledger.add(Item::Tcmu { backstore: name.clone(), loopback_wwn: Some(wwn.clone()) })?;
    targetcli(stack, &format!("/loopback/{wwn}/luns create /backstores/user:zbc/{name}"))?;

    // The disk sits at the SCSI address tcm_loop reports for the target, LUN 0.
    let address = fs::read_to_string(format!("/sys/kernel/config/target/loopback/{wwn}/tpgt_1/address"))
        .context("the loopback target's SCSI address")?;
    let block = PathBuf::from(format!("/sys/bus/scsi/devices/{}:0/block", address.trim()));
    let mut disk = None;
    // sd probes a zoned disk with REPORT ZONES, each answered in userspace:
    // slow under emulation.
    wait_until(
        "the tcmu SCSI disk did not appear",
        Duration::from_secs(120),
        || Ok(()),
        || {
            disk = fs::read_dir(&block)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .map(|e| PathBuf::from("/dev").join(e.file_name()));
            disk.is_some()
        },
    )?;
    let disk = disk.expect("found above");
    stack.served_device = Some(disk.clone());
    Ok(Bottom::Device(zoned(stack, &disk)?))
}

/// dm-zoned over the host-aware disk: XFS cannot write its sequential
/// zones directly (mkfs fails with Remote I/O error).
fn zoned(stack: &mut StorageStack, disk: &Path) -> Result<PathBuf> {
    let short = disk.file_name().and_then(|n| n.to_str()).context("disk name")?;
    let zoned = fs::read_to_string(format!("/sys/block/{short}/queue/zoned")).unwrap_or_default();
    if zoned.trim() != "host-aware" && zoned.trim() != "host-managed" {
        bail!("{} is not zoned ({})", disk.display(), zoned.trim());
    }
    let dmzadm = super::tool("dm-zoned-tools/usr/sbin/dmzadm")?;
    // dmzadm wants the device right after the operation, options after it.
    // Few sequential zones are kept for reclaim: the disks here are small.
    run(Command::new(&dmzadm).arg("--format").arg(disk).args(["--force", "--seq=2"]), Duration::from_secs(120))?;
    // dmzadm names the device dmz-<serial> when udev already knows the
    // disk's serial, dmz-<disk> otherwise (a race with udev): the name it
    // chose is read back from the disk's holders.
    let named = format!("dmz-{short}");
    stack.ledger.add(Item::Dm(named.clone()))?;
    run(Command::new(&dmzadm).arg("--start").arg(disk), Duration::from_secs(60))?;
    let name = holder_name(short).context("dmzadm --start made no dm device over the disk")?;
    if name != named {
        stack.ledger.add(Item::Dm(name.clone()))?;
    }
    super::dm::mknodes(&name)
}

/// The dm name of the device holding a disk (`holders/dm-N` in sysfs).
fn holder_name(disk: &str) -> Option<String> {
    let holder = fs::read_dir(format!("/sys/block/{disk}/holders")).ok()?.flatten().next()?;
    let name = fs::read_to_string(holder.path().join("dm/name")).ok()?;
    Some(name.trim().to_owned())
}

/// Fails every command waiting in the backstore's ring (level 2: a hard
/// CHECK CONDITION), which is what frees a stack whose handler died.
pub(crate) fn fail_pending(backstore: &str) -> Result<()> {
    if let Some(dir) = backstore_dir(backstore) {
        fs::write(dir.join("action/reset_ring"), "2").context("resetting the tcmu ring")?;
        // Commands that come later (a flush on removal) then time out at
        // once; a kernel that refuses the change keeps its 10 s.
        let _ = fs::write(dir.join("attrib/cmd_time_out"), "1");
    }
    Ok(())
}

/// Deletes the loopback target and the backstore (tcmu-runner is stopped
/// by its own ledger item afterwards).
pub(crate) fn remove(backstore: &str, loopback_wwn: Option<&str>) -> Result<()> {
    let home = std::env::temp_dir().join("reclaimscope-targetcli");
    fs::create_dir_all(&home)?;
    let cli = |args: String| run(Command::new("targetcli").arg(args).env("TARGETCLI_HOME", &home), CMD_TIMEOUT);
    if let Some(wwn) = loopback_wwn {
        if Path::new("/sys/kernel/config/target/loopback").join(wwn).exists() {
            cli(format!("/loopback delete {wwn}"))?;
        }
        return Ok(());
    }
    if backstore_dir(backstore).is_some() {
        cli(format!("/backstores/user:zbc delete {backstore}"))?;
    }
    Ok(())
}
