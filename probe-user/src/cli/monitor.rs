//! `reclaimscope monitor`: the service mode. Findings, topology changes and
//! periodic summaries as JSON lines on stdout (for journald or a log
//! shipper), and Prometheus metrics on --metrics-addr.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Result;
use serde_json::json;

use super::{secs, trace_args::TraceArgs};
use crate::{
    detect::rules,
    kernel::preflight,
    output::{clock::json_line, http, metrics::Metrics, monitor::MonitorSink},
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
    json_line("started", json!({ "attach": session.attach, "metrics_addr": args.metrics_addr }))?;
    let mut sink = MonitorSink { metrics, gfp, active_window };
    let result = args.trace.run(&mut session, &mut sink, &refresher).await;
    if let Some(s) = server {
        s.abort();
    }
    result.map(|_| 0)
}
