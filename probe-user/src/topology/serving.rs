//! Which of a servicer's threads complete its device's I/O, when the
//! transport says only some do: the verdict is judged by those alone.

use probe_common::flags::PF_IO_WORKER;

use super::model::{ServicerKind, ServicerThread};
use super::procs;
use super::source::Source;
use crate::kernel::markers;

/// The serving threads of `pid`, or empty when every thread counts.
pub(super) fn threads(src: &Source, kind: ServicerKind, pid: u32, threads: &[ServicerThread]) -> Vec<u32> {
    match kind {
        ServicerKind::Ublk => ublk_queue_threads(src, pid, threads),
        _ => Vec::new(),
    }
}

/// A ublk server's queue threads, which complete the device's I/O: each
/// waits on its own io_uring for the driver's commands (libublk, ublksrv),
/// and hands blocking file I/O to io-wq workers the kernel names
/// `iou-wrk-<creator's tid>` and which inherit the creator's flags. The
/// main thread and the control ring's worker serve none: libublk sets
/// PR_SET_IO_FLUSHER in its queue threads only (`init_queue_thread`).
/// Empty when the stacks cannot be read (not root) or show no waiter: then
/// every thread counts.
fn ublk_queue_threads(src: &Source, pid: u32, threads: &[ServicerThread]) -> Vec<u32> {
    let queues: Vec<u32> = threads
        .iter()
        .filter(|t| t.flags & PF_IO_WORKER == 0)
        .filter(|t| procs::call_stack(src, pid, t.tid).is_some_and(|s| markers::on_stack(&s, "io_cqring_wait")))
        .map(|t| t.tid)
        .collect();
    let workers = threads.iter().filter(|t| {
        t.flags & PF_IO_WORKER != 0
            && t.comm.strip_prefix("iou-wrk-").and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| queues.contains(&c))
    });
    let mut tids: Vec<u32> = queues.iter().copied().chain(workers.map(|t| t.tid)).collect();
    tids.sort_unstable();
    tids
}
