//! `reclaimscope record -o FILE`: every relevant event and every finding
//! into a trace file that `report` reads later, here or elsewhere.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::trace_args::TraceArgs;
use crate::{
    detect::index::StorageIndex,
    output::record::{unix_ns, RecordSink},
    topology::Topology,
    trace::{Opaque, TopologyRecord, TraceHeader, TraceWriter, MAX_FILES},
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

/// Shown under every `--help` of `record` (a doc comment on the
/// subcommand would hide examples written there).
const EXAMPLES: &str = "\
Examples:
  sudo reclaimscope record -o reclaim.trace
  sudo reclaimscope record -o reclaim.trace --max-size 64M --max-files 4 --duration 1h";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct RecordArgs {
    /// The trace file (rotated files get .1, .2, ...), created mode 0600. An
    /// existing FILE is replaced only if it is empty or a trace, and never
    /// through a symbolic link.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Replace FILE even if it is not a reclaimscope trace.
    #[arg(long)]
    pub force: bool,
    /// Rotate before a file grows past this size (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Files kept when rotating, the current one included (1 to 1000).
    #[arg(long, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=MAX_FILES as i64))]
    pub max_files: u16,
    /// Record every task's reclaim events, not only those of stacked I/O.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub async fn run(args: &RecordArgs) -> Result<i32> {
    args.trace.validate()?;
    // Loading the probes takes seconds: a wrong -o is refused before.
    TraceWriter::check(&args.output, args.force)?;
    // The header carries the topology: discover it before the probes are
    // attached, so no event waits in the ring buffer meanwhile.
    let refresher = args.trace.refresher()?;
    let first = refresher.first().await;
    if let Some(e) = &first.stats.last_error {
        log::warn!("the trace header has no topology ({e}); it is recorded when discovery succeeds");
    }
    let (mut session, gfp) = args.trace.start("record", args.all)?;
    let tracefs = session.tracefs.root().to_owned();
    let gfp_format = std::fs::read_to_string(tracefs.join("events/vmscan/mm_vmscan_direct_reclaim_begin/format")).ok();
    let topo = first.topology.unwrap_or_else(|| std::sync::Arc::new(Topology::empty()));
    // The file's existence says the recording runs (scripts wait for it):
    // the kernel's filter holds the header's topology before it is created,
    // not only once the event loop applies it. The loop's own sync then
    // finds nothing to change, and reports what did not fit.
    session.gate_hooks(&topo)?;
    session.maps.sync(&topo);
    let header = TraceHeader {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned(),
        started_unix_ns: unix_ns(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        topology: TopologyRecord { index: StorageIndex::from_topology(&topo), topology: Opaque::of(&*topo)? },
        attach: Opaque::of(&session.attach)?,
        gfp_format,
        monotonic_to_unix_ns: crate::trace::monotonic_to_unix_ns(),
    };
    let writer = TraceWriter::create(&args.output, header, args.max_size, args.max_files.into(), args.force)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    eprintln!("Recording to {}... Hit Ctrl-C to end.", args.output.display());
    let mut sink = RecordSink::new(writer, gfp, session.kallsyms.clone());
    let result = args.trace.run(&mut session, &mut sink, &refresher).await;
    sink.finish().context("cannot finish the trace file")?;
    result.map(|_| 0)
}
