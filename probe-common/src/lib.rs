//! Types shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]`, padded explicitly and size-asserted, because
//! the kernel side writes these bytes and the user side reads them back.
#![no_std]

pub mod config;
pub mod events;
pub mod flags;
pub mod maps;

/// Implements `aya::Pod` for the listed types when built for the agent.
#[macro_export]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is repr(C), Copy, and has no implicit padding.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
