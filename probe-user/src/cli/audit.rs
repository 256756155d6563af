//! `reclaimscope audit`: the storage stacks on this machine, every task that
//! completes their I/O, and whether reclaim in that task can recurse into
//! the filesystem above it. Needs no BPF; works without root as far as
//! /proc lets it.

use super::backing_file;
use crate::output::{audit::audit, stdout};
use crate::topology::{capture, Dev, Extra, Topology};
use anyhow::Result;
use std::path::PathBuf;

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
