//! What `reclaimscope record` writes: every event with the stacks and
//! symbols it needs, and every finding, into the trace file (findings also
//! as one line on stderr).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::{finding, sink::Sink, summary::Summary, table::summary_table};
use crate::{
    detect::{engine::Observed, finding::Finding, index::StorageIndex},
    events::decode::Event,
    kernel::kallsyms::Kallsyms,
    names::GfpNames,
    topology::Topology,
    trace::{EventRecord, Frame, Opaque, Record, StackRecord, SymbolRecord, TopologyRecord, TraceWriter},
};

pub struct RecordSink {
    writer: TraceWriter,
    gfp: GfpNames,
    kallsyms: Kallsyms,
    /// Findings written since the last fdatasync.
    unsynced_findings: bool,
}

impl RecordSink {
    /// Writes into `writer`, naming shrinker callbacks with `kallsyms` and
    /// the findings' gfp masks (on stderr) with `gfp`.
    pub fn new(writer: TraceWriter, gfp: GfpNames, kallsyms: Kallsyms) -> RecordSink {
        RecordSink { writer, gfp, kallsyms, unsynced_findings: false }
    }

    /// Flushes and syncs the trace file.
    pub fn finish(self) -> Result<()> {
        self.writer.finish()
    }
}

/// The wall clock now, in ns since the epoch.
pub fn unix_ns() -> u64 {
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
            finding::detail(f, &self.gfp)
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

    fn topology(&mut self, topo: &Topology, index: &StorageIndex) -> Result<()> {
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
    use crate::trace::TraceHeader;

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
        let mut sink = RecordSink::new(writer, GfpNames::builtin(), Kallsyms::parse(""));
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
