//! What the programs read about the running kernel: the read-only CONFIG
//! global (struct offsets from BTF, addresses from kallsyms) and the
//! TP_OFFSETS map (tracepoint field offsets from tracefs, re-read when a
//! module brings new tracepoints).

use std::collections::{HashMap, HashSet};

use anyhow::{ensure, Result};
use probe_common::config::{Config, TracepointOffsets};

use crate::kernel::{
    btf::{KernelBtf, MissingField},
    kallsyms::Kallsyms,
    tracefs::Tracefs,
};

/// The kernel facts the loader works from.
pub struct KernelView {
    pub tracefs: Tracefs,
    pub btf: KernelBtf,
    pub kallsyms: Kallsyms,
    /// What ftrace can hook (None: unknown, every symbol is tried).
    pub traceable: Option<HashSet<String>>,
}

pub struct Built {
    pub config: Config,
    pub missing_fields: Vec<MissingField>,
    pub tp: TpOffsets,
}

/// Tracepoint offsets, and the tracepoints whose format lacks a field a
/// program reads: (category, name) → why. Those are never attached.
#[derive(Debug, Clone, Default)]
pub struct TpOffsets {
    pub offsets: TracepointOffsets,
    pub bad: HashMap<(String, String), String>,
}

/// Reads `fields` of every tracepoint in `group` that exists; those that do
/// share one layout (one TRACE_EVENT_CLASS, or one event renamed between
/// kernels). Returns the offsets of the first.
fn group_offsets(
    tf: &Tracefs,
    group: &[(&str, &str)],
    fields: &[&str],
    bad: &mut HashMap<(String, String), String>,
) -> Vec<u32> {
    let read = |cat: &str, name: &str| -> Result<Vec<u32>> {
        let f = tf.format(cat, name)?;
        fields.iter().map(|fl| f.offset(fl)).collect()
    };
    let mut first: Option<Vec<u32>> = None;
    for &(cat, name) in group.iter().filter(|(c, n)| tf.exists(c, n)) {
        let r = read(cat, name).and_then(|offs| {
            if let Some(f) = &first {
                ensure!(*f == offs, "field layout differs from {}:{}", group[0].0, group[0].1);
            }
            Ok(offs)
        });
        match r {
            Ok(offs) => first = first.or(Some(offs)),
            Err(e) => {
                bad.insert((cat.to_owned(), name.to_owned()), format!("{e:#}"));
            }
        }
    }
    first.unwrap_or_else(|| vec![0; fields.len()])
}

/// The offsets of every tracepoint field the programs read, from the
/// formats tracefs has now.
pub fn tracepoint_offsets(tf: &Tracefs) -> TpOffsets {
    let mut bad = HashMap::new();
    let mut tp = TracepointOffsets::default();

    let o = group_offsets(
        tf,
        &[("vmscan", "mm_vmscan_direct_reclaim_begin"), ("vmscan", "mm_vmscan_memcg_reclaim_begin")],
        &["order", "gfp_flags"],
        &mut bad,
    );
    (tp.reclaim_begin_order, tp.reclaim_begin_gfp) = (o[0], o[1]);
    let o = group_offsets(
        tf,
        &[("vmscan", "mm_vmscan_direct_reclaim_end"), ("vmscan", "mm_vmscan_memcg_reclaim_end")],
        &["nr_reclaimed"],
        &mut bad,
    );
    tp.reclaim_end_nr_reclaimed = o[0];
    let o = group_offsets(
        tf,
        &[("vmscan", "mm_shrink_slab_start")],
        &["shr", "shrink", "gfp_flags", "nr_objects_to_shrink"],
        &mut bad,
    );
    (tp.shrink_shr, tp.shrink_fn, tp.shrink_gfp, tp.shrink_nr) = (o[0], o[1], o[2], o[3]);
    let o = group_offsets(
        tf,
        &[("writeback", "folio_wait_writeback"), ("writeback", "wait_on_page_writeback")],
        &["name", "ino", "index"],
        &mut bad,
    );
    (tp.fww_name, tp.fww_ino, tp.fww_index) = (o[0], o[1], o[2]);
    let o = group_offsets(
        tf,
        &[("ext4", "ext4_da_write_begin"), ("ext4", "ext4_write_begin"), ("ext4", "ext4_writepages")],
        &["dev", "ino"],
        &mut bad,
    );
    (tp.ext4_dev, tp.ext4_ino) = (o[0], o[1]);
    let o = group_offsets(tf, &[("oom", "mark_victim")], &["pid"], &mut bad);
    tp.oom_pid = o[0];
    let o = group_offsets(
        tf,
        &[("writeback", "balance_dirty_pages")],
        &["bdi", "dirty", "limit", "pause", "cgroup_ino"],
        &mut bad,
    );
    (tp.bdp_bdi, tp.bdp_dirty, tp.bdp_limit, tp.bdp_pause, tp.bdp_cgroup_ino) = (o[0], o[1], o[2], o[3], o[4]);
    TpOffsets { offsets: tp, bad }
}

pub fn build(kv: &KernelView, target_tgid: u32, trace_all: bool) -> Built {
    let (kernel, missing_fields) = kv.btf.offsets();
    let config = Config {
        target_tgid,
        trace_all: trace_all as u32,
        super_cache_scan: kv.kallsyms.addr_of("super_cache_scan").unwrap_or(0),
        kernel,
    };
    Built { config, missing_fields, tp: tracepoint_offsets(&kv.tracefs) }
}
