//! `report --perfetto` and `report --folded`: the report's input and
//! findings, exported for the tools kernel engineers read postmortems with.

use std::{fs::File, io::BufWriter, path::Path};

use anyhow::{Context, Result};

use super::{
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

/// What the export reads: the report's own input again, through the file
/// `report` opened (see `postmortem::input`), with its name for messages.
pub enum Input<'a> {
    /// A trace from `reclaimscope record`.
    Trace(&'a File, &'a str),
    /// A text capture, with the servicers given on the command line.
    Capture(&'a File, &'a str, &'a [(u32, Dev)]),
}

/// Every finding of the report once: the replay's, and those only the
/// recording agent could make (deadlocks, from /proc).
pub fn findings(report: &Report) -> Vec<Finding> {
    let mut out = report.findings.clone();
    out.extend(report.recorded_only.iter().cloned());
    out
}

/// Writes the timeline of `input` with the report's findings to `out`, and
/// returns the line to tell the user.
pub fn perfetto(input: Input<'_>, report: &Report, out: &Path) -> Result<String> {
    let all = findings(report);
    let findings = timeline::Findings { all: &all, live: &report.recorded };
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let sink = BufWriter::with_capacity(256 << 10, file);
    let (clock, totals) = match input {
        Input::Trace(file, name) => {
            let clock = timeline::trace_clock(file, name)?;
            let mut w = PerfettoWriter::new(sink, trace_gfp(file, name)?, clock)?;
            let totals = timeline::from_trace(file, name, findings, &mut w)?;
            w.finish(name, clock, &totals)?;
            (clock, totals)
        }
        Input::Capture(file, name, servicers) => {
            // As the report reads captures: with the built-in GFP names.
            let gfp = GfpNames::builtin();
            let mut w = PerfettoWriter::new(sink, gfp.clone(), Clock::Boot)?;
            let totals = timeline::from_capture(file, name, servicers, &gfp, findings, &mut w)?;
            w.finish(name, Clock::Boot, &totals)?;
            (Clock::Boot, totals)
        }
    };
    Ok(perfetto::written_line(out, clock, &totals))
}

/// The recording kernel's GFP names, as the replay uses them (the built-in
/// table when the header has none, or one that does not parse: the replay
/// has said so already).
fn trace_gfp(file: &File, name: &str) -> Result<GfpNames> {
    let mut f = file.try_clone().with_context(|| format!("{name}: cannot read it again"))?;
    std::io::Seek::rewind(&mut f).with_context(|| format!("{name}: cannot read it again"))?;
    let reader = TraceReader::new(std::io::BufReader::new(f), name)?;
    Ok(reader
        .header()
        .gfp_format
        .as_deref()
        .and_then(|f| GfpNames::parse_format(f).ok())
        .unwrap_or_else(GfpNames::builtin))
}
