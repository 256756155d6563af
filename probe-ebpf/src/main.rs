//! reclaimscope's kernel side: one module per hook family. Each logical hook
//! has one body shared by all of its attach types (fentry, kprobe, tp_btf,
//! tracepoint); the agent picks which attach type to load at run time.
#![no_std]
#![no_main]

mod alloc;
mod context;
mod emit;
mod fs_write;
mod maps;
mod reclaim;
mod shrinker;
mod tasks;
mod throttle;
mod writeback;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
