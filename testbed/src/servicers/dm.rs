//! A device-mapper layer over the served device (dm-linear, or dm-crypt
//! with a throwaway key), so that stacks whose upper XFS is on a dm device
//! are tested: the servicer is then two edges below the filesystem.

use crate::cmd::run;
use crate::ledger::Item;
use crate::stack::{Dm, StorageStack, CMD_TIMEOUT};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn create(stack: &mut StorageStack, under: &Path, kind: Dm) -> Result<PathBuf> {
    if !Path::new("/dev/mapper/control").exists() {
        bail!("no /dev/mapper/control: this kernel has no device-mapper (dm_mod)");
    }
    let sectors = run(Command::new("blockdev").arg("--getsz").arg(under), CMD_TIMEOUT)?;
    let sectors: u64 = sectors.trim().parse().context("blockdev --getsz")?;
    let name = format!("rs-{}-{}", stack.name, std::process::id());
    let dev = under.display();
    let table = match kind {
        Dm::Linear => format!("0 {sectors} linear {dev} 0"),
        // A fixed key: the data is test data and the layer is what matters.
        Dm::Crypt => format!("0 {sectors} crypt aes-xts-plain64 {} 0 {dev} 0", "0123456789abcdef".repeat(4)),
    };
    stack.ledger.add(Item::Dm(name.clone()))?;
    run(Command::new("dmsetup").args(["create", &name, "--table", &table]), CMD_TIMEOUT)?;
    mknodes(&name)
}

/// /dev/mapper/NAME, made by dmsetup itself: a guest has no udev to make it.
pub(crate) fn mknodes(name: &str) -> Result<PathBuf> {
    run(Command::new("dmsetup").args(["mknodes", name]), CMD_TIMEOUT)?;
    let dev = PathBuf::from("/dev/mapper").join(name);
    if !dev.exists() {
        bail!("dmsetup made no {}", dev.display());
    }
    Ok(dev)
}
