//! reclaimscope's agent, as a library so that the integration tests and the
//! fuzz targets drive the same code as the binary.

pub mod agent;
pub mod attach;
pub mod cli;
pub mod detect;
pub mod events;
pub mod kernel;
pub mod names;
pub mod output;
pub mod postmortem;
pub mod topology;
pub mod trace;
