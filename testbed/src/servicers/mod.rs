//! The servicers a stack's bottom device can have, one module each: each
//! starts its daemon (in the stack's memcg), makes the device or file the
//! first XFS goes on, and writes down in the ledger what teardown undoes.

pub(crate) mod bindfs;
pub(crate) mod dm;
pub(crate) mod iscsi;
pub(crate) mod lio;
pub(crate) mod nbd;
pub(crate) mod nfs;
pub(crate) mod nvmet;
pub(crate) mod qsd;
pub(crate) mod tcmu;
pub(crate) mod tgt;
pub(crate) mod ublk;

use crate::cmd::run;
use crate::ledger::Item;
use crate::stack::{StorageStack, CMD_TIMEOUT};
use anyhow::{bail, Context, Result};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tool `cargo xtask setup` builds or extracts from Debian's packages
/// into target/vm/tools (or `RECLAIMSCOPE_TOOLS`): rublk from crates.io,
/// dmzadm from Debian's dm-zoned-tools, which bookworm does not have.
pub(crate) fn tool(rel: &str) -> Result<PathBuf> {
    let tools = std::env::var_os("RECLAIMSCOPE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vm/tools"));
    let bin = tools.join(rel);
    if !bin.exists() {
        bail!("{} is missing: run `cargo xtask setup`", bin.display());
    }
    Ok(bin)
}

/// Polls `ready` every 20 ms until it holds, failing after `timeout` or as
/// soon as `alive` fails.
pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        alive()?;
        if Instant::now() >= deadline {
            bail!("{what} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks
/// it), so a test never meets a host's own server on the well-known port.
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether a kernel module is loaded (or built in).
pub(crate) fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// Bind-mounts `<workdir>/<scratch>` over `target`: the daemons want to
/// write state there (/etc/iscsi, /var/lib/nfs), and a guest's root is
/// read-only. `seed` files are copied in first when `target` has them.
pub(crate) fn bind_scratch(stack: &mut StorageStack, scratch: &str, target: &Path, seed: &[&str]) -> Result<PathBuf> {
    let dir = stack.workdir.join(scratch);
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in seed {
        if target.join(f).exists() {
            fs::copy(target.join(f), dir.join(f)).with_context(|| format!("copying {}", target.join(f).display()))?;
        }
    }
    stack.ledger.add(Item::Mount(target.to_path_buf()))?;
    run(Command::new("mount").arg("--bind").arg(&dir).arg(target), CMD_TIMEOUT)?;
    Ok(dir)
}

/// The name a kernel object of the stack gets after `prefix` (an IQN or an
/// NQN): the stack's name and our pid, lower case, `_` turned into `-`, as
/// iSCSI names allow.
pub(crate) fn unique_name(prefix: &str, stack: &StorageStack) -> String {
    format!("{prefix}:{}-{}", stack.name.to_ascii_lowercase().replace('_', "-"), std::process::id())
}
