//! Presentation: tables, JSON lines and metrics, separate from data gathering.

pub mod audit;
pub mod clock;
pub mod exposition;
pub mod finding;
pub mod fit;
pub mod folded;
pub mod http;
pub mod metrics;
pub mod perfetto;
pub mod report;
pub mod stdout;
pub mod table;
pub mod terminal;
pub mod view;
pub mod words;
