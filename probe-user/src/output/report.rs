//! `reclaimscope report`'s two views of a replay: the text, and the JSON
//! document docs/json.md describes.

use std::{fmt::Write as _, sync::Arc};

use prettytable::{format, row, Table};
use serde::Serialize;

use super::{
    finding::{self, FindingView},
    table::{finding_block, timeline_block},
    terminal,
    view::EventView,
};
use crate::{
    detect::engine::Observed,
    events::decode::Event,
    names::GfpNames,
    postmortem::replay::{Report, ServicerSummary, Timeline},
};

/// A finding's timeline as the report shows it: each event in words.
#[derive(Serialize)]
pub struct TimelineView {
    pub rule: String,
    pub tid: u32,
    /// Relative times in seconds.
    pub events: Vec<(f64, EventView)>,
}

impl TimelineView {
    pub fn new(tl: &Timeline, gfp: &GfpNames) -> TimelineView {
        let view = |(t, ev, stack): &(f64, Event, Arc<[String]>)| {
            let obs = Observed { stack: Arc::clone(stack), ..Default::default() };
            (*t, EventView::new(ev, &obs, gfp, None))
        };
        TimelineView { rule: tl.rule.clone(), tid: tl.tid, events: tl.events.iter().map(view).collect() }
    }
}

/// The report as `report --json` writes it: the findings in words.
#[derive(Serialize)]
pub struct ReportView<'a> {
    source: &'a str,
    kernel_release: &'a Option<String>,
    records: u64,
    events: u64,
    findings: Vec<FindingView>,
    recorded: Vec<FindingView>,
    recorded_only: Vec<FindingView>,
    servicers: &'a [ServicerSummary],
    timelines: Vec<TimelineView>,
    damage: &'a Option<String>,
    limits: &'a [String],
}

impl<'a> ReportView<'a> {
    pub fn new(r: &'a Report) -> ReportView<'a> {
        ReportView {
            source: &r.source,
            kernel_release: &r.kernel_release,
            records: r.records,
            events: r.events,
            findings: FindingView::all(&r.findings, &r.gfp),
            recorded: FindingView::all(&r.recorded, &r.gfp),
            recorded_only: FindingView::all(&r.recorded_only, &r.gfp),
            servicers: &r.servicers,
            timelines: r.timelines.iter().map(|tl| TimelineView::new(tl, &r.gfp)).collect(),
            damage: &r.damage,
            limits: &r.limits,
        }
    }
}

/// The report as `reclaimscope report` prints it without --json. Every
/// word of it may come from the file, so it is made terminal-safe.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "report of {}{}",
        r.source,
        r.kernel_release.as_ref().map(|k| format!(" (kernel {k})")).unwrap_or_default()
    );
    let _ = writeln!(out, "{} records, {} events, {} findings", r.records, r.events, r.findings.len());
    if let Some(d) = &r.damage {
        let _ = writeln!(out, "DAMAGED: {d}; everything before it was read");
    }
    for l in &r.limits {
        let _ = writeln!(out, "limit: {l}");
    }
    for f in &r.findings {
        let _ = writeln!(out, "\n{}", finding_block(&FindingView::new(f, &r.gfp)));
    }
    for f in &r.recorded_only {
        let _ = writeln!(
            out,
            "\nrecorded live (not derivable from events): [{}] {} {} tid {}: {}",
            f.severity.name(),
            f.rule,
            f.servicer.comm,
            f.servicer.tid,
            finding::detail(f, &r.gfp)
        );
    }
    if !r.servicers.is_empty() {
        let _ = write!(out, "\n{}", servicer_table(&r.servicers));
    }
    for tl in &r.timelines {
        let _ = write!(out, "\n{}", timeline_block(&TimelineView::new(tl, &r.gfp)));
    }
    terminal::text(&out).into_owned()
}

fn servicer_table(servicers: &[ServicerSummary]) -> Table {
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_NO_LINESEP_WITH_TITLE);
    t.set_titles(row!["SERVICER", "PID", "THREADS", "RECLAIMS", "TOTAL ms", "MAX ms", "WB WAITS", "FINDINGS"]);
    for s in servicers {
        t.add_row(row![
            s.comm,
            s.tgid,
            s.threads,
            s.reclaim_entries,
            format!("{:.1}", s.reclaim_total_ms),
            format!("{:.1}", s.reclaim_max_ms),
            s.writeback_waits,
            s.findings
        ]);
    }
    t
}
