//! Who is running, what stacked I/O it is doing, and whether that makes it
//! worth an event. This is the in-kernel filter every program starts with:
//! for an unrelated task it costs one SERVICERS and one TASKS lookup and
//! nothing else.

use aya_ebpf::{
    bindings::BPF_F_REUSE_STACKID,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    programs::tracing::StackIdContext,
};
use probe_common::{
    config::found,
    events::TaskCtx,
    maps::{counter, TaskState},
};

use crate::maps::{config, count, SERVICERS, STACKS, TASKS};

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

    /// This thread's state, if it has one. The only way to it: map values
    /// stay valid for the whole program run, a BPF program is never
    /// preempted by another run of itself on the same CPU, and a thread runs
    /// on one CPU at a time, so while `f` runs nothing else writes this
    /// thread's entry and the `&mut` does not alias.
    #[inline(always)]
    pub fn with_state<R>(&self, f: impl FnOnce(&mut TaskState) -> R) -> Option<R> {
        // SAFETY: see above.
        TASKS.get_ptr_mut(&self.tid).map(|p| f(unsafe { &mut *p }))
    }

    /// Like [`with_state`](Self::with_state), creating the state if missing
    /// (a full map is counted, and the caller sees None).
    #[inline(always)]
    pub fn with_state_or_insert<R>(&self, f: impl FnOnce(&mut TaskState) -> R) -> Option<R> {
        let p = match TASKS.get_ptr_mut(&self.tid) {
            Some(p) => p,
            None => {
                if TASKS.insert(&self.tid, &TaskState::default(), 0).is_err() {
                    count(counter::TASK_STATE_FULL);
                    return None;
                }
                TASKS.get_ptr_mut(&self.tid)?
            }
        };
        // SAFETY: see with_state.
        Some(f(unsafe { &mut *p }))
    }

    /// Drops this thread's state once it follows nothing any more.
    #[inline(always)]
    pub fn release_if_idle(&self) {
        if self.with_state(|s| s.idle()) == Some(true) {
            let _ = TASKS.remove(&self.tid);
        }
    }

    /// The device whose I/O this task completes: a registered servicer, or
    /// a task inside a write to a backing file. 0 when it serves nothing.
    #[inline(always)]
    pub fn serving_dev(&self) -> u32 {
        // SAFETY: map values stay valid for the program's run.
        if let Some(s) = unsafe { SERVICERS.get(&self.tgid) } {
            return s.serving_dev;
        }
        self.with_state(|s| s.frame_dev()).unwrap_or(0)
    }
}

/// The filter prologue: the current task when it is a `-p` target doing
/// stacked I/O, with the device it serves.
#[inline(always)]
pub fn servicer() -> Option<(Current, u32)> {
    let cur = current();
    if !cur.is_target() {
        return None;
    }
    match cur.serving_dev() {
        0 => None,
        dev => Some((cur, dev)),
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

/// The same flags without a helper read, for programs with BTF context
/// (tp_btf, fentry: 5.11+): the task is a BTF pointer, and the verifier
/// knows the offset, read from the frozen CONFIG, as a constant, so the
/// field is one checked load. The hot writeback-wait filter uses it.
#[inline(always)]
pub fn task_flags_btf() -> u32 {
    let k = &config().kernel;
    if k.found & found::CURRENT_TASK_BTF == 0 {
        return task_flags();
    }
    let off = k.task_flags as usize;
    if off == 0 {
        return 0;
    }
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task_btf() } as *const u8;
    // SAFETY: a verifier-checked load of task_struct.flags.
    unsafe { core::ptr::read_volatile(task.add(off) as *const u32) }
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

/// How the programs take kernel stacks: the newest stack replaces the one
/// in its bucket (`BPF_F_REUSE_STACKID`).
///
/// STACKS is a BPF_MAP_TYPE_STACK_TRACE map: MAX_STACKS buckets indexed by
/// a hash of the frames, one stack each. With flags 0 a filled bucket keeps
/// its first stack for the life of the map, and every other stack that
/// hashes to it fails (-EEXIST): over a months-long run the map fills with
/// old stacks and nearly every new one is lost. With BPF_F_REUSE_STACKID the
/// map holds the latest stack of each bucket and bpf_get_stackid() fails
/// only when it cannot walk the stack (-EFAULT) or has no free element
/// (-ENOMEM); those failures are still counted in STACKS_LOST.
///
/// The price is a race that the agent accepts: an event carries only the
/// id, and the agent reads the bucket when it handles the event,
/// milliseconds later. Had another stack hashing to the same bucket been
/// taken in between, the agent reads that newer stack. The kernel shows user
/// space neither the bucket's hash nor a generation, so the agent cannot
/// tell; it reads the bucket afresh for every event, never caching a stack
/// by id since ids are reused (probe-user's agent/stacks.rs). A swap needs
/// two different servicer stacks (no other task takes stacks) to collide in
/// one of 4,096 buckets within the ring buffer's latency, and an event's
/// stack is evidence for the reader of a finding, never an input to a rule.
///
/// Keeping flags 0 and having the agent delete ids it has read was the
/// alternative: a delete syscall per stack, and the same race (a freed
/// bucket is refilled by another stack while an older event naming it is
/// still in the ring), so it buys nothing over the kernel's own reuse.
pub const STACK_FLAGS: u64 = BPF_F_REUSE_STACKID as u64;

/// The common header of every event. Kernel stacks are taken only for tasks
/// doing stacked I/O (they are what a finding shows); a stack that cannot be
/// taken is counted (see [`STACK_FLAGS`]).
#[inline(always)]
pub fn task_ctx<C: StackIdContext>(ctx: &C, cur: &Current, serving_dev: u32) -> TaskCtx {
    let stack_id = if serving_dev != 0 {
        match ctx.get_stackid(&STACKS, STACK_FLAGS) {
            Ok(id) => id as i32,
            Err(_) => {
                count(counter::STACKS_LOST);
                -1
            }
        }
    } else {
        -1
    };
    TaskCtx {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid: cur.tgid,
        tid: cur.tid,
        task_flags: task_flags(),
        stack_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        serving_dev,
        fs_depth: cur.with_state(|s| s.depth).unwrap_or(0),
    }
}
