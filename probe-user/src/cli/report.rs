//! `reclaimscope report FILE`: replays a trace (or an ftrace text capture)
//! through the detection engine. Needs no root and no BPF.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::secs;
use crate::{
    names::GfpNames,
    output::{
        folded,
        report::{render, ReportView},
        stdout, terminal,
    },
    postmortem::{
        export::{self, Input},
        input, replay,
    },
    topology::Dev,
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
        eprintln!("{}", terminal::line(&export::perfetto(from, &report, out)?));
    }
    if args.folded {
        stdout::write(&terminal::text(&folded::render(&export::findings(&report))))?;
    } else if args.json {
        stdout::json_pretty(&ReportView::new(&report))?;
    } else {
        stdout::write(&render(&report))?;
    }
    Ok(0)
}
