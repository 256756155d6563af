//! Task lifecycle: an exiting thread's state goes with it, and the OOM
//! killer's victims are reported (a servicer killed inside its memcg leaves
//! the stack above it failing I/O).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use probe_common::{
    events::{EventKind, OomVictimData},
    maps::counter,
};

use crate::{
    context::{current, task_ctx},
    emit::emit,
    maps::{count, tp_offsets, TASKS},
};

// TP: sched:sched_process_exit, in the context of the exiting thread.
// Looked up before it is deleted: almost no exiting thread has state, and a
// delete takes the bucket's lock where a lookup takes none.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn tp_sched_process_exit(_ctx: TracePointContext) -> u32 {
    let tid = current().tid;
    // SAFETY: only tested for presence.
    if unsafe { TASKS.get(&tid) }.is_some() {
        let _ = TASKS.remove(&tid);
    }
    0
}

// TP: oom:mark_victim (pid). Rare, so every one goes out: the agent knows
// which pids are servicers, including ones it learned after the kill.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn tp_oom_mark_victim(ctx: TracePointContext) -> u32 {
    count(counter::OOM_KILLS);
    let Some(tp) = tp_offsets() else { return 0 };
    let pid = unsafe { ctx.read_at::<i32>(tp.oom_pid as usize) }.unwrap_or(0) as u32;
    let cur = current();
    emit(EventKind::OomVictim, task_ctx(&ctx, &cur, cur.serving_dev()), OomVictimData { pid, _pad: 0 });
    0
}
