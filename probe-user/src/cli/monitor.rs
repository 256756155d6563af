//! `reclaimscope monitor`: the service mode. Findings, topology changes and
//! periodic summaries as JSON lines on stdout (for journald or a log
//! shipper), and Prometheus metrics on --metrics-addr.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use serde_json::json;

use super::{secs, trace_args::TraceArgs};
use crate::{
    agent::run::{Sink, Summary},
    detect::{engine::Observed, finding::Finding, index::StackIndex, rules},
    events::decode::Event,
    kernel::preflight,
    names::GfpNames,
    output::{
        clock,
        finding::FindingView,
        http,
        metrics::{Losses, Metrics},
        stdout,
    },
    topology::Topology,
};

/// Shown under every `--help` of `monitor` (a doc comment on the
/// subcommand would hide examples written there).
const EXAMPLES: &str = "\
Examples:
  sudo reclaimscope monitor --metrics-addr 127.0.0.1:9858
  sudo reclaimscope monitor --servicer 4242 --deadlock-after 10";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct MonitorArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How long a finding stays in reclaimscope_findings_active after it was
    /// last seen (a deadlock is seen again every second while it lasts):
    /// seconds, or 5m, 1h.
    #[arg(long, default_value_t = 300.0, value_name = "DURATION", value_parser = secs::parse)]
    pub active_window: f64,
    #[command(flatten)]
    pub trace: TraceArgs,
}

struct MonitorSink {
    metrics: Arc<Metrics>,
    gfp: GfpNames,
    active_window: Duration,
}

fn line(kind: &str, v: impl serde::Serialize) -> Result<()> {
    let mut v = serde_json::to_value(v)?;
    v["type"] = json!(kind);
    clock::stamp(&mut v);
    stdout::line(v)
}

impl Sink for MonitorSink {
    fn event(&mut self, _raw: &[u8], _ev: &Event, _obs: &Observed, _stack: &[(u64, String)]) -> Result<()> {
        Ok(())
    }

    fn finding(&mut self, f: &Finding) -> Result<()> {
        self.metrics.finding(&f.rule, f.severity.name());
        line("finding", FindingView::new(f, &self.gfp))
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
        line(if last { "final_summary" } else { "summary" }, s)
    }

    fn findings_now(&mut self, findings: &[Finding], now_ns: u64) -> Result<()> {
        self.metrics.set_active_findings(findings, now_ns, self.active_window);
        Ok(())
    }

    fn topology(&mut self, topo: &Topology, index: &StackIndex) -> Result<()> {
        let unprotected = topo.unprotected().len();
        self.metrics.set_servicers("unprotected", unprotected as i64);
        self.metrics.set_servicers("protected", topo.servicers.len().saturating_sub(unprotected) as i64);
        line(
            "topology",
            json!({ "servicers": index.servicers, "backing_files": index.backing, "unprotected": unprotected }),
        )
    }
}

pub async fn run(args: &MonitorArgs) -> Result<i32> {
    let active_window = secs::positive("--active-window", args.active_window)?;
    let (mut session, gfp) = args.trace.start("monitor", false)?;
    let refresher = args.trace.refresher()?;
    let metrics = Arc::new(Metrics::new());
    for r in rules::ALL {
        metrics.declare_finding(r.id, r.severity.name());
    }
    for c in &session.attach.hooks {
        metrics.set_probe(c.hook, c.family.map(|f| f.name()).unwrap_or("none"), c.family.is_some(), c.required);
    }
    let server = match args.metrics_addr {
        Some(addr) => {
            let limits = http::Limits::within(preflight::descriptor_limit());
            Some(http::serve(addr, metrics.clone(), limits).await?)
        }
        None => None,
    };
    line("started", json!({ "attach": session.attach, "metrics_addr": args.metrics_addr }))?;
    let mut sink = MonitorSink { metrics, gfp, active_window };
    let result = args.trace.run(&mut session, &mut sink, &refresher).await;
    if let Some(s) = server {
        s.abort();
    }
    result.map(|_| 0)
}
