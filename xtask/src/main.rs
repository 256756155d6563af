//! Build orchestration: `cargo xtask setup|build|test|demo|bench|soak`.

mod bench;
mod build;
mod demo;
mod setup;
mod soak;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every missing prerequisite (apt packages, bpf-linker, test tools).
    Setup,
    /// Build the eBPF object, then the agent with the object embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run every test: unit, kernel integration (serially), fuzz smoke.
    Test {
        /// Seconds of fuzzing per target (0: skip).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
    },
    /// Set up, build, and run the main job on a real stacked-filesystem scenario.
    Demo {
        /// Let the reclaim deadlock really form, get flagged, and be broken.
        #[arg(long)]
        deadlock: bool,
    },
    /// Run monitor for N minutes under a churning hazard workload; print RSS,
    /// descriptors, CPU and event-loop lag per interval, then a verdict.
    Soak {
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// Seconds between report lines (and the agent's summaries).
        #[arg(long, default_value_t = 30)]
        interval: u64,
    },
    /// Measure fio throughput through the stacked device with and without tracing.
    Bench {
        #[arg(long, default_value_t = 5)]
        runs: u32,
        #[arg(long, default_value_t = 20)]
        seconds: u32,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run_setup(),
        Cmd::Build { release } => build::run_build(release).map(drop),
        Cmd::Test { fuzz_seconds } => test::run_tests(fuzz_seconds),
        Cmd::Demo { deadlock } => demo::run(deadlock),
        Cmd::Bench { runs, seconds } => bench::run(runs, seconds),
        Cmd::Soak { minutes, interval } => soak::run(minutes, interval),
    }
}
