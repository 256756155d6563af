//! Shrinker calls made by a task doing stacked I/O. For super-block shrinkers
//! (super_cache_scan) the super_block is found from the shrinker, so the
//! agent can tell whether reclaim re-entered the upper filesystem: through
//! `shrinker->private_data` (6.7+, where the shrinker is allocated), or by
//! subtracting the offset of the `struct shrinker s_shrink` embedded in the
//! super_block (before 6.7).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::{fentry, kprobe, tracepoint},
    programs::tracing::StackIdContext,
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use probe_common::{
    config::found,
    events::{EventKind, ShrinkerData},
    maps::counter,
};

use crate::{
    context::{current, read_ptr, read_u32, servicer, task_ctx},
    emit::emit,
    maps::{config, count, tp_offsets},
};

/// The super_block behind a super-block shrinker, by whichever layout this
/// kernel has.
#[inline(always)]
fn super_block_of(shr: u64) -> Option<u64> {
    let k = &config().kernel;
    if k.found & found::SHRINKER_PRIVATE_DATA != 0 {
        read_ptr(shr, k.shrinker_private_data)
    } else if k.found & found::SB_S_SHRINK_EMBEDDED != 0 && shr > k.sb_s_shrink as u64 {
        Some(shr - k.sb_s_shrink as u64)
    } else {
        None
    }
}

/// `args` reads (shrinker, gfp, nr_to_scan) only for a servicer's call to a
/// super-block shrinker: on a tracepoint each read is a helper call, and
/// every shrinker call of the machine's reclaim passes here.
#[inline(always)]
fn shrinker_call<C: StackIdContext>(ctx: &C, scan_fn: u64, args: impl FnOnce() -> (u64, u32, u64)) {
    count(counter::SHRINKER_CALLS);
    let cfg = config();
    // Only super-block shrinkers can re-enter a filesystem; without the
    // address of super_cache_scan (kallsyms hidden) every call goes out.
    if cfg.super_cache_scan != 0 && scan_fn != cfg.super_cache_scan {
        return;
    }
    let Some((cur, serving)) = servicer() else { return };
    let (shr, gfp, nr_to_scan) = args();
    let k = &cfg.kernel;
    let mut data = ShrinkerData { shrinker: shr, scan_fn, nr_to_scan, gfp, ..Default::default() };
    if cfg.super_cache_scan != 0 && k.found & found::SB_NAME == found::SB_NAME {
        if let Some(sb) = super_block_of(shr) {
            data.sb_dev = read_u32(sb, k.sb_s_dev).unwrap_or(0);
            if let Some(name) = read_ptr(sb, k.sb_s_type).and_then(|t| read_ptr(t, k.fstype_name)) {
                let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut data.fs_type) };
            }
        }
    }
    emit(EventKind::Shrinker, task_ctx(ctx, &cur, serving), data);
}

#[tracepoint(category = "vmscan", name = "mm_shrink_slab_start")]
pub fn tp_shrink_slab_start(ctx: TracePointContext) -> u32 {
    let Some(tp) = tp_offsets() else { return 0 };
    let scan_fn = unsafe { ctx.read_at::<u64>(tp.shrink_fn as usize) }.unwrap_or(0);
    shrinker_call(&ctx, scan_fn, || {
        let shr = unsafe { ctx.read_at::<u64>(tp.shrink_shr as usize) }.unwrap_or(0);
        let gfp = unsafe { ctx.read_at::<u32>(tp.shrink_gfp as usize) }.unwrap_or(0);
        let nr = unsafe { ctx.read_at::<u64>(tp.shrink_nr as usize) }.unwrap_or(0);
        (shr, gfp, nr)
    });
    0
}

/// The gfp mask of a super-block shrink comes from the reclaim that called it.
#[inline(always)]
fn reclaim_gfp() -> u32 {
    current().with_state(|s| s.reclaim_gfp).unwrap_or(0)
}

// static unsigned long super_cache_scan(struct shrinker *shrink,
//                                       struct shrink_control *sc);
#[kprobe]
pub fn kp_super_cache_scan(ctx: ProbeContext) -> u32 {
    shrinker_call(&ctx, config().super_cache_scan, || (ctx.arg::<u64>(0).unwrap_or(0), reclaim_gfp(), 0));
    0
}

#[fentry(function = "super_cache_scan")]
pub fn fe_super_cache_scan(ctx: FEntryContext) -> u32 {
    shrinker_call(&ctx, config().super_cache_scan, || (ctx.arg::<u64>(0), reclaim_gfp(), 0));
    0
}
