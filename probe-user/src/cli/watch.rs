//! `reclaimscope watch`: findings as they happen, then periodic summaries;
//! every reclaim event too with `--all`.

use std::collections::HashMap;

use anyhow::Result;
use serde_json::json;

use super::trace_args::TraceArgs;
use crate::{
    agent::run::{Sink, Summary},
    detect::{engine::Observed, finding::Finding, index::StackIndex},
    events::decode::Event,
    names::GfpNames,
    output::{
        clock,
        finding::FindingView,
        stdout,
        table::{event_row, finding_block, summary_table, EVENT_HEADER},
        view::{memcg_of, EventView},
    },
    topology::Topology,
};

/// Shown under every `--help` of `watch` (a doc comment on the
/// subcommand would hide examples written there).
const EXAMPLES: &str = "\
Examples:
  sudo reclaimscope watch
  sudo reclaimscope watch --all --duration 10m
  sudo reclaimscope watch --json -p 1234";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct WatchArgs {
    /// JSON lines instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show every reclaim event, not only findings.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub struct WatchSink {
    json: bool,
    all: bool,
    gfp: GfpNames,
    t0: Option<u64>,
    memcgs: HashMap<u32, Option<String>>,
}

impl WatchSink {
    pub fn new(json: bool, all: bool, gfp: GfpNames) -> WatchSink {
        WatchSink { json, all, gfp, t0: None, memcgs: HashMap::new() }
    }
}

impl Sink for WatchSink {
    fn event(&mut self, _raw: &[u8], ev: &Event, obs: &Observed, _stack: &[(u64, String)]) -> Result<()> {
        if !self.all {
            return Ok(());
        }
        let pid = ev.ctx().tgid;
        let memcg = self.memcgs.entry(pid).or_insert_with(|| memcg_of(pid)).clone();
        let v = EventView::new(ev, obs, &self.gfp, memcg);
        if self.json {
            let mut v = serde_json::to_value(&v)?;
            clock::stamp(&mut v);
            stdout::line(v)?;
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
            let mut v = serde_json::to_value(FindingView::new(f, &self.gfp))?;
            v["type"] = json!("finding");
            clock::stamp(&mut v);
            stdout::line(v)?;
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
            v["type"] = json!(if last { "final_summary" } else { "summary" });
            if last {
                // Every finding at its live count, with all its threads and stacks.
                v["findings"] = serde_json::to_value(FindingView::all(findings, &self.gfp))?;
            }
            clock::stamp(&mut v);
            stdout::line(v)?;
        } else {
            stdout::line(summary_table(s, findings))?;
            if s.dropped > 0 {
                eprintln!("warning: {} events were dropped (ring buffer full)", s.dropped);
            }
        }
        Ok(())
    }

    fn topology(&mut self, _topo: &Topology, index: &StackIndex) -> Result<()> {
        let msg = format!(
            "watching {} servicer process(es) and {} backing file(s)",
            index.servicers.len(),
            index.backing.len()
        );
        if self.json {
            let mut v = json!({"type": "topology", "message": msg, "index": index});
            clock::stamp(&mut v);
            stdout::line(v)?;
        } else {
            eprintln!("{msg}");
        }
        Ok(())
    }
}

pub async fn run(args: &WatchArgs) -> Result<i32> {
    let (mut session, gfp) = args.trace.start("watch", args.all)?;
    let refresher = args.trace.refresher()?;
    if !args.json {
        eprintln!("Tracing memory reclaim in stacked storage... Hit Ctrl-C to end.");
    }
    let mut sink = WatchSink::new(args.json, args.all, gfp.clone());
    args.trace.run(&mut session, &mut sink, &refresher).await?;
    Ok(0)
}
