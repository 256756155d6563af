//! Writeback waits and folios written by reclaim, for tasks doing stacked I/O.
//! A servicer that waits on writeback of the device it serves, from inside
//! reclaim, is the deadlock of the stacked-filesystem case.

use aya_ebpf::{
    macros::{btf_tracepoint, kprobe, tracepoint},
    programs::tracing::StackIdContext,
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};
use probe_common::{
    config::found,
    events::{EventKind, ReclaimWriteData, WritebackWaitData},
    maps::counter,
};

use crate::{
    context::{current, read_ptr, read_u32, task_ctx},
    emit::emit,
    maps::{config, count},
};

/// (s_dev, i_ino) of the inode that owns a folio, through BTF offsets.
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

#[inline(always)]
fn wait<C: StackIdContext>(ctx: &C, fill: impl FnOnce(&mut WritebackWaitData)) {
    count(counter::WRITEBACK_WAITS);
    let cur = current();
    if !cur.is_target() {
        return;
    }
    let state = cur.state();
    let serving = cur.serving_dev(state);
    if serving == 0 {
        return;
    }
    let mut data = WritebackWaitData::default();
    fill(&mut data);
    let mut depth = 0;
    if let Some(s) = state {
        let s = unsafe { &*s };
        data.in_reclaim = s.in_reclaim;
        depth = s.depth;
    }
    emit(ctx, EventKind::WritebackWait, task_ctx(ctx, &cur, serving, depth), data);
}

#[tracepoint(category = "writeback", name = "folio_wait_writeback")]
pub fn tp_folio_wait_writeback(ctx: TracePointContext) -> u32 {
    let tp = &config().tp;
    wait(&ctx, |d| {
        d.bdi = unsafe { ctx.read_at::<[u8; 32]>(tp.fww_name as usize) }.unwrap_or([0; 32]);
        d.ino = unsafe { ctx.read_at::<u64>(tp.fww_ino as usize) }.unwrap_or(0);
        d.index = unsafe { ctx.read_at::<u64>(tp.fww_index as usize) }.unwrap_or(0);
    });
    0
}

// void folio_wait_writeback(struct folio *folio);
#[kprobe]
pub fn kp_folio_wait_writeback(ctx: ProbeContext) -> u32 {
    let folio = ctx.arg::<u64>(0).unwrap_or(0);
    wait(&ctx, |d| {
        if let Some((dev, ino)) = folio_inode(folio) {
            d.dev = dev;
            d.ino = ino;
        }
    });
    0
}

// TP_PROTO(struct folio *folio): called from pageout() when reclaim writes a
// dirty folio itself.
#[btf_tracepoint(function = "mm_vmscan_write_folio")]
pub fn tpbtf_vmscan_write_folio(ctx: BtfTracePointContext) -> u32 {
    let cur = current();
    if !cur.is_target() {
        return 0;
    }
    let state = cur.state();
    let serving = cur.serving_dev(state);
    if serving == 0 {
        return 0;
    }
    let folio: u64 = ctx.arg(0);
    let Some((dev, ino)) = folio_inode(folio) else { return 0 };
    let depth = state.map(|s| unsafe { (*s).depth }).unwrap_or(0);
    let data = ReclaimWriteData { dev, _pad: 0, ino };
    emit(&ctx, EventKind::ReclaimWrite, task_ctx(&ctx, &cur, serving, depth), data);
    0
}
