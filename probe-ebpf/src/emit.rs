//! Ring-buffer output. A full ring is counted, never silent, and never
//! logged from here: a log line per dropped event would add a second
//! ring-buffer write to every event lost to a full one, and flood the log
//! exactly during an overflow. The agent reads EVENTS_DROPPED and says how
//! many were dropped, at most once a minute.

use probe_common::{
    events::{Event, EventKind, TaskCtx},
    maps::counter,
};

use crate::maps::{count, EVENTS};

#[inline(always)]
pub fn emit<T: Copy + 'static>(kind: EventKind, task: TaskCtx, data: T) {
    match EVENTS.reserve::<Event<T>>(0) {
        Some(mut entry) => {
            entry.write(Event { kind: kind as u32, _pad: 0, ctx: task, data });
            entry.submit(0);
            count(counter::EVENTS_SENT);
        }
        None => count(counter::EVENTS_DROPPED),
    }
}
