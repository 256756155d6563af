//! One module per subcommand.

pub mod audit;
pub mod backing_file;
pub mod exec;
pub mod generate;
pub mod monitor;
pub mod probes;
pub mod record;
pub mod report;
pub mod secs;
pub mod trace_args;
pub mod watch;
