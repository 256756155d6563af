//! Build orchestration: `cargo xtask setup|build|test|demo|bench|scale|soak`.

mod bench;
mod bench_noise;
mod build;
mod debroot;
mod demo;
mod flamegraph;
mod fleet;
mod kernels;
mod package;
mod scale;
mod setup;
mod soak;
mod test;
mod tools;
mod util;
mod vm;
mod workload;

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
    /// The Debian package (target/debian/reclaimscope_*.deb) with man pages,
    /// completions, the unit, docs, alerts and dashboard; validates the
    /// Kubernetes manifests. RECLAIMSCOPE_BPF_OBJ: embed that eBPF object.
    Package {
        /// Then install it into a minimal Debian 12 root (debootstrap,
        /// cached in target/package) and run audit and watch there.
        #[arg(long)]
        install_test: bool,
        /// Then build the container image with podman and run it.
        #[arg(long)]
        podman: bool,
    },
    /// Set up, build, then run every test: unit, kernel integration (serially), fuzz smoke.
    Test {
        /// Seconds of fuzzing per target (0: skip).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
        /// Debian kernels to run the kernel tests on in VMs, after this
        /// machine's: `default` (6.1, 6.12), `all` (5.10, 6.1, 6.12, sid, and the cloud and rt flavors 6.1-cloud, 6.12-cloud, 6.12-rt),
        /// `none`, or a comma-separated list.
        #[arg(long, default_value = "default")]
        kernels: String,
        /// Only the VM kernels (skip checks, unit, host and fuzz tests).
        #[arg(long)]
        vm_only: bool,
    },
    /// Set up, build, and run the main job on a real stacked-filesystem scenario.
    Demo {
        /// Let the reclaim deadlock really form, get flagged, and be broken.
        #[arg(long)]
        deadlock: bool,
    },
    /// Run CMD as root in the repo root inside a VM booted with one of
    /// Debian's kernels (5.10, 6.1, 6.12, sid, 6.1-cloud, 6.12-cloud, 6.12-rt) on this machine's root fs.
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
    /// Measure the kernel matrix (this machine and Debian's kernels in VMs):
    /// hook choices, cost per call, scenario results; writes docs/kernels.md.
    Kernels {
        /// VM kernels: `all`, `none` (re-render from the last run), or a list.
        #[arg(long, default_value = "all")]
        kernels: String,
        /// Skip this machine's measurement and tests.
        #[arg(long)]
        no_host: bool,
        /// Every hook and cost, but only the scenarios `cargo xtask test`
        /// runs on each kernel (minutes per kernel instead of tens).
        #[arg(long)]
        quick: bool,
    },
    /// The load `probes --measure` runs (stacked XFS writes under memcg
    /// pressure, then plain ext4 ones).
    #[command(hide = true)]
    Workload {
        #[arg(long, default_value_t = 256)]
        mb: u64,
    },
    /// Measure topology discovery against the host's size: for each number
    /// of extra processes (50 descriptors each), the idle agent's CPU and
    /// how soon it notices a new stack; writes docs/performance.md's table.
    ///
    /// Example: cargo xtask scale --processes 0,4000
    Scale {
        #[arg(long, value_delimiter = ',', default_value = "0,1000,4000,10000,20000")]
        processes: Vec<usize>,
        /// Seconds of the idle window the CPU is measured over.
        #[arg(long, default_value_t = 20)]
        idle: u64,
    },
    /// Measure fio through the stacked device without tracing, under watch,
    /// monitor and a bpftrace script; writes docs/performance.md's table.
    Bench {
        /// Rounds; each runs fio once per mode (the IOPS ratio is a median over them).
        #[arg(long, default_value_t = 9)]
        runs: u32,
        /// Seconds of fio per run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Seconds each tool idles before its fio run (its idle CPU).
        #[arg(long, default_value_t = 5)]
        idle: u32,
    },
}

/// `default`, `all`, `none` or a comma-separated list of known kernels.
fn kernel_list(arg: &str) -> Result<Vec<&str>> {
    let list: Vec<&str> = match arg {
        "default" => test::DEFAULT_KERNELS.to_vec(),
        "all" => test::ALL_KERNELS.to_vec(),
        "none" => Vec::new(),
        other => other.split(',').collect(),
    };
    for k in &list {
        vm::kernels::spec(k)?;
    }
    Ok(list)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run_setup(),
        Cmd::Build { release } => build::run_build(release).map(drop),
        Cmd::Test { fuzz_seconds, kernels, vm_only } => {
            let list = kernel_list(&kernels)?;
            test::run_tests(&test::Parts { host: !vm_only, fuzz_seconds, kernels: &list })
        }
        Cmd::Demo { deadlock } => demo::run(deadlock),
        Cmd::Package { install_test, podman } => package::run(&package::Options { install_test, podman }),
        Cmd::Bench { runs, seconds, idle } => bench::run(runs, seconds, idle),
        Cmd::Vm { kernel, memory, cpus, timeout_minutes, cmd } => {
            let _lock = testbed::lock()?;
            let opts =
                vm::VmOptions { kernel, memory, cpus, timeout: std::time::Duration::from_secs(timeout_minutes * 60) };
            let done = vm::run(&opts, &cmd)?;
            std::process::exit(done.code)
        }
        Cmd::Scale { processes, idle } => scale::run(&processes, idle),
        Cmd::Soak { minutes, interval } => soak::run(minutes, interval),
        Cmd::Kernels { kernels, no_host, quick } => {
            let list = kernel_list(&kernels)?;
            let breadth = if quick { test::Breadth::Scoped } else { test::Breadth::Whole };
            kernels::run(&list, !no_host, breadth)
        }
        Cmd::Workload { mb } => workload::run(mb),
    }
}
