//! Start-up: privileges, kernel facts, CONFIG, load, attach, maps.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    Ebpf, EbpfLoader,
};
use probe_common::{config::TracepointOffsets, maps as names};

use super::{maps_sync::MapsSync, stacks::Stacks};
use crate::{
    attach::{
        config::{self, Built, KernelView},
        gates::Gates,
        loader::{self, AttachReport},
        table::Family,
    },
    detect::behaviour::ReclaimBehaviour,
    events::stream::EventStream,
    kernel::{btf::KernelBtf, kallsyms::Kallsyms, preflight, tracefs::Tracefs},
    topology::Topology,
};

/// The eBPF object, built by `cargo xtask build` and embedded at compile time.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("RECLAIMSCOPE_BPF_OBJ"));

/// Where to find the kernel's facts; overridable for tests and odd systems.
#[derive(Debug, Clone)]
pub struct KernelPaths {
    pub tracefs: PathBuf,
    pub btf: PathBuf,
}

impl KernelPaths {
    /// Reads BTF, tracefs and kallsyms, failing with one line when a piece
    /// is missing.
    pub fn view(&self) -> Result<KernelView> {
        let btf = KernelBtf::load(&self.btf)?;
        let tracefs = Tracefs::open(&self.tracefs)?;
        let kallsyms = Kallsyms::load(std::path::Path::new(crate::kernel::kallsyms::DEFAULT))?;
        let traceable = tracefs.traceable_functions();
        Ok(KernelView { tracefs, btf, kallsyms, traceable })
    }
}

pub struct SessionOptions {
    pub command: &'static str,
    pub paths: KernelPaths,
    pub target_tgid: Option<u32>,
    pub trace_all: bool,
    pub force: Option<Family>,
    /// Attach every implementation of every hook, not only the best (for
    /// `probes --measure`; events are then counted more than once).
    pub every_impl: bool,
}

pub struct Counters {
    map: PerCpuArray<aya::maps::MapData, u64>,
}

impl Counters {
    /// Sum over CPUs of one probe_common::maps::counter slot.
    pub fn get(&self, idx: u32) -> u64 {
        self.map.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

pub struct Session {
    /// Owns every program and link: dropping it detaches them all.
    pub ebpf: Ebpf,
    /// What is left of the kernel view after attaching: the symbols that
    /// name stack frames and tracefs. The parsed BTF and ftrace's function
    /// list (most of the agent's memory at start) are dropped, and re-read
    /// only when a module load brings something to attach.
    pub kallsyms: Kallsyms,
    pub tracefs: Tracefs,
    pub built: Built,
    pub attach: AttachReport,
    /// The hooks attached only while a backing file lives on a filesystem
    /// they cover.
    gates: Gates,
    /// With `every_impl`: every implementation and whether it attached.
    pub every: Vec<loader::Attached>,
    pub events: EventStream,
    pub maps: MapsSync,
    pub stacks: Stacks,
    pub counters: Counters,
    /// What this kernel's reclaim does that findings depend on.
    pub behaviour: ReclaimBehaviour,
    tp_offsets: Array<MapData, TracepointOffsets>,
    paths: KernelPaths,
    /// The loaded modules when the hooks were last attached.
    modules: Vec<String>,
}

/// Names of the loaded kernel modules, from /proc/modules.
fn loaded_modules() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let mut names: Vec<String> = text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();
    names.sort();
    names
}

/// Creates the maps and reads the programs, with CONFIG filled in.
pub fn load_object(built: &Built) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global("CONFIG", &built.config, true)
        .load(BPF_OBJECT)
        .context("cannot load the eBPF object")
}

/// Whether the memory controller is mounted as cgroup v1's (a `cgroup`
/// mount with the `memory` option), rather than in the unified hierarchy.
fn legacy_memcg() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(2) == Some(&"cgroup") && f.get(3).is_some_and(|o| o.split(',').any(|o| o == "memory"))
    })
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map>,
    <T as TryFrom<aya::maps::Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Session {
    pub fn start(opts: &SessionOptions) -> Result<Session> {
        preflight::require_bpf_privileges(opts.command)?;
        let kv = opts.paths.view()?;
        let built = config::build(&kv, opts.target_tgid.unwrap_or(0), opts.trace_all);
        for m in &built.missing_fields {
            log::warn!("kernel BTF has no {}: disabled {}", m.field, m.disables);
        }
        let mut ebpf = load_object(&built)?;
        let mut tp_offsets = take::<Array<_, TracepointOffsets>>(&mut ebpf, names::TP_OFFSETS)?;
        tp_offsets.set(0, built.tp.offsets, 0).context("cannot write the tracepoint offsets")?;
        let modules = loaded_modules();
        let (attach, gates, every) = if opts.every_impl {
            (AttachReport::default(), Gates::default(), loader::attach_every_impl(&mut ebpf, &kv, &built))
        } else {
            let (attach, gates) = loader::attach_all(&mut ebpf, &kv, &built, opts.force);
            (attach, gates, Vec::new())
        };
        attach.check_required()?;
        for (hook, lost) in attach.weakened() {
            log::warn!("hook {hook} unavailable on this kernel; {lost}");
        }
        let events = EventStream::new(take::<RingBuf<_>>(&mut ebpf, names::EVENTS)?)?;
        let maps = MapsSync::new(
            take::<HashMap<_, _, _>>(&mut ebpf, names::SERVICERS)?,
            take::<HashMap<_, _, _>>(&mut ebpf, names::BACKING_FILES)?,
        );
        let stacks = Stacks::new(take::<StackTraceMap<_>>(&mut ebpf, names::STACKS)?);
        let counters = Counters { map: take::<PerCpuArray<_, _>>(&mut ebpf, names::COUNTERS)? };
        let behaviour = ReclaimBehaviour {
            legacy_memcg: legacy_memcg(),
            skips_flagged_writeback: kv.btf.skips_flagged_writeback(),
        };
        let KernelView { kallsyms, tracefs, .. } = kv;
        trim_heap();
        Ok(Session {
            ebpf,
            kallsyms,
            tracefs,
            built,
            attach,
            gates,
            every,
            events,
            maps,
            stacks,
            counters,
            behaviour,
            tp_offsets,
            paths: opts.paths.clone(),
            modules,
        })
    }

    /// A monitor runs for months, and XFS may first be mounted (its module
    /// loaded) long after start. When the set of loaded modules changed,
    /// re-reads kallsyms, ftrace's functions and the tracepoint formats, and
    /// attaches the hooks that had nothing to attach to. Returns those.
    pub fn refresh_modules(&mut self) -> Result<Vec<&'static str>> {
        let now = loaded_modules();
        if now == self.modules || !self.attach.hooks.iter().any(|c| c.family.is_none()) {
            self.modules = now;
            return Ok(Vec::new());
        }
        self.modules = now;
        let kv = self.paths.view()?;
        self.built.tp = config::tracepoint_offsets(&kv.tracefs);
        self.tp_offsets.set(0, self.built.tp.offsets, 0).context("cannot write the tracepoint offsets")?;
        let attached = self.attach.retry_missing(&mut self.ebpf, &kv, &self.built, &mut self.gates);
        let KernelView { kallsyms, tracefs, .. } = kv;
        (self.kallsyms, self.tracefs) = (kallsyms, tracefs);
        trim_heap();
        Ok(attached)
    }
}

impl Session {
    /// Attaches or parks the gated hooks for the filesystems that hold the
    /// topology's backing files; logs each change.
    pub fn gate_hooks(&mut self, topo: &Topology) -> Result<()> {
        let fs_types = topo.backing_file_fs_types();
        for (hook, on) in self.gates.apply(&mut self.ebpf, &mut self.attach, &fs_types)? {
            if on {
                log::info!("hook {hook} attached: a backing file lives on {fs_types:?}");
            } else {
                log::info!("hook {hook} parked: no backing file lives on a filesystem it covers");
            }
        }
        Ok(())
    }
}

/// Gives the heap that start-up freed (vmlinux BTF parsed twice by aya, for
/// the loader and for the BTF programs; the object's sections; ftrace's
/// function list) back to the kernel:
/// glibc keeps freed memory in its arenas otherwise, and it would stay in the
/// agent's RSS for its whole life.
fn trim_heap() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}
