//! Presentation: tables, JSON lines and metrics, separate from data gathering.

pub mod metrics;
pub mod table;
pub mod view;
