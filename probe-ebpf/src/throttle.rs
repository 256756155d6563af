//! Dirty throttling: a servicer paused in balance_dirty_pages() waits for
//! the dirty memory of its writeback domain to drop. Under cgroup v2 that
//! domain is its memory cgroup, whose dirty pages may be the upper
//! filesystem's, which only the servicer can clean: the deadlock of a
//! stacked filesystem without reclaim. PR_SET_IO_FLUSHER's PF_LOCAL_THROTTLE
//! is what exempts a servicer.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use probe_common::{
    events::{DirtyThrottleData, EventKind},
    maps::counter,
};

use crate::{
    context::{servicer, task_ctx},
    emit::emit,
    maps::{count, tp_offsets},
};

// TP: writeback:balance_dirty_pages, in the throttled task, once per pause
// (at most 200 ms each).
#[tracepoint(category = "writeback", name = "balance_dirty_pages")]
pub fn tp_balance_dirty_pages(ctx: TracePointContext) -> u32 {
    count(counter::DIRTY_THROTTLES);
    let Some((cur, serving)) = servicer() else { return 0 };
    let Some(tp) = tp_offsets() else { return 0 };
    let pause = unsafe { ctx.read_at::<i64>(tp.bdp_pause as usize) }.unwrap_or(0);
    if pause <= 0 {
        return 0;
    }
    let data = DirtyThrottleData {
        bdi: unsafe { ctx.read_at::<[u8; 32]>(tp.bdp_bdi as usize) }.unwrap_or([0; 32]),
        dirty: unsafe { ctx.read_at::<u64>(tp.bdp_dirty as usize) }.unwrap_or(0),
        limit: unsafe { ctx.read_at::<u64>(tp.bdp_limit as usize) }.unwrap_or(0),
        pause,
        cgroup_ino: unsafe { ctx.read_at::<u64>(tp.bdp_cgroup_ino as usize) }.unwrap_or(0),
    };
    emit(EventKind::DirtyThrottle, task_ctx(&ctx, &cur, serving), data);
    0
}
