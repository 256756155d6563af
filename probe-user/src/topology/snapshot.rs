//! Capturing this machine's topology as a snapshot directory, which
//! [`Topology::discover_from`] reads back into the same topology.

use super::source::Source;
use super::{Extra, Topology};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// Discovers the live topology and writes what that discovery read into
/// `dest` (a new or empty directory). Returns the topology discovered, so
/// that a caller can check the snapshot reproduces it.
pub fn capture(dest: &Path, extra: &Extra) -> Result<Topology> {
    if fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} is not empty: a snapshot needs a new directory", dest.display());
    }
    let src = Source::recording();
    let topo = Topology::discover_with(&src, extra)?;
    let keep: BTreeSet<u32> = topo.servicers.iter().filter_map(|s| s.tgid).collect();
    let recording = src.into_recording().context("a recording source returns its recording")?;
    recording.write(dest, &keep).with_context(|| format!("writing snapshot to {}", dest.display()))?;
    Ok(topo)
}
