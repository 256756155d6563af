//! Direct and memcg reclaim entry/exit.
//!
//! Implementations: fentry/fexit and kprobe/kretprobe on try_to_free_pages()
//! and try_to_free_mem_cgroup_pages(), and the vmscan tracepoints. The
//! tracepoints report the effective gfp mask (after current_gfp_context());
//! the function probes apply the task's scope flags themselves so every path
//! reports the same thing.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::tracing::StackIdContext,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use probe_common::{
    events::{EventKind, ReclaimData, ReclaimKind},
    flags::effective_gfp,
    maps::counter,
};

use crate::{
    context::{current, task_ctx, task_flags},
    emit::emit,
    maps::{config, count, tp_offsets},
};

/// Reclaim entry. Counted for every task; recorded in the thread's state for
/// stacked-I/O tasks (and every task with `--all`), and for a task doing
/// stacked I/O emitted at once: a servicer stuck in reclaim never reaches
/// the end. `args` reads (gfp, order) only for those: on a tracepoint each
/// read is a helper call, and reclaim in an unrelated memory cgroup, which
/// a container host always has, must cost no more than the filter.
#[inline(always)]
pub fn begin<C: StackIdContext>(ctx: &C, kind: ReclaimKind, args: impl FnOnce() -> (u32, i32)) {
    count(match kind {
        ReclaimKind::Memcg => counter::RECLAIM_MEMCG,
        _ => counter::RECLAIM_DIRECT,
    });
    let cur = current();
    if !cur.is_target() {
        return;
    }
    let serving = cur.serving_dev();
    if serving == 0 && config().trace_all == 0 {
        return;
    }
    let (gfp, order) = args();
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let recorded = cur.with_state_or_insert(|s| {
        // Reclaim does not nest (PF_MEMALLOC keeps it from recursing): a
        // start still recorded is one whose end was lost.
        if s.in_reclaim != 0 {
            count(counter::STALE_RECLAIM);
        }
        s.reclaim_begin_ns = now;
        s.reclaim_gfp = gfp;
        s.reclaim_order = order;
        s.reclaim_kind = kind as u32;
        s.in_reclaim = 1;
    });
    if recorded.is_some() && serving != 0 {
        let data = ReclaimData { reclaim_kind: kind as u32, gfp, order, ..Default::default() };
        emit(EventKind::ReclaimBegin, task_ctx(ctx, &cur, serving), data);
    }
}

/// Reclaim exit: one TASKS lookup for a task that recorded no entry; the
/// clock and `nr_reclaimed` are read only for one that did.
#[inline(always)]
pub fn end<C: StackIdContext>(ctx: &C, nr_reclaimed: impl FnOnce() -> u64) {
    let cur = current();
    let data = cur.with_state(|s| {
        if s.in_reclaim == 0 {
            return None;
        }
        s.in_reclaim = 0;
        let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
        Some(ReclaimData {
            reclaim_kind: s.reclaim_kind,
            gfp: s.reclaim_gfp,
            order: s.reclaim_order,
            _pad: 0,
            duration_ns: now - s.reclaim_begin_ns,
            nr_reclaimed: nr_reclaimed(),
        })
    });
    let Some(Some(data)) = data else { return };
    let serving = cur.serving_dev();
    emit(EventKind::ReclaimEnd, task_ctx(ctx, &cur, serving), data);
    cur.release_if_idle();
}

#[inline(always)]
fn tp_begin(ctx: &TracePointContext, kind: ReclaimKind) -> u32 {
    let Some(tp) = tp_offsets() else { return 0 };
    begin(ctx, kind, || {
        let order = unsafe { ctx.read_at::<i32>(tp.reclaim_begin_order as usize) }.unwrap_or(-1);
        let gfp = unsafe { ctx.read_at::<u32>(tp.reclaim_begin_gfp as usize) }.unwrap_or(0);
        (gfp, order)
    });
    0
}

#[inline(always)]
fn tp_end(ctx: &TracePointContext) -> u32 {
    let Some(tp) = tp_offsets() else { return 0 };
    end(ctx, || unsafe { ctx.read_at::<u64>(tp.reclaim_end_nr_reclaimed as usize) }.unwrap_or(0));
    0
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_direct_reclaim_begin")]
pub fn tp_direct_reclaim_begin(ctx: TracePointContext) -> u32 {
    tp_begin(&ctx, ReclaimKind::Direct)
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_direct_reclaim_end")]
pub fn tp_direct_reclaim_end(ctx: TracePointContext) -> u32 {
    tp_end(&ctx)
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_memcg_reclaim_begin")]
pub fn tp_memcg_reclaim_begin(ctx: TracePointContext) -> u32 {
    tp_begin(&ctx, ReclaimKind::Memcg)
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_memcg_reclaim_end")]
pub fn tp_memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    tp_end(&ctx)
}

// unsigned long try_to_free_pages(struct zonelist *zonelist, int order,
//                                 gfp_t gfp_mask, nodemask_t *nodemask);
#[kprobe]
pub fn kp_try_to_free_pages(ctx: ProbeContext) -> u32 {
    let order = ctx.arg::<i32>(1).unwrap_or(-1);
    let gfp = ctx.arg::<u32>(2).unwrap_or(0);
    begin(&ctx, ReclaimKind::Direct, || (effective_gfp(gfp, task_flags()), order));
    0
}

#[kretprobe]
pub fn krp_try_to_free_pages(ctx: RetProbeContext) -> u32 {
    end(&ctx, || ctx.ret::<u64>());
    0
}

#[fentry(function = "try_to_free_pages")]
pub fn fe_try_to_free_pages(ctx: FEntryContext) -> u32 {
    let order: i32 = ctx.arg(1);
    let gfp: u32 = ctx.arg(2);
    begin(&ctx, ReclaimKind::Direct, || (effective_gfp(gfp, task_flags()), order));
    0
}

/// The return value through bpf_get_func_ret() (5.17+), not a compiled-in
/// argument slot: the functions' arity differs between kernels.
#[fexit(function = "try_to_free_pages")]
pub fn fx_try_to_free_pages(ctx: FExitContext) -> u32 {
    end(&ctx, || ctx.ret::<u64>().unwrap_or(0));
    0
}

// unsigned long try_to_free_mem_cgroup_pages(struct mem_cgroup *memcg,
//     unsigned long nr_pages, gfp_t gfp_mask, unsigned int reclaim_options
//     [, int *swappiness since 6.10]);
#[kprobe]
pub fn kp_try_to_free_mem_cgroup_pages(ctx: ProbeContext) -> u32 {
    let gfp = ctx.arg::<u32>(2).unwrap_or(0);
    begin(&ctx, ReclaimKind::Memcg, || (effective_gfp(gfp, task_flags()), 0));
    0
}

#[kretprobe]
pub fn krp_try_to_free_mem_cgroup_pages(ctx: RetProbeContext) -> u32 {
    end(&ctx, || ctx.ret::<u64>());
    0
}

#[fentry(function = "try_to_free_mem_cgroup_pages")]
pub fn fe_try_to_free_mem_cgroup_pages(ctx: FEntryContext) -> u32 {
    let gfp: u32 = ctx.arg(2);
    begin(&ctx, ReclaimKind::Memcg, || (effective_gfp(gfp, task_flags()), 0));
    0
}

#[fexit(function = "try_to_free_mem_cgroup_pages")]
pub fn fx_try_to_free_mem_cgroup_pages(ctx: FExitContext) -> u32 {
    end(&ctx, || ctx.ret::<u64>().unwrap_or(0));
    0
}
