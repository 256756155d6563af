//! `reclaimscope report FILE`: replays a trace (or an ftrace text capture)
//! through the detection engine. Needs no root and no BPF.

use std::{
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::secs;
use crate::{
    names::GfpNames,
    output::{
        folded,
        perfetto::{self, PerfettoWriter},
        report::{render, ReportView},
        stdout, terminal,
    },
    postmortem::{
        input,
        replay::{self, Report},
        timeline::{self, Clock},
    },
    topology::Dev,
    trace::TraceReader,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// A reclaimscope trace if the file starts like one, else a text
    /// capture (which needs --servicer).
    Auto,
    Trace,
    Ftrace,
}

fn parse_servicer(s: &str) -> Result<(u32, Dev), String> {
    let (pid, dev) = s.split_once('=').ok_or("expected PID=MAJOR:MINOR")?;
    let pid = pid.parse().map_err(|_| format!("bad pid `{pid}`"))?;
    let dev = Dev::parse(dev).ok_or_else(|| format!("bad device `{dev}` (expected {})", Dev::FORMAT))?;
    Ok((pid, dev))
}

/// Shown under every `--help` of `report` (a doc comment on the
/// subcommand would hide examples written there).
const EXAMPLES: &str = "\
Examples:
  reclaimscope report reclaim.trace
  reclaimscope report --json reclaim.trace.1
  reclaimscope report -p 4242 reclaim.trace
  reclaimscope report --format ftrace --servicer 4242=7:0 capture.txt
  reclaimscope report --perfetto reclaim.json reclaim.trace
  reclaimscope report --folded reclaim.trace | inferno-flamegraph > reclaim.svg";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ReportArgs {
    /// A trace from `reclaimscope record`, or a `trace-cmd report` / tracefs `trace` text capture.
    pub file: PathBuf,
    #[arg(long)]
    pub json: bool,
    /// Only the findings, servicer and timelines of this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: InputFormat,
    /// For text captures: PID (or TID) serves the stacked device MAJOR:MINOR (repeatable).
    #[arg(long = "servicer", value_name = "PID=MAJOR:MINOR", value_parser = parse_servicer)]
    pub servicers: Vec<(u32, Dev)>,
    /// Time blocked in reclaim that makes a deadlock (seconds, or 500ms, 1m).
    #[arg(long, default_value_t = 5.0, value_name = "DURATION", value_parser = secs::parse)]
    pub deadlock_after: f64,
    /// Also write the timeline as Chrome trace-event JSON, for ui.perfetto.dev or chrome://tracing.
    #[arg(long, value_name = "OUT.json")]
    pub perfetto: Option<PathBuf>,
    /// Print the findings' kernel stacks folded (`frame;frame count`) instead of the report, for
    /// inferno-flamegraph or flamegraph.pl.
    #[arg(long, conflicts_with = "json")]
    pub folded: bool,
}

pub fn run(args: &ReportArgs) -> Result<i32> {
    let after = secs::positive("--deadlock-after", args.deadlock_after)?;
    let input = input::open(&args.file)?;
    let (file, name) = (&input.file, input.name.as_str());
    let ftrace = |file| replay::ftrace_capture(file, name, &args.servicers, GfpNames::builtin(), after);
    let report = match args.format {
        InputFormat::Trace => replay::trace(file, name, after)?,
        InputFormat::Ftrace => ftrace(file)?,
        // By the magic bytes: a trace's first eight are always the same.
        InputFormat::Auto if input.is_trace => replay::trace(file, name, after)?,
        InputFormat::Auto if !args.servicers.is_empty() => ftrace(file)?,
        InputFormat::Auto => bail!(
            "{name}: not a reclaimscope trace (for a text capture, name its servicers with --servicer PID=MAJOR:MINOR)"
        ),
    };
    let mut report = report;
    if let Some(pid) = args.pid {
        report.keep_process(pid);
    }
    if let Some(out) = &args.perfetto {
        let trace = matches!(args.format, InputFormat::Trace) || (args.format == InputFormat::Auto && input.is_trace);
        let from = if trace { Input::Trace(file, name) } else { Input::Capture(file, name, &args.servicers) };
        eprintln!("{}", terminal::line(&perfetto(from, &report, out)?));
    }
    if args.folded {
        stdout::write(&terminal::text(&folded::render(&report.all_findings())))?;
    } else if args.json {
        stdout::json_pretty(&ReportView::new(&report))?;
    } else {
        stdout::write(&render(&report))?;
    }
    Ok(0)
}

/// What `--perfetto` reads: the report's own input again, through the file
/// `report` opened (see `postmortem::input`), with its name for messages.
pub enum Input<'a> {
    /// A trace from `reclaimscope record`.
    Trace(&'a File, &'a str),
    /// A text capture, with the servicers given on the command line.
    Capture(&'a File, &'a str, &'a [(u32, Dev)]),
}

/// Writes the timeline of `input` with the report's findings to `out`, and
/// returns the line to tell the user.
pub fn perfetto(input: Input<'_>, report: &Report, out: &Path) -> Result<String> {
    let all = report.all_findings();
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
