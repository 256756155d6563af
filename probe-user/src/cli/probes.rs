//! `reclaimscope probes`: which implementation each logical hook uses on
//! this kernel, and why the better ones were skipped.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::trace_args::KernelArgs;
use crate::{
    agent::{
        refresh::{Every, Refresher, FULL_SCAN_EVERY},
        run::{EventLoop, RunOptions, Sink, Summary},
        session::{load_object, Session, SessionOptions},
    },
    attach::{
        config,
        loader::{attach_all, verify_all, AttachReport, Verified},
        measure::{costs, ImplCost},
    },
    detect::{engine::Engine, engine::Observed, finding::Finding, index::StackIndex},
    events::decode::Event,
    kernel::preflight,
    names::GfpNames,
    output::{fit, stdout},
    topology::{Extra, Topology},
};

/// Shown under every `--help` of `probes` (a doc comment on the
/// subcommand would hide examples written there).
const EXAMPLES: &str = "\
Examples:
  sudo reclaimscope probes
  sudo reclaimscope probes --json
  sudo reclaimscope probes --verify      # load every program through the verifier
  sudo reclaimscope probes --measure -- fio job.fio   # ns per call of every implementation";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES, verbatim_doc_comment)]
pub struct ProbesArgs {
    #[arg(long)]
    pub json: bool,
    /// Load every program of every family through the verifier, without attaching.
    #[arg(long, conflicts_with = "measure")]
    pub verify: bool,
    /// Attach every implementation of every hook at once, run WORKLOAD, and
    /// report each one's kernel time per call (BPF run-time statistics).
    #[arg(long)]
    pub measure: bool,
    /// The workload for --measure, after `--`.
    #[arg(last = true, value_name = "WORKLOAD", requires = "measure")]
    pub workload: Vec<String>,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn print_report(r: &AttachReport) -> Result<()> {
    let mut rows = Vec::new();
    for c in &r.hooks {
        let chosen = c.family.map(|f| f.name()).unwrap_or(if c.required { "MISSING" } else { "missing" });
        let skipped: Vec<String> = c.skipped.iter().map(|s| format!("{}: {}", s.family.name(), s.reason)).collect();
        rows.push(vec![c.hook.to_string(), chosen.to_owned(), c.targets.join("\n"), skipped.join("\n")]);
    }
    let titles = ["HOOK", "CHOSEN", "TARGET", "SKIPPED (kernel's reason)"];
    stdout::write(&fit::table(&titles, &rows, fit::terminal_width()).to_string())?;
    // The notes wrap too, their continuation lines indented.
    let note = |s: String| fit::wrap(&s, fit::terminal_width().saturating_sub(2)).replace('\n', "\n  ");
    for c in &r.hooks {
        if let (Some(f), Some(lacks)) = (c.family, c.lacks) {
            stdout::line(note(format!("limited: {} through {}: {lacks}", c.hook, f.name())))?;
        }
    }
    for (hook, lost) in r.weakened() {
        stdout::line(note(format!("weakened: {hook} missing, {lost}")))?;
    }
    Ok(())
}

fn print_verified(v: &[Verified]) -> Result<()> {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|x| {
            let res =
                if x.loaded { "loaded".to_owned() } else { format!("failed: {}", x.error.as_deref().unwrap_or("")) };
            vec![x.program.to_string(), x.family.name().to_owned(), x.target.to_string(), res]
        })
        .collect();
    let titles = ["PROGRAM", "FAMILY", "TARGET", "VERIFIER"];
    stdout::write(&fit::table(&titles, &rows, fit::terminal_width()).to_string())
}

fn print_costs(costs: &[ImplCost]) -> Result<()> {
    let mut rows = Vec::new();
    for c in costs {
        let ns = match (&c.error, c.ns_per_call) {
            (Some(_), _) => "not attached".to_owned(),
            (None, Some(ns)) => format!("{ns:.0}"),
            (None, None) => "-".to_owned(),
        };
        rows.push(vec![c.hook.to_string(), c.family.name().to_owned(), c.calls.to_string(), ns, c.targets.join(" ")]);
    }
    let titles = ["HOOK", "IMPLEMENTATION", "CALLS", "NS/CALL", "TARGET"];
    stdout::write(&fit::table(&titles, &rows, fit::terminal_width()).to_string())
}

/// Counts what the loop delivers and shows nothing: only the kernel-side
/// cost is measured.
struct Discard;

impl Sink for Discard {
    fn event(&mut self, _: &[u8], _: &Event, _: &Observed, _: &[(u64, String)]) -> Result<()> {
        Ok(())
    }
    fn finding(&mut self, _: &Finding) -> Result<()> {
        Ok(())
    }
    fn summary(&mut self, _: &Summary, _: &[Finding], _: bool) -> Result<()> {
        Ok(())
    }
    fn topology(&mut self, _: &Topology, _: &StackIndex) -> Result<()> {
        Ok(())
    }
}

/// `probes --measure`: every implementation attached, the servicer maps
/// kept current as for `watch` (so the filters take the same paths), while
/// the workload runs; then each one's kernel time per call.
pub async fn measure(args: &ProbesArgs) -> Result<i32> {
    preflight::require_bpf_privileges("probes")?;
    let costs = measure_costs(args).await?;
    if args.json {
        stdout::line(serde_json::to_string_pretty(&costs)?)?;
    } else {
        print_costs(&costs)?;
    }
    Ok(0)
}

async fn measure_costs(args: &ProbesArgs) -> Result<Vec<ImplCost>> {
    let mut session = Session::start(&SessionOptions {
        command: "probes",
        paths: args.kernel.paths(),
        target_tgid: None,
        trace_all: false,
        force: None,
        every_impl: true,
    })?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("cannot enable BPF run-time statistics")?;
    let (prog, rest) = args.workload.split_first().context("--measure needs a workload after --")?;
    let mut child = tokio::process::Command::new(prog)
        .args(rest)
        .spawn()
        .with_context(|| format!("cannot start the workload {prog}"))?;
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = tx.send(status);
        // The loop ends on SIGINT, as under Ctrl-C.
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
    });
    let engine = Engine::new(StackIndex::default(), GfpNames::builtin(), Duration::from_secs(5));
    // The workload builds its storage stack after start: rediscover often
    // (its mounts and devices start a discovery at once anyway).
    let every = Every { refresh: Duration::from_secs(1), full_scan: FULL_SCAN_EVERY };
    let refresher = Refresher::start(Extra::default(), every);
    let mut sink = Discard;
    let mut l = EventLoop::new(&mut session, engine, &mut sink, &refresher);
    l.run(&RunOptions { duration: None, summary_every: Duration::from_secs(3600) }).await?;
    match rx.try_recv() {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => bail!("the workload failed: {s}"),
        _ => bail!("interrupted before the workload ended"),
    }
    Ok(costs(&session.ebpf, &session.every))
}

pub fn run(args: &ProbesArgs) -> Result<i32> {
    preflight::require_bpf_privileges("probes")?;
    let kv = args.kernel.paths().view()?;
    let built = config::build(&kv, 0, false);
    let mut ebpf = load_object(&built)?;
    if args.verify {
        let v = verify_all(&mut ebpf, &kv, &built);
        if args.json {
            stdout::line(serde_json::to_string_pretty(&v)?)?;
        } else {
            print_verified(&v)?;
        }
        return Ok(0);
    }
    let report = attach_all(&mut ebpf, &kv, &built, args.kernel.attach.family());
    if args.json {
        stdout::line(serde_json::to_string_pretty(&report)?)?;
    } else {
        print_report(&report)?;
    }
    report.check_required()?;
    Ok(0)
}
