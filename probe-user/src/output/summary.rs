//! What the periodic and final summaries report: the event loop's totals,
//! which every sink shows its own way.

use serde::Serialize;

/// Totals for the periodic and final summaries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub elapsed_s: f64,
    pub events: u64,
    pub decode_errors: u64,
    pub reclaim_direct: u64,
    pub reclaim_memcg: u64,
    pub shrinker_calls: u64,
    pub writeback_waits: u64,
    pub dropped: u64,
    pub task_state_full: u64,
    /// Waits on writeback outside reclaim, every task: counted in the kernel, not sent.
    pub waits_outside_reclaim: u64,
    /// Events that went out without their kernel stack (not walkable, or no free stack element).
    pub stacks_lost: u64,
    /// Reclaim starts whose end never came (missed return probe): replaced by the next start.
    pub stale_reclaim: u64,
    /// Topology entries left out of the kernel's filter maps (full, or the
    /// kernel refused the write), counted at every sync that left them out:
    /// it keeps rising while any are left out.
    pub filter_map_full: u64,
    /// What the latest sync left out: the I/O of these is not followed.
    pub left_out: LeftOut,
    pub slowpath_entries: u64,
    pub oom_kills: u64,
    pub findings: usize,
    /// Sightings of findings, repeats included: the live count.
    pub sightings: u64,
    /// Distinct findings not kept because the engine holds its maximum.
    pub findings_folded: u64,
    pub servicers: usize,
    /// The event loop's worst lag since the previous summary (the final
    /// summary: since the start), in ms: how late a 100 ms timer fired,
    /// which is how long the loop was busy elsewhere and left the ring
    /// buffer undrained.
    pub loop_lag_max_ms: f64,
    /// Topology discoveries that completed, and that failed.
    pub topology_refreshes: u64,
    pub topology_errors: u64,
    /// How long the latest discovery took, and the longest one so far.
    pub discovery_ms: f64,
    pub discovery_max_ms: f64,
    /// Seconds since the topology in force was discovered (None: not yet).
    pub topology_age_s: Option<f64>,
    /// Something other than the clocks changed since the previous summary:
    /// `watch` prints periodic ones only then (`monitor` prints every one).
    pub news: bool,
}

/// Topology entries that are not in the kernel's maps after a sync: their
/// I/O is not followed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    /// Servicer processes (SERVICERS holds `MAX_SERVICERS`).
    pub servicers: usize,
    /// Backing files (BACKING_FILES holds `MAX_BACKING_FILES`).
    pub backing_files: usize,
}

impl LeftOut {
    pub fn total(&self) -> usize {
        self.servicers + self.backing_files
    }
}
