//! A loop device over a file on an NFSv4 mount of this host's own knfsd:
//! the loop worker's writes go through the NFS client over 127.0.0.1 to
//! nfsd threads, which write the file on ext4. knfsd's kernel threads are
//! the servicer: there is no daemon pid. rpcbind and rpc.mountd (which
//! answers the kernel's export upcalls, NFSv4 too) are started when not
//! running; /var/lib/nfs, where they keep state, is bound from a scratch
//! directory because a guest's root is read-only.

use super::{bind_scratch, module_loaded, wait_until};
use crate::cmd::run;
use crate::inspect::mounts_under;
use crate::ledger::Item;
use crate::stack::{sparse_file, Bottom, StorageStack, CMD_TIMEOUT};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const NFSD_FS: &str = "/proc/fs/nfsd";
/// knfsd threads started when none run.
const THREADS: &str = "8";

fn nfsd_file(name: &str) -> std::path::PathBuf {
    Path::new(NFSD_FS).join(name)
}

/// knfsd threads running now.
fn threads() -> Result<u32> {
    let text = fs::read_to_string(nfsd_file("threads")).context("reading /proc/fs/nfsd/threads")?;
    text.trim().parse().with_context(|| format!("/proc/fs/nfsd/threads: {text:?}"))
}

pub(crate) fn start(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    if !["nfsd", "nfsv4"].iter().all(|m| module_loaded(m)) {
        bail!("no knfsd with an NFSv4 client: this kernel lacks nfsd, nfsv4");
    }
    // Empty: the host's etab would export its own directories.
    let state = bind_scratch(stack, "nfs-state", Path::new("/var/lib/nfs"), &[])?;
    for dir in ["sm", "sm.bak", "v4recovery"] {
        fs::create_dir(state.join(dir)).with_context(|| format!("creating /var/lib/nfs/{dir}"))?;
    }
    for file in ["etab", "rmtab"] {
        fs::write(state.join(file), "").with_context(|| format!("creating /var/lib/nfs/{file}"))?;
    }
    if !mounts_under(Path::new(NFSD_FS)).iter().any(|m| m.mountpoint == Path::new(NFSD_FS)) {
        stack.ledger.add(Item::Mount(NFSD_FS.into()))?;
        run(Command::new("mount").args(["-t", "nfsd", "nfsd", NFSD_FS]), CMD_TIMEOUT)?;
    }
    start_rpc_daemons(stack)?;
    if threads()? == 0 {
        stack.ledger.add(Item::Nfsd)?;
        run(Command::new("rpc.nfsd").arg(THREADS), CMD_TIMEOUT)?;
    }
    // fsid=0: the export is NFSv4's pseudo-root, mounted as "/".
    let export = stack.workdir.join("export");
    fs::create_dir(&export).context("creating the export directory")?;
    stack.ledger.add(Item::NfsExport(export.clone()))?;
    run(
        Command::new("exportfs")
            .args(["-o", "rw,no_root_squash,insecure,fsid=0"])
            .arg(format!("127.0.0.1:{}", export.display())),
        CMD_TIMEOUT,
    )?;
    stack.data_file = export.join("lower.img");
    sparse_file(&stack.data_file, mb << 20)?;
    let mnt = stack.workdir.join("nfsmnt");
    fs::create_dir(&mnt).context("creating the NFS mount point")?;
    stack.ledger.add(Item::Mount(mnt.clone()))?;
    run(Command::new("mount").args(["-t", "nfs4", "127.0.0.1:/"]).arg(&mnt), CMD_TIMEOUT)?;
    let dev = stack.attach_loop(&mnt.join("lower.img"))?;
    stack.served_device = Some(dev.clone());
    Ok(Bottom::Device(dev))
}

/// rpcbind (knfsd registers with it as it starts) and rpc.mountd, each
/// unless one runs already.
fn start_rpc_daemons(stack: &mut StorageStack) -> Result<()> {
    if UnixStream::connect("/run/rpcbind.sock").is_err() {
        let pid = stack.spawn_outside_memcg("rpcbind", Command::new("rpcbind").arg("-f"))?;
        wait_until(
            "rpcbind did not open its socket",
            Duration::from_secs(30),
            || stack.check_alive("rpcbind", pid),
            || UnixStream::connect("/run/rpcbind.sock").is_ok(),
        )?;
    }
    if !serving_upcalls() {
        let pid = stack.spawn_outside_memcg("rpc.mountd", Command::new("rpc.mountd").arg("-F"))?;
        wait_until(
            "rpc.mountd did not open the kernel's export channel",
            Duration::from_secs(30),
            || stack.check_alive("rpc.mountd", pid),
            serving_upcalls,
        )?;
    }
    Ok(())
}

/// Whether some process (a mountd) holds the kernel's export upcall
/// channel open (its fd reads `/proc/<its pid>/net/rpc/nfsd.export/channel`).
fn serving_upcalls() -> bool {
    fs::read_dir("/proc").into_iter().flatten().flatten().any(|p| {
        fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.ends_with("net/rpc/nfsd.export/channel")))
    })
}

/// Stops the knfsd threads we started.
pub(crate) fn stop_nfsd() -> Result<()> {
    if nfsd_file("threads").exists() && threads()? > 0 {
        run(Command::new("rpc.nfsd").arg("0"), CMD_TIMEOUT)?;
    }
    Ok(())
}

/// Withdraws the export (when it is still listed).
pub(crate) fn unexport(dir: &Path) -> Result<()> {
    let listed = run(&mut Command::new("exportfs"), CMD_TIMEOUT)?;
    if listed.split_whitespace().any(|w| Path::new(w) == dir) {
        run(Command::new("exportfs").arg("-u").arg(format!("127.0.0.1:{}", dir.display())), CMD_TIMEOUT)?;
    }
    Ok(())
}
