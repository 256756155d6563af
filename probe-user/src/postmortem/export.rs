//! `report --perfetto` and `report --folded`: the report's input and
//! findings, exported for the tools kernel engineers read postmortems with.

use std::{fs::File, io::BufWriter, path::Path};

use anyhow::{Context, Result};

use super::{
    ftrace,
    replay::Report,
    timeline::{self, Clock},
};
use crate::{
    detect::finding::Finding,
    names::GfpNames,
    output::perfetto::{self, PerfettoWriter},
    topology::Dev,
    trace::TraceReader,
};

/// What the export reads: the report's own input again.
pub enum Input<'a> {
    /// A trace from `reclaimscope record`, streamed from the file.
    Trace(&'a Path),
    /// A text capture, with the servicers given on the command line.
    Capture(&'a Path, &'a [(u32, Dev)]),
}

impl<'a> Input<'a> {
    /// Which of the two `report` found `file` to be: only a trace's
    /// header names the recording kernel.
    pub fn of(report: &Report, file: &'a Path, servicers: &'a [(u32, Dev)]) -> Input<'a> {
        if report.kernel_release.is_some() {
            Input::Trace(file)
        } else {
            Input::Capture(file, servicers)
        }
    }
}

/// Every finding of the report once: the replay's, and those only the
/// recording agent could make (deadlocks, from /proc). A finding the agent
/// recorded lends the replay's copy what only the live agent saw: who held
/// locks, and who waited behind the servicer.
pub fn findings(report: &Report) -> Vec<Finding> {
    let recorded: Vec<Finding> =
        report.recorded.iter().filter_map(|v| serde_json::from_value::<Finding>(v.clone()).ok()).collect();
    let same = |a: &Finding, b: &Finding| a.rule == b.rule && a.servicer.tid == b.servicer.tid;
    let mut out: Vec<Finding> = report
        .findings
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if let Some(live) = recorded.iter().find(|r| same(r, &f)) {
                if f.holders.is_empty() {
                    f.holders = live.holders.clone();
                }
                if f.chain.is_empty() {
                    f.chain = live.chain.clone();
                }
            }
            f
        })
        .collect();
    for f in recorded {
        if !out.iter().any(|x| same(x, &f)) {
            out.push(f);
        }
    }
    out
}

/// Writes the timeline of `input` with the report's findings to `out`, and
/// returns the line to tell the user.
pub fn perfetto(input: Input<'_>, report: &Report, out: &Path) -> Result<String> {
    let findings = findings(report);
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let sink = BufWriter::with_capacity(256 << 10, file);
    let (clock, totals) = match input {
        Input::Trace(path) => {
            let clock = timeline::trace_clock(path)?;
            let gfp = trace_gfp(path)?;
            let mut w = PerfettoWriter::new(sink, gfp, clock)?;
            let totals = timeline::from_trace(path, &findings, &mut w)?;
            w.finish(&path.display().to_string(), clock, &totals)?;
            (clock, totals)
        }
        Input::Capture(path, servicers) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let gfp = GfpNames::builtin();
            let import = ftrace::import(&bytes, &gfp)
                .with_context(|| format!("{}: not an ftrace text capture", path.display()))?;
            let mut w = PerfettoWriter::new(sink, gfp, Clock::Boot)?;
            let totals = timeline::from_capture(&import, servicers, &findings, &mut w)?;
            w.finish(&path.display().to_string(), Clock::Boot, &totals)?;
            (Clock::Boot, totals)
        }
    };
    Ok(perfetto::written_line(out, clock, &totals))
}

/// The recording kernel's GFP names, as the replay uses them (the built-in
/// table when the header has none, or one that does not parse: the replay
/// has said so already).
fn trace_gfp(path: &Path) -> Result<GfpNames> {
    let reader = TraceReader::open(path)?;
    Ok(reader
        .header()
        .gfp_format
        .as_deref()
        .and_then(|f| GfpNames::parse_format(f).ok())
        .unwrap_or_else(GfpNames::builtin))
}
