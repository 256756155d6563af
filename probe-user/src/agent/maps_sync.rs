//! Mirrors the topology into the kernel's filter maps: servicer tgids and
//! backing-file inodes. Only differences are written, so a refresh costs
//! nothing when nothing changed.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use probe_common::maps::{BackingInfo, BackingKey, ServicerInfo};

use crate::topology::Topology;

pub struct MapsSync {
    servicers: HashMap<MapData, u32, ServicerInfo>,
    backing: HashMap<MapData, BackingKey, BackingInfo>,
    cur_servicers: BTreeMap<u32, u32>,
    cur_backing: BTreeMap<(u32, u64), u32>,
}

/// What a sync changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub servicers: usize,
    pub backing_files: usize,
}

impl Changes {
    pub fn any(&self) -> bool {
        *self != Changes::default()
    }
}

/// Applies the difference between `cur` and `want` through `apply` (Some:
/// insert or update, None: remove); returns how many entries changed.
fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    cur: &mut BTreeMap<K, V>,
    want: BTreeMap<K, V>,
    mut apply: impl FnMut(K, Option<V>) -> Result<()>,
) -> Result<usize> {
    let mut n = 0;
    for (k, v) in &want {
        if cur.get(k) != Some(v) {
            apply(*k, Some(*v))?;
            n += 1;
        }
    }
    for k in cur.keys().filter(|k| !want.contains_key(k)).copied().collect::<Vec<_>>() {
        apply(k, None)?;
        n += 1;
    }
    *cur = want;
    Ok(n)
}

impl MapsSync {
    pub fn new(
        servicers: HashMap<MapData, u32, ServicerInfo>,
        backing: HashMap<MapData, BackingKey, BackingInfo>,
    ) -> MapsSync {
        MapsSync { servicers, backing, cur_servicers: BTreeMap::new(), cur_backing: BTreeMap::new() }
    }

    /// Brings the maps in line with `topo` plus the servicers named on the
    /// command line (which serve `extra_dev`, or nothing known).
    pub fn sync(&mut self, topo: &Topology) -> Result<Changes> {
        let want_s: BTreeMap<u32, u32> =
            topo.servicer_processes().into_iter().map(|(t, d)| (t, d.to_kernel())).collect();
        let servicers = &mut self.servicers;
        let s = diff(&mut self.cur_servicers, want_s, |k, v| match v {
            Some(v) => servicers.insert(k, ServicerInfo { serving_dev: v, _pad: 0 }, 0).context("SERVICERS update"),
            None => servicers.remove(&k).context("SERVICERS remove"),
        })?;

        let want_b: BTreeMap<(u32, u64), u32> =
            topo.backing_files().into_iter().map(|b| ((b.file_dev.to_kernel(), b.ino), b.backs.to_kernel())).collect();
        let backing = &mut self.backing;
        let b = diff(&mut self.cur_backing, want_b, |(dev, ino), up| {
            let key = BackingKey { dev, _pad: 0, ino };
            match up {
                Some(up) => {
                    backing.insert(key, BackingInfo { upper_dev: up, _pad: 0 }, 0).context("BACKING_FILES update")
                }
                None => backing.remove(&key).context("BACKING_FILES remove"),
            }
        })?;

        Ok(Changes { servicers: s, backing_files: b })
    }
}
