//! `reclaimscope record -o FILE`: every relevant event and every finding
//! into a trace file that `report` reads later, here or elsewhere.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

use super::trace_args::TraceArgs;
use crate::{
    agent::run::{Sink, Summary},
    detect::{engine::Observed, finding::Finding, index::StackIndex},
    events::decode::Event,
    kernel::kallsyms::Kallsyms,
    names::GfpNames,
    output::{table::summary_table, words},
    topology::Topology,
    trace::{
        EventRecord, Frame, Opaque, Record, StackRecord, SymbolRecord, TopologyRecord, TraceHeader, TraceWriter,
        MAX_FILES,
    },
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

struct RecordSink {
    writer: TraceWriter,
    gfp: GfpNames,
    kallsyms: Kallsyms,
    /// Findings written since the last fdatasync.
    unsynced_findings: bool,
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Sink for RecordSink {
    fn event(&mut self, raw: &[u8], ev: &Event, _obs: &Observed, stack: &[(u64, String)]) -> Result<()> {
        let id = ev.ctx().stack_id;
        if id >= 0 && !stack.is_empty() && !self.writer.has_stack_as(id, stack) {
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
        self.writer.write(&Record::Finding(Box::new(f.clone())))?;
        self.unsynced_findings = true;
        eprintln!(
            "[{}] {} {} (pid {} tid {}): {}",
            f.severity.name().to_uppercase(),
            f.rule,
            f.servicer.name,
            f.servicer.tgid,
            f.servicer.tid,
            words::detail(f, &self.gfp)
        );
        Ok(())
    }

    fn summary(&mut self, s: &Summary, findings: &[Finding], last: bool) -> Result<()> {
        self.writer.flush()?;
        if last {
            eprintln!("{}", summary_table(s, findings));
        }
        Ok(())
    }

    fn topology(&mut self, topo: &Topology, index: &StackIndex) -> Result<()> {
        self.writer.write(&Record::Topology(TopologyRecord { index: index.clone(), topology: Opaque::of(topo)? }))
    }

    /// A finding must survive the power cut or reset that may follow it:
    /// the batch that made findings is synced to disk before the loop goes on.
    fn end_batch(&mut self) -> Result<()> {
        if std::mem::take(&mut self.unsynced_findings) {
            self.writer.sync()?;
        }
        Ok(())
    }
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
    let header = TraceHeader {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned(),
        started_unix_ns: unix_ns(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        topology: TopologyRecord { index: StackIndex::from_topology(&topo), topology: Opaque::of(&*topo)? },
        attach: Opaque::of(&session.attach)?,
        gfp_format,
        monotonic_to_unix_ns: crate::trace::monotonic_to_unix_ns(),
    };
    let writer = TraceWriter::create(&args.output, header, args.max_size, args.max_files.into(), args.force)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    eprintln!("Recording to {}... Hit Ctrl-C to end.", args.output.display());
    let mut sink = RecordSink { writer, gfp, kallsyms: session.kallsyms.clone(), unsynced_findings: false };
    let result = args.trace.run(&mut session, &mut sink, &refresher).await;
    sink.writer.finish().context("cannot finish the trace file")?;
    result.map(|_| 0)
}

#[cfg(test)]
mod tests {
    //! What reaches the disk: the kernel's own ext4_sync_file_enter
    //! tracepoint says when the trace file is fdatasynced.

    use std::{
        fs,
        os::unix::fs::MetadataExt,
        path::{Path, PathBuf},
    };

    use probe_common::events::{EventKind, ReclaimData, ReclaimEvent, TaskCtx};

    use super::*;

    const TRACEFS: &str = "/sys/kernel/tracing";
    const EVENT: &str = "events/ext4/ext4_sync_file_enter";

    /// A tracing instance recording fsyncs of one inode; removed on drop.
    struct SyncTrace(PathBuf);

    impl SyncTrace {
        fn start(ino: u64) -> SyncTrace {
            let dir = Path::new(TRACEFS).join(format!("instances/reclaimscope-sync-{}", std::process::id()));
            fs::create_dir(&dir).unwrap();
            let t = SyncTrace(dir);
            fs::write(t.0.join(EVENT).join("filter"), format!("ino == {ino}")).unwrap();
            fs::write(t.0.join(EVENT).join("enable"), "1").unwrap();
            t
        }

        /// fdatasync()s seen so far (`datasync 1`), and clears the buffer.
        fn datasyncs(&self) -> usize {
            let text = fs::read_to_string(self.0.join("trace")).unwrap();
            fs::write(self.0.join("trace"), "").unwrap();
            text.lines().filter(|l| !l.starts_with('#') && l.contains("datasync 1")).count()
        }
    }

    impl Drop for SyncTrace {
        fn drop(&mut self) {
            let _ = fs::write(self.0.join(EVENT).join("enable"), "0");
            let _ = fs::remove_dir(&self.0);
        }
    }

    fn header() -> TraceHeader {
        TraceHeader {
            agent_version: "0".into(),
            kernel_release: "6.18".into(),
            hostname: "h".into(),
            started_unix_ns: 0,
            command: "record".into(),
            topology: TopologyRecord::default(),
            attach: Opaque::default(),
            gfp_format: None,
            monotonic_to_unix_ns: None,
        }
    }

    fn event() -> (Vec<u8>, Event) {
        let ctx = TaskCtx { tgid: 7, tid: 7, stack_id: -1, serving_dev: 7 << 20, ..Default::default() };
        let e = ReclaimEvent {
            kind: EventKind::ReclaimBegin as u32,
            _pad: 0,
            ctx,
            data: ReclaimData { reclaim_kind: 2, gfp: 0xcc0, ..Default::default() },
        };
        let ev = Event::ReclaimBegin(e);
        (ev.to_bytes(), ev)
    }

    fn finding() -> Finding {
        Finding::sample("RS001", crate::detect::finding::Severity::Hazard)
    }

    #[test]
    fn a_findings_batch_is_fdatasynced_and_an_events_batch_is_not() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new(TRACEFS).join(EVENT).exists() {
            eprintln!("skipped: needs root and the ext4_sync_file_enter tracepoint");
            return;
        }
        // /var/tmp is on the ext4 root here, unlike a tmpfs /tmp.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("d.trace");
        let writer = TraceWriter::create(&path, header(), None, 1, false).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        if fs::read_to_string("/proc/self/mounts").unwrap().lines().all(|l| !l.contains(" / ext4 ")) {
            eprintln!("skipped: the root filesystem is not ext4");
            return;
        }
        let mut sink =
            RecordSink { writer, gfp: GfpNames::builtin(), kallsyms: Kallsyms::parse(""), unsynced_findings: false };
        let trace = SyncTrace::start(ino);
        let (raw, ev) = event();
        for _ in 0..100 {
            sink.event(&raw, &ev, &Observed::default(), &[]).unwrap();
        }
        sink.end_batch().unwrap();
        assert_eq!(trace.datasyncs(), 0, "a batch of events alone must not cost a disk flush");

        sink.finding(&finding()).unwrap();
        sink.finding(&finding()).unwrap();
        sink.end_batch().unwrap();
        assert_eq!(trace.datasyncs(), 1, "one fdatasync per findings batch");
        // What was synced is on disk and reads back: both findings.
        let findings =
            crate::trace::TraceReader::open(&path).unwrap().filter(|r| matches!(r, Record::Finding(_))).count();
        assert_eq!(findings, 2);
        sink.end_batch().unwrap();
        assert_eq!(trace.datasyncs(), 0, "nothing new, nothing synced");
    }
}
