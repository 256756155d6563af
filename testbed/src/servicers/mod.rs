//! The servicers a stack's bottom device can have, one module each: each
//! starts its daemon (in the stack's memcg), makes the device or file the
//! first XFS goes on, and writes down in the ledger what teardown undoes.

pub(crate) mod bindfs;
pub(crate) mod dm;
pub(crate) mod nbd;
pub(crate) mod qsd;
pub(crate) mod tcmu;
pub(crate) mod ublk;

use anyhow::{bail, Result};
use std::path::PathBuf;
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
