//! Filesystem write and writeback nesting of kernel threads. A frame is
//! pushed when a kernel thread enters a write or writepages of an inode and
//! popped when it leaves. A frame on a file that backs a stacked device
//! (BACKING_FILES) makes the thread a servicer of that device for as long
//! as the frame is open: that is how a loop worker, an nfsd thread, a LIO
//! fileio or nvmet file-backed worker, or a flusher writing back a backing
//! file is recognised, by the file it writes and not by its name.
//!
//! Only kernel threads: a userspace servicer is known by its tgid
//! (SERVICERS, from the topology), so its writes need no frame, and every
//! other process's writes cost one read of the task flags here and no map
//! lookup. These hooks run on every buffered write of the machine; that
//! read is all an application's write pays.
//!
//! A kernel thread that wrote a backing file keeps its (idle) state when its
//! last frame closes, until it exits (sched_process_exit deletes it): a
//! loop worker writes its backing file on every request, and inserting and
//! deleting the entry each time cost more than the rest of both hooks.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use probe_common::maps::{BackingKey, TaskState, FS_STACK_DEPTH};

use probe_common::flags::PF_KTHREAD;

use crate::{
    context::{current, read_ptr, read_u32, task_flags},
    maps::{config, tp_offsets, BACKING_FILES},
};

/// Frames past this depth are counted but not stored; bounds a leak when an
/// error path skips the matching end.
const MAX_DEPTH: u32 = 16;

/// The frames follow kernel threads only (see the module comment).
#[inline(always)]
fn followed() -> bool {
    task_flags() & PF_KTHREAD != 0
}

#[inline(always)]
pub fn push(dev: u32, ino: u64) {
    let key = BackingKey { dev, _pad: 0, ino };
    // SAFETY: map values stay valid for the program's run.
    let backing = unsafe { BACKING_FILES.get(&key) }.map(|b| b.upper_dev).unwrap_or(0);
    let cur = current();
    let frame = |s: &mut TaskState| {
        let d = s.depth as usize;
        if d < FS_STACK_DEPTH {
            s.frames[d] = backing;
        }
        if s.depth < MAX_DEPTH {
            s.depth += 1;
        }
    };
    // A write of an unrelated file matters only as nesting inside a frame
    // that is already followed.
    if backing == 0 {
        cur.with_state(frame);
    } else {
        cur.with_state_or_insert(frame);
    }
}

/// One TASKS lookup for a kernel thread, nothing else: the state stays (see
/// the module comment).
#[inline(always)]
pub fn pop() {
    if !followed() {
        return;
    }
    current().with_state(|s| {
        if s.depth > 0 {
            s.depth -= 1;
        }
    });
}

#[inline(always)]
fn tp_push(ctx: &TracePointContext) -> u32 {
    if !followed() {
        return 0;
    }
    let Some(tp) = tp_offsets() else { return 0 };
    let dev = unsafe { ctx.read_at::<u32>(tp.ext4_dev as usize) }.unwrap_or(0);
    let ino = unsafe { ctx.read_at::<u64>(tp.ext4_ino as usize) }.unwrap_or(0);
    push(dev, ino);
    0
}

#[tracepoint(category = "ext4", name = "ext4_da_write_begin")]
pub fn tp_ext4_da_write_begin(ctx: TracePointContext) -> u32 {
    tp_push(&ctx)
}

#[tracepoint(category = "ext4", name = "ext4_da_write_end")]
pub fn tp_ext4_da_write_end(_ctx: TracePointContext) -> u32 {
    pop();
    0
}

#[tracepoint(category = "ext4", name = "ext4_write_begin")]
pub fn tp_ext4_write_begin(ctx: TracePointContext) -> u32 {
    tp_push(&ctx)
}

#[tracepoint(category = "ext4", name = "ext4_write_end")]
pub fn tp_ext4_write_end(_ctx: TracePointContext) -> u32 {
    pop();
    0
}

#[tracepoint(category = "ext4", name = "ext4_writepages")]
pub fn tp_ext4_writepages(ctx: TracePointContext) -> u32 {
    tp_push(&ctx)
}

#[tracepoint(category = "ext4", name = "ext4_writepages_result")]
pub fn tp_ext4_writepages_result(_ctx: TracePointContext) -> u32 {
    pop();
    0
}

/// Push a frame for `mapping->host`.
#[inline(always)]
fn push_mapping(mapping: u64) {
    if !followed() {
        return;
    }
    let k = &config().kernel;
    let Some(host) = read_ptr(mapping, k.mapping_host) else { return };
    let dev = read_ptr(host, k.inode_i_sb).and_then(|sb| read_u32(sb, k.sb_s_dev)).unwrap_or(0);
    push(dev, read_ptr(host, k.inode_i_ino).unwrap_or(0));
}

// int ext4_da_write_begin(const struct kiocb *iocb, struct address_space *mapping,
//                         loff_t pos, unsigned len, struct folio **foliop, void **fsdata);
// The page-cache folio is allocated inside write_begin, so its span is the window.
#[kprobe]
pub fn kp_ext4_da_write_begin(ctx: ProbeContext) -> u32 {
    push_mapping(ctx.arg::<u64>(1).unwrap_or(0));
    0
}

#[kretprobe]
pub fn krp_ext4_da_write_begin(_ctx: RetProbeContext) -> u32 {
    pop();
    0
}

// int do_writepages(struct address_space *mapping, struct writeback_control *wbc);
// Every filesystem's writepages (ext4_writepages, xfs_vm_writepages ->
// iomap_writepages) is called from here.
#[kprobe]
pub fn kp_do_writepages(ctx: ProbeContext) -> u32 {
    push_mapping(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn krp_do_writepages(_ctx: RetProbeContext) -> u32 {
    pop();
    0
}

#[fentry(function = "do_writepages")]
pub fn fe_do_writepages(ctx: FEntryContext) -> u32 {
    push_mapping(ctx.arg::<u64>(0));
    0
}

#[fexit(function = "do_writepages")]
pub fn fx_do_writepages(_ctx: FExitContext) -> u32 {
    pop();
    0
}
