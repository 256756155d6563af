//! The correlation engine: pure rules over events and observations, with no
//! I/O, so that live runs, recorded traces and synthetic streams all go
//! through the same code.

pub mod behaviour;
pub mod engine;
pub mod finding;
pub mod holds;
pub mod index;
pub mod rules;
