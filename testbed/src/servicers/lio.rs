//! LIO, the kernel's SCSI target, serving a fileio backstore (a file on
//! ext4) over iSCSI on 127.0.0.1, configured through configfs directly,
//! with open-iscsi logged in to it. Kernel threads (iscsi_trx, iscsi_ttx)
//! complete the I/O: there is no daemon pid.

use super::{free_port, iscsi, module_loaded, unique_name};
use crate::ledger::Item;
use crate::stack::{sparse_file, Bottom, StorageStack};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

const TARGET: &str = "/sys/kernel/config/target";

/// Writes a configfs attribute, naming it on failure.
fn set(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// An HBA directory name (`fileio_<N>`) no backstore uses yet, so the HBA
/// is the stack's own and goes with it.
fn free_hba() -> Result<String> {
    let core = Path::new(TARGET).join("core");
    (0..1000).map(|n| format!("fileio_{n}")).find(|h| !core.join(h).exists()).context("no free fileio HBA index")
}

pub(crate) fn start(stack: &mut StorageStack, mb: u64) -> Result<Bottom> {
    let modules = ["target_core_mod", "target_core_file", "iscsi_target_mod"];
    if !Path::new(TARGET).join("core").is_dir() || !modules.iter().all(|m| module_loaded(m)) {
        bail!("no LIO iSCSI target in configfs: this kernel lacks {}", modules.join(", "));
    }
    iscsi::require_initiator()?;
    let file = stack.data_file.clone();
    sparse_file(&file, mb << 20)?;
    let backstore = format!("{}/rs{}", free_hba()?, std::process::id());
    let dev = Path::new(TARGET).join("core").join(&backstore);
    stack.ledger.add(Item::LioBackstore(backstore))?;
    fs::create_dir_all(&dev).with_context(|| format!("creating {}", dev.display()))?;
    // Buffered: the writes go through the page cache, as a userspace
    // servicer's pwrite() does (O_DSYNC otherwise).
    set(&dev.join("control"), &format!("fd_dev_name={},fd_dev_size={},fd_buffered_io=1", file.display(), mb << 20))?;
    set(&dev.join("enable"), "1")?;

    let iqn = unique_name(iscsi::IQN_PREFIX, stack);
    let port = free_port()?;
    let tpg = Path::new(TARGET).join("iscsi").join(&iqn).join("tpgt_1");
    stack.ledger.add(Item::LioTarget(iqn.clone()))?;
    fs::create_dir_all(tpg.join("lun/lun_0")).with_context(|| format!("creating {}", tpg.display()))?;
    symlink(&dev, tpg.join("lun/lun_0/rs")).context("linking the LUN to the backstore")?;
    fs::create_dir(tpg.join(format!("np/127.0.0.1:{port}"))).context("creating the network portal")?;
    // Any initiator, no CHAP, writable: a demo-mode target.
    for (attr, value) in [
        ("authentication", "0"),
        ("generate_node_acls", "1"),
        ("demo_mode_write_protect", "0"),
        ("cache_dynamic_acls", "1"),
    ] {
        set(&tpg.join("attrib").join(attr), value)?;
    }
    set(&tpg.join("enable"), "1")?;
    let disk = iscsi::login(stack, &iqn, port)?;
    stack.served_device = Some(disk.clone());
    Ok(Bottom::Device(disk))
}

/// Entries of a configfs directory (none when it is gone).
fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect()
}

fn rmdir(dir: &Path) -> Result<()> {
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Disables the TPG, then removes what configfs only lets go of bottom-up:
/// the LUN links, the LUNs, the portals, the TPG, the target. Parts a
/// failed build never made are skipped.
pub(crate) fn remove_target(iqn: &str) -> Result<()> {
    let target = Path::new(TARGET).join("iscsi").join(iqn);
    let tpgs = entries(&target)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tpgt_")));
    for tpg in tpgs {
        let _ = fs::write(tpg.join("enable"), "0");
        for lun in entries(&tpg.join("lun")) {
            for link in entries(&lun).into_iter().filter(|p| p.is_symlink()) {
                fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
            }
            rmdir(&lun)?;
        }
        for np in entries(&tpg.join("np")) {
            rmdir(&np)?;
        }
        rmdir(&tpg)?;
    }
    if target.exists() {
        rmdir(&target)?;
    }
    Ok(())
}

/// Removes the backstore, then its HBA.
pub(crate) fn remove_backstore(backstore: &str) -> Result<()> {
    let dev = Path::new(TARGET).join("core").join(backstore);
    if dev.exists() {
        rmdir(&dev)?;
    }
    match dev.parent() {
        Some(hba) if hba.exists() => rmdir(hba),
        _ => Ok(()),
    }
}
