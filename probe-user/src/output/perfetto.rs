//! The timeline as Chrome trace-event JSON, the format Perfetto
//! (ui.perfetto.dev, `trace_processor`) and chrome://tracing open: a
//! process per tgid, a thread track per task, `B`/`E` slices in the order
//! the task lived them, `X` slices for what findings tell after the fact,
//! `i` instants, and `s`/`f` flow arrows bound to the enclosing slices.
//!
//! Events are written one per line as they come, so the export never holds
//! the trace in memory. Timestamps are Unix time in microseconds (the
//! format's unit) where the trace knows the wall clock, so the file lines
//! up with other traces of the same machine.

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::{
    detect::holds::Held,
    events::decode::reclaim_kind_name,
    kernel::markers::function,
    names::GfpNames,
    output::{finding::FindingView, table::held_name},
    postmortem::timeline::{Clock, Close, Item, Mark, Sink, Span, TaskInfo, Totals},
};

/// Writes the JSON; [`PerfettoWriter::finish`] closes it.
pub struct PerfettoWriter<W: Write> {
    out: W,
    gfp: GfpNames,
    offset_ns: i64,
    first: bool,
    /// Names of the processes already written (metadata comes per task).
    processes: std::collections::BTreeSet<u32>,
}

impl<W: Write> PerfettoWriter<W> {
    /// `clock` must be the one the export will report: timestamps are
    /// converted as they are written.
    pub fn new(mut out: W, gfp: GfpNames, clock: Clock) -> Result<Self> {
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[").context("cannot write the timeline")?;
        Ok(PerfettoWriter { out, gfp, offset_ns: clock.offset_ns(), first: true, processes: Default::default() })
    }

    /// Ends the event list and says, in `otherData`, what the clock is and
    /// what the export holds.
    pub fn finish(mut self, source: &str, clock: Clock, totals: &Totals) -> Result<W> {
        let clock = match clock {
            Clock::Header(_) => "Unix time (the trace header's clock offset)",
            Clock::Estimated(_) => {
                "Unix time, estimated from when the agent read each event (the trace header predates the clock offset)"
            }
            Clock::Boot => "seconds since boot (the capture's trace clock): no wall clock in the input",
        };
        let other = json!({
            "source": source,
            "clock": clock,
            "tasks": totals.tasks,
            "events": totals.events,
            "reordered_events": totals.reordered,
            "tasks_left_out": totals.tasks_left_out,
            "d_states_left_out": totals.d_states_left_out,
        });
        write!(self.out, "\n],\"otherData\":{other}}}\n").context("cannot write the timeline")?;
        self.out.flush().context("cannot write the timeline")?;
        Ok(self.out)
    }

    /// Kernel ns to the format's microseconds.
    fn us(&self, ts: u64) -> f64 {
        (i128::from(ts) + i128::from(self.offset_ns)) as f64 / 1000.0
    }

    fn write(&mut self, ev: Value) -> Result<()> {
        let sep: &[u8] = if self.first { b"\n" } else { b",\n" };
        self.first = false;
        self.out.write_all(sep).context("cannot write the timeline")?;
        serde_json::to_writer(&mut self.out, &ev).context("cannot write the timeline")
    }

    fn task(&mut self, t: &TaskInfo) -> Result<()> {
        if self.processes.insert(t.tgid) {
            let name = match (&t.program, t.tgid_unknown) {
                (_, true) => format!("{} (thread {}; its process is not recorded)", t.comm, t.tid),
                (Some(p), false) => p.clone(),
                (None, false) => t.comm.clone(),
            };
            self.write(json!({"ph": "M", "name": "process_name", "pid": t.tgid, "args": {"name": name}}))?;
        }
        let mut roles = Vec::new();
        if let Some(d) = t.serving {
            roles.push(format!("servicer of {d}"));
        }
        if t.holder {
            roles.push("holder (writer)".to_owned());
        }
        if t.flusher() {
            roles.push("flusher".to_owned());
        }
        if t.waiter {
            roles.push("blocked behind the servicer".to_owned());
        }
        let name = if roles.is_empty() {
            format!("{} {}", t.comm, t.tid)
        } else {
            format!("{} {}: {}", t.comm, t.tid, roles.join(", "))
        };
        // Servicers first, then holders, then the rest.
        let order = if t.serving.is_some() {
            0
        } else if t.holder {
            1
        } else if t.waiter || t.flusher() {
            2
        } else {
            3
        };
        self.write(json!({"ph": "M", "name": "thread_name", "pid": t.tgid, "tid": t.tid, "args": {"name": name}}))?;
        self.write(
            json!({"ph": "M", "name": "thread_sort_index", "pid": t.tgid, "tid": t.tid, "args": {"sort_index": order}}),
        )
    }

    /// A reclaim's slice: named by its kind, with its gfp mask named.
    fn reclaim_span(&self, kind: u32, gfp: u32, order: i32) -> (String, &'static str, Value) {
        let kind = reclaim_kind_name(kind);
        let name = match kind {
            "memcg" => "memcg reclaim".to_owned(),
            "direct" => "direct reclaim".to_owned(),
            "slowpath" => "allocation slow path".to_owned(),
            other => other.to_owned(),
        };
        let args = json!({
            "reclaim": kind,
            "gfp": self.gfp.decode(u64::from(gfp)),
            "gfp_raw": format!("{gfp:#x}"),
            "order": order,
            "memcg": if kind == "memcg" { "the task's memory cgroup (its id is not recorded)" } else { "-" },
        });
        (name, "reclaim", args)
    }

    fn span(&self, span: &Span) -> (String, &'static str, Value) {
        match span {
            Span::Reclaim { kind, gfp, order } => self.reclaim_span(*kind, *gfp, *order),
            Span::WritebackWait { dev, ino, index, in_reclaim, stack } => {
                let dev = dev.map(|d| d.to_string()).unwrap_or_else(|| "?".into());
                let args = json!({
                    "device": dev,
                    "ino": ino,
                    "index": index,
                    "in_reclaim": in_reclaim,
                    "blocking_function": stack.first().map(|f| function(f)).unwrap_or("folio_wait_writeback"),
                    "stack": stack.join("\n"),
                    "end": "the task's next event (the wait's own end is not recorded)",
                });
                (format!("writeback wait on {dev}"), "writeback", args)
            }
            Span::DirtyThrottle { bdi, dirty, limit, pause_ms, cgroup_ino } => {
                let args = json!({
                    "bdi": bdi,
                    "dirty_pages": dirty,
                    "limit_pages": limit,
                    "pause_ms": pause_ms,
                    "memcg_ino": cgroup_ino,
                    "blocking_function": "balance_dirty_pages",
                });
                (format!("dirty throttled on {bdi}"), "writeback", args)
            }
            Span::DState { function: f } => {
                let name =
                    f.as_deref().map(|f| format!("D state in {}", function(f))).unwrap_or_else(|| "D state".into());
                (
                    name,
                    "sched",
                    json!({ "blocking_function": f.as_deref().map(function).unwrap_or("(not in the capture)") }),
                )
            }
            Span::Holding { held, ino, blocked_in, sightings } => holding_span(held, *ino, blocked_in, *sightings),
        }
    }

    fn mark(&self, mark: &Mark) -> (String, &'static str, Value) {
        match mark {
            Mark::Finding(f) => {
                (format!("{} {}", f.rule, f.severity.name()), "finding", finding_args(&FindingView::new(f, &self.gfp)))
            }
            Mark::Shrinker { scan_fn, callback, nr_to_scan, fs_type, sb_dev } => {
                let callback = callback.as_deref().map(function);
                let name = match (callback, fs_type.is_empty()) {
                    (Some(c), true) => format!("shrinker {c}"),
                    (Some(c), false) => format!("shrinker {c} ({fs_type})"),
                    (None, false) => format!("shrinker ({fs_type})"),
                    (None, true) => "shrinker".to_owned(),
                };
                let args = json!({"scan_fn": callback.map(str::to_owned).unwrap_or_else(|| format!("{scan_fn:#x}")),
                                  "nr_to_scan": nr_to_scan, "sb_dev": sb_dev.to_string(), "fs_type": fs_type});
                (name, "reclaim", args)
            }
            Mark::Pageout { dev, ino } => ("pageout".into(), "reclaim", json!({"device": dev.to_string(), "ino": ino})),
            Mark::OomKill { victim } => (format!("OOM kill of pid {victim}"), "reclaim", json!({"victim": victim})),
            Mark::ReclaimEndOnly { kind, duration_ns, nr_reclaimed } => (
                format!("{} reclaim end (begin not in the trace)", reclaim_kind_name(*kind)),
                "reclaim",
                json!({"duration_ms": *duration_ns as f64 / 1e6, "nr_reclaimed": nr_reclaimed}),
            ),
            Mark::Blocked { frames } => {
                let f = frames.first().map(|f| function(f)).unwrap_or("?");
                (format!("blocked (D) in {f}"), "sched", json!({"blocking_function": f, "stack": frames.join("\n")}))
            }
        }
    }
}

/// A lock holder's slice: what it holds, and where it is blocked.
fn holding_span(held: &[Held], ino: u64, blocked_in: &Option<String>, sightings: u32) -> (String, &'static str, Value) {
    let held = held.iter().map(|h| held_name(*h)).collect::<Vec<_>>().join(", ");
    let blocked = blocked_in.as_deref().map(function);
    let args = json!({
        "held": held,
        "ino": ino,
        "blocking_function": blocked,
        "seen": format!("blocked holding it in {sightings} finding(s), from the first to the last of them"),
    });
    let name = match blocked {
        Some(b) => format!("holds {held}, blocked in {b}"),
        None => format!("holds {held}"),
    };
    (name, "holder", args)
}

fn finding_args(f: &FindingView) -> Value {
    let mut a = Map::new();
    a.insert("rule".into(), json!(f.rule));
    a.insert("severity".into(), json!(f.severity.name()));
    a.insert("title".into(), json!(f.title));
    a.insert("detail".into(), json!(f.detail));
    a.insert("remedy".into(), json!(f.remedy));
    a.insert("servicer".into(), json!(format!("{} pid {} tid {}", f.servicer.name, f.servicer.tgid, f.servicer.tid)));
    a.insert("device".into(), json!(f.device));
    a.insert("gfp".into(), json!(f.gfp));
    a.insert("count".into(), json!(f.count));
    if let Some(s) = f.stacks.first().map(|s| &s.frames).or(Some(&f.stack)).filter(|s| !s.is_empty()) {
        a.insert("stack".into(), json!(s.join("\n")));
    }
    Value::Object(a)
}

impl<W: Write> Sink for PerfettoWriter<W> {
    fn item(&mut self, item: &Item) -> Result<()> {
        let ev = match item {
            Item::Begin { ts, task, span } => {
                let (name, cat, args) = self.span(span);
                json!({"ph": "B", "name": name, "cat": cat, "ts": self.us(*ts), "pid": task.0, "tid": task.1, "args": args})
            }
            Item::End { ts, task, close } => {
                let args = match close {
                    Close::Returned { nr_reclaimed, duration_ns } => {
                        json!({"nr_reclaimed": nr_reclaimed, "duration_ms": *duration_ns as f64 / 1e6})
                    }
                    Close::NextEvent => json!({"ended": "at the task's next event"}),
                    Close::PauseOver => json!({"ended": "the pause ran its length"}),
                    Close::TraceEnd => json!({"ended": "still open when the trace ended"}),
                };
                json!({"ph": "E", "ts": self.us(*ts), "pid": task.0, "tid": task.1, "args": args})
            }
            Item::Complete { ts, dur, task, span } => {
                let (name, cat, args) = self.span(span);
                json!({"ph": "X", "name": name, "cat": cat, "ts": self.us(*ts), "dur": *dur as f64 / 1000.0,
                       "pid": task.0, "tid": task.1, "args": args})
            }
            Item::Instant { ts, task, mark } => {
                let (name, cat, args) = self.mark(mark);
                json!({"ph": "i", "s": "t", "name": name, "cat": cat, "ts": self.us(*ts), "pid": task.0, "tid": task.1,
                       "args": args})
            }
            Item::FlowOut { ts, task, id } => {
                json!({"ph": "s", "name": "waits on", "cat": "link", "id": id, "ts": self.us(*ts), "pid": task.0,
                       "tid": task.1})
            }
            Item::FlowIn { ts, task, id } => {
                json!({"ph": "f", "bp": "e", "name": "waits on", "cat": "link", "id": id, "ts": self.us(*ts),
                       "pid": task.0, "tid": task.1})
            }
            Item::Task(t) => return self.task(t),
        };
        self.write(ev)
    }
}

/// The line `report --perfetto` prints when the file is written.
pub fn written_line(path: &std::path::Path, clock: Clock, totals: &Totals) -> String {
    let clock = match clock {
        Clock::Header(_) => "wall-clock times",
        Clock::Estimated(_) => "wall-clock times estimated from the read times",
        Clock::Boot => "times since boot",
    };
    format!(
        "timeline written to {}: {} tasks, {} events, {clock}; open it in ui.perfetto.dev or chrome://tracing",
        path.display(),
        totals.tasks,
        totals.events
    )
}
