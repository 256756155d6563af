//! Walks the hook table: for each logical hook, tries its implementations in
//! order and keeps the first whose programs all load and attach. Every
//! skipped implementation keeps the kernel's own error, for `probes`.
//! Hooks that found nothing can be tried again later: a module (ext4, xfs)
//! loaded after start brings their targets.

use anyhow::{anyhow, bail, Context, Result};
use aya::{programs::Program, Btf, Ebpf};
use serde::Serialize;

use super::{
    config::{Built, KernelView},
    gates::{attach, Gated, Gates, LinkId},
    table::{Family, Hook, Impl, Prog, Target, HOOKS},
};

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub family: Family,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub hook: &'static str,
    pub required: bool,
    /// None when no implementation could be used.
    pub family: Option<Family>,
    /// What the chosen implementation cannot see that a better one could.
    pub lacks: Option<&'static str>,
    /// What was attached: symbols (suffix resolved) or tracepoints.
    pub targets: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// Set when the hook is missing: what the rules lose.
    pub degraded: Option<&'static str>,
    /// Attached, then detached while no backing file lives on a filesystem
    /// it covers (attach/gates.rs); it attaches again with the first one.
    pub parked: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct AttachReport {
    pub hooks: Vec<Choice>,
    /// The family forced with --attach, if any.
    pub forced: Option<Family>,
}

impl AttachReport {
    /// One line per hook that is missing, naming what the rules lose.
    pub fn weakened(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.hooks.iter().filter_map(|c| c.degraded.map(|d| (c.hook, d)))
    }

    /// Fails when a required hook has no implementation that works, naming
    /// the kernel's reasons.
    pub fn check_required(&self) -> Result<()> {
        if let Some(c) = self.hooks.iter().find(|c| c.required && c.family.is_none()) {
            let why: Vec<String> = c.skipped.iter().map(|s| format!("{}: {}", s.family.name(), s.reason)).collect();
            let forced = self.forced.map(|f| format!(" with --attach={}", f.name())).unwrap_or_default();
            bail!("cannot attach the required hook `{}`{forced}: {}", c.hook, why.join("; "));
        }
        Ok(())
    }

    /// Tries the hooks that have no implementation again (after a module
    /// loaded); returns the names of those that attached now.
    pub fn retry_missing(
        &mut self,
        ebpf: &mut Ebpf,
        kv: &KernelView,
        built: &Built,
        gates: &mut Gates,
    ) -> Vec<&'static str> {
        let mut a = Attacher { ebpf, kv, built, btf: None, gated: std::mem::take(&mut gates.0) };
        let mut now = Vec::new();
        for (choice, hook) in self.hooks.iter_mut().zip(HOOKS) {
            if choice.family.is_none() {
                *choice = a.hook(hook, self.forced);
                if choice.family.is_some() {
                    now.push(hook.name);
                }
            }
        }
        gates.0 = a.gated;
        now
    }
}

/// The result of loading (not attaching) one program through the verifier.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub program: &'static str,
    pub family: Family,
    pub target: String,
    pub loaded: bool,
    pub error: Option<String>,
}

struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    kv: &'a KernelView,
    built: &'a Built,
    btf: Option<Btf>,
    /// The gated hooks attached so far, with their links.
    gated: Vec<Gated>,
}

impl Attacher<'_> {
    /// Parses vmlinux BTF the first time a program needs it. Parsed once and
    /// borrowed by every load: a parse is tens of MiB, and start-up's peak
    /// RSS is what an operator's memory limit has to allow for.
    fn parse_btf(&mut self) -> Result<()> {
        if self.btf.is_none() {
            self.btf = Some(Btf::from_sys_fs().context("cannot read kernel BTF for fentry/tp_btf")?);
        }
        Ok(())
    }

    /// A kallsyms symbol the kernel lets a kprobe attach to: `name` or a
    /// compiler-suffixed copy of it that ftrace can hook.
    fn kprobe_symbol(&self, name: &str) -> Result<String> {
        let copies: Vec<&str> = self.kv.kallsyms.copies(name).collect();
        if copies.is_empty() {
            bail!("symbol {name} not found in /proc/kallsyms");
        }
        match &self.kv.traceable {
            None => Ok(copies[0].to_owned()),
            Some(ok) => copies.iter().find(|c| ok.contains(**c)).map(|c| (*c).to_owned()).ok_or_else(|| {
                anyhow!(
                    "{} is notrace on this kernel (not in available_filter_functions): the kernel refuses kprobes on it",
                    copies.join(", ")
                )
            }),
        }
    }

    /// The first alternative of `target` this kernel has, or why none works.
    fn resolve(&self, target: &Target) -> Result<String> {
        let mut why = Vec::new();
        match *target {
            Target::Ksym(names) => {
                if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                    bail!("no kprobe support in this kernel (/sys/bus/event_source/devices/kprobe is missing: CONFIG_KPROBES off?)");
                }
                for name in names {
                    match self.kprobe_symbol(name) {
                        Ok(sym) => return Ok(sym),
                        Err(e) => why.push(format!("{e:#}")),
                    }
                }
            }
            Target::BtfFn(names) => {
                for f in names {
                    if !self.kv.btf.has_function(f) {
                        why.push(format!("function {f} not in kernel BTF"));
                    } else if self.kv.traceable.as_ref().is_some_and(|ok| !ok.contains(*f)) {
                        why.push(format!("{f} is notrace on this kernel (not in available_filter_functions): no trampoline can attach"));
                    } else {
                        return Ok((*f).to_owned());
                    }
                }
            }
            Target::Tp(tps) => {
                for &(c, n) in tps {
                    if let Some(bad) = self.built.tp.bad.get(&(c.to_owned(), n.to_owned())) {
                        why.push(bad.clone());
                    } else if !self.kv.tracefs.exists(c, n) {
                        why.push(format!("tracepoint {c}:{n} does not exist"));
                    } else {
                        return Ok(format!("{c}:{n}"));
                    }
                }
            }
            Target::BtfTp(names) => {
                for n in names {
                    if self.kv.btf.has_btf_tracepoint(n) {
                        return Ok((*n).to_owned());
                    }
                    why.push(format!("no BTF tracepoint {n}"));
                }
            }
        }
        bail!("{}", why.join("; "))
    }

    fn load(&mut self, prog: &Prog, resolved: &str) -> Result<()> {
        if matches!(prog.target, Target::BtfFn(_) | Target::BtfTp(_)) {
            self.parse_btf()?;
        }
        let btf = self.btf.as_ref();
        let program = self
            .ebpf
            .program_mut(prog.program)
            .with_context(|| format!("program {} not in the object", prog.program))?;
        let btf = || btf.context("no BTF");
        match program {
            Program::KProbe(p) => p.load()?,
            Program::TracePoint(p) => p.load()?,
            Program::FEntry(p) => p.load(resolved, btf()?)?,
            Program::FExit(p) => p.load(resolved, btf()?)?,
            Program::BtfTracePoint(p) => p.load(resolved, btf()?)?,
            _ => bail!("unexpected program type for {}", prog.program),
        }
        Ok(())
    }

    fn unload(&mut self, name: &str) {
        if let Some(program) = self.ebpf.program_mut(name) {
            let _ = match program {
                Program::KProbe(p) => p.unload(),
                Program::TracePoint(p) => p.unload(),
                Program::FEntry(p) => p.unload(),
                Program::FExit(p) => p.unload(),
                Program::BtfTracePoint(p) => p.unload(),
                _ => Ok(()),
            };
        }
    }

    /// Loads and attaches every program of one implementation, or none.
    /// Returns the target each program attached to, with its link.
    fn try_impl(&mut self, imp: &'static Impl) -> Result<Vec<(String, LinkId)>> {
        let mut done: Vec<&'static str> = Vec::new();
        let mut out = Vec::new();
        for prog in imp.progs {
            let step = self.resolve(&prog.target).and_then(|resolved| {
                self.load(prog, &resolved).with_context(|| format!("{}: load", prog.program))?;
                done.push(prog.program);
                let link = attach(self.ebpf, prog, &resolved)
                    .with_context(|| format!("{}: attach to {resolved}", prog.program))?;
                Ok((resolved, link))
            });
            match step {
                Ok(t) => out.push(t),
                Err(e) => {
                    for name in done {
                        self.unload(name);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn hook(&mut self, hook: &'static Hook, force: Option<Family>) -> Choice {
        let mut choice = Choice {
            hook: hook.name,
            required: hook.required,
            family: None,
            lacks: None,
            targets: vec![],
            skipped: vec![],
            degraded: None,
            parked: false,
        };
        for imp in hook.impls {
            if force.is_some_and(|f| f != imp.family) {
                continue;
            }
            if choice.family.is_some() {
                choice
                    .skipped
                    .push(Skipped { family: imp.family, reason: "a better implementation is attached".into() });
                continue;
            }
            match self.try_impl(imp) {
                Ok(attached) => {
                    choice.family = Some(imp.family);
                    choice.lacks = imp.lacks;
                    let (targets, links): (Vec<String>, Vec<LinkId>) = attached.into_iter().unzip();
                    for target in &targets {
                        if !choice.targets.contains(target) {
                            choice.targets.push(target.clone());
                        }
                    }
                    if hook.gated {
                        self.gated.push(Gated { hook: hook.name, imp, targets, links: Some(links) });
                    }
                }
                Err(e) => choice.skipped.push(Skipped { family: imp.family, reason: format!("{e:#}") }),
            }
        }
        if choice.family.is_none() {
            choice.degraded = Some(hook.degrades);
            if choice.skipped.is_empty() {
                if let Some(f) = force {
                    choice
                        .skipped
                        .push(Skipped { family: f, reason: format!("no {} implementation of this hook", f.name()) });
                }
            }
        }
        choice
    }
}

/// Attaches every hook, keeping the best implementation of each. The gated
/// hooks come back attached, with what [`Gates::apply`] needs to park them.
pub fn attach_all(ebpf: &mut Ebpf, kv: &KernelView, built: &Built, force: Option<Family>) -> (AttachReport, Gates) {
    let mut a = Attacher { ebpf, kv, built, btf: None, gated: Vec::new() };
    let report = AttachReport { hooks: HOOKS.iter().map(|h| a.hook(h, force)).collect(), forced: force };
    (report, Gates(a.gated))
}

/// One implementation attached next to all the others, for measuring.
#[derive(Debug, Clone, Serialize)]
pub struct Attached {
    pub hook: &'static str,
    pub family: Family,
    pub lacks: Option<&'static str>,
    pub programs: Vec<&'static str>,
    pub targets: Vec<String>,
    /// Why it could not attach (None: attached).
    pub error: Option<String>,
}

/// Attaches every implementation of every hook that this kernel takes, not
/// only the best: `probes --measure` compares their cost per call under the
/// same workload.
pub fn attach_every_impl(ebpf: &mut Ebpf, kv: &KernelView, built: &Built) -> Vec<Attached> {
    let mut a = Attacher { ebpf, kv, built, btf: None, gated: Vec::new() };
    let mut out = Vec::new();
    for hook in HOOKS {
        for imp in hook.impls {
            let r = a.try_impl(imp).map(|attached| {
                let mut targets: Vec<String> = attached.into_iter().map(|(t, _)| t).collect();
                targets.dedup();
                targets
            });
            out.push(Attached {
                hook: hook.name,
                family: imp.family,
                lacks: imp.lacks,
                programs: imp.progs.iter().map(|p| p.program).collect(),
                targets: r.as_ref().map(Clone::clone).unwrap_or_default(),
                error: r.err().map(|e| format!("{e:#}")),
            });
        }
    }
    out
}

/// Loads every program of the object through the verifier without
/// attaching it, then unloads it. A program is loaded against the first
/// target this kernel has; one with none is reported as such.
pub fn verify_all(ebpf: &mut Ebpf, kv: &KernelView, built: &Built) -> Vec<Verified> {
    let mut a = Attacher { ebpf, kv, built, btf: None, gated: Vec::new() };
    let mut out: Vec<Verified> = Vec::new();
    for imp in HOOKS.iter().flat_map(|h| h.impls) {
        for prog in imp.progs {
            if out.iter().any(|v| v.program == prog.program) {
                continue;
            }
            let r = match prog.target {
                // Kprobe and tracepoint programs load without their target.
                Target::Ksym(_) | Target::Tp(_) => a.load(prog, ""),
                _ => a.resolve(&prog.target).and_then(|t| a.load(prog, &t)),
            };
            a.unload(prog.program);
            out.push(Verified {
                program: prog.program,
                family: imp.family,
                target: prog.target.describe(),
                loaded: r.is_ok(),
                error: r.err().map(|e| format!("{e:#}")),
            });
        }
    }
    out
}
