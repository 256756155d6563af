//! One module per subcommand.

pub mod audit;
pub mod monitor;
pub mod record;
pub mod report;
pub mod probes;
pub mod trace_args;
pub mod watch;
