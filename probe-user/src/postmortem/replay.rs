//! Replays a recorded trace, or an imported ftrace capture, through the
//! same decoder and detection engine as the live agent.

use std::{collections::BTreeMap, io::Read, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::ftrace;
use crate::{
    detect::{
        engine::{Blocked, Engine, Observed},
        finding::Finding,
        index::{MountRef, StackIndex},
    },
    events::decode::Event,
    names::GfpNames,
    output::view::EventView,
    topology::Dev,
    trace::{Record, TraceReader},
};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServicerSummary {
    pub tgid: u32,
    pub comm: String,
    pub threads: usize,
    pub reclaim_entries: u64,
    pub reclaim_total_ms: f64,
    pub reclaim_max_ms: f64,
    pub writeback_waits: u64,
    pub findings: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub rule: String,
    pub tid: u32,
    /// Events within a second either side of the finding, relative times in seconds.
    pub events: Vec<(f64, EventView)>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub source: String,
    pub kernel_release: Option<String>,
    pub records: u64,
    pub events: u64,
    /// What the replay found.
    pub findings: Vec<Finding>,
    /// Every finding the recording agent wrote (what `record` printed live).
    pub recorded: Vec<Value>,
    /// Those of them the replay cannot derive from events alone (deadlocks
    /// come from /proc observations at record time).
    pub recorded_only: Vec<Value>,
    pub servicers: Vec<ServicerSummary>,
    pub timelines: Vec<Timeline>,
    /// Where a damaged file stopped being readable.
    pub damage: Option<String>,
    /// What the input cannot tell.
    pub limits: Vec<String>,
}

impl Report {
    /// Keeps what concerns process `pid` only (`report -p`). The counts of
    /// records and events stay those of the whole input.
    pub fn keep_process(&mut self, pid: u32) {
        self.findings.retain(|f| f.servicer.tgid == pid);
        let of_pid = |f: &Value| f["servicer"]["tgid"].as_u64() == Some(pid as u64);
        self.recorded.retain(of_pid);
        self.recorded_only.retain(of_pid);
        self.servicers.retain(|s| s.tgid == pid);
        let tids: Vec<u32> = self.findings.iter().flat_map(|f| f.threads.iter().map(|t| t.tid)).collect();
        self.timelines.retain(|t| tids.contains(&t.tid));
    }
}

/// Event stream plus what the engine needs, whatever the input format.
struct Replay {
    engine: Engine,
    gfp: GfpNames,
    stacks: BTreeMap<i32, Vec<String>>,
    events: Vec<(Event, Vec<String>)>,
}

impl Replay {
    fn new(index: StackIndex, gfp: GfpNames, deadlock_after: Duration) -> Replay {
        Replay {
            engine: Engine::new(index, gfp.clone(), deadlock_after),
            gfp,
            stacks: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    fn event(&mut self, ev: Event) {
        let stack = self.stacks.get(&ev.ctx().stack_id).cloned().unwrap_or_default();
        self.engine.on_event(&ev, &Observed { stack: stack.clone(), ..Default::default() });
        self.events.push((ev, stack));
    }

    fn finish(self, mut report: Report) -> Report {
        let findings = self.engine.findings().to_vec();
        let mut per: BTreeMap<u32, (ServicerSummary, std::collections::BTreeSet<u32>)> = BTreeMap::new();
        for (ev, _) in &self.events {
            let c = ev.ctx();
            if c.serving_dev == 0 {
                continue;
            }
            let (s, threads) = per.entry(c.tgid).or_default();
            s.tgid = c.tgid;
            s.comm = crate::events::decode::comm(c);
            threads.insert(c.tid);
            match ev {
                Event::ReclaimBegin(_) => s.reclaim_entries += 1,
                Event::ReclaimEnd(e) => {
                    let ms = e.data.duration_ns as f64 / 1e6;
                    s.reclaim_total_ms += ms;
                    s.reclaim_max_ms = s.reclaim_max_ms.max(ms);
                }
                Event::WritebackWait(_) => s.writeback_waits += 1,
                _ => {}
            }
        }
        report.servicers = per
            .into_values()
            .map(|(mut s, threads)| {
                s.threads = threads.len();
                s.findings = findings.iter().filter(|f| f.servicer.tgid == s.tgid).count();
                s
            })
            .collect();
        report.timelines = findings
            .iter()
            .map(|f| Timeline {
                rule: f.rule.clone(),
                tid: f.servicer.tid,
                events: self
                    .events
                    .iter()
                    .filter(|(ev, _)| ev.ctx().ts_ns.abs_diff(f.first_ns) <= 1_000_000_000)
                    .filter(|(ev, _)| {
                        matches!(ev, Event::ReclaimBegin(_) | Event::ReclaimEnd(_) | Event::WritebackWait(_))
                    })
                    .take(20)
                    .map(|(ev, stack)| {
                        let obs = Observed { stack: stack.clone(), ..Default::default() };
                        let t = (ev.ctx().ts_ns as f64 - f.first_ns as f64) / 1e9;
                        (t, EventView::new(ev, &obs, &self.gfp, None))
                    })
                    .collect(),
            })
            .collect();
        report.events = self.events.len() as u64;
        report.findings = findings;
        report
    }
}

fn index_from(v: &Value) -> StackIndex {
    serde_json::from_value(v["index"].clone()).unwrap_or_default()
}

/// Replays a trace file written by `reclaimscope record`.
pub fn trace(path: &Path, deadlock_after: Duration) -> Result<Report> {
    replay_trace(TraceReader::open(path)?, path.display().to_string(), deadlock_after)
}

/// Replays a trace held in memory, as [`trace`] does a file; `name` stands
/// for the file in messages. The fuzz target `replay` drives this.
pub fn trace_bytes(bytes: &[u8], name: &str, deadlock_after: Duration) -> Result<Report> {
    replay_trace(TraceReader::new(bytes, name)?, name.to_string(), deadlock_after)
}

fn replay_trace<R: Read>(mut reader: TraceReader<R>, source: String, deadlock_after: Duration) -> Result<Report> {
    let header = reader.header().clone();
    let mut limits = Vec::new();
    // The header comes from whoever made the file: a table that does not
    // parse is said, not fatal, and the masks get the built-in names.
    let gfp = match header.gfp_format.as_deref().map(GfpNames::parse_format) {
        Some(Ok(g)) => g,
        Some(Err(e)) => {
            limits.push(format!(
                "the trace's GFP name table does not parse ({e:#}); masks are named from the built-in 6.18 table"
            ));
            GfpNames::builtin()
        }
        None => GfpNames::builtin(),
    };
    let mut r = Replay::new(index_from(&header.topology), gfp, deadlock_after);
    let mut recorded = Vec::new();
    for rec in reader.by_ref() {
        match rec {
            Record::Stack(s) => {
                r.stacks.insert(s.id, s.frames.into_iter().map(|f| f.symbol).collect());
            }
            Record::Event(e) => {
                if let Ok(ev) = Event::parse(&e.data) {
                    r.event(ev);
                }
            }
            Record::Finding(f) => recorded.push(f),
            Record::Topology(t) => r.engine.set_index(index_from(&t)),
            Record::Symbol(_) => {}
        }
    }
    let damage = reader.damage().map(|d| d.to_string());
    let records = reader.records_read();
    let mut report = r.finish(Report {
        source,
        kernel_release: Some(header.kernel_release),
        records,
        damage,
        limits,
        ..Default::default()
    });
    report.recorded_only = recorded
        .iter()
        .filter(|f| {
            !report.findings.iter().any(|x| {
                Some(x.rule.as_str()) == f["rule"].as_str()
                    && Some(x.servicer.tid as u64) == f["servicer"]["tid"].as_u64()
            })
        })
        .cloned()
        .collect();
    report.recorded = recorded;
    Ok(report)
}

/// Replays a `trace-cmd report` or tracefs `trace` text capture. The
/// capture has no topology: `servicers` says which pids serve which device.
pub fn ftrace_capture(
    path: &Path,
    servicers: &[(u32, Dev)],
    gfp: GfpNames,
    deadlock_after: Duration,
) -> Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ftrace_bytes(&bytes, &path.display().to_string(), servicers, gfp, deadlock_after)
}

/// Replays a text capture held in memory, as [`ftrace_capture`] does a
/// file; `name` stands for the file in messages.
pub fn ftrace_bytes(
    bytes: &[u8],
    name: &str,
    servicers: &[(u32, Dev)],
    gfp: GfpNames,
    deadlock_after: Duration,
) -> Result<Report> {
    let import = ftrace::import(bytes, &gfp).with_context(|| format!("{name}: not an ftrace text capture"))?;
    let index = StackIndex {
        mounts: servicers
            .iter()
            .map(|(_, d)| MountRef {
                dev: *d,
                fs_type: "(not in capture)".into(),
                mount_point: "(not in capture)".into(),
            })
            .collect(),
        ..Default::default()
    };
    let mut r = Replay::new(index, gfp, deadlock_after);
    for mut ev in import.events.iter().copied() {
        let c = ev.ctx_mut();
        if let Some((_, dev)) = servicers.iter().find(|(p, _)| *p == c.tgid || *p == c.tid) {
            c.serving_dev = dev.to_kernel();
        }
        r.event(ev);
    }
    let end = import.events.last().map(|ev| ev.ctx().ts_ns).unwrap_or(0);
    for b in &import.blocked {
        let until = b.until_ns.unwrap_or(end);
        r.engine.on_blocked(&Blocked {
            tid: b.tid,
            // A capture has no task flags: its reclaim begin without an end
            // stands for the kernel's in-reclaim mark.
            flags: probe_common::flags::PF_MEMALLOC,
            blocked_for: Duration::from_nanos(until.saturating_sub(b.ts_ns)),
            now_ns: until,
            stack: vec![],
            chain: vec![],
            holders: Default::default(),
        });
    }
    let mut limits = import.limits.clone();
    if import.skipped_lines > 0 {
        limits.push(format!(
            "{} lines of the capture were other events or unreadable, and were skipped",
            import.skipped_lines
        ));
    }
    if import.lost_events > 0 {
        limits.push(format!("the capture lost {} events", import.lost_events));
    }
    Ok(r.finish(Report { source: name.to_string(), records: import.events.len() as u64, limits, ..Default::default() }))
}
