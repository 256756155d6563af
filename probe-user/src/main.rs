//! reclaimscope: catch memory-reclaim recursion in stacked filesystems.

use std::{process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand};
use reclaimscope::{
    cli::{audit, exec, generate, monitor, probes, record, report, watch},
    kernel::preflight,
    output::{stdout, terminal},
};

/// Finds servicers of stacked block devices (loop workers, FUSE daemons,
/// qemu-storage-daemon, tcmu-runner, nbd) that can recurse into the
/// filesystem they serve through memory reclaim, and catches the deadlock
/// as it forms.
#[derive(Parser, Debug)]
#[command(name = "reclaimscope", version)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Live findings (and with --all, every reclaim event) on this machine.
    Watch(watch::WatchArgs),
    /// Which probe implementation each hook uses here, and why.
    Probes(probes::ProbesArgs),
    // No doc comment here: AuditArgs' own (with exit codes) is the help.
    Audit(audit::AuditArgs),
    /// Service mode: JSON lines on stdout and Prometheus metrics.
    Monitor(monitor::MonitorArgs),
    /// Record events and findings to a trace file for `report`.
    Record(record::RecordArgs),
    /// Replay a trace (or an ftrace text capture) offline; no root needed.
    Report(report::ReportArgs),
    // No doc comment here: ExecArgs' own is the help.
    Exec(exec::ExecArgs),
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    Generate {
        dir: std::path::PathBuf,
    },
}

/// The commands that run the agent's event loop, on tokio.
async fn dispatch_agent(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Watch(a) => watch::run(&a).await,
        Command::Monitor(a) => monitor::run(&a).await,
        Command::Record(a) => record::run(&a).await,
        // --measure runs a workload under the event loop.
        Command::Probes(a) => probes::measure(&a).await,
        Command::Audit(_) | Command::Report(_) | Command::Exec(_) | Command::Generate { .. } => {
            unreachable!("run without a runtime")
        }
    }
}

fn run_agent(cmd: Command) -> anyhow::Result<i32> {
    preflight::raise_descriptor_limit()?;
    // Two malloc arenas, not eight per core: the agent's threads allocate
    // little, and every arena keeps memory it once used (RSS).
    // SAFETY: mallopt has no preconditions; called before other threads exist.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // Two workers whatever the core count (tokio's default is one per core,
    // each with its stack and arena): the event loop is one task, the
    // metrics server another, and discoveries run on the blocking pool.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    let result = rt.block_on(dispatch_agent(cmd));
    // A topology read stuck on a deadlocked FUSE daemon must not keep us alive.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_timestamp(None).init();
    // The offline commands need no runtime, and so no descriptors for one.
    let result = match cli.command {
        Command::Probes(a) if !a.measure => probes::run(&a),
        Command::Audit(a) => audit::run(&a),
        Command::Report(a) => report::run(&a),
        // Before any runtime thread exists: the flag is set on the task that execs.
        Command::Exec(a) => exec::run(&a),
        Command::Generate { dir } => generate::write_all(Cli::command(), &dir).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
            0
        }),
        cmd => run_agent(cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        // `| head -1` read what it wanted: not an error worth a message.
        Err(e) if stdout::is_closed(&e) => ExitCode::from(stdout::EXIT_STDOUT_CLOSED),
        Err(e) => {
            // One line, whatever a file or a kernel put into the message.
            eprintln!("reclaimscope: {}", terminal::line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
