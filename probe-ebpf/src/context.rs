//! Who is running, what stacked I/O it is doing, and whether that makes it
//! worth an event. This is the in-kernel filter: for an unrelated task it
//! costs one SERVICERS lookup and one TASKS lookup.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    programs::tracing::StackIdContext,
};
use probe_common::{events::TaskCtx, maps::FS_STACK_DEPTH};

use crate::maps::{config, SERVICERS, STACKS, TASKS};

/// Per-thread state kept in TASKS. Kernel-only, so it lives here rather than
/// in probe-common.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct TaskState {
    pub reclaim_begin_ns: u64,
    pub slowpath_begin_ns: u64,
    pub reclaim_gfp: u32,
    pub reclaim_order: i32,
    pub reclaim_kind: u32,
    pub in_reclaim: u32,
    pub slowpath_gfp: u32,
    pub slowpath_order: i32,
    /// Open filesystem write/writeback frames.
    pub depth: u32,
    /// For each open frame, the stacked device whose backing file it writes (0: none).
    pub frames: [u32; FS_STACK_DEPTH],
}

impl TaskState {
    /// The innermost frame that writes a backing file.
    #[inline(always)]
    pub fn serving_dev(&self) -> u32 {
        let mut dev = 0;
        let mut i = 0;
        while i < FS_STACK_DEPTH {
            if (i as u32) < self.depth && self.frames[i] != 0 {
                dev = self.frames[i];
            }
            i += 1;
        }
        dev
    }
}

#[derive(Clone, Copy)]
pub struct Current {
    pub tgid: u32,
    pub tid: u32,
}

#[inline(always)]
pub fn current() -> Current {
    let id = bpf_get_current_pid_tgid();
    Current { tgid: (id >> 32) as u32, tid: id as u32 }
}

impl Current {
    /// Honours `-p PID`.
    #[inline(always)]
    pub fn is_target(&self) -> bool {
        let t = config().target_tgid;
        t == 0 || t == self.tgid
    }

    #[inline(always)]
    pub fn state(&self) -> Option<*mut TaskState> {
        TASKS.get_ptr_mut(&self.tid)
    }

    /// The device whose I/O this task completes: a registered servicer, or a
    /// task inside a write to a backing file. 0 when it serves nothing.
    #[inline(always)]
    pub fn serving_dev(&self, state: Option<*mut TaskState>) -> u32 {
        // SAFETY: map values stay valid for the program's run.
        if let Some(s) = unsafe { SERVICERS.get(&self.tgid) } {
            return s.serving_dev;
        }
        match state {
            Some(s) => unsafe { (*s).serving_dev() },
            None => 0,
        }
    }

    /// This thread's state, created if missing.
    #[inline(always)]
    pub fn state_or_insert(&self, state: Option<*mut TaskState>) -> Option<*mut TaskState> {
        if state.is_some() {
            return state;
        }
        if TASKS.insert(&self.tid, &TaskState::default(), 0).is_err() {
            crate::maps::count(probe_common::maps::counter::TASK_STATE_FULL);
            return None;
        }
        TASKS.get_ptr_mut(&self.tid)
    }
}

/// task_struct.flags of the current task, through the BTF offset.
#[inline(always)]
pub fn task_flags() -> u32 {
    let off = config().kernel.task_flags as usize;
    if off == 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(task.add(off) as *const u32) }.unwrap_or(0)
}

/// Reads a kernel pointer-sized field at `base + off`.
#[inline(always)]
pub fn read_ptr(base: u64, off: u32) -> Option<u64> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.ok()
}

#[inline(always)]
pub fn read_u32(base: u64, off: u32) -> Option<u32> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u32) }.ok()
}

/// The common header of every event. Kernel stacks are taken only for tasks
/// doing stacked I/O: they are what a finding shows.
#[inline(always)]
pub fn task_ctx<C: StackIdContext>(ctx: &C, cur: &Current, serving_dev: u32, depth: u32) -> TaskCtx {
    let stack_id = if serving_dev != 0 { ctx.get_stackid(&STACKS, 0).map(|id| id as i32).unwrap_or(-1) } else { -1 };
    TaskCtx {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid: cur.tgid,
        tid: cur.tid,
        task_flags: task_flags(),
        stack_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        serving_dev,
        fs_depth: depth,
    }
}
