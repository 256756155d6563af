//! `reclaimscope audit`: the storage stacks on this machine, every task that
//! completes their I/O, and whether reclaim in that task can recurse into
//! the filesystem above it. Needs no BPF; works without root as far as
//! /proc lets it.

use super::backing_file;
use crate::output::{self, stdout};
use crate::topology::{capture, Dev, Extra, Servicer, StackPath, Topology};
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// No unprotected servicer sits under a mounted filesystem.
pub const EXIT_OK: i32 = 0;
/// Discovery failed or the arguments were bad (returned as `Err` by [`run`]).
pub const EXIT_ERROR: i32 = 1;
/// At least one unprotected servicer sits under a mounted filesystem.
pub const EXIT_UNPROTECTED: i32 = 3;
/// None seen, but the daemon of a FUSE filesystem under a mounted
/// filesystem could not be seen (typically: not root), so no all-clear.
pub const EXIT_INCOMPLETE: i32 = 4;

/// Shown under every `--help` of `audit` (a doc comment on the
/// subcommand would hide examples written there).
const EXAMPLES: &str = "\
Examples:
  reclaimscope audit
  reclaimscope audit --json | jq '.unprotected'
  reclaimscope audit --servicer 4242 --backing-file /srv/nbd0.img=43:0";

/// Show the storage stacks and whether their servicers are protected
/// against reclaim recursion.
///
/// Exit status: 0 when no unprotected servicer sits under a mounted
/// filesystem, 3 when one does, 4 when none was seen but a FUSE daemon under
/// a mounted filesystem could not be found (run as root), 1 on errors
/// (2 for a malformed command line).
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES, verbatim_doc_comment)]
pub struct AuditArgs {
    /// Print the report as JSON (the same tree and verdict).
    #[arg(long)]
    pub json: bool,
    /// A process that completes I/O for a stacked device but that discovery
    /// cannot see, such as an NBD server (repeatable).
    #[arg(long = "servicer", value_name = "PID")]
    pub servicers: Vec<u32>,
    /// PATH holds the data of block device DEV ("major:minor"), e.g. an NBD
    /// server's image (repeatable).
    #[arg(long = "backing-file", value_name = "PATH=DEV", value_parser = backing_file::parse)]
    pub backing_files: Vec<(PathBuf, Dev)>,
    /// Audit a snapshot directory (written by --save-snapshot) instead of this machine.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also save what discovery read into DIR, a snapshot that --root reads back.
    #[arg(long, value_name = "DIR", conflicts_with = "root")]
    pub save_snapshot: Option<PathBuf>,
}

/// What `--json` prints: the same tree and verdict as the text.
#[derive(Serialize)]
pub(crate) struct Report<'a> {
    pub(crate) stacks: Vec<StackPath>,
    /// Servicers whose device is unknown or not on this host.
    pub(crate) unplaced_servicers: Vec<&'a Servicer>,
    pub(crate) unprotected: Vec<Verdict<'a>>,
    /// FUSE filesystems under a mounted filesystem whose daemon was not found.
    pub(crate) unseen_servicers: Vec<String>,
    pub(crate) warnings: &'a [String],
    pub(crate) exit_code: i32,
}

/// An unprotected servicer under a mounted filesystem, and what to change.
#[derive(Serialize)]
pub(crate) struct Verdict<'a> {
    pub(crate) tgid: Option<u32>,
    pub(crate) comm: &'a str,
    pub(crate) serves: String,
    pub(crate) under_mounts: &'a [PathBuf],
    pub(crate) unprotected_threads: Vec<u32>,
    pub(crate) remedy: &'a str,
}

/// Runs the audit and returns the exit code (errors are the caller's exit 1).
pub fn run(args: &AuditArgs) -> Result<i32> {
    let extra = Extra { servicers: args.servicers.clone(), backing_files: args.backing_files.clone() };
    let topo = match (&args.root, &args.save_snapshot) {
        (Some(root), _) => Topology::discover_from(root, &extra)?,
        (None, Some(dir)) => {
            let topo = capture(dir, &extra)?;
            eprintln!("snapshot saved to {}", dir.display());
            topo
        }
        (None, None) => Topology::discover(&extra)?,
    };
    for w in &topo.warnings {
        eprintln!("warning: {w}");
    }
    let out = audit(&topo);
    if args.json {
        stdout::line(serde_json::to_string_pretty(&out.json)?)?;
    } else {
        stdout::write(&out.text)?;
    }
    Ok(out.exit_code)
}

/// The audit of one topology, in both forms.
pub struct AuditOutput {
    /// The tree and verdict as printed.
    pub text: String,
    /// The same tree and verdict, as `--json` prints it.
    pub json: serde_json::Value,
    pub exit_code: i32,
}

/// Builds the report once and renders it both ways, so text and JSON cannot disagree.
pub fn audit(topo: &Topology) -> AuditOutput {
    let report = report(topo);
    AuditOutput {
        text: output::audit::render(&report),
        json: serde_json::to_value(&report).expect("the report is plain data and always serializes"),
        exit_code: report.exit_code,
    }
}

fn report(topo: &Topology) -> Report<'_> {
    let stacks = topo.stacks();
    let placed =
        |s: &Servicer| topo.devices.iter().any(|d| d.dev == s.serves) || topo.mount_for_dev(s.serves).is_some();
    let unprotected: Vec<Verdict> = topo
        .unprotected()
        .into_iter()
        .map(|s| Verdict {
            tgid: s.tgid,
            comm: &s.comm,
            serves: s.serves_name.clone(),
            under_mounts: &s.under_mounts,
            unprotected_threads: s.threads.iter().filter(|t| !t.protection.is_protected()).map(|t| t.tid).collect(),
            remedy: &s.remedy,
        })
        .collect();
    let unseen: Vec<String> = topo
        .unseen_servicers()
        .into_iter()
        .map(|d| topo.mount_for_dev(d).map_or(d.to_string(), |m| m.label()))
        .collect();
    let exit_code = match (unprotected.is_empty(), unseen.is_empty()) {
        (false, _) => EXIT_UNPROTECTED,
        (true, false) => EXIT_INCOMPLETE,
        (true, true) => EXIT_OK,
    };
    Report {
        stacks,
        unplaced_servicers: topo.servicers.iter().filter(|s| !placed(s)).collect(),
        unprotected,
        unseen_servicers: unseen,
        warnings: &topo.warnings,
        exit_code,
    }
}
