//! What `reclaimscope watch` prints: findings as they happen, summaries
//! when something changed, every reclaim event with `--all`; tables, or
//! JSON lines with `--json`.

use std::collections::HashMap;

use anyhow::Result;
use serde_json::json;

use super::{
    clock::json_line,
    finding::FindingView,
    sink::Sink,
    stdout,
    summary::Summary,
    table::{event_row, finding_block, summary_table, EVENT_HEADER},
    view::EventView,
};
use crate::{
    detect::{engine::Observed, finding::Finding, index::StorageIndex},
    events::decode::Event,
    names::GfpNames,
    topology::Topology,
};

pub struct WatchSink {
    json: bool,
    all: bool,
    gfp: GfpNames,
    t0: Option<u64>,
    /// Each process's memory cgroup, looked up once with `memcg_of`.
    memcgs: HashMap<u32, Option<String>>,
    memcg_of: fn(u32) -> Option<String>,
}

impl WatchSink {
    /// Prints JSON lines or tables, every event too when `all` (with the
    /// memory cgroup `memcg_of` gives for its process).
    pub fn new(json: bool, all: bool, gfp: GfpNames, memcg_of: fn(u32) -> Option<String>) -> WatchSink {
        WatchSink { json, all, gfp, t0: None, memcgs: HashMap::new(), memcg_of }
    }
}

impl Sink for WatchSink {
    fn event(&mut self, _raw: &[u8], ev: &Event, obs: &Observed, _stack: &[(u64, String)]) -> Result<()> {
        if !self.all {
            return Ok(());
        }
        let pid = ev.ctx().tgid;
        let memcg = self.memcgs.entry(pid).or_insert_with(|| (self.memcg_of)(pid)).clone();
        let v = EventView::new(ev, obs, &self.gfp, memcg);
        if self.json {
            json_line("event", &v)?;
        } else {
            if self.t0.is_none() {
                stdout::line(EVENT_HEADER)?;
            }
            let t0 = *self.t0.get_or_insert(v.ts_ns);
            stdout::line(event_row(&v, t0))?;
        }
        Ok(())
    }

    fn finding(&mut self, f: &Finding) -> Result<()> {
        if self.json {
            json_line("finding", FindingView::new(f, &self.gfp))?;
        } else {
            stdout::line(finding_block(&FindingView::new(f, &self.gfp)))?;
        }
        Ok(())
    }

    fn summary(&mut self, s: &Summary, findings: &[Finding], last: bool) -> Result<()> {
        if !s.news {
            return Ok(());
        }
        if self.json {
            let mut v = serde_json::to_value(s)?;
            if last {
                // Every finding at its live count, with all its threads and stacks.
                v["findings"] = serde_json::to_value(FindingView::all(findings, &self.gfp))?;
            }
            json_line(if last { "final_summary" } else { "summary" }, v)?;
        } else {
            stdout::line(summary_table(s, findings))?;
            if s.dropped > 0 {
                eprintln!("warning: {} events were dropped (ring buffer full)", s.dropped);
            }
        }
        Ok(())
    }

    fn topology(&mut self, _topo: &Topology, index: &StorageIndex) -> Result<()> {
        let msg = format!(
            "watching {} servicer process(es) and {} backing file(s)",
            index.servicers.len(),
            index.backing.len()
        );
        if self.json {
            json_line("topology", json!({"message": msg, "index": index}))?;
        } else {
            eprintln!("{msg}");
        }
        Ok(())
    }
}
