//! reclaimscope's agent, as a library so that the integration tests and the
//! fuzz targets drive the same code as the binary.

pub mod cli;
pub mod flags;
pub mod kernel;
pub mod output;
pub mod postmortem;
pub mod topology;
pub mod trace;
pub mod attach;
pub mod events;
pub mod detect;
pub mod agent;
