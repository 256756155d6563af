//! Kernel flag bits both sides test against.
//!
//! GFP *names* are not listed here: the agent reads them from the kernel's own
//! tracepoint print format so they follow the running kernel. These few bits are
//! the ones the rules and the in-kernel filter depend on, and they have been
//! stable since 4.x (include/linux/gfp_types.h, include/linux/sched.h).

pub const GFP_IO: u32 = 0x40;
pub const GFP_FS: u32 = 0x80;
pub const GFP_DIRECT_RECLAIM: u32 = 0x400;

/// An io_uring io-wq worker (PF_IO_WORKER, 5.12+), named `iou-wrk-<creator>`.
pub const PF_IO_WORKER: u32 = 0x0000_0010;
pub const PF_MEMALLOC: u32 = 0x0000_0800;
pub const PF_KSWAPD: u32 = 0x0002_0000;
pub const PF_MEMALLOC_NOFS: u32 = 0x0004_0000;
pub const PF_MEMALLOC_NOIO: u32 = 0x0008_0000;
pub const PF_LOCAL_THROTTLE: u32 = 0x0010_0000;
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// The task flags that take `__GFP_FS`/`__GFP_IO` out of every allocation the
/// task makes (current_gfp_context()).
pub const PF_RECLAIM_SCOPES: u32 = PF_MEMALLOC_NOFS | PF_MEMALLOC_NOIO;

/// The mask a task's allocations really carry once its scope flags are applied,
/// the same computation as the kernel's current_gfp_context().
pub const fn effective_gfp(gfp: u32, task_flags: u32) -> u32 {
    if task_flags & PF_MEMALLOC_NOIO != 0 {
        gfp & !(GFP_IO | GFP_FS)
    } else if task_flags & PF_MEMALLOC_NOFS != 0 {
        gfp & !GFP_FS
    } else {
        gfp
    }
}
