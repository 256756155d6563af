//! `reclaimscope exec --io-flusher -- CMD...`: protects a servicer without
//! patching it. PR_SET_IO_FLUSHER sets PF_MEMALLOC_NOIO and
//! PF_LOCAL_THROTTLE on the calling task; the flags survive execve and every
//! thread the daemon starts inherits them, so setting them here and then
//! exec'ing the daemon protects all of its threads from reclaim recursion.

use std::{ffi::OsString, io, os::unix::process::CommandExt, process::Command};

use anyhow::{bail, Result};

/// `PR_SET_IO_FLUSHER` (include/uapi/linux/prctl.h, Linux 5.6).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Exit status when CMD could not be run (or the flag not set), and when
/// CMD was not found, as env(1) and nice(1) use them.
pub const EXIT_CANNOT_RUN: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// Shown under every `--help` of `exec`.
const EXAMPLES: &str = "\
Examples:
  sudo reclaimscope exec --io-flusher -- qemu-storage-daemon --blockdev ... --export type=fuse,...
  sudo reclaimscope exec --io-flusher -- /usr/bin/tcmu-runner
  systemd: deploy/systemd/io-flusher.conf.example wraps a unit's ExecStart";

/// Run CMD with reclaim protection: set PR_SET_IO_FLUSHER on this process,
/// then replace it with CMD (same pid; every thread CMD starts inherits
/// PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE). Needs CAP_SYS_RESOURCE and Linux 5.6.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ExecArgs {
    /// Set PR_SET_IO_FLUSHER before exec'ing CMD (required: the only
    /// protection offered so far).
    #[arg(long, required = true)]
    pub io_flusher: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

/// Why PR_SET_IO_FLUSHER failed, in one line.
pub fn io_flusher_error(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EPERM) => "exec --io-flusher: PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE, which this process lacks \
                              (EPERM); run it as root with that capability, or from a unit with \
                              AmbientCapabilities=CAP_SYS_RESOURCE"
            .to_owned(),
        Some(libc::EINVAL) => {
            "exec --io-flusher: this kernel has no PR_SET_IO_FLUSHER (EINVAL; it came in Linux 5.6)".to_owned()
        }
        _ => format!("exec --io-flusher: PR_SET_IO_FLUSHER failed: {err}"),
    }
}

/// Sets PR_SET_IO_FLUSHER on the calling thread.
pub fn set_io_flusher() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; it changes this task's flags.
    let r = unsafe {
        libc::prctl(PR_SET_IO_FLUSHER, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the flag and execs CMD; returns only on failure, with the exit
/// status to use (the message is printed here, on one line).
pub fn run(args: &ExecArgs) -> Result<i32> {
    let Some((prog, rest)) = args.cmd.split_first() else { bail!("exec needs a command after --") };
    if args.io_flusher {
        // main() runs the offline commands before any other thread exists:
        // the flag is set on the only task, the one that execs.
        if let Err(e) = set_io_flusher() {
            eprintln!("reclaimscope: {}", io_flusher_error(&e));
            return Ok(EXIT_CANNOT_RUN);
        }
    }
    let err = Command::new(prog).args(rest).exec();
    let code = if err.kind() == io::ErrorKind::NotFound { EXIT_NOT_FOUND } else { EXIT_CANNOT_RUN };
    eprintln!("reclaimscope: exec: cannot run {}: {err}", prog.to_string_lossy());
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line_and_name_the_capability() {
        let eperm = io_flusher_error(&io::Error::from_raw_os_error(libc::EPERM));
        assert!(eperm.contains("CAP_SYS_RESOURCE") && !eperm.contains('\n'), "{eperm}");
        let einval = io_flusher_error(&io::Error::from_raw_os_error(libc::EINVAL));
        assert!(einval.contains("5.6"), "{einval}");
    }
}
