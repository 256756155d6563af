//! Options shared by every command that loads the probes (watch, monitor,
//! record), and the code that turns them into a running loop.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::secs;
use crate::{
    agent::{
        refresh::{Every, Refresher, FULL_SCAN_EVERY},
        run::{EventLoop, RunOptions, Sink},
        session::{KernelPaths, Session, SessionOptions},
    },
    attach::table::Family,
    detect::{engine::Engine, index::StackIndex},
    names::{self, GfpNames, GfpSource},
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

fn parse_backing(s: &str) -> Result<(PathBuf, Dev), String> {
    let (path, dev) = s.rsplit_once('=').ok_or("expected PATH=MAJOR:MINOR")?;
    let dev = Dev::parse(dev).ok_or_else(|| format!("bad device number `{dev}` (expected {})", Dev::FORMAT))?;
    Ok((PathBuf::from(path), dev))
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
    #[arg(long = "backing-file", value_name = "PATH=MAJOR:MINOR", value_parser = parse_backing)]
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

    /// Loads and attaches the probes.
    pub fn start(&self, command: &'static str, trace_all: bool) -> Result<(Session, GfpNames)> {
        self.validate()?;
        let session = Session::start(&SessionOptions {
            command,
            paths: self.kernel.paths(),
            target_tgid: self.pid,
            trace_all,
            force: self.kernel.attach.family(),
            every_impl: false,
        })?;
        let (gfp, source) = names::load(session.tracefs.root());
        if let GfpSource::Builtin { reason } = source {
            log::warn!("GFP names from the built-in 6.18 table: {reason}");
        }
        Ok((session, gfp))
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
    pub async fn run(
        &self,
        session: &mut Session,
        gfp: GfpNames,
        sink: &mut dyn Sink,
        refresher: &Refresher,
    ) -> Result<crate::agent::run::Summary> {
        let deadlock_after = secs::positive("--deadlock-after", self.deadlock_after)?;
        let engine = Engine::new(StackIndex::default(), gfp, deadlock_after);
        let mut l = EventLoop::new(session, engine, sink, refresher);
        let opts = RunOptions {
            duration: self.duration.map(|d| secs::whole("--duration", d)).transpose()?,
            summary_every: secs::whole("--summary-every", self.summary_every.max(1))?,
        };
        l.run(&opts).await?;
        Ok(l.summary.clone())
    }
}
