//! The live agent: loads and attaches the programs, keeps the kernel's view
//! of the storage stack current, and runs events through the engine.

pub mod blocked;
pub mod inflight;
pub mod lock_holders;
pub mod maps_sync;
pub mod memcg;
#[cfg(test)]
mod object_check;
pub mod ratelimit;
pub mod refresh;
pub mod run;
pub mod session;
pub mod stacks;
pub mod start;
mod uevents;
