//! `reclaimscope watch`: findings as they happen, then periodic summaries;
//! every reclaim event too with `--all`.

use anyhow::Result;

use super::trace_args::TraceArgs;
use crate::{agent::memcg::memcg_of, output::watch::WatchSink};

/// Shown under every `--help` of `watch` (a doc comment on the
/// subcommand would hide examples written there).
const EXAMPLES: &str = "\
Examples:
  sudo reclaimscope watch
  sudo reclaimscope watch --all --duration 10m
  sudo reclaimscope watch --json -p 1234";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct WatchArgs {
    /// JSON lines instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show every reclaim event, not only findings.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub async fn run(args: &WatchArgs) -> Result<i32> {
    let (mut session, gfp) = args.trace.start("watch", args.all)?;
    let refresher = args.trace.refresher()?;
    if !args.json {
        eprintln!("Tracing memory reclaim in stacked storage... Hit Ctrl-C to end.");
    }
    let mut sink = WatchSink::new(args.json, args.all, gfp, memcg_of);
    args.trace.run(&mut session, &mut sink, &refresher).await?;
    Ok(0)
}
