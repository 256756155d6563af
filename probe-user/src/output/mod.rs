//! Presentation: tables, JSON lines and metrics, separate from data gathering.

pub mod audit;
pub mod clock;
pub mod exposition;
pub mod finding;
pub mod fit;
pub mod folded;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod perfetto;
pub mod probes;
pub mod record;
pub mod remedy;
pub mod report;
pub mod sink;
pub mod stdout;
pub mod summary;
pub mod table;
pub mod terminal;
pub mod view;
pub mod watch;
