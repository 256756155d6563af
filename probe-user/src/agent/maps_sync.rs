//! Mirrors the topology into the kernel's filter maps: servicer tgids and
//! backing-file inodes. Only differences are written, so a refresh costs
//! nothing when nothing changed.
//!
//! The maps have fixed sizes ([`MAX_SERVICERS`], [`MAX_BACKING_FILES`]). A
//! topology larger than a map, or a write the kernel refuses, never ends
//! the agent: what fits is written (removals first, so that an entry that
//! left makes room, and entries already in the kernel stay), the rest is
//! *left out* and reported in the [`Outcome`], and tried again at the next
//! sync. The I/O of what is left out is not followed, so the caller counts
//! it as a loss.

use std::{collections::BTreeMap, io};

use aya::maps::{HashMap, MapData, MapError};
use probe_common::maps::{BackingInfo, BackingKey, ServicerInfo, MAX_BACKING_FILES, MAX_SERVICERS};

use crate::{output::summary::LeftOut, topology::Topology};

/// One of the kernel's filter maps, as the sync writes it: a trait so that
/// the sync's logic runs in tests without a kernel.
pub trait FilterMap<K, V> {
    /// Inserts or updates an entry.
    fn put(&mut self, key: K, value: V) -> io::Result<()>;
    /// Removes an entry (an entry that is not there is an `ErrorKind::NotFound`).
    fn delete(&mut self, key: K) -> io::Result<()>;
}

fn io_error(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        e => io::Error::other(e),
    }
}

impl<K: aya::Pod, V: aya::Pod> FilterMap<K, V> for HashMap<MapData, K, V> {
    fn put(&mut self, key: K, value: V) -> io::Result<()> {
        self.insert(key, value, 0).map_err(io_error)
    }

    fn delete(&mut self, key: K) -> io::Result<()> {
        self.remove(&key).map_err(io_error)
    }
}

pub struct MapsSync<S = HashMap<MapData, u32, ServicerInfo>, B = HashMap<MapData, BackingKey, BackingInfo>> {
    servicers: S,
    backing: B,
    /// What the kernel's maps hold, as far as the sync knows.
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

/// What one sync did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: Changes,
    pub left_out: LeftOut,
    /// Writes the kernel refused, other than a full map (`SERVICERS update
    /// of 4242: ...`), for the log.
    pub errors: Vec<String>,
}

/// What [`apply`] did to one map.
#[derive(Debug, Default, PartialEq, Eq)]
struct Applied {
    changed: usize,
    left_out: usize,
}

/// Brings `map` from `cur` (what it holds) to `want`, holding at most
/// `capacity` entries. Removals go first, so that entries that left make
/// room; then new and changed entries in key order. A new entry that finds
/// the map full is left out without a syscall; one the kernel refuses is
/// left out too, with the error in `errors`. A removal the kernel refuses
/// stays in `cur`, to be tried again. `cur` ends as what the map holds.
fn apply<K, V, M>(
    map: &mut M,
    name: &str,
    cur: &mut BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    capacity: usize,
    errors: &mut Vec<String>,
) -> Applied
where
    K: Ord + Copy + std::fmt::Debug,
    V: PartialEq + Copy,
    M: FilterMap<K, V>,
{
    let mut done = Applied::default();
    for k in cur.keys().filter(|k| !want.contains_key(k)).copied().collect::<Vec<_>>() {
        match map.delete(k) {
            Ok(()) => {}
            // Gone already (the entry's owner never had it, or a previous
            // sync's removal went through): what we wanted.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                errors.push(format!("{name} remove of {k:?}: {e}"));
                continue;
            }
        }
        cur.remove(&k);
        done.changed += 1;
    }
    for (k, v) in want {
        if cur.get(k) == Some(v) {
            continue;
        }
        // An update of an entry the map holds never needs room.
        if !cur.contains_key(k) && cur.len() >= capacity {
            done.left_out += 1;
            continue;
        }
        match map.put(*k, *v) {
            Ok(()) => {
                cur.insert(*k, *v);
                done.changed += 1;
            }
            Err(e) => {
                // E2BIG: the map is full after all (the kernel's count and
                // ours disagree); anything else is worth a line.
                if e.raw_os_error() != Some(libc::E2BIG) {
                    errors.push(format!("{name} update of {k:?}: {e}"));
                }
                done.left_out += 1;
            }
        }
    }
    done
}

impl MapsSync {
    pub fn new(
        servicers: HashMap<MapData, u32, ServicerInfo>,
        backing: HashMap<MapData, BackingKey, BackingInfo>,
    ) -> MapsSync {
        MapsSync::with_maps(servicers, backing)
    }
}

impl<S: FilterMap<u32, ServicerInfo>, B: FilterMap<BackingKey, BackingInfo>> MapsSync<S, B> {
    pub fn with_maps(servicers: S, backing: B) -> MapsSync<S, B> {
        MapsSync { servicers, backing, cur_servicers: BTreeMap::new(), cur_backing: BTreeMap::new() }
    }

    /// Brings the maps in line with `topo` (which includes the servicers and
    /// backing files named on the command line), as far as they hold it.
    pub fn sync(&mut self, topo: &Topology) -> Outcome {
        let want_s: BTreeMap<u32, u32> =
            topo.servicer_processes().into_iter().map(|(t, d)| (t, d.to_kernel())).collect();
        let want_b: BTreeMap<(u32, u64), u32> =
            topo.backing_files().into_iter().map(|b| ((b.file_dev.to_kernel(), b.ino), b.backs.to_kernel())).collect();
        self.sync_entries(&want_s, &want_b)
    }

    /// [`sync`](Self::sync) on the entries themselves: servicer tgid to the
    /// device it serves, (file's device, inode) to the device it backs (all
    /// in the kernel's dev_t encoding).
    pub fn sync_entries(&mut self, servicers: &BTreeMap<u32, u32>, backing: &BTreeMap<(u32, u64), u32>) -> Outcome {
        let mut errors = Vec::new();
        let mut s_map = Adapt(&mut self.servicers, |k: u32| k, |v: u32| ServicerInfo { serving_dev: v, _pad: 0 });
        let s = apply(&mut s_map, "SERVICERS", &mut self.cur_servicers, servicers, MAX_SERVICERS as usize, &mut errors);
        let mut b_map = Adapt(
            &mut self.backing,
            |(dev, ino): (u32, u64)| BackingKey { dev, _pad: 0, ino },
            |up: u32| BackingInfo { upper_dev: up, _pad: 0 },
        );
        let b =
            apply(&mut b_map, "BACKING_FILES", &mut self.cur_backing, backing, MAX_BACKING_FILES as usize, &mut errors);
        Outcome {
            changes: Changes { servicers: s.changed, backing_files: b.changed },
            left_out: LeftOut { servicers: s.left_out, backing_files: b.left_out },
            errors,
        }
    }
}

/// A map seen through key and value conversions: the sync keeps plain keys
/// and values, the kernel's maps take the shared `#[repr(C)]` structs.
struct Adapt<'a, M, FK, FV>(&'a mut M, FK, FV);

impl<K, V, MK, MV, M, FK, FV> FilterMap<K, V> for Adapt<'_, M, FK, FV>
where
    M: FilterMap<MK, MV>,
    FK: Fn(K) -> MK,
    FV: Fn(V) -> MV,
{
    fn put(&mut self, key: K, value: V) -> io::Result<()> {
        self.0.put((self.1)(key), (self.2)(value))
    }

    fn delete(&mut self, key: K) -> io::Result<()> {
        self.0.delete((self.1)(key))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A BPF hash map as the kernel keeps it: at most `capacity` entries
    /// (E2BIG beyond), ENOENT for a missing key, and errors on demand.
    struct FakeMap<K, V> {
        entries: std::collections::HashMap<K, V>,
        capacity: usize,
        refuse: Option<i32>,
    }

    impl<K, V> FakeMap<K, V> {
        fn new(capacity: usize) -> Self {
            FakeMap { entries: Default::default(), capacity, refuse: None }
        }
    }

    impl<K: std::hash::Hash + Eq, V> FilterMap<K, V> for FakeMap<K, V> {
        fn put(&mut self, key: K, value: V) -> io::Result<()> {
            if let Some(errno) = self.refuse {
                return Err(io::Error::from_raw_os_error(errno));
            }
            if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
                return Err(io::Error::from_raw_os_error(libc::E2BIG));
            }
            self.entries.insert(key, value);
            Ok(())
        }

        fn delete(&mut self, key: K) -> io::Result<()> {
            if let Some(errno) = self.refuse {
                return Err(io::Error::from_raw_os_error(errno));
            }
            self.entries.remove(&key).map(drop).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
    }

    type Fake = MapsSync<FakeMap<u32, ServicerInfo>, FakeMap<BackingKey, BackingInfo>>;

    fn fake() -> Fake {
        MapsSync::with_maps(FakeMap::new(MAX_SERVICERS as usize), FakeMap::new(MAX_BACKING_FILES as usize))
    }

    fn servicers(tgids: std::ops::Range<u32>) -> BTreeMap<u32, u32> {
        tgids.map(|t| (t, 7 << 20)).collect()
    }

    fn backing(inos: std::ops::Range<u64>) -> BTreeMap<(u32, u64), u32> {
        inos.map(|i| ((8 << 20, i), 7 << 20)).collect()
    }

    /// More servicers and backing files than the maps hold: what fits is
    /// written, the rest is left out and counted, nothing fails.
    #[test]
    fn a_topology_larger_than_the_maps_is_written_as_far_as_it_fits() {
        let mut m = fake();
        let (ns, nb) = (MAX_SERVICERS + 10, MAX_BACKING_FILES as u64 + 3);
        let out = m.sync_entries(&servicers(1..ns + 1), &backing(1..nb + 1));
        assert_eq!(out.left_out, LeftOut { servicers: 10, backing_files: 3 });
        assert_eq!(
            out.changes,
            Changes { servicers: MAX_SERVICERS as usize, backing_files: MAX_BACKING_FILES as usize }
        );
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(m.servicers.entries.len(), MAX_SERVICERS as usize);
        assert_eq!(m.backing.entries.len(), MAX_BACKING_FILES as usize);
        // The first in key order got in.
        assert!(m.servicers.entries.contains_key(&1) && !m.servicers.entries.contains_key(&ns));

        // The same topology again: nothing to write, the same left out.
        let again = m.sync_entries(&servicers(1..ns + 1), &backing(1..nb + 1));
        assert!(!again.changes.any());
        assert_eq!(again.left_out, out.left_out);

        // Ten servicers leave: their room goes to the ten left out, in the
        // same sync (removals go first).
        let out = m.sync_entries(&servicers(11..ns + 1), &backing(1..nb + 1));
        assert_eq!(out.left_out, LeftOut { servicers: 0, backing_files: 3 });
        assert_eq!(out.changes.servicers, 20);
        assert!(m.servicers.entries.contains_key(&ns) && !m.servicers.entries.contains_key(&1));
    }

    /// An entry already in the kernel keeps its place when newcomers find
    /// the map full, and its value can still change.
    #[test]
    fn entries_in_the_map_stay_and_update_when_it_is_full() {
        let mut m = fake();
        let full = servicers(100..100 + MAX_SERVICERS);
        assert_eq!(m.sync_entries(&full, &BTreeMap::new()).left_out.servicers, 0);
        let mut want = full.clone();
        want.insert(1, 9 << 20); // a newcomer, first in key order
        want.insert(100, 9 << 20); // a servicer that now serves another device
        let out = m.sync_entries(&want, &BTreeMap::new());
        assert_eq!(out.left_out.servicers, 1);
        assert_eq!(out.changes.servicers, 1);
        assert!(!m.servicers.entries.contains_key(&1));
        assert_eq!(m.servicers.entries[&100].serving_dev, 9 << 20);
    }

    /// The kernel refuses every write: each is left out and said once,
    /// refused removals are tried again at the next sync, and a removal
    /// of what is gone already counts as done.
    #[test]
    fn refused_writes_are_left_out_and_retried() {
        let mut m = fake();
        m.sync_entries(&servicers(1..4), &backing(1..3));
        m.servicers.refuse = Some(libc::EPERM);
        let out = m.sync_entries(&servicers(2..6), &backing(1..3));
        assert_eq!(out.left_out, LeftOut { servicers: 2, backing_files: 0 });
        assert_eq!(out.errors.len(), 3, "{:?}", out.errors);
        assert!(out.errors[0].starts_with("SERVICERS remove of 1: "), "{:?}", out.errors);
        m.servicers.refuse = None;
        m.servicers.entries.remove(&1);
        let out = m.sync_entries(&servicers(2..6), &backing(1..3));
        assert_eq!(out.left_out, LeftOut::default());
        assert!(out.errors.is_empty());
        let mut kept: Vec<u32> = m.servicers.entries.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![2, 3, 4, 5]);
    }

    /// A full map the sync did not expect (E2BIG from the kernel) is left
    /// out like one it counted, without an error line.
    #[test]
    fn a_map_smaller_than_expected_is_a_left_out_entry_not_an_error() {
        let mut m: Fake = MapsSync::with_maps(FakeMap::new(2), FakeMap::new(1));
        let out = m.sync_entries(&servicers(1..5), &backing(1..4));
        assert_eq!(out.left_out, LeftOut { servicers: 2, backing_files: 2 });
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }
}
