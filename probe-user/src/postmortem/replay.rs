//! Replays a recorded trace, or an imported ftrace capture, through the
//! same decoder and detection engine as the live agent.
//!
//! The input may be gigabytes, or crafted, so a replay streams it and
//! holds nothing per event: a first pass feeds the engine and the servicer
//! table, a second one (only when there are findings) picks the timelines.
//! Each stack is interned once and shared. Everything a replay keeps has a
//! bound, and docs/postmortem.md adds them up to the memory `report` may
//! use; what a bound left out is said in the report's limits.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io::{BufRead, BufReader, Read, Seek},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Serialize;

use super::ftrace;
use crate::{
    detect::{
        engine::{Blocked, Engine, Observed},
        finding::Finding,
        index::{MountRef, StorageIndex},
    },
    events::decode::Event,
    names::GfpNames,
    topology::Dev,
    trace::{json_cost, Record, StackRecord, TopologyRecord, TraceReader},
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

#[derive(Debug, Clone)]
pub struct Timeline {
    pub rule: String,
    pub tid: u32,
    /// Events within a second either side of the finding, with their
    /// stacks, and their time from it in seconds.
    pub events: Vec<(f64, Event, Arc<[String]>)>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub source: String,
    pub kernel_release: Option<String>,
    pub records: u64,
    pub events: u64,
    /// What the replay found.
    pub findings: Vec<Finding>,
    /// Every finding the recording agent wrote (what `record` printed live).
    pub recorded: Vec<Finding>,
    /// Those of them the replay cannot derive from events alone (deadlocks
    /// come from /proc observations at record time).
    pub recorded_only: Vec<Finding>,
    pub servicers: Vec<ServicerSummary>,
    pub timelines: Vec<Timeline>,
    /// Where a damaged file stopped being readable.
    pub damage: Option<String>,
    /// What the input cannot tell.
    pub limits: Vec<String>,
    /// The names of the recording kernel's gfp flags (the built-in table's
    /// when the input did not give them), to name the findings' masks.
    pub gfp: GfpNames,
}

impl Report {
    /// Every finding of the report once: the replay's, and those only the
    /// recording agent could make (deadlocks, from /proc).
    pub fn all_findings(&self) -> Vec<Finding> {
        self.findings.iter().chain(&self.recorded_only).cloned().collect()
    }

    /// Keeps what concerns process `pid` only (`report -p`). The counts of
    /// records and events stay those of the whole input.
    pub fn keep_process(&mut self, pid: u32) {
        self.findings.retain(|f| f.servicer.tgid == pid);
        let of_pid = |f: &Finding| f.servicer.tgid == pid;
        self.recorded.retain(of_pid);
        self.recorded_only.retain(of_pid);
        self.servicers.retain(|s| s.tgid == pid);
        let tids: Vec<u32> = self.findings.iter().flat_map(|f| f.threads.iter().map(|t| t.tid)).collect();
        self.timelines.retain(|t| tids.contains(&t.tid));
    }
}

/// Bytes of interned stacks a replay pass may hold, counted as
/// [`stack_cost`] does. Past it, later stack records are dropped (and said):
/// one stack is at most 127 frames of 640 bytes, so this holds hundreds.
pub const STACK_BYTES: usize = 16 << 20;

/// Recorded findings a report keeps, and the memory they may take
/// ([`json_cost`](crate::trace::json_cost) of each); past either, the rest are counted, not kept.
/// The agent writes at most 512 distinct findings, each a few kilobytes.
pub const MAX_RECORDED: usize = 512;
pub const RECORDED_BYTES: usize = 16 << 20;

/// Servicer processes the servicer table follows, and (process, thread)
/// pairs it counts; past them, the rest are counted as not summarised.
pub const MAX_SUMMARISED: usize = 4096;
pub const MAX_THREADS_COUNTED: usize = 1 << 16;

/// The longest text a topology index string keeps (PATH_MAX): every
/// finding copies the mount point and backing file it names.
const MAX_INDEX_STRING: usize = 4096;

/// Events a timeline shows, within a second of its finding.
const TIMELINE_EVENTS: usize = 20;

/// Memory an interned stack takes: its text and each `String`'s own 24
/// bytes plus the allocator's.
fn stack_cost(frames: &[String]) -> usize {
    64 + frames.iter().map(|f| f.len() + 48).sum::<usize>()
}

/// Stack records by id, each interned once and shared (by `Arc`) with every
/// event, pending thread and finding that uses it, within [`STACK_BYTES`].
#[derive(Default)]
struct Stacks {
    by_id: HashMap<i32, Arc<[String]>>,
    /// Cost of every stack interned so far, replaced ones included (they
    /// may live on in findings).
    bytes: usize,
    dropped: u64,
}

impl Stacks {
    fn insert(&mut self, s: StackRecord) {
        let frames: Vec<String> = s.frames.into_iter().map(|f| f.symbol).collect();
        let cost = stack_cost(&frames);
        if self.bytes + cost > STACK_BYTES {
            // Better no stack for the id than an older one that is wrong.
            self.by_id.remove(&s.id);
            self.dropped += 1;
            return;
        }
        self.bytes += cost;
        self.by_id.insert(s.id, frames.into());
    }

    fn of(&self, ev: &Event) -> Arc<[String]> {
        self.by_id.get(&ev.ctx().stack_id).cloned().unwrap_or_default()
    }
}

/// The servicer table, built as events stream past within its bounds.
#[derive(Default)]
struct Summaries {
    per: BTreeMap<u32, ServicerSummary>,
    threads: HashSet<(u32, u32)>,
    /// Events of servicers past [`MAX_SUMMARISED`], and threads past
    /// [`MAX_THREADS_COUNTED`], left out of the table.
    events_left_out: u64,
    threads_left_out: u64,
}

impl Summaries {
    fn event(&mut self, ev: &Event) {
        let c = ev.ctx();
        if c.serving_dev == 0 {
            return;
        }
        if self.per.len() >= MAX_SUMMARISED && !self.per.contains_key(&c.tgid) {
            self.events_left_out += 1;
            return;
        }
        let s = self.per.entry(c.tgid).or_default();
        s.tgid = c.tgid;
        s.comm = crate::events::decode::comm(c);
        if !self.threads.contains(&(c.tgid, c.tid)) {
            if self.threads.len() < MAX_THREADS_COUNTED {
                self.threads.insert((c.tgid, c.tid));
                s.threads += 1;
            } else {
                self.threads_left_out += 1;
            }
        }
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
}

/// The first pass: every event through the engine and the servicer table,
/// none of them kept.
struct Replay {
    engine: Engine,
    gfp: GfpNames,
    stacks: Stacks,
    summaries: Summaries,
    events: u64,
}

impl Replay {
    fn new(index: StorageIndex, gfp: GfpNames, deadlock_after: Duration) -> Replay {
        Replay {
            engine: Engine::new(index, deadlock_after),
            gfp,
            stacks: Stacks::default(),
            summaries: Summaries::default(),
            events: 0,
        }
    }

    fn event(&mut self, ev: &Event, stack: Arc<[String]>) {
        self.events += 1;
        self.engine.on_event(ev, &Observed { stack, ..Default::default() });
        self.summaries.event(ev);
    }

    /// Ends the first pass. The timelines need a second one
    /// ([`Timelines`]), given the returned windows.
    fn finish(self, report: &mut Report) -> Timelines {
        let findings = self.engine.findings().to_vec();
        let s = &self.summaries;
        if s.events_left_out > 0 {
            report.limits.push(format!(
                "more than {MAX_SUMMARISED} servicer processes: {} events of the others are not in the servicer table",
                s.events_left_out
            ));
        }
        if s.threads_left_out > 0 {
            report.limits.push(format!(
                "more than {MAX_THREADS_COUNTED} servicer threads: thread counts leave out {} sightings",
                s.threads_left_out
            ));
        }
        if self.stacks.dropped > 0 {
            report.limits.push(format!(
                "{} stack records past the {} MiB kept for stacks were dropped: their events have no stack",
                self.stacks.dropped,
                STACK_BYTES >> 20
            ));
        }
        if self.engine.untracked() > 0 {
            report.limits.push(format!(
                "{} reclaim entries were not followed: more than {} threads were inside reclaim at once",
                self.engine.untracked(),
                crate::detect::engine::MAX_PENDING
            ));
        }
        report.servicers = self
            .summaries
            .per
            .into_values()
            .map(|mut s| {
                s.findings = findings.iter().filter(|f| f.servicer.tgid == s.tgid).count();
                s
            })
            .collect();
        report.events = self.events;
        let t = Timelines {
            windows: findings
                .iter()
                .map(|f| Timeline { rule: f.rule.clone(), tid: f.servicer.tid, events: Vec::new() })
                .zip(findings.iter().map(|f| f.first_ns))
                .collect(),
        };
        report.findings = findings;
        report.gfp = self.gfp;
        t
    }
}

/// The second pass: the events within a second of each finding's first
/// sighting, [`TIMELINE_EVENTS`] at most, in input order.
struct Timelines {
    windows: Vec<(Timeline, u64)>,
}

impl Timelines {
    fn wanted(&self) -> bool {
        !self.windows.is_empty()
    }

    fn event(&mut self, ev: &Event, stack: &Arc<[String]>) {
        if !matches!(ev, Event::ReclaimBegin(_) | Event::ReclaimEnd(_) | Event::WritebackWait(_)) {
            return;
        }
        let ts = ev.ctx().ts_ns;
        for (tl, first_ns) in &mut self.windows {
            if tl.events.len() < TIMELINE_EVENTS && ts.abs_diff(*first_ns) <= 1_000_000_000 {
                let t = (ts as f64 - *first_ns as f64) / 1e9;
                tl.events.push((t, *ev, Arc::clone(stack)));
            }
        }
    }

    fn finish(self, report: &mut Report) {
        report.timelines = self.windows.into_iter().map(|(tl, _)| tl).collect();
    }
}

/// The storage index a topology record holds, its strings cut at
/// [`MAX_INDEX_STRING`] (no path is longer).
fn index_from(t: TopologyRecord) -> StorageIndex {
    let mut index = t.index;
    let cut = |s: &mut String| {
        let mut end = s.len().min(MAX_INDEX_STRING);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    };
    for m in &mut index.mounts {
        cut(&mut m.fs_type);
        cut(&mut m.mount_point);
    }
    for b in &mut index.backing {
        cut(&mut b.path);
    }
    for s in &mut index.servicers {
        cut(&mut s.comm);
        s.program.as_mut().map(cut);
    }
    index
}

/// An upper bound on the memory a decoded finding takes, as [`json_cost`]
/// estimates it for its text.
fn finding_cost(f: &Finding) -> usize {
    serde_json::to_vec(f).map_or(usize::MAX, |v| json_cost(&v))
}

/// Replays a trace file written by `reclaimscope record` (opened with
/// [`input::open`](super::input::open)), reading it twice: once for the
/// findings, once for their timelines.
pub fn trace(file: &File, name: &str, deadlock_after: Duration) -> Result<Report> {
    let open = || -> Result<_> {
        let mut f = file;
        f.rewind().with_context(|| format!("{name}: cannot read it again"))?;
        Ok(TraceReader::new(BufReader::with_capacity(256 << 10, f), name)?)
    };
    replay_trace(open, name, deadlock_after)
}

/// Replays a trace held in memory, as [`trace`] does a file; `name` stands
/// for the file in messages. The fuzz target `replay` drives this.
pub fn trace_bytes(bytes: &[u8], name: &str, deadlock_after: Duration) -> Result<Report> {
    replay_trace(|| Ok(TraceReader::new(bytes, name)?), name, deadlock_after)
}

fn replay_trace<R: Read>(
    open: impl Fn() -> Result<TraceReader<R>>,
    source: &str,
    deadlock_after: Duration,
) -> Result<Report> {
    let mut reader = open()?;
    let header = reader.header_mut();
    let mut report = Report {
        source: source.to_string(),
        kernel_release: Some(std::mem::take(&mut header.kernel_release)),
        ..Default::default()
    };
    let gfp = header_gfp(header.gfp_format.take(), &mut report);
    let index = index_from(std::mem::take(&mut header.topology));
    let mut r = Replay::new(index, gfp, deadlock_after);
    let mut recorded = Recorded::default();
    for rec in reader.by_ref() {
        match rec {
            Record::Stack(s) => r.stacks.insert(s),
            Record::Event(e) => {
                if let Ok(ev) = Event::parse(&e.data) {
                    let stack = r.stacks.of(&ev);
                    r.event(&ev, stack);
                }
            }
            Record::Finding(f) => recorded.keep(*f, &mut report),
            Record::Topology(t) => r.engine.set_index(index_from(t)),
            Record::Symbol(_) => {}
        }
    }
    report.damage = reader.damage().map(|d| d.to_string());
    report.records = reader.records_read();
    drop(reader);
    recorded.finish(&mut report);
    let mut timelines = r.finish(&mut report);
    if timelines.wanted() {
        // The same records again, up to where the first pass stopped.
        let mut stacks = Stacks::default();
        for rec in open()?.take(report.records.saturating_sub(1) as usize) {
            match rec {
                Record::Stack(s) => stacks.insert(s),
                Record::Event(e) => {
                    if let Ok(ev) = Event::parse(&e.data) {
                        timelines.event(&ev, &stacks.of(&ev));
                    }
                }
                _ => {}
            }
        }
        timelines.finish(&mut report);
    }
    report.recorded_only = report
        .recorded
        .iter()
        .filter(|f| !report.findings.iter().any(|x| x.rule == f.rule && x.servicer.tid == f.servicer.tid))
        .cloned()
        .collect();
    Ok(report)
}

/// The recording kernel's gfp names from the trace header. The header
/// comes from whoever made the file: a table that does not parse is said
/// in the report's limits, not fatal, and the masks get the built-in names.
fn header_gfp(format: Option<String>, report: &mut Report) -> GfpNames {
    match format.as_deref().map(GfpNames::parse_format) {
        Some(Ok(g)) => g,
        Some(Err(e)) => {
            report.limits.push(format!(
                "the trace's GFP name table does not parse ({e:#}); masks are named from the built-in 6.18 table"
            ));
            GfpNames::builtin()
        }
        None => GfpNames::builtin(),
    }
}

/// The findings the recording agent wrote, kept within [`MAX_RECORDED`]
/// and [`RECORDED_BYTES`].
#[derive(Default)]
struct Recorded {
    bytes: usize,
    left_out: u64,
}

impl Recorded {
    fn keep(&mut self, f: Finding, report: &mut Report) {
        let cost = finding_cost(&f);
        if report.recorded.len() < MAX_RECORDED && self.bytes + cost <= RECORDED_BYTES {
            self.bytes += cost;
            report.recorded.push(f);
        } else {
            self.left_out += 1;
        }
    }

    fn finish(self, report: &mut Report) {
        if self.left_out > 0 {
            report.limits.push(format!(
                "{} recorded findings past the first {MAX_RECORDED} (or {} MiB) are not shown",
                self.left_out,
                RECORDED_BYTES >> 20
            ));
        }
    }
}

/// Replays a `trace-cmd report` or tracefs `trace` text capture (opened
/// with [`input::open`](super::input::open)), reading it twice like
/// [`trace`]. The capture has no topology: `servicers` says which pids
/// serve which device.
pub fn ftrace_capture(
    file: &File,
    name: &str,
    servicers: &[(u32, Dev)],
    gfp: GfpNames,
    deadlock_after: Duration,
) -> Result<Report> {
    let open = || -> Result<_> {
        let mut f = file;
        f.rewind().with_context(|| format!("{name}: cannot read it again"))?;
        Ok(BufReader::with_capacity(256 << 10, f))
    };
    replay_ftrace(open, name, servicers, gfp, deadlock_after)
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
    replay_ftrace(|| Ok(bytes), name, servicers, gfp, deadlock_after)
}

/// The storage index of a capture: only the devices `servicers` serve,
/// with no filesystem known on them.
fn capture_index(servicers: &[(u32, Dev)]) -> StorageIndex {
    StorageIndex {
        mounts: servicers
            .iter()
            .map(|(_, d)| MountRef {
                dev: *d,
                fs_type: "(not in capture)".into(),
                mount_point: "(not in capture)".into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A thread a capture shows in D state, blocked until `until_ns` (or, when
/// the capture ends first, until its last event at `end_ns`).
fn captured_blocked(b: &ftrace::DStateInterval, end_ns: u64) -> Blocked {
    let until = b.until_ns.unwrap_or(end_ns);
    Blocked {
        tid: b.tid,
        // A capture has no task flags: its reclaim begin without an end
        // stands for the kernel's in-reclaim mark.
        flags: probe_common::flags::PF_MEMALLOC,
        blocked_for: Duration::from_nanos(until.saturating_sub(b.ts_ns)),
        now_ns: until,
        stack: Arc::default(),
        chain: vec![],
        lock_holders: Default::default(),
    }
}

/// What a capture's import could not read, as the report's limits.
fn capture_limits(import: ftrace::Import) -> Vec<String> {
    let mut limits = import.limits;
    if import.skipped_lines > 0 {
        limits.push(format!(
            "{} lines of the capture were other events or unreadable, and were skipped",
            import.skipped_lines
        ));
    }
    if import.lost_events > 0 {
        limits.push(format!("the capture lost {} events", import.lost_events));
    }
    limits
}

fn replay_ftrace<R: BufRead>(
    open: impl Fn() -> Result<R>,
    name: &str,
    servicers: &[(u32, Dev)],
    gfp: GfpNames,
    deadlock_after: Duration,
) -> Result<Report> {
    // The capture names no servicer: the user does.
    let serve = |ev: &mut Event| {
        let c = ev.ctx_mut();
        if let Some((_, dev)) = servicers.iter().find(|(p, _)| *p == c.tgid || *p == c.tid) {
            c.serving_dev = dev.to_kernel();
        }
    };
    let mut r = Replay::new(capture_index(servicers), gfp.clone(), deadlock_after);
    let mut end = 0;
    let not_a_capture = || format!("{name}: not an ftrace text capture");
    let import = ftrace::stream(open()?, &gfp, |item| match item {
        ftrace::Item::Event(mut ev) => {
            serve(&mut ev);
            end = ev.ctx().ts_ns;
            r.event(&ev, Arc::default());
        }
        ftrace::Item::Blocked(b) => {
            r.engine.on_blocked(&captured_blocked(&b, end));
        }
    })
    .with_context(not_a_capture)?;
    let mut report = Report { source: name.to_string(), limits: capture_limits(import), ..Default::default() };
    let mut timelines = r.finish(&mut report);
    report.records = report.events;
    if timelines.wanted() {
        let none = Arc::default();
        ftrace::stream(open()?, &gfp, |item| {
            if let ftrace::Item::Event(mut ev) = item {
                serve(&mut ev);
                timelines.event(&ev, &none);
            }
        })
        .with_context(not_a_capture)?;
        timelines.finish(&mut report);
    }
    Ok(report)
}
