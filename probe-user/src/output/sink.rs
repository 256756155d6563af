//! Where the event loop's output goes: one sink per view (watch, monitor,
//! record), each in its own module here.

use anyhow::Result;

use super::summary::Summary;
use crate::{
    detect::{engine::Observed, finding::Finding, index::StorageIndex},
    events::decode::Event,
    topology::Topology,
};

/// Where the loop's output goes.
pub trait Sink {
    fn event(&mut self, raw: &[u8], ev: &Event, obs: &Observed, stack: &[(u64, String)]) -> Result<()>;
    fn finding(&mut self, f: &Finding) -> Result<()>;
    /// A summary (every `--summary-every`, and at the end), with every
    /// finding so far at its live count.
    fn summary(&mut self, s: &Summary, findings: &[Finding], last: bool) -> Result<()>;
    fn topology(&mut self, topo: &Topology, index: &StorageIndex) -> Result<()>;
    /// Called after each batch: the events of one ring-buffer wakeup, or
    /// one round of D-state checks, and the findings they made.
    fn end_batch(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called every second with every finding so far (repeats update their
    /// `last_ns`), and the kernel's monotonic clock now.
    fn findings_now(&mut self, _findings: &[Finding], _now_ns: u64) -> Result<()> {
        Ok(())
    }
}

/// Counts what the loop delivers and shows nothing: only the kernel-side
/// cost is measured.
pub struct Discard;

impl Sink for Discard {
    fn event(&mut self, _: &[u8], _: &Event, _: &Observed, _: &[(u64, String)]) -> Result<()> {
        Ok(())
    }
    fn finding(&mut self, _: &Finding) -> Result<()> {
        Ok(())
    }
    fn summary(&mut self, _: &Summary, _: &[Finding], _: bool) -> Result<()> {
        Ok(())
    }
    fn topology(&mut self, _: &Topology, _: &StorageIndex) -> Result<()> {
        Ok(())
    }
}
