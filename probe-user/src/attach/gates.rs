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

/// An attached link, owned: dropping it detaches the program.
type OwnedLink = Box<dyn Send>;

/// Takes `link` out of its program. Dropping the result detaches it; that
/// waits for an RCU grace period per tracepoint (tens of ms each here), so
/// it is done off the event loop (see [`release`]).
fn take(ebpf: &mut Ebpf, name: &str, link: LinkId) -> Result<OwnedLink> {
    let program = ebpf.program_mut(name).context("program vanished")?;
    Ok(match (program, link) {
        (Program::KProbe(p), LinkId::KProbe(l)) => Box::new(p.take_link(l)?),
        (Program::TracePoint(p), LinkId::TracePoint(l)) => Box::new(p.take_link(l)?),
        (Program::FEntry(p), LinkId::FEntry(l)) => Box::new(p.take_link(l)?),
        (Program::FExit(p), LinkId::FExit(l)) => Box::new(p.take_link(l)?),
        (Program::BtfTracePoint(p), LinkId::BtfTracePoint(l)) => Box::new(p.take_link(l)?),
        _ => bail!("{name}: link of another program type"),
    })
}

/// Detaches taken links on a thread of their own: parking a hook must not
/// stall the event loop for the grace periods (six tracepoints cost about
/// 400 ms on this machine's kind).
fn release(links: Vec<OwnedLink>) {
    if !links.is_empty() {
        let _ = std::thread::Builder::new().name("detach".into()).spawn(move || drop(links));
    }
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
                                let taken =
                                    g.imp.progs.iter().zip(links).filter_map(|(p, l)| take(ebpf, p.program, l).ok());
                                release(taken.collect());
                                return Err(e.context(format!("cannot attach hook {} again", g.hook)));
                            }
                        }
                    }
                    g.links = Some(links);
                    changed.push((g.hook, true));
                }
                (false, Some(links)) => {
                    let mut taken = Vec::new();
                    for (p, l) in g.imp.progs.iter().zip(links) {
                        match take(ebpf, p.program, l) {
                            Ok(t) => taken.push(t),
                            Err(e) => {
                                release(taken);
                                return Err(e.context(format!("cannot park hook {}", g.hook)));
                            }
                        }
                    }
                    release(taken);
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
