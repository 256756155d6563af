//! Human output: fixed-width event rows as they stream, and prettytable
//! blocks for findings and summaries.

use prettytable::{format, row, Table};

use super::{
    finding::{FindingView, FsView},
    report::TimelineView,
    summary::Summary,
    view::EventView,
};
use crate::detect::{
    finding::{Finding, LockHolder},
    holds::Held,
};

pub const EVENT_HEADER: &str = "TIME(s)      COMM             PID     TID     KIND         GFP                                  TASK-FLAGS       LAT(us)";

/// One streaming row; `t0` is the first event's timestamp.
pub fn event_row(v: &EventView, t0: u64) -> String {
    let t = v.ts_ns.saturating_sub(t0) as f64 / 1e9;
    format!("{t:<12.6} {}", event_columns(v))
}

/// The header of a finding's timeline: as [`EVENT_HEADER`], with the time
/// counted from the finding (negative before it).
pub const TIMELINE_HEADER: &str = "T-FINDING(s) COMM             PID     TID     KIND         GFP                                  TASK-FLAGS       LAT(us)";

/// The events around a finding, under a header; times from the finding.
pub fn timeline_block(tl: &TimelineView) -> String {
    let mut out = format!("timeline around {} (tid {}):\n  {TIMELINE_HEADER}\n", tl.rule, tl.tid);
    for (t, v) in &tl.events {
        out.push_str(&format!("  {t:<+12.6} {}\n", event_columns(v)));
    }
    out
}

/// Every column of an event row but the time.
fn event_columns(v: &EventView) -> String {
    let kind = v.kind.unwrap_or(v.event);
    let lat = v.latency_us.map(|l| format!("{l:.1}")).unwrap_or_else(|| "-".into());
    let gfp = v.gfp.clone().or_else(|| v.detail.clone()).unwrap_or_default();
    format!("{:<16} {:<7} {:<7} {:<12} {:<36} {:<16} {lat}", v.comm, v.pid, v.tid, kind, gfp, v.task_flags)
}

pub fn finding_block(f: &FindingView) -> String {
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_CLEAN);
    let fs = |d: &Option<FsView>| {
        d.as_ref().map(|d| format!("{} on {} ({})", d.fs_type, d.mount_point, d.dev)).unwrap_or_else(|| "-".into())
    };
    let s = &f.servicer;
    let threads = f.threads.iter().map(|t| t.tid.to_string()).collect::<Vec<_>>().join(", ");
    t.add_row(row![
        "servicer",
        format!("{} pid {} threads {threads} flags {} ({})", s.name, s.tgid, s.flags, s.protection)
    ]);
    t.add_row(row!["upper fs", fs(&f.upper_fs)]);
    t.add_row(row!["device", &f.device]);
    t.add_row(row!["backing file", f.backing_file.as_deref().unwrap_or("-")]);
    t.add_row(row!["lower fs", fs(&f.lower_fs)]);
    if f.bottom_fs != f.lower_fs {
        t.add_row(row!["bottom fs", fs(&f.bottom_fs)]);
    }
    t.add_row(row!["gfp", format!("{} ({:#x})", f.gfp, f.gfp_raw)]);
    if let Some(n) = f.upper_inflight {
        t.add_row(row!["upper I/O", format!("{n} requests in flight")]);
    }
    t.add_row(row!["what", &f.detail]);
    if !f.stack.is_empty() {
        t.add_row(row!["stack", f.stack.iter().take(16).cloned().collect::<Vec<_>>().join("\n")]);
    }
    if !f.lock_holders.is_empty() {
        t.add_row(row!["holders", f.lock_holders.iter().take(8).map(holder_line).collect::<Vec<_>>().join("\n")]);
    }
    if !f.chain.is_empty() {
        t.add_row(row!["waiting", f.chain.join("\n")]);
    }
    t.add_row(row!["remedy", &f.remedy]);
    if let Some(note) = &f.kernel_note {
        t.add_row(row!["kernel", note]);
    }
    format!("[{}] {} {}: {}\n{}", f.severity.name().to_uppercase(), f.rule, s.name, f.title, t)
}

/// "dd[812] holds XFS_IOLOCK_EXCL on inode 131, blocked in balance_dirty_pages (400 ms ago)"
pub fn holder_line(h: &LockHolder) -> String {
    let held: Vec<&str> = h.held.iter().map(|k| held_name(*k)).collect();
    let on = if h.ino != 0 { format!(" on inode {}", h.ino) } else { String::new() };
    let blocked = h.blocked_in.as_ref().map(|b| format!(", blocked in {b}")).unwrap_or_default();
    let when = if h.seen_ms_ago > 0 { format!(" ({} ms ago)", h.seen_ms_ago) } else { String::new() };
    format!("{}[{}] holds {}{on}{blocked}{when}", h.comm, h.tid, held.join(", "))
}

/// The kernel's own names for what is held.
pub fn held_name(h: Held) -> &'static str {
    match h {
        Held::IolockExcl => "XFS_IOLOCK_EXCL",
        Held::IolockShared => "XFS_IOLOCK_SHARED",
        Held::MmaplockExcl => "XFS_MMAPLOCK_EXCL",
        Held::IlockExcl => "XFS_ILOCK_EXCL",
        Held::XfsTrans => "an XFS transaction",
        Held::IRwsemExcl => "i_rwsem (exclusive)",
        Held::IRwsemShared => "i_rwsem (shared)",
        Held::Jbd2Handle => "a jbd2 handle",
    }
}

pub fn summary_table(s: &Summary, findings: &[Finding]) -> String {
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_NO_LINESEP_WITH_TITLE);
    t.set_titles(row!["elapsed", "direct", "memcg", "shrinker", "wb-waits", "events", "dropped", "findings"]);
    t.add_row(row![
        format!("{:.0}s", s.elapsed_s),
        s.reclaim_direct,
        s.reclaim_memcg,
        s.shrinker_calls,
        s.writeback_waits,
        s.events,
        s.dropped,
        s.findings
    ]);
    let mut out = t.to_string();
    if !findings.is_empty() {
        let mut f = Table::new();
        f.set_format(*format::consts::FORMAT_NO_LINESEP_WITH_TITLE);
        f.set_titles(row!["severity", "rule", "servicer", "pid", "threads", "stacks", "count", "upper fs", "holders"]);
        for x in findings {
            let up = x.upper_fs.as_ref().map(|u| format!("{} {}", u.fs_type, u.mount_point)).unwrap_or_default();
            let threads = x.threads.len() as u64 + x.threads_folded.min(1);
            f.add_row(row![
                x.severity.name(),
                x.rule,
                x.servicer.name,
                x.servicer.tgid,
                threads,
                x.stacks.len(),
                x.count,
                up,
                x.lock_holders.len()
            ]);
        }
        out.push_str(&f.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use probe_common::events::{EventKind, ReclaimData, ReclaimEvent, TaskCtx};

    use super::*;
    use crate::{detect::engine::Observed, events::decode::Event, names::GfpNames};

    #[test]
    fn a_timeline_has_a_header_and_each_row_its_own_time() {
        let view = |ts_ns| {
            let ctx = TaskCtx { ts_ns, tgid: 1, tid: 2, comm: *b"qemu-storage-dae", ..Default::default() };
            let e =
                ReclaimEvent::new(EventKind::ReclaimBegin, ctx, ReclaimData { reclaim_kind: 2, ..Default::default() });
            EventView::new(&Event::ReclaimBegin(e), &Observed::default(), &GfpNames::builtin(), None)
        };
        let tl = TimelineView { rule: "RS001".into(), tid: 2, events: vec![(-0.25, view(750)), (0.5, view(1_500))] };
        let text = timeline_block(&tl);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1].trim(), TIMELINE_HEADER);
        let times: Vec<&str> = lines[2..].iter().map(|l| l.split_whitespace().next().unwrap()).collect();
        assert_eq!(times, ["-0.250000", "+0.500000"]);
        assert_eq!(lines[1].find("COMM"), lines[2].find("qemu"), "columns line up under the header");
    }
}
