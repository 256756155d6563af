//! `reclaimscope probes`: which implementation each logical hook uses on
//! this kernel, and why the better ones were skipped.

use anyhow::Result;
use prettytable::{format, row, Table};

use super::trace_args::KernelArgs;
use crate::{
    agent::session::load_object,
    attach::{
        config,
        loader::{attach_all, verify_all, AttachReport, Verified},
    },
    kernel::preflight,
    output::stdout,
};

/// Examples:
///   sudo reclaimscope probes
///   sudo reclaimscope probes --json
///   sudo reclaimscope probes --verify      # load every program through the verifier
#[derive(clap::Args, Debug)]
pub struct ProbesArgs {
    #[arg(long)]
    pub json: bool,
    /// Load every program of every family through the verifier, without attaching.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn print_report(r: &AttachReport) -> Result<()> {
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_NO_LINESEP_WITH_TITLE);
    t.set_titles(row!["HOOK", "CHOSEN", "TARGET", "SKIPPED (kernel's reason)"]);
    for c in &r.hooks {
        let chosen = c.family.map(|f| f.name()).unwrap_or(if c.required { "MISSING" } else { "missing" });
        let skipped: Vec<String> = c.skipped.iter().map(|s| format!("{}: {}", s.family.name(), s.reason)).collect();
        t.add_row(row![c.hook, chosen, c.targets.join("\n"), skipped.join("\n")]);
    }
    stdout::write(&t.to_string())?;
    for (hook, lost) in r.weakened() {
        stdout::line(format!("weakened: {hook} missing, {lost}"))?;
    }
    Ok(())
}

fn print_verified(v: &[Verified]) -> Result<()> {
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_NO_LINESEP_WITH_TITLE);
    t.set_titles(row!["PROGRAM", "FAMILY", "TARGET", "VERIFIER"]);
    for x in v {
        let res = if x.loaded { "loaded".to_owned() } else { format!("failed: {}", x.error.as_deref().unwrap_or("")) };
        t.add_row(row![x.program, x.family.name(), x.target, res]);
    }
    stdout::write(&t.to_string())
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
