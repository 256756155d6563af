//! Walks the hook table: for each logical hook, tries its implementations in
//! order and keeps the first whose programs all load and attach. Every
//! skipped implementation keeps the kernel's own error, for `probes`.

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{BtfTracePoint, KProbe, Program, TracePoint},
    Btf, Ebpf,
};
use serde::Serialize;

use super::{
    config::{Built, KernelView},
    table::{Family, Hook, Prog, Target, HOOKS},
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
    /// What was attached: symbols (suffix resolved) or tracepoints.
    pub targets: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// Set when the hook is missing: what the rules lose.
    pub degraded: Option<&'static str>,
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
}

impl Attacher<'_> {
    fn btf(&mut self) -> Result<&Btf> {
        if self.btf.is_none() {
            self.btf = Some(Btf::from_sys_fs().context("cannot read kernel BTF for fentry/tp_btf")?);
        }
        Ok(self.btf.as_ref().expect("set above"))
    }

    /// The name to attach to, or why this target cannot be used here.
    fn resolve(&self, target: &Target) -> Result<String> {
        match *target {
            Target::Ksym(sym) => {
                if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                    bail!("no kprobe support in this kernel (/sys/bus/event_source/devices/kprobe is missing: CONFIG_KPROBES off?)");
                }
                self.kv
                    .kallsyms
                    .resolve(sym)
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("symbol {sym} not found in /proc/kallsyms"))
            }
            Target::BtfFn(f) => {
                if !self.kv.btf.has_function(f) {
                    bail!("function {f} not in kernel BTF");
                }
                Ok(f.to_owned())
            }
            Target::Tp(c, n) => {
                if let Some(why) = self.built.bad_tracepoints.get(&(c.to_owned(), n.to_owned())) {
                    bail!("{why}");
                }
                if !self.kv.tracefs.exists(c, n) {
                    bail!("tracepoint {c}:{n} does not exist");
                }
                Ok(format!("{c}:{n}"))
            }
            Target::BtfTp(n) => Ok(n.to_owned()),
        }
    }

    fn load(&mut self, prog: &Prog) -> Result<()> {
        let target = prog.target;
        let btf_fn = match target {
            Target::BtfFn(f) | Target::BtfTp(f) => Some(f),
            _ => None,
        };
        let btf = match btf_fn {
            Some(_) => Some(self.btf()?.clone()),
            None => None,
        };
        let program = self
            .ebpf
            .program_mut(prog.program)
            .with_context(|| format!("program {} not in the object", prog.program))?;
        match program {
            Program::KProbe(p) => p.load()?,
            Program::TracePoint(p) => p.load()?,
            Program::FEntry(p) => p.load(btf_fn.unwrap_or_default(), btf.as_ref().context("no BTF")?)?,
            Program::FExit(p) => p.load(btf_fn.unwrap_or_default(), btf.as_ref().context("no BTF")?)?,
            Program::BtfTracePoint(p) => p.load(btf_fn.unwrap_or_default(), btf.as_ref().context("no BTF")?)?,
            _ => bail!("unexpected program type for {}", prog.program),
        }
        Ok(())
    }

    fn attach(&mut self, prog: &Prog, resolved: &str) -> Result<()> {
        let program = self.ebpf.program_mut(prog.program).context("program vanished")?;
        match prog.target {
            Target::Ksym(_) => {
                let p: &mut KProbe = program.try_into()?;
                p.attach(resolved, 0)?;
            }
            Target::Tp(c, n) => {
                let p: &mut TracePoint = program.try_into()?;
                p.attach(c, n)?;
            }
            Target::BtfFn(_) => match program {
                Program::FEntry(p) => drop(p.attach()?),
                Program::FExit(p) => drop(p.attach()?),
                _ => bail!("{} is not fentry/fexit", prog.program),
            },
            Target::BtfTp(_) => {
                let p: &mut BtfTracePoint = program.try_into()?;
                p.attach()?;
            }
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
    fn try_impl(&mut self, progs: &[Prog]) -> Result<Vec<String>> {
        let mut done: Vec<&'static str> = Vec::new();
        let mut targets = Vec::new();
        for prog in progs {
            let step = self.resolve(&prog.target).and_then(|resolved| {
                self.load(prog).with_context(|| format!("{}: load", prog.program))?;
                done.push(prog.program);
                self.attach(prog, &resolved).with_context(|| format!("{}: attach to {resolved}", prog.program))?;
                Ok(resolved)
            });
            match step {
                Ok(t) => {
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
                Err(e) => {
                    for name in done {
                        self.unload(name);
                    }
                    return Err(e);
                }
            }
        }
        Ok(targets)
    }

    fn hook(&mut self, hook: &'static Hook, force: Option<Family>) -> Choice {
        let mut choice = Choice {
            hook: hook.name,
            required: hook.required,
            family: None,
            targets: vec![],
            skipped: vec![],
            degraded: None,
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
            match self.try_impl(imp.progs) {
                Ok(targets) => {
                    choice.family = Some(imp.family);
                    choice.targets = targets;
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

/// Attaches every hook, keeping the best implementation of each.
pub fn attach_all(ebpf: &mut Ebpf, kv: &KernelView, built: &Built, force: Option<Family>) -> AttachReport {
    let mut a = Attacher { ebpf, kv, built, btf: None };
    AttachReport { hooks: HOOKS.iter().map(|h| a.hook(h, force)).collect(), forced: force }
}

impl AttachReport {
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
}

/// Loads every program of the object through the verifier without
/// attaching it, then unloads it.
pub fn verify_all(ebpf: &mut Ebpf, kv: &KernelView, built: &Built) -> Vec<Verified> {
    let mut a = Attacher { ebpf, kv, built, btf: None };
    let mut out = Vec::new();
    for hook in HOOKS {
        for imp in hook.impls {
            for prog in imp.progs {
                let r = a.load(prog);
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
    }
    out
}
