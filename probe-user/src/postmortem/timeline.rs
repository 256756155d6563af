//! The per-task model behind `report --perfetto`: what each task was doing,
//! when, and who it waited on, as a stream of slices, instants and links.
//!
//! A reclaim deadlock is a story across tasks (the writer takes IOLOCK, the
//! servicer enters reclaim, waits on writeback of its own device, the
//! flusher blocks behind it), so the model is one track per task, fed in
//! the trace's own order. Memory stays bounded whatever the trace's length:
//! the events stream through, and only each task's open slices, the stacks'
//! innermost frames and what the findings say (a few per finding) are kept.
//!
//! Everything is in the kernel's clock (ns); [`Clock`] says how to turn it
//! into Unix time. Words and formats belong to `output::perfetto`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::File,
    io::{BufReader, Seek},
};

use anyhow::{Context, Result};
use probe_common::events::{ReclaimEvent, TaskCtx};

use super::ftrace::{self, DStateInterval};
use crate::{
    detect::{
        finding::{Finding, LockHolder},
        holds::Held,
    },
    events::decode::{cstr, wait_dev, Event},
    kernel::kallsyms::without_probe_frames,
    names::GfpNames,
    topology::Dev,
    trace::{OffsetEstimate, Record, TraceReader},
};

/// A track: (process id, thread id).
pub type TaskKey = (u32, u32);

/// Innermost frames kept per stack: enough to name what a wait is in.
const STACK_FRAMES: usize = 8;

/// Slices open at once on one task. Reclaim nests a few levels (slow path,
/// direct or memcg reclaim, shrink_node, a wait); more is a lost end event.
const MAX_OPEN: usize = 16;

/// Tracks followed; events of tasks beyond are counted, not shown. A
/// track costs a few hundred bytes, so this bounds them to tens of MiB.
pub const MAX_TRACKS: usize = 1 << 16;

/// Bytes of stack frames kept (for naming what a wait blocks in), as the
/// replay's own bound; stacks past it are not named.
const STACK_BYTES: usize = 16 << 20;

/// Shrinker callback names kept.
const MAX_SYMBOLS: usize = 4096;

/// How the kernel's timestamps relate to Unix time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The trace header's offset, read when recording started.
    Header(i64),
    /// Estimated from the event records' read times (traces written
    /// before the header carried it): late by the quickest read.
    Estimated(i64),
    /// No wall clock: an ftrace capture's trace clock (since boot).
    Boot,
}

impl Clock {
    /// Add this to a kernel timestamp for Unix ns (0 for [`Clock::Boot`]).
    pub fn offset_ns(self) -> i64 {
        match self {
            Clock::Header(o) | Clock::Estimated(o) => o,
            Clock::Boot => 0,
        }
    }
}

/// Who a task is in the story. A task may be several.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskInfo {
    pub tgid: u32,
    pub tid: u32,
    pub comm: String,
    /// The program's full name, where a finding gives it (servicers).
    pub program: Option<String>,
    /// The stacked device whose I/O it completes.
    pub serving: Option<Dev>,
    /// It held a lock or transaction in the upper filesystem (a writer).
    pub holder: bool,
    /// It was seen blocked behind a servicer.
    pub waiter: bool,
    /// The tgid is the thread id: a finding's waiting chain names threads only.
    pub tgid_unknown: bool,
}

impl TaskInfo {
    /// A kernel writeback worker: "kworker/u16:3+flush-7:0".
    pub fn flusher(&self) -> bool {
        self.comm.contains("flush-")
    }
}

/// What a slice is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    Reclaim {
        kind: u32,
        gfp: u32,
        order: i32,
    },
    /// The wait's end is not recorded: it ends at the task's next event.
    WritebackWait {
        dev: Option<Dev>,
        ino: u64,
        index: u64,
        in_reclaim: bool,
        /// Innermost first.
        stack: Vec<String>,
    },
    DirtyThrottle {
        bdi: String,
        dirty: u64,
        limit: u64,
        /// The tracepoint's `pause`, which the kernel converts to ms.
        pause_ms: i64,
        cgroup_ino: u64,
    },
    /// Asleep uninterruptibly; `function` is where, when known.
    DState {
        function: Option<String>,
    },
    /// Seen blocked while holding locks or a transaction in the upper
    /// filesystem: from the first to the last finding that saw it so.
    Holding {
        held: Vec<Held>,
        ino: u64,
        blocked_in: Option<String>,
        sightings: u32,
    },
}

/// Why a slice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Its end event.
    Returned { nr_reclaimed: u64, duration_ns: u64 },
    /// The task's next event (a wait's end is not recorded).
    NextEvent,
    /// A dirty-throttling pause ran its length.
    PauseOver,
    /// Still open when the trace ended.
    TraceEnd,
}

/// A point in time on a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    Finding(Box<Finding>),
    Shrinker {
        scan_fn: u64,
        callback: Option<String>,
        nr_to_scan: u64,
        fs_type: String,
        sb_dev: Dev,
    },
    Pageout {
        dev: Dev,
        ino: u64,
    },
    OomKill {
        victim: u32,
    },
    /// A reclaim end whose begin is not in the trace.
    ReclaimEndOnly {
        kind: u32,
        duration_ns: u64,
        nr_reclaimed: u64,
    },
    /// Seen in D state in `frames[0]` (innermost first) when a finding was made.
    Blocked {
        frames: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Begin {
        ts: u64,
        task: TaskKey,
        span: Span,
    },
    End {
        ts: u64,
        task: TaskKey,
        close: Close,
    },
    Complete {
        ts: u64,
        dur: u64,
        task: TaskKey,
        span: Span,
    },
    Instant {
        ts: u64,
        task: TaskKey,
        mark: Mark,
    },
    /// A link leaves the slice enclosing `ts` on `task`...
    FlowOut {
        ts: u64,
        task: TaskKey,
        id: u64,
    },
    /// ...and arrives at the one enclosing `ts` here.
    FlowIn {
        ts: u64,
        task: TaskKey,
        id: u64,
    },
    /// Who a track is; after all the items.
    Task(TaskInfo),
}

impl Item {
    fn ts(&self) -> u64 {
        match self {
            Item::Begin { ts, .. }
            | Item::End { ts, .. }
            | Item::Complete { ts, .. }
            | Item::Instant { ts, .. }
            | Item::FlowOut { ts, .. }
            | Item::FlowIn { ts, .. } => *ts,
            Item::Task(_) => u64::MAX,
        }
    }

    /// The track it is on (none for a track's description).
    pub fn task(&self) -> Option<TaskKey> {
        match self {
            Item::Begin { task, .. }
            | Item::End { task, .. }
            | Item::Complete { task, .. }
            | Item::Instant { task, .. }
            | Item::FlowOut { task, .. }
            | Item::FlowIn { task, .. } => Some(*task),
            Item::Task(_) => None,
        }
    }
}

/// Where the items go.
pub trait Sink {
    fn item(&mut self, item: &Item) -> Result<()>;
}

/// What one export held, for the closing line and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub tasks: usize,
    pub events: u64,
    /// Events of tasks past [`MAX_TRACKS`].
    pub tasks_left_out: u64,
    /// A capture's D-state sleeps that its task outran: the wake-up was
    /// not captured (a capture filtered by pid misses the switch that woke
    /// it on another CPU), so where the sleep ended is not known.
    pub d_states_left_out: u64,
    /// Events stamped earlier than the task's previous one, placed at that
    /// one's time so the track stays ordered (none from the kernel's ring
    /// buffer, whose per-task order is the task's).
    pub reordered: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Reclaim(u32),
    Wait,
    Throttle { until: u64 },
}

#[derive(Debug, Default)]
struct Track {
    info: TaskInfo,
    open: Vec<Open>,
    /// Items from findings and captures, by time.
    derived: VecDeque<Item>,
    last_ts: u64,
}

/// Builds the items in order, one task's slices properly nested and each
/// track's times never going back.
struct Builder<'s, S: Sink> {
    sink: &'s mut S,
    tracks: BTreeMap<TaskKey, Track>,
    stacks: HashMap<i32, Vec<String>>,
    stack_bytes: usize,
    /// Shrinker callbacks' names, by address.
    symbols: HashMap<u64, String>,
    end_ns: u64,
    events: u64,
    reordered: u64,
    tasks_left_out: u64,
    d_states_left_out: u64,
}

impl<'s, S: Sink> Builder<'s, S> {
    fn new(sink: &'s mut S) -> Self {
        Builder {
            sink,
            tracks: BTreeMap::new(),
            stacks: HashMap::new(),
            stack_bytes: 0,
            symbols: HashMap::new(),
            end_ns: 0,
            events: 0,
            reordered: 0,
            tasks_left_out: 0,
            d_states_left_out: 0,
        }
    }

    fn track(&mut self, task: TaskKey) -> &mut Track {
        self.tracks.entry(task).or_insert_with(|| Track {
            info: TaskInfo { tgid: task.0, tid: task.1, ..Default::default() },
            ..Default::default()
        })
    }

    /// Queues the items made before the event stream, all at once: they
    /// are sorted here, per task. (Bounded: the report keeps at most 512
    /// findings.)
    fn derive(&mut self, mut items: Vec<Item>) {
        items.sort_by_key(Item::ts);
        for item in items {
            let Some(task) = item.task() else { continue };
            let end = match &item {
                Item::Complete { ts, dur, .. } => ts + dur,
                other => other.ts(),
            };
            self.end_ns = self.end_ns.max(end);
            self.track(task).derived.push_back(item);
        }
    }

    /// Emits what falls on `task` before `ts` (or at it, with `inclusive`):
    /// queued items and the ends of pauses that ran their length.
    fn advance(&mut self, task: TaskKey, ts: u64, inclusive: bool) -> Result<()> {
        loop {
            let Some(t) = self.tracks.get_mut(&task) else { return Ok(()) };
            let due = |at: u64| at < ts || (inclusive && at == ts);
            let pause_end = match t.open.last() {
                Some(Open::Throttle { until }) => Some(*until),
                _ => None,
            };
            let next_derived = t.derived.front().map(Item::ts);
            let item = match (pause_end, next_derived) {
                (Some(p), d) if due(p) && d.is_none_or(|d| p <= d) => {
                    t.open.pop();
                    Item::End { ts: p, task, close: Close::PauseOver }
                }
                (_, Some(d)) if due(d) => t.derived.pop_front().expect("front exists"),
                _ => return Ok(()),
            };
            t.last_ts = t.last_ts.max(item.ts());
            self.sink.item(&item)?;
        }
    }

    fn emit(&mut self, item: Item) -> Result<()> {
        self.sink.item(&item)
    }

    fn stack(&mut self, id: i32, frames: Vec<String>) {
        let frames: Vec<String> = without_probe_frames(&frames).iter().take(STACK_FRAMES).cloned().collect();
        let cost = frames.iter().map(|f| f.len() + 24).sum::<usize>();
        if self.stack_bytes + cost <= STACK_BYTES {
            self.stack_bytes += cost;
            self.stacks.insert(id, frames);
        }
    }

    fn symbol(&mut self, addr: u64, name: String) {
        if self.symbols.len() < MAX_SYMBOLS {
            self.symbols.insert(addr, name);
        }
    }

    /// Whether `task` has a track or may get one.
    fn followed(&mut self, task: TaskKey) -> bool {
        let ok = self.tracks.len() < MAX_TRACKS || self.tracks.contains_key(&task);
        if !ok {
            self.tasks_left_out += 1;
        }
        ok
    }

    /// A capture's D-state sleep, handed over when it ended. Placed unless
    /// its task ran meanwhile (its wake-up was not captured).
    fn blocked(&mut self, d: &DStateInterval) -> Result<()> {
        let task = (d.tgid, d.tid);
        if !self.followed(task) {
            return Ok(());
        }
        let t = self.track(task);
        if t.info.comm.is_empty() {
            t.info.comm = d.comm.clone();
        }
        if d.ts_ns < t.last_ts {
            self.d_states_left_out += 1;
            return Ok(());
        }
        let until = d.until_ns.unwrap_or(self.end_ns).max(d.ts_ns);
        self.end_ns = self.end_ns.max(until);
        self.advance(task, d.ts_ns, true)?;
        let span = Span::DState { function: None };
        self.track(task).last_ts = d.ts_ns;
        self.emit(Item::Complete { ts: d.ts_ns, dur: until - d.ts_ns, task, span })
    }

    /// Names `task`'s track from `c` when it has no name yet; returns the
    /// event's time, held at the track's last one when the input went back.
    fn see_task(&mut self, task: TaskKey, c: &TaskCtx) -> u64 {
        let track = self.track(task);
        if track.info.comm.is_empty() {
            track.info.comm = cstr(&c.comm);
        }
        // A finding's device, given first, is the one it is about.
        if c.serving_dev != 0 && track.info.serving.is_none() {
            track.info.serving = Some(Dev::from_kernel(c.serving_dev));
        }
        let last = track.last_ts;
        if c.ts_ns < last {
            self.reordered += 1;
            last
        } else {
            c.ts_ns
        }
    }

    /// A reclaim returned: its slice ends, with the inner slices whose ends
    /// were lost; or, its begin unseen, it is an instant.
    fn reclaim_end(&mut self, task: TaskKey, ts: u64, e: &ReclaimEvent) -> Result<()> {
        let kind = e.data.reclaim_kind;
        let close = Close::Returned { nr_reclaimed: e.data.nr_reclaimed, duration_ns: e.data.duration_ns };
        if !self.track(task).open.contains(&Open::Reclaim(kind)) {
            let mark =
                Mark::ReclaimEndOnly { kind, duration_ns: e.data.duration_ns, nr_reclaimed: e.data.nr_reclaimed };
            return self.emit(Item::Instant { ts, task, mark });
        }
        while let Some(open) = self.track(task).open.pop() {
            let inner = open != Open::Reclaim(kind);
            self.emit(Item::End { ts, task, close: if inner { Close::NextEvent } else { close } })?;
            if !inner {
                break;
            }
        }
        Ok(())
    }

    /// Opens the slice `ev` begins (or ends the one it ends), or marks the
    /// instant it is.
    fn slice_or_mark(&mut self, task: TaskKey, ts: u64, ev: &Event) -> Result<()> {
        match ev {
            Event::ReclaimBegin(e) => {
                let span = Span::Reclaim { kind: e.data.reclaim_kind, gfp: e.data.gfp, order: e.data.order };
                self.open(task, ts, Open::Reclaim(e.data.reclaim_kind), span)?;
            }
            Event::ReclaimEnd(e) => self.reclaim_end(task, ts, e)?,
            Event::WritebackWait(e) => {
                let stack = self.stacks.get(&e.ctx.stack_id).cloned().unwrap_or_default();
                let span = Span::WritebackWait {
                    dev: wait_dev(e),
                    ino: e.data.ino,
                    index: e.data.index,
                    in_reclaim: e.data.in_reclaim != 0,
                    stack,
                };
                self.open(task, ts, Open::Wait, span)?;
            }
            Event::DirtyThrottle(e) => {
                let pause_ms = e.data.pause;
                let until = ts.saturating_add(u64::try_from(pause_ms).unwrap_or(0).saturating_mul(1_000_000));
                let span = Span::DirtyThrottle {
                    bdi: cstr(&e.data.bdi),
                    dirty: e.data.dirty,
                    limit: e.data.limit,
                    pause_ms,
                    cgroup_ino: e.data.cgroup_ino,
                };
                self.end_ns = self.end_ns.max(until);
                self.open(task, ts, Open::Throttle { until }, span)?;
            }
            Event::Shrinker(e) => {
                let mark = Mark::Shrinker {
                    scan_fn: e.data.scan_fn,
                    callback: self.symbols.get(&e.data.scan_fn).cloned(),
                    nr_to_scan: e.data.nr_to_scan,
                    fs_type: cstr(&e.data.fs_type),
                    sb_dev: Dev::from_kernel(e.data.sb_dev),
                };
                self.emit(Item::Instant { ts, task, mark })?;
            }
            Event::ReclaimWrite(e) => {
                let mark = Mark::Pageout { dev: Dev::from_kernel(e.data.dev), ino: e.data.ino };
                self.emit(Item::Instant { ts, task, mark })?;
            }
            Event::OomVictim(e) => self.emit(Item::Instant { ts, task, mark: Mark::OomKill { victim: e.data.pid } })?,
        }
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> Result<()> {
        self.events += 1;
        let c = ev.ctx();
        let task = (c.tgid, c.tid);
        if !self.followed(task) {
            return Ok(());
        }
        let ts = self.see_task(task, c);
        self.end_ns = self.end_ns.max(ts);
        self.advance(task, ts, false)?;
        // The task runs again: whatever it waited in is over.
        while let Some(Open::Wait | Open::Throttle { .. }) = self.track(task).open.last() {
            self.track(task).open.pop();
            self.emit(Item::End { ts, task, close: Close::NextEvent })?;
        }
        self.slice_or_mark(task, ts, ev)?;
        self.track(task).last_ts = ts;
        // What a finding says about this very moment goes inside the slice
        // the event opened.
        self.advance(task, ts, true)
    }

    fn open(&mut self, task: TaskKey, ts: u64, open: Open, span: Span) -> Result<()> {
        let t = self.track(task);
        if t.open.len() >= MAX_OPEN {
            // Ends lost to a full ring buffer: the innermost slice is the
            // one a lost end most likely left open.
            t.open.pop();
            self.emit(Item::End { ts, task, close: Close::NextEvent })?;
        }
        self.track(task).open.push(open);
        self.emit(Item::Begin { ts, task, span })
    }

    /// Flushes what is queued and ends what is open at the trace's end,
    /// then says who each track is.
    fn finish(mut self) -> Result<Totals> {
        let end = self.end_ns;
        let tasks: Vec<TaskKey> = self.tracks.keys().copied().collect();
        for &task in &tasks {
            self.advance(task, end, true)?;
            while self.track(task).open.pop().is_some() {
                self.emit(Item::End { ts: end, task, close: Close::TraceEnd })?;
            }
        }
        // A process is named once, by its first track: every track of it
        // carries the program name a finding gave any of them.
        let programs: HashMap<u32, String> =
            self.tracks.values().filter_map(|t| Some((t.info.tgid, t.info.program.clone()?))).collect();
        for t in self.tracks.values() {
            let mut info = t.info.clone();
            info.program = info.program.or_else(|| programs.get(&info.tgid).cloned());
            self.sink.item(&Item::Task(info))?;
        }
        Ok(Totals {
            tasks: tasks.len(),
            events: self.events,
            tasks_left_out: self.tasks_left_out,
            d_states_left_out: self.d_states_left_out,
            reordered: self.reordered,
        })
    }
}

/// What the report found, for the timeline.
#[derive(Clone, Copy, Default)]
pub struct Findings<'a> {
    /// Each finding once: the replay's, and those only the recording agent
    /// could make. Each is an instant on its servicer.
    pub all: &'a [Finding],
    /// The findings as the recording agent wrote them. Who held what and
    /// who waited behind the servicer are as of a finding's `last_ns`, so
    /// they are taken from these, whose times they go with, not from the
    /// replay's copy of the same finding (seen again later).
    pub live: &'a [Finding],
}

/// What the findings tell beyond the events: the finding itself, who held
/// what in the upper filesystem and who waited behind the servicer, with
/// links from the servicer to them.
/// Where each holder's span is in the items, by what it holds: a holder
/// seen in the same state (same locks, inode and blocking function) by
/// several findings is one span, from first to last sight.
type HeldAt = HashMap<(u32, Vec<Held>, u64, Option<String>), usize>;

/// Adds holder `h`, seen at `seen`, to its span (a new one, or the one
/// that saw it so before, stretched and counted).
fn hold(items: &mut Vec<Item>, held_at: &mut HeldAt, h: &LockHolder, seen: u64) {
    let key = (h.tid, h.held.clone(), h.ino, h.blocked_in.clone());
    match held_at.get(&key).map(|i| &mut items[*i]) {
        Some(Item::Complete { ts, dur, span: Span::Holding { sightings, .. }, .. }) => {
            let (from, to) = ((*ts).min(seen), (*ts + *dur).max(seen));
            (*ts, *dur, *sightings) = (from, to - from, *sightings + 1);
        }
        _ => {
            held_at.insert(key, items.len());
            let span =
                Span::Holding { held: h.held.clone(), ino: h.ino, blocked_in: h.blocked_in.clone(), sightings: 1 };
            items.push(Item::Complete { ts: seen, dur: 0, task: (h.tgid, h.tid), span });
        }
    }
}

/// Names the track of `f`'s servicer from the finding where it has no
/// name yet; returns the track.
fn name_servicer(f: &Finding, tracks: &mut BTreeMap<TaskKey, TaskInfo>) -> TaskKey {
    let s = &f.servicer;
    let servicer = (s.tgid, s.tid);
    let info = tracks.entry(servicer).or_insert_with(|| TaskInfo { tgid: s.tgid, tid: s.tid, ..Default::default() });
    if info.comm.is_empty() {
        info.comm = s.comm.clone();
    }
    if info.program.is_none() && !s.name.is_empty() && s.name != s.comm {
        info.program = Some(s.name.clone());
    }
    if info.serving.is_none() {
        info.serving = Some(f.device);
    }
    servicer
}

fn from_findings(findings: Findings<'_>, tracks: &mut BTreeMap<TaskKey, TaskInfo>) -> Vec<Item> {
    let mut items = Vec::new();
    let mut flow = 0u64;
    let mut held_at: HeldAt = HashMap::new();
    let same = |a: &Finding, b: &Finding| a.rule == b.rule && a.servicer.tid == b.servicer.tid;
    for f in findings.all {
        let servicer = name_servicer(f, tracks);
        items.push(Item::Instant { ts: f.first_ns, task: servicer, mark: Mark::Finding(Box::new(f.clone())) });
    }
    let replayed_only = findings.all.iter().filter(|f| !findings.live.iter().any(|l| same(l, f)));
    for f in findings.live.iter().chain(replayed_only) {
        let servicer = (f.servicer.tgid, f.servicer.tid);
        let at = f.last_ns;
        for h in &f.lock_holders {
            let task = (h.tgid, h.tid);
            let info =
                tracks.entry(task).or_insert_with(|| TaskInfo { tgid: h.tgid, tid: h.tid, ..Default::default() });
            info.holder = true;
            if info.comm.is_empty() {
                info.comm = h.comm.clone();
            }
            let seen = at.saturating_sub(h.seen_ms_ago.saturating_mul(1_000_000));
            hold(&mut items, &mut held_at, h, seen);
            flow += 1;
            items.push(Item::FlowOut { ts: f.first_ns, task: servicer, id: flow });
            items.push(Item::FlowIn { ts: seen, task, id: flow });
        }
        for link in &f.chain {
            let Some((comm, tid, frames)) = parse_chain(link) else { continue };
            let task = (tid, tid);
            let info = tracks.entry(task).or_insert_with(|| TaskInfo {
                tgid: tid,
                tid,
                comm: comm.to_owned(),
                tgid_unknown: true,
                ..Default::default()
            });
            info.waiter = true;
            items.push(Item::Instant { ts: at, task, mark: Mark::Blocked { frames } });
            flow += 1;
            items.push(Item::FlowOut { ts: at, task, id: flow });
            items.push(Item::FlowIn { ts: at, task: servicer, id: flow });
        }
    }
    items
}

/// "dd[1234] folio_wait_writeback <- xfs_file_fsync" (the agent's form of a
/// waiting task) to its comm, thread id and frames, innermost first.
fn parse_chain(link: &str) -> Option<(&str, u32, Vec<String>)> {
    let (who, frames) = match link.split_once("] ") {
        Some(split) => split,
        None => (link.strip_suffix(']')?, ""),
    };
    let (comm, tid) = who.rsplit_once('[')?;
    let frames = frames.split(" <- ").filter(|f| !f.is_empty()).map(str::to_owned).collect();
    Some((comm, tid.parse().ok()?, frames))
}

/// A builder with what the findings say queued on their tracks.
fn start<'s, S: Sink>(sink: &'s mut S, findings: Findings<'_>) -> Builder<'s, S> {
    let mut infos = BTreeMap::new();
    let items = from_findings(findings, &mut infos);
    let mut b = Builder::new(sink);
    for (key, info) in infos {
        b.track(key).info = info;
    }
    b.derive(items);
    b
}

/// `file` from its start, for one more pass.
fn again(file: &File, name: &str) -> Result<BufReader<File>> {
    let mut f = file.try_clone().with_context(|| format!("{name}: cannot read it again"))?;
    f.rewind().with_context(|| format!("{name}: cannot read it again"))?;
    Ok(BufReader::with_capacity(256 << 10, f))
}

/// How a trace file's timestamps map to Unix time. A header without the
/// offset costs one pass over the file, to estimate it.
pub fn trace_clock(file: &File, name: &str) -> Result<Clock> {
    let reader = TraceReader::new(again(file, name)?, name)?;
    if let Some(o) = reader.header().monotonic_to_unix_ns {
        return Ok(Clock::Header(o));
    }
    let mut est = OffsetEstimate::default();
    for rec in reader {
        if let Record::Event(e) = rec {
            if let Some(ev) = e.event() {
                est.add(ev.ctx().ts_ns, e.unix_ns);
            }
        }
    }
    Ok(est.offset().map_or(Clock::Boot, Clock::Estimated))
}

/// Streams a trace file's events into `sink` with what `findings` add.
pub fn from_trace<S: Sink>(file: &File, name: &str, findings: Findings<'_>, sink: &mut S) -> Result<Totals> {
    let reader = TraceReader::new(again(file, name)?, name)?;
    let mut b = start(sink, findings);
    for rec in reader {
        match rec {
            Record::Stack(s) => b.stack(s.id, s.frames.into_iter().map(|f| f.symbol).collect()),
            Record::Event(e) => {
                if let Some(ev) = e.event() {
                    b.event(&ev)?;
                }
            }
            Record::Symbol(s) => b.symbol(s.addr, s.symbol),
            Record::Finding(_) | Record::Topology(_) => {}
        }
    }
    b.finish()
}

/// The same from an ftrace text capture, streamed twice: once for the
/// shrinker callbacks' names (the capture numbers them as it meets them),
/// once for the events and the D-state sleeps (from `sched_switch`), which
/// become slices. `servicers` as given to the report.
pub fn from_capture<S: Sink>(
    file: &File,
    name: &str,
    servicers: &[(u32, Dev)],
    gfp: &GfpNames,
    findings: Findings<'_>,
    sink: &mut S,
) -> Result<Totals> {
    let not_a_capture = || format!("{name}: not an ftrace text capture");
    let names = ftrace::stream(again(file, name)?, gfp, |_| {}).with_context(not_a_capture)?;
    let mut b = start(sink, findings);
    for s in names.symbols {
        b.symbol(s.addr, s.symbol);
    }
    // The importer calls back without a way to fail: the first error stops
    // the work and is returned once the stream is read.
    let mut failed = None;
    ftrace::stream(again(file, name)?, gfp, |item| {
        if failed.is_some() {
            return;
        }
        let done = match item {
            ftrace::Item::Event(mut ev) => {
                let c = ev.ctx_mut();
                if let Some((_, dev)) = servicers.iter().find(|(p, _)| *p == c.tgid || *p == c.tid) {
                    c.serving_dev = dev.to_kernel();
                }
                b.event(&ev)
            }
            ftrace::Item::Blocked(d) => b.blocked(&d),
        };
        failed = done.err();
    })
    .with_context(not_a_capture)?;
    if let Some(e) = failed {
        return Err(e);
    }
    b.finish()
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
