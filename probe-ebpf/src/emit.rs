//! Ring-buffer output. A full ring is counted, never silent.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use probe_common::{
    events::{Event, EventKind, TaskCtx},
    maps::counter,
};

use crate::maps::{count, EVENTS};

#[inline(always)]
pub fn emit<C: EbpfContext, T: Copy + 'static>(ctx: &C, kind: EventKind, task: TaskCtx, data: T) {
    match EVENTS.reserve::<Event<T>>(0) {
        Some(mut entry) => {
            entry.write(Event { kind: kind as u32, _pad: 0, ctx: task, data });
            entry.submit(0);
            count(counter::EVENTS_SENT);
        }
        None => {
            count(counter::EVENTS_DROPPED);
            warn!(ctx, "ring buffer full: event of kind {} dropped", kind as u32);
        }
    }
}
