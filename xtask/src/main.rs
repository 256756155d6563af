//! Build orchestration: `cargo xtask setup|build|test|demo|bench|soak`.

mod bench;
mod build;
mod demo;
mod setup;
mod soak;
mod test;
mod util;
mod vm;

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
        /// Debian kernels to run the kernel tests on in VMs, after this
        /// machine's: `default` (6.1, 6.12), `all` (5.10, 6.1, 6.12, sid),
        /// `none`, or a comma-separated list.
        #[arg(long, default_value = "default")]
        kernels: String,
    },
    /// Set up, build, and run the main job on a real stacked-filesystem scenario.
    Demo {
        /// Let the reclaim deadlock really form, get flagged, and be broken.
        #[arg(long)]
        deadlock: bool,
    },
    /// Run CMD as root in the repo root inside a VM booted with one of
    /// Debian's kernels (5.10, 6.1, 6.12, sid) on this machine's root fs.
    ///
    /// Example: cargo xtask vm --kernel 6.1 -- target/release/reclaimscope probes
    Vm {
        #[arg(long)]
        kernel: String,
        #[arg(long, default_value = "3G")]
        memory: String,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Kill the guest after this many minutes.
        #[arg(long, default_value_t = 60)]
        timeout_minutes: u64,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
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
        Cmd::Test { fuzz_seconds, kernels } => {
            let list: Vec<&str> = match kernels.as_str() {
                "default" => test::DEFAULT_KERNELS.to_vec(),
                "all" => test::ALL_KERNELS.to_vec(),
                "none" => Vec::new(),
                other => other.split(',').collect(),
            };
            for k in &list {
                vm::kernels::spec(k)?;
            }
            test::run_tests(fuzz_seconds, &list)
        }
        Cmd::Demo { deadlock } => demo::run(deadlock),
        Cmd::Bench { runs, seconds } => bench::run(runs, seconds),
        Cmd::Vm { kernel, memory, cpus, timeout_minutes, cmd } => {
            let _lock = testbed::lock()?;
            let opts =
                vm::VmOptions { kernel, memory, cpus, timeout: std::time::Duration::from_secs(timeout_minutes * 60) };
            let code = vm::run(&opts, &cmd)?;
            std::process::exit(code)
        }
        Cmd::Soak { minutes, interval } => soak::run(minutes, interval),
    }
}
