//! The logical hooks and their implementations, best first, as data.
//!
//! Program names are the function names in probe-ebpf. The loader walks each
//! hook's list in order and keeps the first implementation whose programs
//! all load and attach.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Fentry,
    Kprobe,
    TpBtf,
    Tracepoint,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Fentry => "fentry",
            Family::Kprobe => "kprobe",
            Family::TpBtf => "tp_btf",
            Family::Tracepoint => "tracepoint",
        }
    }
}

/// Where a program attaches. Each kind lists alternatives, first present
/// wins: kernels rename functions and tracepoints (folio_wait_writeback was
/// wait_on_page_writeback before 5.16), and one program serves both.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// fentry/fexit on a BTF function.
    BtfFn(&'static [&'static str]),
    /// kprobe/kretprobe on a kallsyms symbol (suffixes resolved at run time).
    Ksym(&'static [&'static str]),
    /// A classic tracepoint (category, name).
    Tp(&'static [(&'static str, &'static str)]),
    /// A BTF-enabled raw tracepoint.
    BtfTp(&'static [&'static str]),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::BtfFn(f) | Target::Ksym(f) => f.join("|"),
            Target::Tp(t) => t.iter().map(|(c, n)| format!("{c}:{n}")).collect::<Vec<_>>().join("|"),
            Target::BtfTp(n) => n.iter().map(|n| format!("btf:{n}")).collect::<Vec<_>>().join("|"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Prog {
    pub program: &'static str,
    pub target: Target,
}

#[derive(Debug)]
pub struct Impl {
    pub family: Family,
    pub progs: &'static [Prog],
    /// What this implementation cannot see that the ones before it can
    /// (None: it carries the same information).
    pub lacks: Option<&'static str>,
    /// For a gated hook: the filesystem types whose backing files it sees
    /// (empty: any filesystem's).
    pub covers: &'static [&'static str],
}

#[derive(Debug)]
pub struct Hook {
    pub name: &'static str,
    /// The agent cannot run without it.
    pub required: bool,
    /// What the rules lose when no implementation attaches.
    pub degrades: &'static str,
    /// Attached only while a backing file lives on a filesystem the chosen
    /// implementation covers (attach/gates.rs): it runs on every write of
    /// those filesystems, and sees nothing without such a file.
    pub gated: bool,
    /// Best first: by what each sees, then, where they see the same, by the
    /// cost per call measured on the kernel matrix (docs/kernels.md).
    pub impls: &'static [Impl],
}

const fn p(program: &'static str, target: Target) -> Prog {
    Prog { program, target }
}

const fn full(family: Family, progs: &'static [Prog]) -> Impl {
    Impl { family, progs, lacks: None, covers: &[] }
}

/// An implementation that sees only ext4's files (its write tracepoints or
/// functions).
const EXT4: &[&str] = &["ext4"];

use Family::*;
use Target::*;

const WRITE_FOLIO: &[&str] = &["mm_vmscan_write_folio", "mm_vmscan_writepage"];
const WAIT_FN: &[&str] = &["folio_wait_writeback", "wait_on_page_writeback"];
const WAIT_TP: &[(&str, &str)] = &[("writeback", "folio_wait_writeback"), ("writeback", "wait_on_page_writeback")];

pub static HOOKS: &[Hook] = &[
    Hook {
        name: "reclaim",
        required: true,
        gated: false,
        degrades: "no reclaim events at all",
        impls: &[
            full(
                Fentry,
                &[
                    p("fe_try_to_free_pages", BtfFn(&["try_to_free_pages"])),
                    p("fx_try_to_free_pages", BtfFn(&["try_to_free_pages"])),
                    p("fe_try_to_free_mem_cgroup_pages", BtfFn(&["try_to_free_mem_cgroup_pages"])),
                    p("fx_try_to_free_mem_cgroup_pages", BtfFn(&["try_to_free_mem_cgroup_pages"])),
                ],
            ),
            full(
                Tracepoint,
                &[
                    p("tp_direct_reclaim_begin", Tp(&[("vmscan", "mm_vmscan_direct_reclaim_begin")])),
                    p("tp_direct_reclaim_end", Tp(&[("vmscan", "mm_vmscan_direct_reclaim_end")])),
                    p("tp_memcg_reclaim_begin", Tp(&[("vmscan", "mm_vmscan_memcg_reclaim_begin")])),
                    p("tp_memcg_reclaim_end", Tp(&[("vmscan", "mm_vmscan_memcg_reclaim_end")])),
                ],
            ),
            full(
                Kprobe,
                &[
                    p("kp_try_to_free_pages", Ksym(&["try_to_free_pages"])),
                    p("krp_try_to_free_pages", Ksym(&["try_to_free_pages"])),
                    p("kp_try_to_free_mem_cgroup_pages", Ksym(&["try_to_free_mem_cgroup_pages"])),
                    p("krp_try_to_free_mem_cgroup_pages", Ksym(&["try_to_free_mem_cgroup_pages"])),
                ],
            ),
        ],
    },
    Hook {
        name: "alloc_slowpath",
        required: false,
        gated: false,
        degrades: "hazard: slowpath allocations that do not reach direct/memcg reclaim are not seen",
        impls: &[
            full(
                Fentry,
                &[
                    p("fe_alloc_pages_slowpath", BtfFn(&["__alloc_pages_slowpath"])),
                    p("fx_alloc_pages_slowpath", BtfFn(&["__alloc_pages_slowpath"])),
                ],
            ),
            full(
                Kprobe,
                &[
                    p("kp_alloc_pages_slowpath", Ksym(&["__alloc_pages_slowpath"])),
                    p("krp_alloc_pages_slowpath", Ksym(&["__alloc_pages_slowpath"])),
                ],
            ),
            Impl {
                family: Fentry,
                progs: &[p("fe_wakeup_kswapd", BtfFn(&["wakeup_kswapd"]))],
                covers: &[],
                lacks: Some("slowpath entry only, through wakeup_kswapd(): no time spent inside"),
            },
            Impl {
                family: Kprobe,
                progs: &[p("kp_wakeup_kswapd", Ksym(&["wakeup_kswapd"]))],
                covers: &[],
                lacks: Some("slowpath entry only, through wakeup_kswapd(): no time spent inside"),
            },
        ],
    },
    Hook {
        name: "shrink_node",
        required: false,
        gated: false,
        degrades: "hazard: node reclaim entered outside direct/memcg reclaim is not seen",
        // The trampoline first: the same program, and per call the two
        // differ by less than their run-to-run spread at a few thousand
        // calls (docs/kernels.md), while a kprobe's dispatch, which BPF stats
        // do not count, costs more than a trampoline's.
        impls: &[
            full(Fentry, &[p("fe_shrink_node", BtfFn(&["shrink_node"]))]),
            full(Kprobe, &[p("kp_shrink_node", Ksym(&["shrink_node"]))]),
        ],
    },
    Hook {
        name: "shrinker",
        required: false,
        gated: false,
        degrades: "recursion: reclaim calling an upper filesystem's shrinker is not seen",
        impls: &[
            full(Fentry, &[p("fe_super_cache_scan", BtfFn(&["super_cache_scan"]))]),
            full(Kprobe, &[p("kp_super_cache_scan", Ksym(&["super_cache_scan"]))]),
            Impl {
                family: Tracepoint,
                progs: &[p("tp_shrink_slab_start", Tp(&[("vmscan", "mm_shrink_slab_start")]))],
                covers: &[],
                lacks: Some(
                    "fires when do_shrink_slab() considers a shrinker, also when it then scans nothing: \
                     the upper filesystem's shrinker was invoked, not necessarily run",
                ),
            },
        ],
    },
    Hook {
        name: "writeback_wait",
        required: false,
        gated: false,
        degrades: "recursion/deadlock: reclaim waiting on the upper filesystem's writeback is not seen",
        impls: &[
            full(TpBtf, &[p("tpbtf_folio_wait_writeback", BtfTp(WAIT_FN))]),
            full(Fentry, &[p("fe_folio_wait_writeback", BtfFn(WAIT_FN))]),
            full(Kprobe, &[p("kp_folio_wait_writeback", Ksym(WAIT_FN))]),
            Impl {
                family: Tracepoint,
                progs: &[p("tp_folio_wait_writeback", Tp(WAIT_TP))],
                covers: &[],
                lacks: Some(
                    "names the waited-on folio's device by its bdi, which is the device only for filesystems \
                     on a block device (not btrfs)",
                ),
            },
        ],
    },
    Hook {
        name: "reclaim_write",
        required: false,
        gated: false,
        degrades: "recursion: reclaim writing the upper filesystem's folios is not seen",
        impls: &[full(TpBtf, &[p("tpbtf_vmscan_write_folio", BtfTp(WRITE_FOLIO))])],
    },
    Hook {
        name: "fs_write",
        required: false,
        gated: true,
        degrades: "hazard: kernel threads writing backing files (loop workers, nfsd, file-backed targets) are not recognised as servicers",
        impls: &[
            Impl {
                family: Tracepoint,
                progs: &[
                    p("tp_ext4_da_write_begin", Tp(&[("ext4", "ext4_da_write_begin")])),
                    p("tp_ext4_da_write_end", Tp(&[("ext4", "ext4_da_write_end")])),
                    p("tp_ext4_write_begin", Tp(&[("ext4", "ext4_write_begin")])),
                    p("tp_ext4_write_end", Tp(&[("ext4", "ext4_write_end")])),
                ],
                covers: EXT4,
                lacks: None,
            },
            Impl {
                family: Kprobe,
                progs: &[
                    p("kp_ext4_da_write_begin", Ksym(&["ext4_da_write_begin"])),
                    p("krp_ext4_da_write_begin", Ksym(&["ext4_da_write_begin"])),
                ],
                covers: EXT4,
                lacks: Some("delayed-allocation writes only (not nodelalloc or data=journal mounts)"),
            },
        ],
    },
    Hook {
        name: "writeback_entry",
        required: false,
        gated: true,
        degrades: "hazard: writeback of backing files is not attributed to the stacked device",
        impls: &[
            // The trampoline first, as for shrink_node; the kretprobe's
            // return hook costs more again.
            full(
                Fentry,
                &[p("fe_do_writepages", BtfFn(&["do_writepages"])), p("fx_do_writepages", BtfFn(&["do_writepages"]))],
            ),
            full(
                Kprobe,
                &[p("kp_do_writepages", Ksym(&["do_writepages"])), p("krp_do_writepages", Ksym(&["do_writepages"]))],
            ),
            Impl {
                family: Tracepoint,
                progs: &[
                    p("tp_ext4_writepages", Tp(&[("ext4", "ext4_writepages")])),
                    p("tp_ext4_writepages_result", Tp(&[("ext4", "ext4_writepages_result")])),
                ],
                covers: EXT4,
                lacks: Some("ext4's writeback only"),
            },
        ],
    },
    Hook {
        name: "dirty_throttle",
        required: false,
        gated: false,
        degrades: "hazard/deadlock: a servicer throttled on dirty memory it must clean itself is not seen",
        impls: &[full(Tracepoint, &[p("tp_balance_dirty_pages", Tp(&[("writeback", "balance_dirty_pages")]))])],
    },
    Hook {
        name: "oom_victim",
        required: false,
        gated: false,
        degrades: "loss: a servicer killed by the OOM killer is not reported",
        impls: &[full(Tracepoint, &[p("tp_oom_mark_victim", Tp(&[("oom", "mark_victim")]))])],
    },
    Hook {
        name: "task_exit",
        required: false,
        gated: false,
        degrades: "state of exited threads that wrote a backing file is kept until the map is full (counted)",
        impls: &[full(Tracepoint, &[p("tp_sched_process_exit", Tp(&[("sched", "sched_process_exit")]))])],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_has_an_implementation_and_no_program_serves_two_hooks() {
        let mut owner: std::collections::HashMap<&str, &str> = Default::default();
        for h in HOOKS {
            assert!(!h.impls.is_empty(), "{} has no implementation", h.name);
            for p in h.impls.iter().flat_map(|i| i.progs) {
                let prev = owner.insert(p.program, h.name);
                assert!(prev.is_none_or(|o| o == h.name), "{} is in {} and {}", p.program, prev.unwrap(), h.name);
            }
        }
    }

    #[test]
    fn only_the_first_implementation_of_a_hook_may_see_everything_a_later_one_lacks() {
        // An implementation that lacks something never comes before one
        // that does not: information first, cost second.
        for h in HOOKS {
            let first_lacking = h.impls.iter().position(|i| i.lacks.is_some()).unwrap_or(h.impls.len());
            assert!(h.impls[first_lacking..].iter().all(|i| i.lacks.is_some()), "{}", h.name);
        }
    }
}
