//! I/O in flight on each stacked device the agent watches (DEV_STATE holds
//! only those), so a hazard can say the upper filesystem was waiting on the
//! servicer. One per-CPU lookup per block request, no atomics.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::maps::{tp_offsets, DEV_STATE};

#[inline(always)]
fn account(ctx: &TracePointContext, delta: i64) {
    let Some(tp) = tp_offsets() else { return };
    let dev = unsafe { ctx.read_at::<u32>(tp.rq_dev as usize) }.unwrap_or(0);
    let Some(st) = DEV_STATE.get_ptr_mut(&dev) else { return };
    // SAFETY: this CPU's slot; nothing else writes it while we run.
    unsafe { (*st).inflight += delta };
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn tp_block_rq_issue(ctx: TracePointContext) -> u32 {
    account(&ctx, 1);
    0
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn tp_block_rq_complete(ctx: TracePointContext) -> u32 {
    account(&ctx, -1);
    0
}
