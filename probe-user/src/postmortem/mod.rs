//! Offline analysis of recorded traces and ftrace captures.

pub mod ftrace;
pub mod input;
pub mod replay;
pub mod timeline;

#[cfg(test)]
mod fixture_tests;
