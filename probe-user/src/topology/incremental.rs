//! Discovery whose cost follows what changed on the host, not what exists.
//!
//! Everything but the servicers' device nodes is cheap to read again at
//! every discovery (the mount table, /proc/partitions, a few sysfs
//! attributes per block device, the servicers' own threads), so a
//! [`Discoverer`] reads it all each time and keeps only the process index
//! between discoveries (see [`ProcIndex`]).
//!
//! The index can miss one thing: a process it had already seen opening a
//! device node afterwards, as a FUSE daemon does between its start and its
//! mount. That shows as a gap: a FUSE mount, ublk or nbd device that no
//! process serves. A [`Pass::Changes`] that finds a gap the last full pass
//! did not have runs a full pass at once, at most one every
//! [`GAP_PASS_EVERY`] (a host where connections or mounts churn could
//! otherwise pay a full pass per change); gaps that were there at the last
//! full pass (a daemon in another PID namespace) are left to the periodic one.

use super::procindex::{Pass, ProcIndex, Scanned};
use super::source::Source;
use super::{unreadable_warning, Extra, Topology};
use anyhow::Result;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The least time between two full passes made by gaps.
const GAP_PASS_EVERY: Duration = Duration::from_secs(10);

/// A topology discovery that remembers the processes it has read.
#[derive(Debug)]
pub struct Discoverer {
    extra: Extra,
    index: ProcIndex,
    /// The gaps (warnings) of the last full pass.
    known_gaps: Option<BTreeSet<String>>,
    /// When a gap last made a full pass.
    last_gap_pass: Option<Instant>,
}

/// What a discovery read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The pass that ran last: [`Pass::Full`] when a gap made one.
    pub pass: Pass,
    pub scanned: Scanned,
}

impl Discoverer {
    pub fn new(extra: Extra) -> Discoverer {
        Discoverer { extra, index: ProcIndex::default(), known_gaps: None, last_gap_pass: None }
    }

    /// One discovery of this machine. The first one is always full.
    pub fn discover(&mut self, pass: Pass) -> Result<(Topology, Done)> {
        self.discover_with(&Source::live(), pass)
    }

    pub(crate) fn discover_with(&mut self, src: &Source, pass: Pass) -> Result<(Topology, Done)> {
        let Some(known) = &self.known_gaps else {
            return self.full(src);
        };
        if pass == Pass::Full {
            return self.full(src);
        }
        let (topo, scanned) = Topology::discover_indexed(src, &self.extra, &mut self.index, Pass::Changes)?;
        let gaps = gaps(&topo, &self.index);
        let due = self.last_gap_pass.is_none_or(|t| t.elapsed() >= GAP_PASS_EVERY);
        match gaps.difference(known).next() {
            Some(gap) if due => {
                log::debug!("topology: a process seen before may serve what is new ({gap}): reading every process");
                self.last_gap_pass = Some(Instant::now());
                self.full(src)
            }
            // Not due: the gap stays new, so a later discovery makes the pass.
            _ => Ok((topo, Done { pass, scanned })),
        }
    }

    fn full(&mut self, src: &Source) -> Result<(Topology, Done)> {
        let (topo, scanned) = Topology::discover_indexed(src, &self.extra, &mut self.index, Pass::Full)?;
        self.known_gaps = Some(gaps(&topo, &self.index));
        Ok((topo, Done { pass: Pass::Full, scanned }))
    }
}

/// The warnings about elements no process was found to serve. The count
/// of unreadable processes is not one: it moves with every process that
/// comes or goes.
fn gaps(topo: &Topology, index: &ProcIndex) -> BTreeSet<String> {
    let unreadable = unreadable_warning(index.unreadable());
    topo.warnings.iter().filter(|w| **w != unreadable).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::super::fakeproc::FakeProc;
    use super::*;

    const FUSE_MOUNT: &str = "44 1 0:39 / /mnt/fuse rw - fuse /dev/fuse rw,user_id=0\n";

    fn discover(f: &FakeProc, d: &mut Discoverer, pass: Pass) -> (Topology, Pass) {
        let (topo, done) = d.discover_with(&f.source(), pass).unwrap();
        (topo, done.pass)
    }

    #[test]
    fn a_daemon_seen_before_it_opened_dev_fuse_is_found_by_a_full_pass() {
        let f = FakeProc::new();
        f.spawn(60, 100, &[(0, "/dev/null")]);
        let mut d = Discoverer::new(Extra::default());
        let (topo, pass) = discover(&f, &mut d, Pass::Changes);
        assert_eq!(pass, Pass::Full, "the first discovery reads everything");
        assert!(topo.servicers.is_empty());

        // The daemon opens /dev/fuse, then mounts: the mount's notification
        // asks for the changes, which show a mount nobody serves.
        f.open(60, 5, "/dev/fuse");
        f.mounts(FUSE_MOUNT);
        let (topo, pass) = discover(&f, &mut d, Pass::Changes);
        assert_eq!(pass, Pass::Full);
        assert_eq!(topo.servicers.iter().map(|s| s.tgid).collect::<Vec<_>>(), [Some(60)]);
        assert!(topo.warnings.is_empty(), "{:?}", topo.warnings);

        // Served now: the next changes stay changes.
        assert_eq!(discover(&f, &mut d, Pass::Changes).1, Pass::Changes);
    }

    #[test]
    fn a_gap_the_full_pass_had_does_not_make_another() {
        let f = FakeProc::new();
        f.mounts(FUSE_MOUNT);
        let mut d = Discoverer::new(Extra::default());
        let (topo, pass) = discover(&f, &mut d, Pass::Full);
        assert_eq!(pass, Pass::Full);
        assert_eq!(topo.warnings.len(), 1, "{:?}", topo.warnings);
        f.spawn(61, 100, &[(0, "/dev/null")]);
        let (topo, pass) = discover(&f, &mut d, Pass::Changes);
        assert_eq!(pass, Pass::Changes);
        assert_eq!(topo.warnings.len(), 1);
    }

    #[test]
    fn gaps_make_at_most_one_full_pass_per_interval() {
        let f = FakeProc::new();
        f.spawn(63, 100, &[(0, "/dev/null")]);
        let mut d = Discoverer::new(Extra::default());
        discover(&f, &mut d, Pass::Full);
        f.mounts(FUSE_MOUNT);
        assert_eq!(discover(&f, &mut d, Pass::Changes).1, Pass::Full, "the first gap reads everything");
        // Another mount nobody serves, at once: it waits for the interval.
        f.mounts(&format!("{FUSE_MOUNT}45 1 0:40 / /mnt/fuse2 rw - fuse /dev/fuse rw,user_id=0\n"));
        let (topo, pass) = discover(&f, &mut d, Pass::Changes);
        assert_eq!(pass, Pass::Changes);
        assert_eq!(topo.warnings.len(), 2, "both still unserved: {:?}", topo.warnings);
        d.last_gap_pass = Some(Instant::now() - GAP_PASS_EVERY);
        assert_eq!(discover(&f, &mut d, Pass::Changes).1, Pass::Full, "due again");
    }

    #[test]
    fn a_new_daemon_is_found_without_a_full_pass() {
        let f = FakeProc::new();
        let mut d = Discoverer::new(Extra::default());
        discover(&f, &mut d, Pass::Full);
        f.spawn(62, 100, &[(5, "/dev/fuse")]);
        f.mounts(FUSE_MOUNT);
        let (topo, pass) = discover(&f, &mut d, Pass::Changes);
        assert_eq!(pass, Pass::Changes);
        assert_eq!(topo.servicers.iter().map(|s| s.tgid).collect::<Vec<_>>(), [Some(62)]);
    }
}
