//! The page-allocator slowpath and shrink_node(): function probes only, since
//! neither has a tracepoint.
//!
//! The slowpath itself (__alloc_pages_slowpath) is a `.constprop` copy that
//! distro kernels compile without an ftrace site, so the kernel refuses
//! kprobes and trampolines on it. Its first step, waking kswapd through
//! wakeup_kswapd() with the allocation's gfp mask, is traceable everywhere:
//! it marks slowpath entry (without the time spent inside).

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::tracing::StackIdContext,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use probe_common::{
    config::found,
    events::{EventKind, ReclaimData, ReclaimKind},
    flags::{effective_gfp, GFP_FS, GFP_IO},
    maps::counter,
};

use crate::{
    context::{read_u32, servicer, task_ctx, task_flags},
    emit::emit,
    maps::{config, count},
};

/// One slowpath event per thread per this interval: the slowpath loops
/// (retry, compaction, reclaim), and the first entry is what a rule needs.
const SLOWPATH_EVENT_INTERVAL_NS: u64 = 100_000_000;

/// Slowpath entry: only allocations by a task doing stacked I/O that can still
/// recurse into a filesystem or block I/O are worth an event. `timed`: an
/// exit probe will close it.
#[inline(always)]
fn slowpath_begin<C: StackIdContext>(ctx: &C, gfp: u32, order: i32, timed: bool) {
    count(counter::SLOWPATH_ENTRIES);
    let Some((cur, serving)) = servicer() else { return };
    let gfp = effective_gfp(gfp, task_flags());
    if gfp & (GFP_FS | GFP_IO) == 0 {
        return;
    }
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let send = cur.with_state_or_insert(|s| {
        if timed {
            s.slowpath_begin_ns = now;
            s.slowpath_gfp = gfp;
            s.slowpath_order = order;
        }
        let due = now - s.slowpath_emitted_ns >= SLOWPATH_EVENT_INTERVAL_NS;
        if due {
            s.slowpath_emitted_ns = now;
        }
        due
    });
    if send == Some(true) {
        let data = ReclaimData { reclaim_kind: ReclaimKind::AllocSlowpath as u32, gfp, order, ..Default::default() };
        emit(EventKind::ReclaimBegin, task_ctx(ctx, &cur, serving), data);
    }
    if !timed {
        cur.release_if_idle();
    }
}

#[inline(always)]
fn slowpath_end<C: StackIdContext>(ctx: &C) {
    let Some((cur, serving)) = servicer() else { return };
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let data = cur.with_state(|s| {
        if s.slowpath_begin_ns == 0 {
            return None;
        }
        let d = ReclaimData {
            reclaim_kind: ReclaimKind::AllocSlowpath as u32,
            gfp: s.slowpath_gfp,
            order: s.slowpath_order,
            _pad: 0,
            duration_ns: now - s.slowpath_begin_ns,
            nr_reclaimed: 0,
        };
        s.slowpath_begin_ns = 0;
        Some(d)
    });
    if let Some(Some(data)) = data {
        emit(EventKind::ReclaimEnd, task_ctx(ctx, &cur, serving), data);
    }
    cur.release_if_idle();
}

// static struct page *__alloc_pages_slowpath(gfp_t gfp_mask, unsigned int order,
//                                            struct alloc_context *ac);
#[kprobe]
pub fn kp_alloc_pages_slowpath(ctx: ProbeContext) -> u32 {
    let gfp = ctx.arg::<u32>(0).unwrap_or(0);
    let order = ctx.arg::<i32>(1).unwrap_or(0);
    slowpath_begin(&ctx, gfp, order, true);
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
    slowpath_begin(&ctx, gfp, order, true);
    0
}

#[fexit(function = "__alloc_pages_slowpath")]
pub fn fx_alloc_pages_slowpath(ctx: FExitContext) -> u32 {
    slowpath_end(&ctx);
    0
}

// void wakeup_kswapd(struct zone *zone, gfp_t gfp_flags, int order,
//                    enum zone_type highest_zoneidx);
// Called from the slowpath with the allocation's mask, and with a mask of 0
// from watermark boosting and NUMA migration, which are not allocations.
#[kprobe]
pub fn kp_wakeup_kswapd(ctx: ProbeContext) -> u32 {
    let gfp = ctx.arg::<u32>(1).unwrap_or(0);
    if gfp != 0 {
        slowpath_begin(&ctx, gfp, ctx.arg::<i32>(2).unwrap_or(0), false);
    }
    0
}

#[fentry(function = "wakeup_kswapd")]
pub fn fe_wakeup_kswapd(ctx: FEntryContext) -> u32 {
    let gfp: u32 = ctx.arg(1);
    if gfp != 0 {
        slowpath_begin(&ctx, gfp, ctx.arg(2), false);
    }
    0
}

// static void shrink_node(pg_data_t *pgdat, struct scan_control *sc);
// Entry only, and only outside a direct or memcg reclaim already reported
// (node reclaim, zone_reclaim_mode): inside one it adds nothing a rule
// uses. The gfp mask comes from sc->gfp_mask through its BTF offset.
#[inline(always)]
fn shrink_node_enter<C: StackIdContext>(ctx: &C, sc: u64) {
    let k = &config().kernel;
    if k.found & found::SCAN_CONTROL_GFP == 0 {
        return;
    }
    let Some((cur, serving)) = servicer() else { return };
    if cur.with_state(|s| s.in_reclaim).unwrap_or(0) != 0 {
        return;
    }
    let Some(gfp) = read_u32(sc, k.scan_control_gfp) else { return };
    if gfp & (GFP_FS | GFP_IO) == 0 {
        return;
    }
    let data = ReclaimData { reclaim_kind: ReclaimKind::ShrinkNode as u32, gfp, ..Default::default() };
    emit(EventKind::ReclaimBegin, task_ctx(ctx, &cur, serving), data);
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
