//! What `reclaimscope monitor` writes: one JSON line per finding, summary
//! and topology change, and the metrics it serves.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use serde_json::json;

use super::{
    clock::json_line,
    finding::FindingView,
    metrics::{Losses, Metrics},
    sink::Sink,
    summary::Summary,
};
use crate::{
    detect::{engine::Observed, finding::Finding, index::StorageIndex},
    events::decode::Event,
    names::GfpNames,
    topology::Topology,
};

pub struct MonitorSink {
    pub metrics: Arc<Metrics>,
    pub gfp: GfpNames,
    /// How long a finding stays in reclaimscope_findings_active after it was
    /// last seen.
    pub active_window: Duration,
}

impl Sink for MonitorSink {
    fn event(&mut self, _raw: &[u8], _ev: &Event, _obs: &Observed, _stack: &[(u64, String)]) -> Result<()> {
        Ok(())
    }

    fn finding(&mut self, f: &Finding) -> Result<()> {
        self.metrics.finding(&f.rule, f.severity.name());
        json_line("finding", FindingView::new(f, &self.gfp))
    }

    fn summary(&mut self, s: &Summary, _findings: &[Finding], last: bool) -> Result<()> {
        self.metrics.set_reclaim_events("direct", s.reclaim_direct);
        self.metrics.set_reclaim_events("memcg", s.reclaim_memcg);
        self.metrics.set_losses(&Losses {
            dropped_events: s.dropped,
            task_state_full: s.task_state_full,
            stacks_lost: s.stacks_lost,
            stale_reclaim: s.stale_reclaim,
            decode_errors: s.decode_errors,
            filter_map_full: s.filter_map_full,
        });
        self.metrics.set_agent_health(s.topology_errors, s.topology_age_s, s.loop_lag_max_ms / 1e3);
        // Every summary, news or not: a service's log and its supervisor
        // see it alive (watch prints only the ones with news).
        json_line(if last { "final_summary" } else { "summary" }, s)
    }

    fn findings_now(&mut self, findings: &[Finding], now_ns: u64) -> Result<()> {
        self.metrics.set_active_findings(findings, now_ns, self.active_window);
        Ok(())
    }

    fn topology(&mut self, topo: &Topology, index: &StorageIndex) -> Result<()> {
        let unprotected = topo.unprotected().len();
        self.metrics.set_servicers("unprotected", unprotected as i64);
        self.metrics.set_servicers("protected", topo.servicers.len().saturating_sub(unprotected) as i64);
        json_line(
            "topology",
            json!({ "servicers": index.servicers, "backing_files": index.backing, "unprotected": unprotected }),
        )
    }
}
