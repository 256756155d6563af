//! `reclaimscope record -o FILE`: every relevant event and every finding
//! into a trace file that `report` reads later, here or elsewhere.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde_json::json;

use super::trace_args::TraceArgs;
use crate::{
    agent::run::{Sink, Summary},
    detect::{engine::Observed, finding::Finding, index::StackIndex},
    events::decode::Event,
    kernel::kallsyms::Kallsyms,
    output::table::summary_table,
    topology::Topology,
    trace::{EventRecord, Frame, Record, StackRecord, SymbolRecord, TraceHeader, TraceWriter},
};

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size `{s}` (e.g. 64M)"))?;
    n.checked_mul(mult).filter(|&b| b >= 4 << 10).ok_or_else(|| format!("size `{s}` must be at least 4K"))
}

/// Examples:
///   sudo reclaimscope record -o reclaim.trace
///   sudo reclaimscope record -o reclaim.trace --max-size 64M --max-files 4 --duration 3600
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// The trace file (rotated files get .1, .2, ...).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Rotate before a file grows past this size (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Files kept when rotating, the current one included.
    #[arg(long, default_value_t = 4)]
    pub max_files: usize,
    /// Record every task's reclaim events, not only those of stacked I/O.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
}

struct RecordSink {
    writer: TraceWriter,
    kallsyms: Kallsyms,
    findings: Vec<Finding>,
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Sink for RecordSink {
    fn event(&mut self, raw: &[u8], ev: &Event, _obs: &Observed, stack: &[(u64, String)]) -> Result<()> {
        let id = ev.ctx().stack_id;
        if id >= 0 && !stack.is_empty() && !self.writer.has_stack(id) {
            let frames = stack.iter().map(|(addr, symbol)| Frame { addr: *addr, symbol: symbol.clone() }).collect();
            self.writer.write(&Record::Stack(StackRecord { id, frames }))?;
        }
        if let Event::Shrinker(s) = ev {
            let addr = s.data.scan_fn;
            if addr != 0 && !self.writer.has_symbol(addr) {
                self.writer.write(&Record::Symbol(SymbolRecord { addr, symbol: self.kallsyms.symbolize(addr) }))?;
            }
        }
        self.writer.write(&Record::Event(EventRecord { unix_ns: unix_ns(), data: raw.to_vec() }))
    }

    fn finding(&mut self, f: &Finding) -> Result<()> {
        self.writer.write(&Record::Finding(serde_json::to_value(f)?))?;
        // A finding must survive a crash right after it.
        self.writer.flush()?;
        eprintln!(
            "[{}] {} {} (pid {} tid {}): {}",
            f.severity.name().to_uppercase(),
            f.rule,
            f.servicer.comm,
            f.servicer.tgid,
            f.servicer.tid,
            f.detail
        );
        self.findings.push(f.clone());
        Ok(())
    }

    fn summary(&mut self, s: &Summary, last: bool) -> Result<()> {
        self.writer.flush()?;
        if last {
            eprintln!("{}", summary_table(s, &self.findings));
        }
        Ok(())
    }

    fn topology(&mut self, topo: &Topology, index: &StackIndex) -> Result<()> {
        self.writer.write(&Record::Topology(json!({ "topology": topo, "index": index })))
    }
}

pub async fn run(args: &RecordArgs) -> Result<i32> {
    let (mut session, gfp) = args.trace.start("record", args.all)?;
    let tracefs = session.kv.tracefs.root().to_owned();
    let gfp_format = std::fs::read_to_string(tracefs.join("events/vmscan/mm_vmscan_direct_reclaim_begin/format")).ok();
    let topo = crate::agent::run::discover(&args.trace.extra()).await.context("cannot read the storage topology")?;
    let header = TraceHeader {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned(),
        started_unix_ns: unix_ns(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        topology: json!({ "topology": &topo, "index": StackIndex::from_topology(&topo) }),
        attach: serde_json::to_value(&session.attach)?,
        gfp_format,
    };
    let writer = TraceWriter::create(&args.output, header, args.max_size, args.max_files)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    eprintln!("Recording to {}... Hit Ctrl-C to end.", args.output.display());
    let mut sink = RecordSink { writer, kallsyms: session.kv.kallsyms.clone(), findings: Vec::new() };
    let result = args.trace.run(&mut session, gfp, &mut sink).await;
    sink.writer.finish().context("cannot finish the trace file")?;
    result.map(|_| 0)
}
