//! Choosing, per logical hook, the best attach type this kernel allows.

pub mod config;
pub mod gates;
pub mod loader;
pub mod measure;
pub mod table;
#[cfg(test)]
mod table_check;
