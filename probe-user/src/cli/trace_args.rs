//! Options shared by every command that loads the probes (watch, monitor,
//! record), checked and turned into the agent's options (agent/start.rs
//! brings it up and runs it).

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{backing_file, secs};
use crate::{
    agent::{
        refresh::{Every, Refresher, FULL_SCAN_EVERY},
        run::RunOptions,
        session::{KernelPaths, Session, SessionOptions},
        start,
    },
    attach::table::Family,
    names::GfpNames,
    output::{sink::Sink, summary::Summary},
    topology::{Dev, Extra},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// The best implementation this kernel allows, per hook.
    Auto,
    Kprobe,
    Fentry,
    Tracepoint,
}

impl AttachMode {
    pub fn family(self) -> Option<Family> {
        match self {
            AttachMode::Auto => None,
            AttachMode::Kprobe => Some(Family::Kprobe),
            AttachMode::Fentry => Some(Family::Fentry),
            AttachMode::Tracepoint => Some(Family::Tracepoint),
        }
    }
}

/// Where the kernel's facts are.
#[derive(clap::Args, Debug, Clone)]
pub struct KernelArgs {
    /// tracefs mount point (mounted there if missing).
    #[arg(long, default_value = crate::kernel::tracefs::DEFAULT, value_name = "DIR")]
    pub tracefs: PathBuf,
    /// Kernel BTF, the source of every struct offset.
    #[arg(long, default_value = crate::kernel::btf::DEFAULT, value_name = "FILE")]
    pub btf: PathBuf,
    /// Force one attach family for every hook (for comparison and debugging).
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,
}

impl KernelArgs {
    pub fn paths(&self) -> KernelPaths {
        KernelPaths { tracefs: self.tracefs.clone(), btf: self.btf.clone() }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    /// Only events of this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Stop after this long: seconds, or 10m, 1h, 1h30m.
    #[arg(long, value_name = "DURATION", value_parser = secs::parse_whole)]
    pub duration: Option<u64>,
    /// Treat this process as a servicer (repeatable), for daemons discovery cannot see.
    #[arg(long = "servicer", value_name = "PID")]
    pub servicers: Vec<u32>,
    /// A file that backs a stacked device (repeatable).
    #[arg(long = "backing-file", value_name = "PATH=MAJOR:MINOR", value_parser = backing_file::parse)]
    pub backing_files: Vec<(PathBuf, Dev)>,
    /// How long a servicer may sit blocked inside reclaim before it is a
    /// deadlock (seconds, or 500ms, 1m).
    #[arg(long, default_value_t = 5.0, value_name = "DURATION", value_parser = secs::parse)]
    pub deadlock_after: f64,
    /// Time between summaries (seconds, or 1m, ...).
    #[arg(long, default_value_t = 10, value_name = "DURATION", value_parser = secs::parse_whole)]
    pub summary_every: u64,
    /// Time between topology discoveries, besides one on every mount or
    /// block device change. These read the open files only of processes
    /// not seen before, so they cost little however many processes run.
    #[arg(long, default_value_t = 5.0, value_name = "DURATION", value_parser = secs::parse)]
    pub refresh_every: f64,
    /// Time between full discoveries, which read every open file of every
    /// process again (besides one at start and on SIGHUP): the safety net
    /// for a process that opens a servicer's device node long after it
    /// started. Each costs about 1 s per 200,000 open files.
    #[arg(long, default_value_t = FULL_SCAN_EVERY.as_secs_f64(), value_name = "DURATION", value_parser = secs::parse)]
    pub full_scan_every: f64,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn check_pid(pid: u32, what: &str) -> Result<()> {
    if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("{what} {pid}: no such process");
    }
    Ok(())
}

impl TraceArgs {
    pub fn extra(&self) -> Extra {
        Extra { servicers: self.servicers.clone(), backing_files: self.backing_files.clone() }
    }

    /// Checks the options before anything is loaded or started.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = self.pid {
            check_pid(p, "-p")?;
        }
        for &p in &self.servicers {
            check_pid(p, "--servicer")?;
        }
        secs::positive("--deadlock-after", self.deadlock_after)?;
        if let Some(d) = self.duration {
            secs::whole("--duration", d)?;
        }
        secs::whole("--summary-every", self.summary_every)?;
        secs::positive("--refresh-every", self.refresh_every)?;
        secs::positive("--full-scan-every", self.full_scan_every)?;
        Ok(())
    }

    /// Loads and attaches the probes for `command`.
    pub fn start(&self, command: &'static str, trace_all: bool) -> Result<(Session, GfpNames)> {
        self.validate()?;
        start::start(&SessionOptions {
            command,
            paths: self.kernel.paths(),
            target_tgid: self.pid,
            trace_all,
            force: self.kernel.attach.family(),
            every_impl: false,
        })
    }

    /// Starts discovering the topology in the background (see
    /// [`Refresher`]); call after [`validate`](Self::validate).
    pub fn refresher(&self) -> Result<Refresher> {
        let every = Every {
            refresh: secs::positive("--refresh-every", self.refresh_every)?,
            full_scan: secs::positive("--full-scan-every", self.full_scan_every)?,
        };
        Ok(Refresher::start(self.extra(), every))
    }

    /// Runs the shared loop over `sink` until the duration ends or a signal.
    pub async fn run(&self, session: &mut Session, sink: &mut dyn Sink, refresher: &Refresher) -> Result<Summary> {
        let deadlock_after = secs::positive("--deadlock-after", self.deadlock_after)?;
        let opts = RunOptions {
            duration: self.duration.map(|d| secs::whole("--duration", d)).transpose()?,
            summary_every: secs::whole("--summary-every", self.summary_every.max(1))?,
        };
        start::run(session, sink, refresher, deadlock_after, &opts).await
    }
}
