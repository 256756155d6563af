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

#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// fentry/fexit on a BTF function.
    BtfFn(&'static str),
    /// kprobe/kretprobe on a kallsyms symbol (suffixes resolved at run time).
    Ksym(&'static str),
    /// A classic tracepoint.
    Tp(&'static str, &'static str),
    /// A BTF-enabled raw tracepoint.
    BtfTp(&'static str),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::BtfFn(f) | Target::Ksym(f) => (*f).to_owned(),
            Target::Tp(c, n) => format!("{c}:{n}"),
            Target::BtfTp(n) => format!("btf:{n}"),
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
}

#[derive(Debug)]
pub struct Hook {
    pub name: &'static str,
    /// The agent cannot run without it.
    pub required: bool,
    /// What the rules lose when no implementation attaches.
    pub degrades: &'static str,
    pub impls: &'static [Impl],
}

const fn p(program: &'static str, target: Target) -> Prog {
    Prog { program, target }
}

use Family::*;
use Target::*;

pub static HOOKS: &[Hook] = &[
    Hook {
        name: "reclaim",
        required: true,
        degrades: "no reclaim events at all",
        impls: &[
            Impl {
                family: Fentry,
                progs: &[
                    p("fe_try_to_free_pages", BtfFn("try_to_free_pages")),
                    p("fx_try_to_free_pages", BtfFn("try_to_free_pages")),
                    p("fe_try_to_free_mem_cgroup_pages", BtfFn("try_to_free_mem_cgroup_pages")),
                    p("fx_try_to_free_mem_cgroup_pages", BtfFn("try_to_free_mem_cgroup_pages")),
                ],
            },
            Impl {
                family: Kprobe,
                progs: &[
                    p("kp_try_to_free_pages", Ksym("try_to_free_pages")),
                    p("krp_try_to_free_pages", Ksym("try_to_free_pages")),
                    p("kp_try_to_free_mem_cgroup_pages", Ksym("try_to_free_mem_cgroup_pages")),
                    p("krp_try_to_free_mem_cgroup_pages", Ksym("try_to_free_mem_cgroup_pages")),
                ],
            },
            Impl {
                family: Tracepoint,
                progs: &[
                    p("tp_direct_reclaim_begin", Tp("vmscan", "mm_vmscan_direct_reclaim_begin")),
                    p("tp_direct_reclaim_end", Tp("vmscan", "mm_vmscan_direct_reclaim_end")),
                    p("tp_memcg_reclaim_begin", Tp("vmscan", "mm_vmscan_memcg_reclaim_begin")),
                    p("tp_memcg_reclaim_end", Tp("vmscan", "mm_vmscan_memcg_reclaim_end")),
                ],
            },
        ],
    },
    Hook {
        name: "alloc_slowpath",
        required: false,
        degrades: "hazard: slowpath allocations that do not reach direct/memcg reclaim are not seen",
        impls: &[
            Impl {
                family: Fentry,
                progs: &[
                    p("fe_alloc_pages_slowpath", BtfFn("__alloc_pages_slowpath")),
                    p("fx_alloc_pages_slowpath", BtfFn("__alloc_pages_slowpath")),
                ],
            },
            Impl {
                family: Kprobe,
                progs: &[
                    p("kp_alloc_pages_slowpath", Ksym("__alloc_pages_slowpath")),
                    p("krp_alloc_pages_slowpath", Ksym("__alloc_pages_slowpath")),
                ],
            },
        ],
    },
    Hook {
        name: "shrink_node",
        required: false,
        degrades: "hazard: node reclaim entered outside direct/memcg reclaim is not seen",
        impls: &[
            Impl { family: Fentry, progs: &[p("fe_shrink_node", BtfFn("shrink_node"))] },
            Impl { family: Kprobe, progs: &[p("kp_shrink_node", Ksym("shrink_node"))] },
        ],
    },
    Hook {
        name: "shrinker",
        required: false,
        degrades: "recursion: reclaim calling an upper filesystem's shrinker is not seen",
        impls: &[
            Impl { family: Fentry, progs: &[p("fe_super_cache_scan", BtfFn("super_cache_scan"))] },
            Impl { family: Kprobe, progs: &[p("kp_super_cache_scan", Ksym("super_cache_scan"))] },
            Impl { family: Tracepoint, progs: &[p("tp_shrink_slab_start", Tp("vmscan", "mm_shrink_slab_start"))] },
        ],
    },
    Hook {
        name: "writeback_wait",
        required: false,
        degrades: "recursion/deadlock: reclaim waiting on the upper filesystem's writeback is not seen",
        impls: &[
            Impl { family: Kprobe, progs: &[p("kp_folio_wait_writeback", Ksym("folio_wait_writeback"))] },
            Impl {
                family: Tracepoint,
                progs: &[p("tp_folio_wait_writeback", Tp("writeback", "folio_wait_writeback"))],
            },
        ],
    },
    Hook {
        name: "reclaim_write",
        required: false,
        degrades: "recursion: reclaim writing the upper filesystem's folios is not seen",
        impls: &[Impl { family: TpBtf, progs: &[p("tpbtf_vmscan_write_folio", BtfTp("mm_vmscan_write_folio"))] }],
    },
    Hook {
        name: "fs_write",
        required: false,
        degrades: "hazard: kernel writers into backing files (loop workers) are not recognised as servicers",
        impls: &[
            Impl {
                family: Kprobe,
                progs: &[
                    p("kp_ext4_da_write_begin", Ksym("ext4_da_write_begin")),
                    p("krp_ext4_da_write_begin", Ksym("ext4_da_write_begin")),
                ],
            },
            Impl {
                family: Tracepoint,
                progs: &[
                    p("tp_ext4_da_write_begin", Tp("ext4", "ext4_da_write_begin")),
                    p("tp_ext4_da_write_end", Tp("ext4", "ext4_da_write_end")),
                    p("tp_ext4_write_begin", Tp("ext4", "ext4_write_begin")),
                    p("tp_ext4_write_end", Tp("ext4", "ext4_write_end")),
                ],
            },
        ],
    },
    Hook {
        name: "writeback_entry",
        required: false,
        degrades: "hazard: writeback of backing files is not attributed to the stacked device",
        impls: &[
            Impl {
                family: Kprobe,
                progs: &[p("kp_do_writepages", Ksym("do_writepages")), p("krp_do_writepages", Ksym("do_writepages"))],
            },
            Impl {
                family: Tracepoint,
                progs: &[
                    p("tp_ext4_writepages", Tp("ext4", "ext4_writepages")),
                    p("tp_ext4_writepages_result", Tp("ext4", "ext4_writepages_result")),
                ],
            },
        ],
    },
    Hook {
        name: "upper_io",
        required: false,
        degrades: "hazard: I/O in flight on the stacked device is not known",
        impls: &[Impl {
            family: Tracepoint,
            progs: &[
                p("tp_block_rq_issue", Tp("block", "block_rq_issue")),
                p("tp_block_rq_complete", Tp("block", "block_rq_complete")),
            ],
        }],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_has_an_implementation_and_unique_programs() {
        let mut names: Vec<&str> =
            HOOKS.iter().flat_map(|h| h.impls.iter().flat_map(|i| i.progs.iter().map(|p| p.program))).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a program is listed twice");
        for h in HOOKS {
            assert!(!h.impls.is_empty(), "{} has no implementation", h.name);
        }
    }

    #[test]
    fn implementations_are_ordered_best_first() {
        for h in HOOKS {
            let order: Vec<Family> = h.impls.iter().map(|i| i.family).collect();
            let mut sorted = order.clone();
            sorted.sort_by_key(|f| *f as u8);
            assert_eq!(order, sorted, "{}", h.name);
        }
    }
}
