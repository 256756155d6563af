//! The page-allocator slowpath and shrink_node(): function probes only, since
//! neither has a tracepoint. On a kernel without kprobes and fentry these are
//! missing and the agent says which rules lose precision.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::tracing::StackIdContext,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use probe_common::{
    events::{EventKind, ReclaimData, ReclaimKind},
    flags::{effective_gfp, GFP_FS, GFP_IO},
};

use probe_common::config::found;

use crate::{
    context::{current, read_u32, task_ctx, task_flags},
    emit::emit,
    maps::config,
};

/// Slowpath entry: only allocations by a task doing stacked I/O that can still
/// recurse into a filesystem or block I/O are worth an event.
#[inline(always)]
fn slowpath_begin<C: StackIdContext>(ctx: &C, gfp: u32, order: i32) {
    let kind = ReclaimKind::AllocSlowpath;
    let cur = current();
    if !cur.is_target() {
        return;
    }
    let gfp = effective_gfp(gfp, task_flags());
    if gfp & (GFP_FS | GFP_IO) == 0 {
        return;
    }
    let state = cur.state();
    let serving = cur.serving_dev(state);
    if serving == 0 {
        return;
    }
    let Some(s) = cur.state_or_insert(state) else { return };
    let s = unsafe { &mut *s };
    s.slowpath_begin_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    s.slowpath_gfp = gfp;
    s.slowpath_order = order;
    let data = ReclaimData { reclaim_kind: kind as u32, gfp, order, ..Default::default() };
    emit(ctx, EventKind::ReclaimBegin, task_ctx(ctx, &cur, serving, s.depth), data);
}

#[inline(always)]
fn slowpath_end<C: StackIdContext>(ctx: &C) {
    let kind = ReclaimKind::AllocSlowpath;
    let cur = current();
    let state = cur.state();
    let Some(s) = state else { return };
    let s = unsafe { &mut *s };
    if s.slowpath_begin_ns == 0 {
        return;
    }
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let data = ReclaimData {
        reclaim_kind: kind as u32,
        gfp: s.slowpath_gfp,
        order: s.slowpath_order,
        _pad: 0,
        duration_ns: now - s.slowpath_begin_ns,
        nr_reclaimed: 0,
    };
    s.slowpath_begin_ns = 0;
    let serving = cur.serving_dev(state);
    emit(ctx, EventKind::ReclaimEnd, task_ctx(ctx, &cur, serving, s.depth), data);
}

// static struct page *__alloc_pages_slowpath(gfp_t gfp_mask, unsigned int order,
//                                            struct alloc_context *ac);
#[kprobe]
pub fn kp_alloc_pages_slowpath(ctx: ProbeContext) -> u32 {
    let gfp = ctx.arg::<u32>(0).unwrap_or(0);
    let order = ctx.arg::<i32>(1).unwrap_or(0);
    slowpath_begin(&ctx, gfp, order);
    0
}

#[kretprobe]
pub fn krp_alloc_pages_slowpath(ctx: RetProbeContext) -> u32 {
    slowpath_end(&ctx);
    0
}

#[fentry(function = "__alloc_pages_slowpath")]
pub fn fe_alloc_pages_slowpath(ctx: FEntryContext) -> u32 {
    let gfp: u32 = ctx.arg(0);
    let order: i32 = ctx.arg(1);
    slowpath_begin(&ctx, gfp, order);
    0
}

#[fexit(function = "__alloc_pages_slowpath")]
pub fn fx_alloc_pages_slowpath(ctx: FExitContext) -> u32 {
    slowpath_end(&ctx);
    0
}

// static void shrink_node(pg_data_t *pgdat, struct scan_control *sc);
// Entry only: node reclaim has no end worth timing beyond the reclaim event
// around it. The gfp mask comes from sc->gfp_mask through its BTF offset.
#[inline(always)]
fn shrink_node_enter<C: StackIdContext>(ctx: &C, sc: u64) {
    let k = &config().kernel;
    if k.found & found::SCAN_CONTROL_GFP == 0 {
        return;
    }
    let Some(gfp) = read_u32(sc, k.scan_control_gfp) else { return };
    let cur = current();
    if !cur.is_target() || gfp & (GFP_FS | GFP_IO) == 0 {
        return;
    }
    let state = cur.state();
    let serving = cur.serving_dev(state);
    if serving == 0 {
        return;
    }
    let depth = state.map(|s| unsafe { (*s).depth }).unwrap_or(0);
    let data = ReclaimData { reclaim_kind: ReclaimKind::ShrinkNode as u32, gfp, ..Default::default() };
    emit(ctx, EventKind::ReclaimBegin, task_ctx(ctx, &cur, serving, depth), data);
}

#[kprobe]
pub fn kp_shrink_node(ctx: ProbeContext) -> u32 {
    shrink_node_enter(&ctx, ctx.arg::<u64>(1).unwrap_or(0));
    0
}

#[fentry(function = "shrink_node")]
pub fn fe_shrink_node(ctx: FEntryContext) -> u32 {
    shrink_node_enter(&ctx, ctx.arg::<u64>(1));
    0
}
