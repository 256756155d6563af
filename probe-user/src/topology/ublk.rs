//! ublk: a block device (ublkbN) whose I/O a userspace server completes
//! through the character device /dev/ublkcN, which the server holds open.

use probe_common::flags::PF_IO_WORKER;

use crate::kernel::markers;

use super::block::BlockDevice;
use super::mountinfo::Mount;
use super::procs::{self, Holders};
use super::servicer::{holder_servicers, Servicer, ServicerKind, ServicerThread};
use super::source::Source;

/// The servers of ublk device `d`: the processes holding its control node.
pub(super) fn servers(
    src: &Source,
    mounts: &[Mount],
    holders: &Holders,
    d: &BlockDevice,
    warnings: &mut Vec<String>,
) -> Vec<Servicer> {
    let node = format!("/dev/ublkc{}", d.name.trim_start_matches("ublkb"));
    let found = holder_servicers(src, mounts, holders, &node, ServicerKind::Ublk, d.dev, d.label());
    if found.is_empty() {
        warnings.push(format!(
            "{}: no process holds {node} open (ublk server gone, or not visible without root)",
            d.label()
        ));
    }
    found
}

/// A ublk server's queue threads, which complete the device's I/O: each
/// waits on its own io_uring for the driver's commands (libublk, ublksrv),
/// and hands blocking file I/O to io-wq workers the kernel names
/// `iou-wrk-<creator's tid>` and which inherit the creator's flags. The
/// main thread and the control ring's worker serve none: libublk sets
/// PR_SET_IO_FLUSHER in its queue threads only (`init_queue_thread`).
/// Empty when the stacks cannot be read (not root) or show no waiter: then
/// every thread counts.
pub(super) fn queue_threads(src: &Source, pid: u32, threads: &[ServicerThread]) -> Vec<u32> {
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
