//! Hooks that run on every write of a filesystem stay attached only while
//! the storage topology has a backing file on a filesystem they cover.
//!
//! The write-frame hooks (fs_write, writeback_entry) exist to recognise the
//! kernel threads that write backing files: loop workers, nfsd, file-backed
//! LIO and nvmet workers. On a kernel with tracepoints only they are ext4's
//! tracepoints, and each fires on every ext4 write of the machine, whoever
//! writes. With no backing file on ext4 there is nothing for them to see, so
//! they are parked: detached, programs kept loaded, and attached again (no
//! verifier run, no BTF) as soon as discovery finds such a file. Unlike the
//! pressure-driven hooks this replaced, the gate follows the topology, which
//! exists before any pressure: a loop device set up on an ext4 file is
//! followed from its next request on.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use aya::{
    programs::{
        fentry::FEntryLinkId, fexit::FExitLinkId, kprobe::KProbeLinkId, tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId, BtfTracePoint, KProbe, Program, TracePoint,
    },
    Ebpf,
};

use super::{
    loader::AttachReport,
    table::{Impl, Prog, Target},
};

/// A link aya handed out, by program type: detaching needs the typed id.
#[derive(Debug)]
pub enum LinkId {
    KProbe(KProbeLinkId),
    TracePoint(TracePointLinkId),
    FEntry(FEntryLinkId),
    FExit(FExitLinkId),
    BtfTracePoint(BtfTracePointLinkId),
}

/// Attaches one loaded program to `resolved` (a symbol, or `category:name`).
pub fn attach(ebpf: &mut Ebpf, prog: &Prog, resolved: &str) -> Result<LinkId> {
    let program = ebpf.program_mut(prog.program).context("program vanished")?;
    Ok(match prog.target {
        Target::Ksym(_) => {
            let p: &mut KProbe = program.try_into()?;
            LinkId::KProbe(p.attach(resolved, 0)?)
        }
        Target::Tp(_) => {
            let (c, n) = resolved.split_once(':').context("tracepoint name")?;
            let p: &mut TracePoint = program.try_into()?;
            LinkId::TracePoint(p.attach(c, n)?)
        }
        Target::BtfFn(_) => match program {
            Program::FEntry(p) => LinkId::FEntry(p.attach()?),
            Program::FExit(p) => LinkId::FExit(p.attach()?),
            _ => bail!("{} is not fentry/fexit", prog.program),
        },
        Target::BtfTp(_) => {
            let p: &mut BtfTracePoint = program.try_into()?;
            LinkId::BtfTracePoint(p.attach()?)
        }
    })
}

fn detach(ebpf: &mut Ebpf, name: &str, link: LinkId) -> Result<()> {
    let program = ebpf.program_mut(name).context("program vanished")?;
    match (program, link) {
        (Program::KProbe(p), LinkId::KProbe(l)) => p.detach(l)?,
        (Program::TracePoint(p), LinkId::TracePoint(l)) => p.detach(l)?,
        (Program::FEntry(p), LinkId::FEntry(l)) => p.detach(l)?,
        (Program::FExit(p), LinkId::FExit(l)) => p.detach(l)?,
        (Program::BtfTracePoint(p), LinkId::BtfTracePoint(l)) => p.detach(l)?,
        _ => bail!("{name}: link of another program type"),
    }
    Ok(())
}

/// One gated hook's chosen implementation, attached or parked.
pub struct Gated {
    pub hook: &'static str,
    pub imp: &'static Impl,
    /// Each program's resolved target, in `imp.progs` order.
    pub targets: Vec<String>,
    /// The live links; None while parked.
    pub links: Option<Vec<LinkId>>,
}

impl Gated {
    /// Whether a backing file on one of `fs_types` is something it sees.
    fn wanted(&self, fs_types: &BTreeSet<String>) -> bool {
        if self.imp.covers.is_empty() {
            !fs_types.is_empty()
        } else {
            self.imp.covers.iter().any(|c| fs_types.contains(*c))
        }
    }
}

/// The gated hooks of a session.
#[derive(Default)]
pub struct Gates(pub Vec<Gated>);

impl Gates {
    /// Attaches or parks each gated hook for the filesystem types that now
    /// hold backing files. Returns the hooks that changed, and whether each
    /// is attached now. A hook that cannot be attached again stays parked,
    /// and the error says so.
    pub fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        report: &mut AttachReport,
        fs_types: &BTreeSet<String>,
    ) -> Result<Vec<(&'static str, bool)>> {
        let mut changed = Vec::new();
        for g in &mut self.0 {
            let want = g.wanted(fs_types);
            match (want, g.links.take()) {
                (true, None) => {
                    let mut links = Vec::new();
                    for (prog, target) in g.imp.progs.iter().zip(&g.targets) {
                        match attach(ebpf, prog, target) {
                            Ok(l) => links.push(l),
                            Err(e) => {
                                for (p, l) in g.imp.progs.iter().zip(links) {
                                    let _ = detach(ebpf, p.program, l);
                                }
                                return Err(e.context(format!("cannot attach hook {} again", g.hook)));
                            }
                        }
                    }
                    g.links = Some(links);
                    changed.push((g.hook, true));
                }
                (false, Some(links)) => {
                    for (p, l) in g.imp.progs.iter().zip(links) {
                        detach(ebpf, p.program, l).with_context(|| format!("cannot park hook {}", g.hook))?;
                    }
                    changed.push((g.hook, false));
                }
                (_, links) => g.links = links,
            }
            if let Some(c) = report.hooks.iter_mut().find(|c| c.hook == g.hook) {
                c.parked = g.links.is_none();
            }
        }
        Ok(changed)
    }
}
