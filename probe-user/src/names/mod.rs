//! Kernel names for flag bits, spelled the way the kernel spells them: the
//! GFP table read from tracefs ([`gfp`]), evaluated by a small C constant
//! expression evaluator ([`expr`]), and the reclaim-relevant task flags
//! ([`task`]). The bits themselves are in `probe_common::flags`.

mod expr;
pub mod gfp;
pub mod task;

pub use gfp::{load, GfpNames, GfpSource};
pub use task::task_flags;
