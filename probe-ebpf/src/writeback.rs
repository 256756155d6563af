//! Writeback waits and folios written by reclaim, for tasks doing stacked
//! I/O. A servicer that waits on writeback of the device it serves, from
//! inside reclaim, is the deadlock of the stacked-filesystem case. Waits
//! outside reclaim (an fsync's own wait) are counted and dropped here, before
//! anything else: no rule needs them, and they are the bulk of all waits.
//!
//! Before 5.16 the same wait and write are on pages: wait_on_page_writeback()
//! and the writeback:wait_on_page_writeback / vmscan:mm_vmscan_writepage
//! tracepoints, with the same fields. The programs serve both.

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::tracing::StackIdContext,
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use probe_common::{
    config::found,
    events::{EventKind, ReclaimWriteData, WritebackWaitData},
    flags::PF_MEMALLOC,
    maps::counter,
};

use crate::{
    context::{read_ptr, read_u32, servicer, task_ctx, task_flags, task_flags_btf},
    emit::emit,
    maps::{config, count, tp_offsets},
};

/// (s_dev, i_ino) of the inode that owns a folio (or page: the same layout
/// up to `mapping`), through BTF offsets.
#[inline(always)]
pub fn folio_inode(folio: u64) -> Option<(u32, u64)> {
    let k = &config().kernel;
    if k.found & found::FOLIO_INODE != found::FOLIO_INODE {
        return None;
    }
    let mapping = read_ptr(folio, k.folio_mapping)?;
    // Anonymous and KSM folios tag the low bits of ->mapping.
    if mapping & 3 != 0 {
        return None;
    }
    let host = read_ptr(mapping, k.mapping_host)?;
    let sb = read_ptr(host, k.inode_i_sb)?;
    Some((read_u32(sb, k.sb_s_dev)?, read_ptr(host, k.inode_i_ino)?))
}

/// Reclaim first, servicer second: direct and memcg reclaim run under
/// PF_MEMALLOC (memalloc_noreclaim_save()), and reading the task's flags
/// costs less than the servicer check's lookups, so a wait outside reclaim,
/// which is nearly every wait, costs no map lookup at all. A flagged thread
/// whose reclaim start we did not record is in no reclaim a rule follows.
#[inline(always)]
fn wait<C: StackIdContext>(ctx: &C, flags: u32, fill: impl FnOnce(&mut WritebackWaitData)) {
    if flags & PF_MEMALLOC == 0 {
        count(counter::WAITS_OUTSIDE_RECLAIM);
        return;
    }
    count(counter::WAITS_IN_RECLAIM);
    let Some((cur, serving)) = servicer() else { return };
    if cur.with_state(|s| s.in_reclaim) != Some(1) {
        return;
    }
    let mut data = WritebackWaitData { in_reclaim: 1, ..Default::default() };
    fill(&mut data);
    emit(EventKind::WritebackWait, task_ctx(ctx, &cur, serving), data);
}

#[inline(always)]
fn tp_wait(ctx: &TracePointContext) -> u32 {
    let Some(tp) = tp_offsets() else { return 0 };
    wait(ctx, task_flags(), |d| {
        d.bdi = unsafe { ctx.read_at::<[u8; 32]>(tp.fww_name as usize) }.unwrap_or([0; 32]);
        d.ino = unsafe { ctx.read_at::<u64>(tp.fww_ino as usize) }.unwrap_or(0);
        d.index = unsafe { ctx.read_at::<u64>(tp.fww_index as usize) }.unwrap_or(0);
    });
    0
}

// TP: writeback:folio_wait_writeback, or writeback:wait_on_page_writeback before 5.16.
#[tracepoint(category = "writeback", name = "folio_wait_writeback")]
pub fn tp_folio_wait_writeback(ctx: TracePointContext) -> u32 {
    tp_wait(&ctx)
}

/// `flags`: the current task's, read the cheapest way the program type allows.
#[inline(always)]
fn fn_wait<C: StackIdContext>(ctx: &C, folio: u64, flags: u32) {
    wait(ctx, flags, |d| {
        if let Some((dev, ino)) = folio_inode(folio) {
            d.dev = dev;
            d.ino = ino;
        }
    });
}

/// TP_PROTO(struct folio *folio, struct address_space *mapping), struct page
/// before 5.16. Like the classic tracepoint it fires only when the folio is
/// under writeback (the function probes fire on every call, nearly all of
/// which wait for nothing), and unlike the classic one's bdi name, its
/// folio names the inode's device on every filesystem.
#[btf_tracepoint(function = "folio_wait_writeback")]
pub fn tpbtf_folio_wait_writeback(ctx: BtfTracePointContext) -> u32 {
    let folio: u64 = ctx.arg(0);
    fn_wait(&ctx, folio, task_flags_btf());
    0
}

// void folio_wait_writeback(struct folio *folio);
// void wait_on_page_writeback(struct page *page);   (before 5.16)
#[kprobe]
pub fn kp_folio_wait_writeback(ctx: ProbeContext) -> u32 {
    fn_wait(&ctx, ctx.arg::<u64>(0).unwrap_or(0), task_flags());
    0
}

#[fentry(function = "folio_wait_writeback")]
pub fn fe_folio_wait_writeback(ctx: FEntryContext) -> u32 {
    fn_wait(&ctx, ctx.arg::<u64>(0), task_flags_btf());
    0
}

/// pageout() writing a dirty folio (page) itself: TP_PROTO(struct folio *)
/// for mm_vmscan_write_folio, TP_PROTO(struct page *) for mm_vmscan_writepage
/// (before 5.16).
#[btf_tracepoint(function = "mm_vmscan_write_folio")]
pub fn tpbtf_vmscan_write_folio(ctx: BtfTracePointContext) -> u32 {
    let Some((cur, serving)) = servicer() else { return 0 };
    let folio: u64 = ctx.arg(0);
    let Some((dev, ino)) = folio_inode(folio) else { return 0 };
    let data = ReclaimWriteData { dev, _pad: 0, ino };
    emit(EventKind::ReclaimWrite, task_ctx(&ctx, &cur, serving), data);
    0
}
