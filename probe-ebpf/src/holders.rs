//! Who holds what in the filesystems above a servicer: XFS inode locks and
//! transactions, jbd2 handles. A servicer whose reclaim enters such a
//! filesystem (its shrinker, its writeback) waits for these holders, and a
//! holder waiting on I/O to the stacked device waits for the servicer: the
//! two halves of the cycle. State only, no events: the agent reads HOLDERS
//! when it reports a finding.
//!
//! The agent attaches these programs only while the machine is under
//! memory pressure (agent/pressure.rs): an inode lock is taken and dropped
//! twice per buffered write, so following locks on a healthy server would
//! cost more than everything else together, for state only a servicer in
//! reclaim makes anyone read. A lock taken before they attach and still
//! held is not seen; one taken after is.
//!
//! For any other filesystem a call costs one UPPER_FS lookup; in a followed
//! one, an update in place of the thread's entry (inserted once per thread).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::{
    config::TracepointOffsets,
    maps::{counter, held, HolderState},
};

use crate::{
    context::current,
    maps::{count, tp_offsets, HOLDERS, UPPER_FS},
};

// fs/xfs/xfs_inode.h, unchanged since 2.6.
const XFS_IOLOCK_EXCL: i32 = 1 << 0;
const XFS_IOLOCK_SHARED: i32 = 1 << 1;
const XFS_ILOCK_EXCL: i32 = 1 << 2;
const XFS_ILOCK_SHARED: i32 = 1 << 3;
const XFS_MMAPLOCK_EXCL: i32 = 1 << 4;
const XFS_MMAPLOCK_SHARED: i32 = 1 << 5;

/// The filesystem a tracepoint names (its dev field at `dev_off` of the
/// offsets), when it is one the agent follows.
#[inline(always)]
fn followed_fs(
    ctx: &TracePointContext,
    dev_off: impl FnOnce(&TracepointOffsets) -> u32,
) -> Option<(&'static TracepointOffsets, u32)> {
    let tp = tp_offsets()?;
    let dev = unsafe { ctx.read_at::<u32>(dev_off(tp) as usize) }.ok()?;
    UPPER_FS.get_ptr(&dev)?;
    Some((tp, dev))
}

/// Adds to what the current thread holds in `s_dev`, creating its entry.
#[inline(always)]
fn acquire(s_dev: u32, ino: u64, add: impl FnOnce(&mut HolderState)) {
    let cur = current();
    if let Some(h) = HOLDERS.get_ptr_mut(&cur.tid) {
        // SAFETY: this thread's own entry; only this thread writes it (the
        // agent only deletes entries released long ago).
        let h = unsafe { &mut *h };
        if h.released_ns != 0 {
            h.released_ns = 0;
            h.kinds = 0;
            h.since_ns = unsafe { bpf_ktime_get_ns() };
        }
        add(h);
        h.kinds |= kinds_held(h);
        h.s_dev = s_dev;
        if ino != 0 {
            h.ino = ino;
        }
        return;
    }
    let mut h = HolderState {
        s_dev,
        tgid: cur.tgid,
        ino,
        since_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..Default::default()
    };
    add(&mut h);
    h.kinds = kinds_held(&h);
    if HOLDERS.insert(&cur.tid, &h, 0).is_err() {
        count(counter::HOLDERS_FULL);
    }
}

/// The `held::*` bits of what `h` holds now.
#[inline(always)]
fn kinds_held(h: &HolderState) -> u32 {
    let bit = |n: u32, b: u32| if n > 0 { b } else { 0 };
    bit(h.ilock_excl, held::ILOCK_EXCL)
        | bit(h.ilock_shared, held::ILOCK_SHARED)
        | bit(h.iolock, held::IOLOCK)
        | bit(h.trans, held::TRANS)
        | bit(h.handles, held::HANDLE)
}

/// Takes from what the current thread holds; when nothing is left the
/// entry is marked released.
#[inline(always)]
fn release(sub: impl FnOnce(&mut HolderState)) {
    let Some(h) = HOLDERS.get_ptr_mut(&current().tid) else { return };
    // SAFETY: this thread's own entry; only this thread writes it.
    let h = unsafe { &mut *h };
    sub(h);
    if h.released_ns == 0 && h.ilock_excl == 0 && h.ilock_shared == 0 && h.iolock == 0 && h.trans == 0 && h.handles == 0
    {
        h.released_ns = unsafe { bpf_ktime_get_ns() };
    }
}

/// The lock kinds in an xfs_ilock()/xfs_iunlock() mask, as counts to add.
#[inline(always)]
fn lock_kinds(flags: i32) -> (u32, u32, u32) {
    let io = (flags & XFS_IOLOCK_EXCL != 0) as u32
        + (flags & XFS_IOLOCK_SHARED != 0) as u32
        + (flags & XFS_MMAPLOCK_EXCL != 0) as u32
        + (flags & XFS_MMAPLOCK_SHARED != 0) as u32;
    ((flags & XFS_ILOCK_EXCL != 0) as u32, (flags & XFS_ILOCK_SHARED != 0) as u32, io)
}

#[inline(always)]
fn xfs_lock(ctx: &TracePointContext, lock: bool) {
    let Some((tp, dev)) = followed_fs(ctx, |tp| tp.xfs_lock_dev) else { return };
    let flags = unsafe { ctx.read_at::<i32>(tp.xfs_lock_flags as usize) }.unwrap_or(0);
    let (excl, shared, io) = lock_kinds(flags);
    if lock {
        let ino = unsafe { ctx.read_at::<u64>(tp.xfs_lock_ino as usize) }.unwrap_or(0);
        acquire(dev, ino, |h| {
            h.ilock_excl += excl;
            h.ilock_shared += shared;
            h.iolock += io;
        });
    } else {
        // Saturating: a lock taken before the agent started, or through
        // xfs_ilock_nowait() (traced before it knows it got the lock).
        release(|h| {
            h.ilock_excl = h.ilock_excl.saturating_sub(excl);
            h.ilock_shared = h.ilock_shared.saturating_sub(shared);
            h.iolock = h.iolock.saturating_sub(io);
        });
    }
}

// TP: xfs:xfs_ilock (dev, ino, lock_flags), after the lock is taken.
#[tracepoint(category = "xfs", name = "xfs_ilock")]
pub fn tp_xfs_ilock(ctx: TracePointContext) -> u32 {
    xfs_lock(&ctx, true);
    0
}

// TP: xfs:xfs_iunlock, before the lock is dropped.
#[tracepoint(category = "xfs", name = "xfs_iunlock")]
pub fn tp_xfs_iunlock(ctx: TracePointContext) -> u32 {
    xfs_lock(&ctx, false);
    0
}

#[inline(always)]
fn xfs_trans(ctx: &TracePointContext, begin: bool) {
    let Some((_, dev)) = followed_fs(ctx, |tp| tp.xfs_trans_dev) else { return };
    if begin {
        acquire(dev, 0, |h| h.trans += 1);
    } else {
        release(|h| h.trans = h.trans.saturating_sub(1));
    }
}

// TP: xfs:xfs_trans_alloc, a new transaction with its log reservation.
#[tracepoint(category = "xfs", name = "xfs_trans_alloc")]
pub fn tp_xfs_trans_alloc(ctx: TracePointContext) -> u32 {
    xfs_trans(&ctx, true);
    0
}

// TP: xfs:xfs_trans_dup, a rolled transaction's successor (the old one is
// freed after it commits).
#[tracepoint(category = "xfs", name = "xfs_trans_dup")]
pub fn tp_xfs_trans_dup(ctx: TracePointContext) -> u32 {
    xfs_trans(&ctx, true);
    0
}

// TP: xfs:xfs_trans_free, after commit or cancel.
#[tracepoint(category = "xfs", name = "xfs_trans_free")]
pub fn tp_xfs_trans_free(ctx: TracePointContext) -> u32 {
    xfs_trans(&ctx, false);
    0
}

// TP: jbd2:jbd2_handle_start, an outermost handle (nested ones are not traced).
#[tracepoint(category = "jbd2", name = "jbd2_handle_start")]
pub fn tp_jbd2_handle_start(ctx: TracePointContext) -> u32 {
    let Some((_, dev)) = followed_fs(&ctx, |tp| tp.jbd2_dev) else { return 0 };
    acquire(dev, 0, |h| h.handles = 1);
    0
}

// TP: jbd2:jbd2_handle_stats, when the outermost handle stops.
#[tracepoint(category = "jbd2", name = "jbd2_handle_stats")]
pub fn tp_jbd2_handle_stats(ctx: TracePointContext) -> u32 {
    if followed_fs(&ctx, |tp| tp.jbd2_dev).is_none() {
        return 0;
    }
    release(|h| h.handles = 0);
    0
}
