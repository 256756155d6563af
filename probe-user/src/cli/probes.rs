//! `reclaimscope probes`: which implementation each logical hook uses on
//! this kernel, and why the better ones were skipped.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::trace_args::KernelArgs;
use crate::{
    agent::{
        refresh::{Every, Refresher, FULL_SCAN_EVERY},
        run::{EventLoop, RunOptions},
        session::{load_object, Session, SessionOptions},
    },
    attach::{
        config,
        loader::{attach_all, verify_all},
        measure::{costs, ImplCost},
    },
    detect::{engine::Engine, index::StorageIndex},
    kernel::preflight,
    output::{
        probes::{print_costs, print_report, print_verified},
        sink::Discard,
        stdout,
    },
    topology::Extra,
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
    let engine = Engine::new(StorageIndex::default(), Duration::from_secs(5));
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
    let (report, _gates) = attach_all(&mut ebpf, &kv, &built, args.kernel.attach.family());
    if args.json {
        stdout::line(serde_json::to_string_pretty(&report)?)?;
    } else {
        print_report(&report)?;
    }
    report.check_required()?;
    Ok(0)
}
