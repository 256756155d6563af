//! Options shared by every command that loads the probes (watch, monitor,
//! record), and the code that turns them into a running loop.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};

use super::secs;
use crate::{
    agent::{
        run::{Loop, RunOptions, Sink},
        session::{KernelPaths, Session, SessionOptions},
    },
    attach::table::Family,
    detect::{engine::Engine, index::StackIndex},
    flags::{self, GfpNames, GfpSource},
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
    let dev = Dev::parse(dev).ok_or_else(|| format!("bad device number `{dev}` (expected MAJOR:MINOR)"))?;
    Ok((PathBuf::from(path), dev))
}

#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    /// Only events of this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Treat this process as a servicer (repeatable), for daemons discovery cannot see.
    #[arg(long = "servicer", value_name = "PID")]
    pub servicers: Vec<u32>,
    /// A file that backs a stacked device (repeatable).
    #[arg(long = "backing-file", value_name = "PATH=MAJOR:MINOR", value_parser = parse_backing)]
    pub backing_files: Vec<(PathBuf, Dev)>,
    /// Seconds a servicer may sit blocked inside reclaim before it is a deadlock.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub deadlock_after: f64,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub summary_every: u64,
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

    fn validate(&self) -> Result<()> {
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
        })?;
        let (gfp, source) = flags::load(session.kv.tracefs.root());
        if let GfpSource::Builtin { reason } = source {
            log::warn!("GFP names from the built-in 6.18 table: {reason}");
        }
        Ok((session, gfp))
    }

    /// Runs the shared loop over `sink` until the duration ends or a signal.
    pub async fn run(
        &self,
        session: &mut Session,
        gfp: GfpNames,
        sink: &mut dyn Sink,
    ) -> Result<crate::agent::run::Summary> {
        let engine = Engine::new(StackIndex::default(), gfp, Duration::from_secs_f64(self.deadlock_after));
        let extra = self.extra();
        let mut l = Loop::new(session, engine, sink, &extra).await.context("cannot start the agent")?;
        let opts = RunOptions {
            duration: self.duration.map(Duration::from_secs),
            summary_every: Duration::from_secs(self.summary_every.max(1)),
            extra,
        };
        l.run(&opts).await?;
        Ok(l.summary.clone())
    }
}
