//! Imports a text capture of the kernel's own tracepoints, for machines where
//! the agent could not run: the `/sys/kernel/tracing/trace` file, or the
//! output of `trace-cmd report`.
//!
//! The reclaim, shrinker and writeback lines become the same typed events the
//! kernel programs' bytes decode to, so the report replays them through the
//! same rules as a recorded trace. What such a capture cannot hold is listed
//! in [`Import::limits`].
//! `sched_switch` lines whose previous task went to sleep in D state become
//! [`DStateInterval`]s: they are not kernel events, so they get no fake
//! event kind.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Read};

use anyhow::{bail, Context, Result};
use probe_common::events::{
    self as kernel, EventKind, ReclaimData, ReclaimKind, ReclaimWriteData, ShrinkerData, TaskCtx, WritebackWaitData,
    TASK_COMM_LEN,
};

use crate::events::decode::Event;
use crate::names::GfpNames;
use crate::trace::SymbolRecord;

/// The longest line read, in bytes: the kernel prints a trace line into one
/// page. A longer one is skipped, never held whole.
pub const MAX_LINE: usize = 64 << 10;

/// Tasks followed at once: inside reclaim, and asleep in D state. Past it,
/// new ones are counted (in the limits), not followed.
pub const MAX_TASKS: usize = 1 << 16;

/// Shrinker callback names numbered; later new names get `scan_fn` 0.
pub const MAX_SYMBOLS: usize = 4096;

/// The longest callback name kept (KSYM_NAME_LEN and a module name).
const MAX_SYMBOL: usize = 640;

/// Unknown GFP names listed in the limits; the others are counted.
const MAX_UNKNOWN_GFP: usize = 16;

/// What [`stream`] hands out, in capture order.
#[derive(Debug)]
pub enum Item {
    /// `ts_ns` is the capture's trace clock.
    Event(Event),
    /// A D-state sleep, once it ended (the task ran again, or the capture
    /// did with the task still asleep: `until_ns` is `None`).
    Blocked(DStateInterval),
}

/// What a capture gave.
#[derive(Debug, Default)]
pub struct Import {
    /// In capture order; [`import`] fills it, [`stream`] hands them out instead.
    pub events: Vec<Event>,
    /// Times a task went to sleep in D state (uninterruptible), by when it
    /// went to sleep; [`import`] fills it, [`stream`] hands them out instead.
    pub blocked: Vec<DStateInterval>,
    /// Names for the `scan_fn` values of shrinker events. The capture prints
    /// the callback's name, not its address, so each name gets a small
    /// capture-local number instead: resolve `scan_fn` through this table,
    /// never through a kallsyms.
    pub symbols: Vec<SymbolRecord>,
    /// Lines that were neither comments nor imported: other events,
    /// unparsable lines, reclaim ends without their begin, and lines whose
    /// GFP names the table given does not know.
    pub skipped_lines: usize,
    /// Events the kernel dropped from the capture (`[LOST N EVENTS]`).
    pub lost_events: u64,
    /// What this capture cannot tell, one sentence each, for the report.
    pub limits: Vec<String>,
}

/// A task switched out in D state, and when it next ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DStateInterval {
    pub ts_ns: u64,
    pub tid: u32,
    /// The capture's TGID column; the thread id when it has none.
    pub tgid: u32,
    pub comm: String,
    /// The next time the task was switched in; `None` when that is not in
    /// the capture: it was still blocked when the capture ended.
    pub until_ns: Option<u64>,
}

/// The limits of every text capture; [`Importer::finish`] adds the ones
/// that depend on what a capture holds.
const LIMITS: [&str; 6] = [
    "no task flags (PF_*): gfp_flags in these tracepoints are already the effective masks, so \
     __GFP_FS/__GFP_IO read correctly, but PF_MEMALLOC_NOFS/NOIO scopes, PF_MEMALLOC and \
     kernel threads cannot be told apart",
    "no servicer or backing-file context: which tasks serve a stacked device must be given with --servicer",
    "no kernel stacks",
    "shrinkers are known by their scan callback's name only: not the superblock, device or \
     filesystem type behind them",
    "no filesystem nesting depth",
    "timestamps are the capture's trace clock (seconds since boot with the default clock), not wall-clock time",
];

/// First bytes of a trace-cmd binary data file.
const TRACE_CMD_DAT_MAGIC: &[u8] = b"\x17\x08\x44tracing";

/// Parses a capture held in memory, keeping every event and D-state sleep.
/// `gfp` must be the capturing kernel's GFP table (or one that spells the
/// same names), since the text carries names, not bits.
pub fn import(input: &[u8], gfp: &GfpNames) -> Result<Import> {
    let (mut events, mut blocked) = (Vec::new(), Vec::new());
    let mut im = stream(input, gfp, |item| match item {
        Item::Event(e) => events.push(e),
        Item::Blocked(b) => blocked.push(b),
    })?;
    blocked.sort_by_key(|b: &DStateInterval| (b.ts_ns, b.tid));
    (im.events, im.blocked) = (events, blocked);
    Ok(im)
}

/// Parses a capture line by line, handing each event and D-state sleep to
/// `each` as soon as it is read, and keeping only what the bounds above
/// allow: memory does not grow with the capture.
pub fn stream(mut input: impl BufRead, gfp: &GfpNames, mut each: impl FnMut(Item)) -> Result<Import> {
    if input.fill_buf().context("cannot read the capture")?.starts_with(TRACE_CMD_DAT_MAGIC) {
        bail!("this is a trace-cmd data file, not text: convert it with `trace-cmd report -i FILE > FILE.txt` and import that");
    }
    let mut im = Importer::new(gfp);
    let mut trace_lines = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut line = Read::take(&mut input, MAX_LINE as u64 + 1);
        let n = line.read_until(b'\n', &mut buf).context("cannot read the capture")?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            // The rest of the line, dropped as it is read.
            skip_line(&mut input)?;
            im.out.skipped_lines += 1;
            continue;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if is_boilerplate(line) {
            continue;
        }
        if let Some(n) = lost_events(line) {
            im.out.lost_events += n;
            continue;
        }
        match parse_line(line) {
            Some(l) => {
                trace_lines += 1;
                if !im.event(&l) {
                    im.out.skipped_lines += 1;
                }
            }
            None => im.out.skipped_lines += 1,
        }
        im.items.drain(..).for_each(&mut each);
    }
    if trace_lines == 0 {
        bail!("no ftrace event lines: expected the text of /sys/kernel/tracing/trace or of `trace-cmd report`");
    }
    let mut still: Vec<DStateInterval> = im.blocked.drain().map(|(_, b)| b).collect();
    still.sort_by_key(|b| (b.ts_ns, b.tid));
    still.into_iter().map(Item::Blocked).for_each(&mut each);
    Ok(im.finish())
}

/// Reads up to and including the next newline, keeping none of it.
fn skip_line(input: &mut impl BufRead) -> Result<()> {
    loop {
        let buf = input.fill_buf().context("cannot read the capture")?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    }
}

/// Comments, the column header, and trace-cmd's preamble.
fn is_boilerplate(line: &str) -> bool {
    let l = line.trim_start();
    l.is_empty()
        || l.starts_with('#')
        || l.starts_with("cpus=")
        || l.starts_with("version = ")
        || (l.starts_with("CPU ") && l.ends_with(" is empty"))
}

/// `CPU:1 [LOST 123 EVENTS]` (tracefs) or `CPU:1 [123 EVENTS DROPPED]`
/// (trace-cmd); the count is 0 when not printed.
fn lost_events(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("CPU")?;
    let (_, inner) = rest.split_once('[')?;
    let inner = inner.strip_suffix(']')?;
    if !((inner.starts_with("LOST ") && inner.ends_with(" EVENTS")) || inner.ends_with("EVENTS DROPPED")) {
        return None;
    }
    Some(inner.split(' ').find_map(|w| w.parse().ok()).unwrap_or(0))
}

/// One event line, split into its columns.
#[derive(Debug, PartialEq, Eq)]
struct Line<'a> {
    comm: &'a str,
    tid: u32,
    /// From the TGID column; `None` without one, or where it says `-------`.
    tgid: Option<u32>,
    tgid_column: bool,
    ts_ns: u64,
    event: &'a str,
    body: &'a str,
}

/// Splits `[instance: ] COMM-PID [(TGID)] [CPU] [flags] SECS.FRAC: EVENT: BODY`.
/// The timestamp is the anchor: it is the first numeric word followed by
/// `: name:`, and the task name (which may hold spaces, dashes and colons)
/// is everything before the CPU column in front of it.
fn parse_line(line: &str) -> Option<Line<'_>> {
    let (idx, ts_ns, event, body) = line.match_indices(": ").find_map(|(i, _)| {
        let before = &line[..i];
        let ts = before.rsplit(' ').next()?;
        if ts.len() == before.len() {
            return None;
        }
        let ts_ns = parse_timestamp(ts)?;
        let after = &line[i + 2..];
        let (event, body) = after.split_once(':')?;
        let is_name = !event.is_empty() && event.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        is_name.then_some((i - ts.len(), ts_ns, event, body.trim()))
    })?;
    let prefix = line[..idx].trim_end();
    // The CPU column, `[001]`: the last bracketed number.
    let cpu = prefix.rmatch_indices('[').map(|(i, _)| i).find(|&i| {
        prefix[i + 1..].split_once(']').is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })?;
    let mut task = prefix[..cpu].trim_end();
    let mut tgid = None;
    let tgid_column = task.ends_with(')');
    if let Some(open) = task.strip_suffix(')').and_then(|t| t.rfind('(')) {
        tgid = task[open + 1..task.len() - 1].trim().parse().ok();
        task = task[..open].trim_end();
    }
    let mut task = task.trim_start();
    // trace-cmd names the buffer of an instance first: `name:  comm-pid`.
    if let Some((instance, rest)) = task.split_once(": ") {
        if !instance.contains(' ') && rest.trim_start().contains('-') {
            task = rest.trim_start();
        }
    }
    let (comm, tid) = task.rsplit_once('-')?;
    Some(Line { comm, tid: tid.parse().ok()?, tgid, tgid_column, ts_ns, event, body })
}

/// `807.188137` (any number of fraction digits up to ns) to nanoseconds.
fn parse_timestamp(ts: &str) -> Option<u64> {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || !(frac.is_empty() || digits(frac)) || frac.len() > 9 {
        return None;
    }
    let mut ns: u64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    for _ in frac.len()..9 {
        ns *= 10;
    }
    secs.parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// The value after `key=` in a `key=value key=value` body.
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split(' ').find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The word after `words ` in a prose body such as shrink_slab_start's.
fn after<'a>(body: &'a str, words: &str) -> Option<&'a str> {
    let (_, rest) = body.split_once(words)?;
    rest.trim_start().split(' ').next()
}

/// A reclaim in progress, as the kernel program keeps it per thread.
struct Begin {
    ts_ns: u64,
    kind: ReclaimKind,
    gfp: u32,
    order: i32,
}

struct Importer<'g> {
    gfp: &'g GfpNames,
    out: Import,
    /// What the line just parsed gave, for [`stream`] to hand out.
    items: Vec<Item>,
    reclaim: HashMap<u32, Begin>,
    /// Each task's open D-state interval.
    blocked: HashMap<u32, DStateInterval>,
    /// Tasks not followed because [`MAX_TASKS`] were, and callback names
    /// not numbered because [`MAX_SYMBOLS`] were.
    tasks_left_out: u64,
    symbols_left_out: u64,
    symbol_ids: HashMap<String, u64>,
    unknown_gfp: BTreeSet<String>,
    unknown_gfp_more: usize,
    unpaired_ends: usize,
    lines_without_tgid: usize,
    write_folios: usize,
    sched_switches: usize,
}

impl<'g> Importer<'g> {
    fn new(gfp: &'g GfpNames) -> Self {
        Importer {
            gfp,
            out: Import::default(),
            items: Vec::new(),
            reclaim: HashMap::new(),
            blocked: HashMap::new(),
            tasks_left_out: 0,
            symbols_left_out: 0,
            symbol_ids: HashMap::new(),
            unknown_gfp: BTreeSet::new(),
            unknown_gfp_more: 0,
            unpaired_ends: 0,
            lines_without_tgid: 0,
            write_folios: 0,
            sched_switches: 0,
        }
    }

    /// Imports one line; false when it gave nothing.
    fn event(&mut self, l: &Line) -> bool {
        if !l.tgid_column {
            self.lines_without_tgid += 1;
        }
        match l.event {
            "mm_vmscan_direct_reclaim_begin" => self.reclaim_begin(l, ReclaimKind::Direct),
            "mm_vmscan_memcg_reclaim_begin" => self.reclaim_begin(l, ReclaimKind::Memcg),
            "mm_vmscan_direct_reclaim_end" | "mm_vmscan_memcg_reclaim_end" => self.reclaim_end(l),
            "mm_shrink_slab_start" => self.shrink_slab(l),
            "folio_wait_writeback" => self.writeback_wait(l),
            "mm_vmscan_write_folio" => self.write_folio(l),
            "sched_switch" => self.sched_switch(l),
            _ => None,
        }
        .is_some()
    }

    fn ctx(&self, l: &Line, comm: &str) -> TaskCtx {
        let mut c = [0u8; TASK_COMM_LEN];
        let n = comm.len().min(TASK_COMM_LEN - 1);
        c[..n].copy_from_slice(&comm.as_bytes()[..n]);
        TaskCtx {
            ts_ns: l.ts_ns,
            tgid: l.tgid.unwrap_or(l.tid),
            tid: l.tid,
            task_flags: 0,
            stack_id: -1,
            comm: c,
            serving_dev: 0,
            fs_depth: 0,
        }
    }

    /// `typed` is the decoder's variant for `kind` (begin and end share a payload).
    fn emit<T>(&mut self, l: &Line, kind: EventKind, data: T, typed: fn(kernel::Event<T>) -> Event) {
        let e = kernel::Event::new(kind, self.ctx(l, l.comm), data);
        self.items.push(Item::Event(typed(e)));
    }

    /// Bits of a printed GFP mask; unknown names are remembered for the limits.
    fn gfp(&mut self, s: &str) -> Option<u32> {
        let bits = self.gfp.encode(s).and_then(|b| u32::try_from(b).ok());
        if bits.is_none() && !self.unknown_gfp.contains(s) {
            if self.unknown_gfp.len() < MAX_UNKNOWN_GFP {
                self.unknown_gfp.insert(s.to_string());
            } else {
                self.unknown_gfp_more += 1;
            }
        }
        bits
    }

    /// `order=0 gfp_flags=GFP_HIGHUSER_MOVABLE`
    fn reclaim_begin(&mut self, l: &Line, kind: ReclaimKind) -> Option<()> {
        let order = field(l.body, "order")?.parse().ok()?;
        let gfp = self.gfp(field(l.body, "gfp_flags")?)?;
        if self.reclaim.len() < MAX_TASKS || self.reclaim.contains_key(&l.tid) {
            self.reclaim.insert(l.tid, Begin { ts_ns: l.ts_ns, kind, gfp, order });
        } else {
            self.tasks_left_out += 1;
        }
        let data = ReclaimData { reclaim_kind: kind as u32, gfp, order, ..Default::default() };
        self.emit(l, EventKind::ReclaimBegin, data, Event::ReclaimBegin);
        Some(())
    }

    /// `nr_reclaimed=256`. Like the kernel program, an end is reported with
    /// its begin's kind, mask and duration, and dropped without a begin.
    fn reclaim_end(&mut self, l: &Line) -> Option<()> {
        let nr_reclaimed = field(l.body, "nr_reclaimed")?.parse().ok()?;
        let Some(b) = self.reclaim.remove(&l.tid) else {
            self.unpaired_ends += 1;
            return None;
        };
        let data = ReclaimData {
            reclaim_kind: b.kind as u32,
            gfp: b.gfp,
            order: b.order,
            _pad: 0,
            duration_ns: l.ts_ns.saturating_sub(b.ts_ns),
            nr_reclaimed,
        };
        self.emit(l, EventKind::ReclaimEnd, data, Event::ReclaimEnd);
        Some(())
    }

    /// `super_cache_scan+0x0/0x30 00000000c0ffee00: nid: 0 objects to shrink 0
    /// gfp_flags GFP_KERNEL cache items 1 delta 0 total_scan 0 priority 12`
    /// (trace-cmd prints `super_cache_scan+0x0 0xffff...`; a module's
    /// callback has ` [xfs]` after its name).
    fn shrink_slab(&mut self, l: &Line) -> Option<()> {
        let (head, tail) = l.body.split_once(": nid:")?;
        let (callback, shrinker) = head.rsplit_once(' ')?;
        let shrinker = u64::from_str_radix(shrinker.trim_start_matches("0x"), 16).ok()?;
        let nr: i64 = after(tail, "objects to shrink")?.parse().ok()?;
        let gfp = self.gfp(after(tail, "gfp_flags")?)?;
        let data = ShrinkerData {
            shrinker,
            scan_fn: self.symbol(callback),
            // nr_objects_to_shrink, the field the kernel program reads; a
            // long, kept as its two's-complement bits like the program does.
            nr_to_scan: nr as u64,
            gfp,
            ..Default::default()
        };
        self.emit(l, EventKind::Shrinker, data, Event::Shrinker);
        Some(())
    }

    /// The capture-local number for a `%pS` callback name.
    fn symbol(&mut self, printed: &str) -> u64 {
        let (name, module) = printed.split_once(' ').unwrap_or((printed, ""));
        if let Some(addr) = name.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok()) {
            return addr; // not symbolized by the kernel: the raw address
        }
        let base = name.split_once('+').map_or(name, |(b, _)| b);
        let mut symbol = if module.is_empty() { base.to_string() } else { format!("{base} {}", module.trim()) };
        let mut end = symbol.len().min(MAX_SYMBOL);
        while !symbol.is_char_boundary(end) {
            end -= 1;
        }
        symbol.truncate(end);
        if self.symbol_ids.len() >= MAX_SYMBOLS && !self.symbol_ids.contains_key(&symbol) {
            self.symbols_left_out += 1;
            return 0;
        }
        let next = self.symbol_ids.len() as u64 + 1;
        let id = *self.symbol_ids.entry(symbol.clone()).or_insert(next);
        if id == next {
            self.out.symbols.push(SymbolRecord { addr: id, symbol });
        }
        id
    }

    /// `bdi 254:0: ino=10011296 index=61440` (`page_index=` before 6.x).
    fn writeback_wait(&mut self, l: &Line) -> Option<()> {
        let (bdi, rest) = l.body.strip_prefix("bdi ")?.split_once(": ")?;
        let mut data = WritebackWaitData {
            ino: field(rest, "ino")?.parse().ok()?,
            index: field(rest, "index").or_else(|| field(rest, "page_index"))?.parse().ok()?,
            in_reclaim: u32::from(self.reclaim.contains_key(&l.tid)),
            ..Default::default()
        };
        let n = bdi.len().min(data.bdi.len() - 1);
        data.bdi[..n].copy_from_slice(&bdi.as_bytes()[..n]);
        self.emit(l, EventKind::WritebackWait, data, Event::WritebackWait);
        Some(())
    }

    /// `page=0000000012345678 pfn=0x1234 flags=RECLAIM_WB_FILE|RECLAIM_WB_ASYNC`:
    /// reclaim wrote a dirty folio itself. The line has no inode or device.
    fn write_folio(&mut self, l: &Line) -> Option<()> {
        field(l.body, "pfn")?;
        self.write_folios += 1;
        self.emit(l, EventKind::ReclaimWrite, ReclaimWriteData::default(), Event::ReclaimWrite);
        Some(())
    }

    /// Kernel format: `prev_comm=dd prev_pid=1 prev_prio=120 prev_state=D ==>
    /// next_comm=x next_pid=2 next_prio=120`; trace-cmd's sched plugin:
    /// `dd:1 [120] D ==> x:2 [120]`.
    fn sched_switch(&mut self, l: &Line) -> Option<()> {
        let (prev, next) = l.body.split_once(" ==> ")?;
        let (comm, pid, state, next_pid): (&str, u32, &str, u32) = if prev.starts_with("prev_comm=") {
            let comm = prev.strip_prefix("prev_comm=")?.split_once(" prev_pid=")?.0;
            (
                comm,
                field(prev, "prev_pid")?.parse().ok()?,
                field(prev, "prev_state")?,
                field(next, "next_pid")?.parse().ok()?,
            )
        } else {
            let (task, state) = prev.rsplit_once(' ')?;
            let (task, _prio) = task.rsplit_once(' ')?;
            let (comm, pid) = task.rsplit_once(':')?;
            let next_task = next.rsplit_once(' ').map_or(next, |(t, _)| t);
            (comm, pid.parse().ok()?, state, next_task.rsplit_once(':')?.1.parse().ok()?)
        };
        self.sched_switches += 1;
        let ts_ns = l.ts_ns;
        if let Some(mut b) = self.blocked.remove(&next_pid) {
            b.until_ns = Some(ts_ns);
            self.items.push(Item::Blocked(b));
        }
        if state.split('|').any(|s| s == "D") {
            let tgid = if pid == l.tid { l.tgid.unwrap_or(pid) } else { pid };
            let comm: String = comm.chars().take(TASK_COMM_LEN).collect();
            let b = DStateInterval { ts_ns, tid: pid, tgid, comm, until_ns: None };
            if self.blocked.len() < MAX_TASKS || self.blocked.contains_key(&pid) {
                // A second sleep without a wake-up between (events lost):
                // the first ended before this one began.
                if let Some(mut old) = self.blocked.insert(pid, b) {
                    old.until_ns = Some(ts_ns);
                    self.items.push(Item::Blocked(old));
                }
            } else {
                self.tasks_left_out += 1;
            }
        }
        Some(())
    }

    fn finish(mut self) -> Import {
        let mut limits: Vec<String> = LIMITS.iter().map(|s| s.to_string()).collect();
        if self.lines_without_tgid > 0 {
            limits.push(
                "no thread-group ids (the capture has no TGID column; enable options/record-tgid): \
                 each task's tgid is taken to be its thread id"
                    .into(),
            );
        }
        if self.write_folios > 0 {
            limits.push(
                "folios written by reclaim carry no inode or device: mm_vmscan_write_folio prints only a pfn".into(),
            );
        }
        if self.sched_switches == 0 {
            limits.push("no sched:sched_switch events: time blocked in D state cannot be shown".into());
        }
        if self.out.lost_events > 0 {
            limits.push(format!(
                "the capture lost {} events to ring-buffer overruns: reclaim begin/end pairs and D-state intervals near a loss may be missing",
                self.out.lost_events
            ));
        }
        if self.unpaired_ends > 0 {
            limits.push(format!("{} reclaim ends whose begin is not in the capture were skipped", self.unpaired_ends));
        }
        if !self.unknown_gfp.is_empty() {
            let mut names: Vec<String> = self.unknown_gfp.iter().cloned().collect();
            if self.unknown_gfp_more > 0 {
                names.push(format!("and {} more lines of other names", self.unknown_gfp_more));
            }
            limits.push(format!(
                "lines with GFP masks the GFP table does not spell were skipped ({}): was the table taken from another kernel?",
                names.join(", ")
            ));
        }
        if self.tasks_left_out > 0 {
            limits.push(format!(
                "more than {MAX_TASKS} tasks were in reclaim or asleep at once: {} of their lines were not followed",
                self.tasks_left_out
            ));
        }
        if self.symbols_left_out > 0 {
            limits.push(format!(
                "more than {MAX_SYMBOLS} shrinker callback names: {} shrinker lines have no name",
                self.symbols_left_out
            ));
        }
        self.out.limits = limits;
        self.out
    }
}

#[cfg(test)]
mod tests {
    use probe_common::events::{ReclaimEvent, ReclaimWriteEvent, ShrinkerEvent, WritebackWaitEvent};

    use super::*;

    const TRACE: &[u8] = include_bytes!("../../tests/data/trace/ftrace-memcg-dd.trace");
    const REPORT: &[u8] = include_bytes!("../../tests/data/trace/ftrace-memcg-dd.report");

    /// The 6.18 kernel that took the captures, parsed from its own format file.
    fn gfp() -> GfpNames {
        GfpNames::parse_format(include_str!("../../tests/data/gfp_print_fmt_6.18.txt")).unwrap()
    }

    const GFP_HIGHUSER_MOVABLE: u32 = 0x100cca;

    /// The imported events, sorted by kind, decoded back.
    #[derive(Default)]
    struct Kinds {
        begins: Vec<ReclaimEvent>,
        ends: Vec<ReclaimEvent>,
        shrinks: Vec<ShrinkerEvent>,
        waits: Vec<WritebackWaitEvent>,
        writes: Vec<ReclaimWriteEvent>,
    }

    fn kinds(im: &Import) -> Kinds {
        let mut k = Kinds::default();
        for ev in &im.events {
            // Through the bytes and back, as a replay of a stored trace reads them.
            let ev = Event::parse(&ev.to_bytes()).unwrap();
            match ev {
                Event::ReclaimBegin(e) => k.begins.push(e),
                Event::ReclaimEnd(e) => k.ends.push(e),
                Event::Shrinker(e) => k.shrinks.push(e),
                Event::WritebackWait(e) => k.waits.push(e),
                Event::ReclaimWrite(e) => k.writes.push(e),
                Event::OomVictim(_) | Event::DirtyThrottle(_) => panic!("the captures hold no such line"),
            }
            let ctx = ev.ctx();
            assert_eq!((ctx.stack_id, ctx.task_flags, ctx.serving_dev), (-1, 0, 0));
        }
        k
    }

    /// A NUL-terminated field (comm, bdi name) as text.
    fn comm(c: &[u8]) -> &str {
        std::str::from_utf8(c.split(|b| *b == 0).next().unwrap()).unwrap()
    }

    fn symbol(im: &Import, addr: u64) -> &str {
        &im.symbols.iter().find(|s| s.addr == addr).expect("scan_fn has a symbol").symbol
    }

    #[test]
    fn tracefs_capture_of_memcg_reclaim() {
        let im = import(TRACE, &gfp()).unwrap();
        let k = kinds(&im);
        // Counted in the fixture with grep.
        assert_eq!((k.begins.len(), k.ends.len(), k.shrinks.len(), k.waits.len()), (240, 240, 215, 3));
        assert_eq!(im.blocked.len(), 31);
        assert_eq!((im.skipped_lines, im.lost_events), (0, 0));
        for e in k.begins.iter().chain(&k.ends) {
            assert_eq!(e.data.gfp, GFP_HIGHUSER_MOVABLE);
            assert_eq!(e.data.reclaim_kind, ReclaimKind::Memcg as u32);
            assert_eq!((e.ctx.tid, e.ctx.tgid, comm(&e.ctx.comm)), (13256, 13256, "dd"));
        }
        // dd-13256 806.778171: begin ... 806.814480: end nr_reclaimed=256
        assert_eq!(k.begins[0].ctx.ts_ns, 806_778_171_000);
        assert_eq!((k.ends[0].data.duration_ns, k.ends[0].data.nr_reclaimed), (36_309_000, 256));
        let s = &k.shrinks[0];
        assert_eq!((s.data.shrinker, s.data.gfp, s.data.nr_to_scan), (0x22eae371, GFP_HIGHUSER_MOVABLE, 0));
        assert_eq!(symbol(&im, s.data.scan_fn), "scan_shadow_nodes");
        // 806.784288: the first wait falls inside reclaim, the other two after it.
        let w = &k.waits[0];
        assert_eq!((comm(&w.data.bdi), w.data.ino, w.data.index), ("254:0", 10011296, 0));
        assert_eq!(k.waits.iter().map(|w| w.data.in_reclaim).collect::<Vec<_>>(), [1, 0, 0]);
        let b = &im.blocked[0];
        assert_eq!((b.ts_ns, b.tid, b.tgid, b.comm.as_str()), (806_746_642_000, 13249, 13249, "capture-ftrace."));
        assert!(im.blocked.iter().all(|b| b.until_ns.is_none_or(|u| u >= b.ts_ns)));
        assert!(im.blocked.iter().filter(|b| b.comm == "dd").count() > 0);
        assert_eq!(im.limits.len(), LIMITS.len(), "{:?}", im.limits);
    }

    #[test]
    fn trace_cmd_report_of_memcg_reclaim() {
        let im = import(REPORT, &gfp()).unwrap();
        let k = kinds(&im);
        assert_eq!((k.begins.len(), k.ends.len(), k.shrinks.len(), k.waits.len()), (240, 240, 472, 2));
        assert_eq!(im.blocked.len(), 16);
        assert_eq!(im.skipped_lines, 0);
        assert!(k.begins.iter().all(|e| e.data.gfp == GFP_HIGHUSER_MOVABLE && comm(&e.ctx.comm) == "dd"));
        // No TGID column in trace-cmd's output: tgid falls back to the tid.
        assert_eq!((k.begins[0].ctx.tid, k.begins[0].ctx.tgid), (13262, 13262));
        assert!(im.limits.iter().any(|l| l.starts_with("no thread-group ids")));
        // 807.188137 begin, 807.208324 end.
        assert_eq!(k.ends[0].data.duration_ns, 20_187_000);
        let s = &k.shrinks[0];
        assert_eq!(s.data.shrinker, 0xffff_8881_043f_d100);
        assert_eq!(symbol(&im, s.data.scan_fn), "super_cache_scan");
        // The sched plugin's `comm:pid [prio] D ==> comm:pid [prio]` form.
        let b = &im.blocked[0];
        assert_eq!((b.ts_ns, b.tid, b.comm.as_str()), (807_159_999_000, 13249, "capture-ftrace."));
        assert_eq!(b.until_ns, Some(807_160_101_000));
    }

    const HEAD: &str = "# tracer: nop\n#\n";

    fn import_text(text: &str) -> Import {
        import(format!("{HEAD}{text}").as_bytes(), &gfp()).unwrap()
    }

    #[test]
    fn direct_reclaim_with_composite_masks_writes_and_lost_events() {
        let im = import_text(
            "    qemu-storage-d-4242    (   4240) [001] ..... 100.000000100: mm_vmscan_direct_reclaim_begin: order=2 gfp_flags=GFP_NOFS|__GFP_NOWARN|0x4000000\n\
             CPU:1 [LOST 17 EVENTS]\n\
             \x20   qemu-storage-d-4242    (   4240) [001] ..... 100.000000300: mm_vmscan_write_folio: page=000000001d2f3c4a pfn=0x1234 flags=RECLAIM_WB_FILE|RECLAIM_WB_ASYNC\n\
             \x20   qemu-storage-d-4242    (   4240) [001] ..... 100.5: mm_shrink_slab_start: xfs_buftarg_shrink_scan+0x0/0x40 [xfs] 000000003e2d1f00: nid: 0 objects to shrink -5 gfp_flags GFP_NOFS cache items 9 delta 1 total_scan 4 priority 12\n\
             \x20   qemu-storage-d-4242    (   4240) [001] ..... 101: mm_vmscan_direct_reclaim_end: nr_reclaimed=3\n",
        );
        let k = kinds(&im);
        let nofs = probe_common::flags::GFP_IO | probe_common::flags::GFP_DIRECT_RECLAIM | 0x800;
        let want = nofs | gfp().encode("__GFP_NOWARN").unwrap() as u32 | 0x400_0000;
        assert_eq!(k.begins[0].data.gfp, want);
        assert_eq!(k.begins[0].data.order, 2);
        assert_eq!(k.begins[0].data.reclaim_kind, ReclaimKind::Direct as u32);
        assert_eq!((k.begins[0].ctx.tid, k.begins[0].ctx.tgid), (4242, 4240));
        assert_eq!(comm(&k.begins[0].ctx.comm), "qemu-storage-d");
        assert_eq!(k.ends[0].data.gfp, want);
        assert_eq!(k.ends[0].data.duration_ns, 999_999_900);
        assert_eq!(k.writes.len(), 1);
        assert_eq!(k.shrinks[0].data.nr_to_scan as i64, -5);
        assert_eq!(symbol(&im, k.shrinks[0].data.scan_fn), "xfs_buftarg_shrink_scan [xfs]");
        assert_eq!(im.lost_events, 17);
        assert!(im.limits.iter().any(|l| l.contains("lost 17 events")));
        assert!(im.limits.iter().any(|l| l.contains("pfn")));
        assert!(im.limits.iter().any(|l| l.starts_with("no sched:sched_switch")));
    }

    #[test]
    fn unknown_names_unpaired_ends_and_other_events_are_skipped_and_said() {
        let im = import_text(
            "  a-1 [000] ..... 1.0: mm_vmscan_memcg_reclaim_begin: order=0 gfp_flags=GFP_MADE_UP\n\
             \x20 a-1 [000] ..... 1.1: mm_vmscan_memcg_reclaim_end: nr_reclaimed=1\n\
             \x20 a-1 [000] ..... 1.2: kmem_cache_alloc: call_site=x\n\
             \x20 a-1 [000] ..... 1.3: mm_vmscan_memcg_reclaim_begin: order=zero gfp_flags=GFP_KERNEL\n\
             a line that is not a trace line at all\n",
        );
        assert!(im.events.is_empty());
        assert_eq!(im.skipped_lines, 5);
        assert!(im.limits.iter().any(|l| l.contains("(GFP_MADE_UP)")), "{:?}", im.limits);
        assert!(im.limits.iter().any(|l| l.starts_with("1 reclaim ends")), "{:?}", im.limits);
    }

    #[test]
    fn task_columns() {
        let l = parse_line("     Web Content-1234    (   1200) [003] d..2. 55.000001: sched_switch: x").unwrap();
        assert_eq!(
            (l.comm, l.tid, l.tgid, l.ts_ns, l.event, l.body),
            ("Web Content", 1234, Some(1200), 55_000_001_000, "sched_switch", "x")
        );
        let l = parse_line(
            "  kworker/u8:2-12780 (-------) [000] ..... 1.000000001: folio_wait_writeback: bdi 7:0: ino=1 index=2",
        )
        .unwrap();
        assert_eq!((l.comm, l.tid, l.tgid, l.ts_ns), ("kworker/u8:2", 12780, None, 1_000_000_001));
        let l = parse_line("buf:           <...>-55 [001]   2.5: mm_vmscan_write_folio: pfn=0x1").unwrap();
        assert_eq!((l.comm, l.tid, l.tgid, l.ts_ns), ("<...>", 55, None, 2_500_000_000));
        assert_eq!(parse_line("CPU 0 is empty"), None);
        assert_eq!(parse_line("dd-1 [000] 1.0000000001: x: y"), None, "more than ns precision");
    }

    #[test]
    fn not_a_capture() {
        let msg = |input: &[u8]| format!("{:#}", import(input, &gfp()).unwrap_err());
        assert!(msg(b"\x17\x08\x44tracing6\0\0\0").starts_with("this is a trace-cmd data file"));
        assert!(msg(b"hello\nworld\n").starts_with("no ftrace event lines"));
        assert!(msg(b"").starts_with("no ftrace event lines"));
        assert!(msg(&[0xff, 0xfe, 0, 1, 2, 3, b'\n', 0x80]).starts_with("no ftrace event lines"));
    }
}
