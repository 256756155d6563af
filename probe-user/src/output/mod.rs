//! Presentation: tables, JSON lines and metrics, separate from data gathering.

pub mod http;
pub mod metrics;
pub mod stdout;
pub mod table;
pub mod view;
